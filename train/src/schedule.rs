//! Learning-rate schedule: linear warm-up, then a half-cosine decay (the paper's recipe: AdamW,
//! peak lr 0.005, 2,000 warm-up steps, cosine over 150 epochs of batch 256).
//!
//! The schedule is a pure function of the optimizer step, [`LrSchedule::lr_at`], so that a run
//! resumed from a checkpoint at step `s` continues with exactly the learning rate it would have
//! used; nothing is stored but the step counter.
//!
//! For a zero-based step `s` (the `s`-th optimizer update), warm-up length `W` and total `N`:
//!
//! ```text
//! s <  W :  lr(s) = peak * (s + 1) / W                                   (linear, > 0 at s = 0)
//! W <= s < N :  lr(s) = final + (peak - final) * (1 + cos(pi * (s - W) / (N - W))) / 2
//! s >= N :  lr(s) = final
//! ```
//!
//! Endpoints: the first update uses `peak / W` (never 0, so step 0 already moves the weights),
//! update `W - 1` uses `peak`, update `W` uses `peak` again (start of the cosine), and the last
//! update `N - 1` uses `final + (peak - final) * (1 + cos(pi * (N-1-W)/(N-W))) / 2`, a hair above
//! `final` (`final_lr`, 0 by default, as in the CP-JKU / DCASE2024 baseline schedule).
//!
//! Warm-up on small splits ([`warmup_steps_for`]): the paper's 2,000 warm-up steps are 2.4 % of
//! its 81,900 updates on the full split (139,620 clips / 256 = 546 steps per epoch x 150
//! epochs), but they would be 49 % of the 4,200 updates of the 5 % split. We keep the requested
//! count and cap it at a fraction of the run (default 10 %):
//! `W = min(requested, max(1, round(N * max_fraction)))`. The full split keeps 2,000; the 5 %
//! split (28 steps x 150 = 4,200 updates) gets 420.

use serde::{Deserialize, Serialize};

/// Default cap on the warm-up, as a fraction of all updates (see [`warmup_steps_for`]).
pub const DEFAULT_MAX_WARMUP_FRACTION: f64 = 0.1;

/// Warm-up length for a run of `total_steps` updates: the `requested` count, capped at
/// `round(total_steps * max_fraction)`, and at least 1 step.
///
/// `W = min(requested, max(1, round(N * max_fraction)))`; `max_fraction` is clamped to [0, 1].
pub fn warmup_steps_for(requested: u64, total_steps: u64, max_fraction: f64) -> u64 {
    let frac = if max_fraction.is_finite() {
        max_fraction.clamp(0.0, 1.0)
    } else {
        DEFAULT_MAX_WARMUP_FRACTION
    };
    let cap = ((total_steps as f64) * frac).round() as u64;
    requested.min(cap.max(1)).max(1)
}

/// A linear warm-up + cosine learning-rate schedule over a fixed number of optimizer updates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate reached at the end of the warm-up (paper: 0.005).
    pub peak_lr: f64,
    /// Learning rate at and after `total_steps` (0 in the baseline).
    pub final_lr: f64,
    /// Number of warm-up updates `W` (>= 1).
    pub warmup_steps: u64,
    /// Total number of updates `N` of the run (epochs x steps per epoch).
    pub total_steps: u64,
}

impl LrSchedule {
    /// A schedule of `total_steps` updates whose warm-up is `requested_warmup` capped by
    /// [`warmup_steps_for`] with [`DEFAULT_MAX_WARMUP_FRACTION`], decaying to 0.
    pub fn new(peak_lr: f64, requested_warmup: u64, total_steps: u64) -> Self {
        Self {
            peak_lr,
            final_lr: 0.0,
            warmup_steps: warmup_steps_for(
                requested_warmup,
                total_steps,
                DEFAULT_MAX_WARMUP_FRACTION,
            ),
            total_steps,
        }
    }

    /// The schedule of the paper for a run of `epochs` epochs of `steps_per_epoch` updates:
    /// peak 0.005, 2,000 warm-up steps (capped on small splits).
    pub fn paper(epochs: u64, steps_per_epoch: u64) -> Self {
        Self::new(0.005, 2_000, epochs * steps_per_epoch)
    }

    /// Learning rate of the zero-based update `step` (formula in the module docs).
    pub fn lr_at(&self, step: u64) -> f64 {
        let w = self.warmup_steps.max(1);
        let n = self.total_steps;
        if step >= n {
            return self.final_lr;
        }
        if step < w {
            return self.peak_lr * (step + 1) as f64 / w as f64;
        }
        let span = n.saturating_sub(w).max(1) as f64;
        let progress = (step - w) as f64 / span;
        self.final_lr
            + (self.peak_lr - self.final_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn warmup_rule_keeps_paper_value_and_caps_small_splits() {
        // Full split: 546 steps x 150 epochs = 81,900 updates -> 2,000 kept.
        assert_eq!(warmup_steps_for(2_000, 546 * 150, 0.1), 2_000);
        // 5 % split: 28 x 150 = 4,200 -> 10 % = 420.
        assert_eq!(warmup_steps_for(2_000, 28 * 150, 0.1), 420);
        // Rounding: 1,234 * 0.1 = 123.4 -> 123; 1,235 * 0.1 = 123.5 -> 124 (half away from 0).
        assert_eq!(warmup_steps_for(2_000, 1_234, 0.1), 123);
        assert_eq!(warmup_steps_for(2_000, 1_235, 0.1), 124);
        // Degenerate runs still get one warm-up step.
        assert_eq!(warmup_steps_for(2_000, 3, 0.1), 1);
        assert_eq!(warmup_steps_for(0, 100, 0.1), 1);
        assert_eq!(warmup_steps_for(2_000, 0, 0.1), 1);
    }

    #[test]
    fn values_at_key_steps_match_closed_form() {
        let s = LrSchedule {
            peak_lr: 0.005,
            final_lr: 0.0,
            warmup_steps: 100,
            total_steps: 1_100,
        };
        // Warm-up: linear, starts at peak / W, reaches peak at W - 1.
        assert!(close(s.lr_at(0), 0.005 / 100.0));
        assert!(close(s.lr_at(49), 0.005 * 0.5));
        assert!(close(s.lr_at(99), 0.005));
        // Cosine: peak at W, half at the midpoint, a quarter-period point, ~0 at the end.
        assert!(close(s.lr_at(100), 0.005));
        assert!(close(s.lr_at(600), 0.0025));
        let quarter = 0.005 * 0.5 * (1.0 + (std::f64::consts::FRAC_PI_4).cos());
        assert!(close(s.lr_at(350), quarter));
        let last = 0.005 * 0.5 * (1.0 + (std::f64::consts::PI * 999.0 / 1000.0).cos());
        assert!(close(s.lr_at(1_099), last));
        assert!(s.lr_at(1_099) > 0.0 && s.lr_at(1_099) < 1e-7);
        assert_eq!(s.lr_at(1_100), 0.0);
        assert_eq!(s.lr_at(10_000), 0.0);
    }

    #[test]
    fn schedule_is_monotone_in_each_phase_and_respects_final_lr() {
        let s = LrSchedule {
            peak_lr: 1e-3,
            final_lr: 1e-5,
            warmup_steps: 10,
            total_steps: 200,
        };
        for t in 1..10 {
            assert!(s.lr_at(t) > s.lr_at(t - 1));
        }
        for t in 11..200 {
            assert!(s.lr_at(t) < s.lr_at(t - 1), "step {t}");
            assert!(s.lr_at(t) > 1e-5);
        }
        assert!(close(s.lr_at(200), 1e-5));
    }

    #[test]
    fn paper_schedule_uses_capped_warmup() {
        let full = LrSchedule::paper(150, 546);
        assert_eq!(full.warmup_steps, 2_000);
        assert_eq!(full.total_steps, 81_900);
        let small = LrSchedule::paper(150, 28);
        assert_eq!(small.warmup_steps, 420);
        assert!(close(small.lr_at(419), 0.005));
    }
}
