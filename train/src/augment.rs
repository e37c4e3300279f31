//! Batch augmentations on log-mel tensors `x: [B, C = 1, F = n_mels, T = n_frames]`:
//! time roll, frequency masking and Freq-MixStyle (the paper's and the DCASE2024 baseline's
//! recipe).
//!
//! Every random draw comes from the `StdRng` passed in, in a fixed order (roll shifts, mask
//! bands, then Freq-MixStyle's coin, lambdas and permutation), so a batch augmented twice from
//! the same RNG state gives the same result. Each augmentation is split into a `draw_*` step
//! (host-side random numbers) and a deterministic tensor function, which the tests check against
//! naive host implementations.
//!
//! Order in [`Augment::apply`]: roll, mask, Freq-MixStyle. The baseline rolls the waveform in the
//! dataset, masks inside the mel module and mixes the spectrogram in the training step, so the
//! Freq-MixStyle statistics include the masked band, as here.

use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand_distr::{Beta, Distribution};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// An augmentation setting that can never be applied.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AugmentError {
    /// A parameter outside its valid range.
    #[error("augmentation setting {name} = {value} is invalid: {why}")]
    InvalidSetting {
        /// Name of the setting (as in the config file).
        name: &'static str,
        /// The offending value.
        value: f64,
        /// What the valid range is.
        why: &'static str,
    },
}

/// Circular time roll of the log-mel frames.
///
/// The paper rolls the waveform by up to 150 ms (the baseline by 100 ms). On precomputed log-mel
/// we roll whole frames: a waveform roll by `k * hop` samples gives the same STFT frames rolled
/// by `k`, except the few frames whose analysis window (3,072 samples = about 6 hops) straddles
/// the wrap point or the clip edges (reflect padding), which the waveform roll would mix. The
/// frame roll thus matches the waveform roll up to those seam frames and a quantisation of the
/// shift to the hop (500 samples = 15.6 ms at 32 kHz). Shifts are integers drawn uniformly in
/// `[-R, R]` with `R = round(max_shift_s * sample_rate / hop_length)` (150 ms -> 10 frames).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeRoll {
    /// Whether the roll is applied.
    pub enabled: bool,
    /// Largest shift in seconds (paper: 0.15).
    pub max_shift_s: f64,
    /// Sample rate of the front end in Hz (32,000).
    pub sample_rate: u32,
    /// STFT hop in samples (500).
    pub hop_length: usize,
}

impl Default for TimeRoll {
    fn default() -> Self {
        Self {
            enabled: true,
            max_shift_s: 0.15,
            sample_rate: 32_000,
            hop_length: 500,
        }
    }
}

impl TimeRoll {
    /// Largest shift in frames: `R = round(max_shift_s * sample_rate / hop_length)`.
    pub fn max_shift_frames(&self) -> usize {
        if self.hop_length == 0 || !self.max_shift_s.is_finite() || self.max_shift_s <= 0.0 {
            return 0;
        }
        (self.max_shift_s * self.sample_rate as f64 / self.hop_length as f64).round() as usize
    }

    /// One shift per example, uniform in `[-R, R]`.
    pub fn draw_shifts(&self, rng: &mut StdRng, batch: usize) -> Vec<i64> {
        let r = self.max_shift_frames() as i64;
        (0..batch).map(|_| rng.random_range(-r..=r)).collect()
    }
}

/// Circular roll of each example along time (the last axis), `torch.roll` semantics:
/// `out[b, c, f, t] = x[b, c, f, (t - shifts[b]) mod T]`.
///
/// `shifts` has one entry per example (`shifts.len() == B`; missing entries count as 0).
/// Examples are grouped by shift (at most `2R + 1` groups): each group is selected, rolled as
/// one block (`cat(x[.., T-s..], x[.., ..T-s])`), and the batch order is restored with one
/// `select`; a few bulk copies instead of a full-size gather index (measured in
/// `benches/trainer_blocks.rs`).
pub fn time_roll(x: Tensor<4>, shifts: &[i64]) -> Tensor<4> {
    let [b, _, _, t] = x.dims();
    if t == 0 || b == 0 {
        return x;
    }
    let roll = |x: Tensor<4>, s: usize| -> Tensor<4> {
        if s == 0 {
            x
        } else {
            Tensor::cat(
                vec![x.clone().narrow(3, t - s, s), x.narrow(3, 0, t - s)],
                3,
            )
        }
    };
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for i in 0..b {
        let s = shifts.get(i).copied().unwrap_or(0).rem_euclid(t as i64) as usize;
        groups.entry(s).or_default().push(i);
    }
    if groups.len() == 1 {
        let s = *groups.keys().next().unwrap_or(&0);
        return roll(x, s);
    }
    let device = x.device();
    let index = |v: &[usize]| {
        let v: Vec<i64> = v.iter().map(|&i| i as i64).collect();
        let n = v.len();
        Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &device)
    };
    let mut parts = Vec::with_capacity(groups.len());
    let mut order = Vec::with_capacity(b);
    for (s, members) in &groups {
        parts.push(roll(x.clone().select(0, index(members)), *s));
        order.extend_from_slice(members);
    }
    // Row `pos` of the concatenation holds example `order[pos]`: invert that permutation.
    let mut inverse = vec![0usize; b];
    for (pos, &example) in order.iter().enumerate() {
        inverse[example] = pos;
    }
    Tensor::cat(parts, 0).select(0, index(&inverse))
}

/// Frequency masking as the DCASE2024 baseline does it: torchaudio
/// `FrequencyMasking(48, iid_masks=True)` applied to the mel *power*, before `log(x + 1e-5)`.
///
/// Per example, a band of `w ~ U{0..max_width-1}` bins (clamped to `F`) starting at
/// `f0 ~ U{0..=F-w}` is set to the fill value. torchaudio draws a real width in `[0, 48)` and
/// truncates it, so its widths run 0..47, as here. The baseline's masked power is 0, so on the
/// log scale its band reads the front end's log of silence, `ln(0 + 1e-5) = -11.51` for the
/// dcase2024 preset ([`data_specs::FrontEndConfig::log_silence`]; the cpjku preset rescales
/// it): that is the default fill (`mask_value = None`, resolved from the shards' front end by
/// [`Augment::for_frontend`]). A fill of 0.0 (torchaudio's value on whatever it is given)
/// would put a loud flat band into a log-mel whose values sit around -5..5.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FreqMask {
    /// Whether masking is applied.
    pub enabled: bool,
    /// Band widths are drawn below this many mel bins (paper and baseline: 48, widths 0..47).
    pub max_width: usize,
    /// Value written into the masked band; `None`: the front end's log of silence
    /// ([`FreqMask::fill`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_value: Option<f32>,
}

impl Default for FreqMask {
    fn default() -> Self {
        Self {
            enabled: true,
            max_width: 48,
            mask_value: None,
        }
    }
}

impl FreqMask {
    /// The value written into a masked band: `mask_value`, or (not resolved to a front end)
    /// the dcase2024 preset's log of silence, `ln(1e-5)`.
    pub fn fill(&self) -> f32 {
        self.mask_value
            .unwrap_or_else(|| data_specs::FrontEndConfig::dcase2024().log_silence())
    }

    /// One band `(f0, w)` per example for `n_mels` bins: `w ~ U{0..min(max_width, F + 1) - 1}`,
    /// `f0 ~ U{0..=F-w}`.
    pub fn draw_bands(&self, rng: &mut StdRng, batch: usize, n_mels: usize) -> Vec<(usize, usize)> {
        let wend = self.max_width.min(n_mels + 1).max(1);
        (0..batch)
            .map(|_| {
                let w = rng.random_range(0..wend);
                let f0 = rng.random_range(0..=n_mels - w);
                (f0, w)
            })
            .collect()
    }
}

/// Set bins `f0 .. f0 + w` of example `b` (all channels, all frames) to `value`, for each
/// `bands[b] = (f0, w)`. Bands outside `0..F` are clipped.
pub fn freq_mask(x: Tensor<4>, bands: &[(usize, usize)], value: f32) -> Tensor<4> {
    let [b, c, f, t] = x.dims();
    if bands.iter().all(|&(_, w)| w == 0) {
        return x;
    }
    let mut mask = vec![false; b * f];
    for (i, &(f0, w)) in bands.iter().enumerate().take(b) {
        let end = f0.saturating_add(w).min(f);
        for m in &mut mask[i * f + f0.min(f)..i * f + end] {
            *m = true;
        }
    }
    let device = x.device();
    let mask = Tensor::<4, Bool>::from_data(TensorData::new(mask, [b, 1, f, 1]), &device)
        .expand([b, c, f, t]);
    x.mask_fill(mask, value)
}

/// Freq-MixStyle (Schmid et al., CP-JKU DCASE2023; the DCASE2024 baseline): mixes the
/// per-frequency statistics of pairs of examples.
///
/// With probability `p` for the whole batch: per example and frequency bin, mean `mu` and
/// unbiased variance `var` over channels and time, `sigma = sqrt(var + eps)`, both constants for
/// the gradient; `lambda_b ~ Beta(alpha, alpha)`, a random permutation `perm` of the batch;
/// `out = (x - mu) / sigma * mix(sigma) + mix(mu)`, `mix(s) = lambda * s + (1 - lambda) * s[perm]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FreqMixStyle {
    /// Whether Freq-MixStyle is used at all.
    pub enabled: bool,
    /// Probability of mixing a batch (0.4).
    pub p: f64,
    /// Beta parameter (0.3).
    pub alpha: f64,
    /// Added to the variance before the square root (1e-6).
    pub eps: f64,
}

impl Default for FreqMixStyle {
    fn default() -> Self {
        Self {
            enabled: true,
            p: 0.4,
            alpha: 0.3,
            eps: 1e-6,
        }
    }
}

/// The random part of one Freq-MixStyle application.
#[derive(Debug, Clone, PartialEq)]
pub struct MixDraw {
    /// `lambda_b ~ Beta(alpha, alpha)`, one per example.
    pub lambdas: Vec<f32>,
    /// The partner of each example (a permutation of `0..B`).
    pub perm: Vec<usize>,
}

impl FreqMixStyle {
    /// Flip the batch coin (`u < p`), then draw the lambdas and the permutation; `None` when
    /// the batch is left alone (or `alpha` is not a valid Beta parameter: see
    /// [`Augment::validate`]).
    pub fn draw(&self, rng: &mut StdRng, batch: usize) -> Option<MixDraw> {
        let u: f64 = rng.random();
        if u >= self.p {
            return None;
        }
        let beta = Beta::new(self.alpha, self.alpha).ok()?;
        let lambdas = (0..batch).map(|_| beta.sample(rng) as f32).collect();
        let mut perm: Vec<usize> = (0..batch).collect();
        perm.shuffle(rng);
        Some(MixDraw { lambdas, perm })
    }
}

/// Per-example, per-bin mean and `sigma = sqrt(unbiased var + eps)` over channels and time,
/// detached, each `[B, 1, F, 1]`. The unbiased denominator is `C*T - 1` (1 when `C*T = 1`).
pub fn freq_stats(x: &Tensor<4>, eps: f64) -> (Tensor<4>, Tensor<4>) {
    let [_, c, _, t] = x.dims();
    let n = (c * t) as f64;
    let x = x.clone().detach();
    let mu = x.clone().mean_dim(3).mean_dim(1);
    let d = x - mu.clone();
    let var = d
        .square()
        .sum_dim(3)
        .sum_dim(1)
        .div_scalar((n - 1.0).max(1.0));
    (mu, var.add_scalar(eps).sqrt())
}

/// Deterministic Freq-MixStyle with given lambdas and partners (formula on [`FreqMixStyle`]).
///
/// Works on autodiff tensors: the statistics are detached, so the gradient of the output with
/// respect to `x` is `mix(sigma) / sigma` per example and bin.
pub fn freq_mixstyle_with(x: Tensor<4>, draw: &MixDraw, eps: f64) -> Tensor<4> {
    let [b, ..] = x.dims();
    let device = x.device();
    let (mu, sig) = freq_stats(&x, eps);
    let perm: Vec<i64> = (0..b)
        .map(|i| draw.perm.get(i).copied().unwrap_or(i) as i64)
        .collect();
    let perm = Tensor::<1, Int>::from_data(TensorData::new(perm, [b]), &device);
    let lam: Vec<f32> = (0..b)
        .map(|i| draw.lambdas.get(i).copied().unwrap_or(1.0))
        .collect();
    let lam = Tensor::<4>::from_data(TensorData::new(lam, [b, 1, 1, 1]), &device);
    let one_minus = lam.clone().neg().add_scalar(1.0);
    let mu_mix = mu.clone() * lam.clone() + mu.clone().select(0, perm.clone()) * one_minus.clone();
    let sig_mix = sig.clone() * lam + sig.clone().select(0, perm) * one_minus;
    // (x - mu) / sig * sig_mix + mu_mix = x * a + c with the per-(example, bin) constants
    // a = sig_mix / sig and c = mu_mix - mu * a: two full-size operations instead of four.
    let a = sig_mix / sig;
    let c = mu_mix - mu * a.clone();
    x * a + c
}

/// Host-side [`time_roll`] on a row-major `[B, C, F, T]` buffer (`shape`), in place: each time
/// row of example `b` is rotated right by `shifts[b] mod T` (same semantics). Parallel over
/// examples.
pub fn time_roll_host(x: &mut [f32], shape: [usize; 4], shifts: &[i64]) {
    let [_, c, f, t] = shape;
    let per_example = c * f * t;
    if t == 0 || per_example == 0 {
        return;
    }
    x.par_chunks_mut(per_example)
        .enumerate()
        .for_each(|(b, example)| {
            let s = shifts.get(b).copied().unwrap_or(0).rem_euclid(t as i64) as usize;
            if s != 0 {
                for row in example.chunks_exact_mut(t) {
                    row.rotate_right(s);
                }
            }
        });
}

/// Host-side [`freq_mask`] on a row-major `[B, C, F, T]` buffer, in place (same semantics).
pub fn freq_mask_host(x: &mut [f32], shape: [usize; 4], bands: &[(usize, usize)], value: f32) {
    let [_, c, f, t] = shape;
    let per_example = c * f * t;
    if per_example == 0 {
        return;
    }
    for (example, &(f0, w)) in x.chunks_exact_mut(per_example).zip(bands) {
        let (lo, hi) = (f0.min(f), f0.saturating_add(w).min(f));
        for channel in example.chunks_exact_mut(f * t) {
            channel[lo * t..hi * t].fill(value);
        }
    }
}

/// Host-side [`freq_mixstyle_with`] on a row-major `[B, C, F, T]` buffer, in place, for input
/// batches (no gradient needed): statistics accumulated in f64, then
/// `x <- x * a + c` per (example, bin) with `a = mix(sigma) / sigma`, `c = mix(mu) - mu * a`.
pub fn freq_mixstyle_host(x: &mut [f32], shape: [usize; 4], draw: &MixDraw, eps: f64) {
    let [b, c, f, t] = shape;
    let per_example = c * f * t;
    if per_example == 0 || b == 0 {
        return;
    }
    let n = (c * t) as f64;
    // (mu, sigma) per (example, bin).
    let stats: Vec<(f64, f64)> = x
        .par_chunks(per_example)
        .flat_map_iter(|example| {
            (0..f).map(move |m| {
                let rows = (0..c).map(move |ch| &example[(ch * f + m) * t..(ch * f + m + 1) * t]);
                let mu = rows.clone().flatten().map(|&v| v as f64).sum::<f64>() / n;
                let ss: f64 = rows.flatten().map(|&v| (v as f64 - mu).powi(2)).sum();
                (mu, (ss / (n - 1.0).max(1.0) + eps).sqrt())
            })
        })
        .collect();
    x.par_chunks_mut(per_example)
        .enumerate()
        .for_each(|(i, example)| {
            let l = draw.lambdas.get(i).copied().unwrap_or(1.0) as f64;
            let p = draw.perm.get(i).copied().unwrap_or(i).min(b - 1);
            for m in 0..f {
                let (mu, sig) = stats[i * f + m];
                let (mu_p, sig_p) = stats[p * f + m];
                let a = (l * sig + (1.0 - l) * sig_p) / sig;
                let cc = l * mu + (1.0 - l) * mu_p - mu * a;
                let (a, cc) = (a as f32, cc as f32);
                for ch in 0..c {
                    for v in &mut example[(ch * f + m) * t..(ch * f + m + 1) * t] {
                        *v = *v * a + cc;
                    }
                }
            }
        });
}

/// All batch augmentations, each switchable; deserializes from the `[augment]` config table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Augment {
    /// Circular time roll.
    pub time_roll: TimeRoll,
    /// Frequency masking.
    pub freq_mask: FreqMask,
    /// Freq-MixStyle.
    pub freq_mixstyle: FreqMixStyle,
}

impl Augment {
    /// The augmentations for log-mel of the front end `fe`: an unset frequency-mask fill
    /// becomes `fe`'s log of silence (see [`FreqMask`]); explicit settings stay.
    pub fn for_frontend(mut self, fe: &data_specs::FrontEndConfig) -> Self {
        if self.freq_mask.mask_value.is_none() {
            self.freq_mask.mask_value = Some(fe.log_silence());
        }
        self
    }

    /// Every augmentation switched off (evaluation, or a plain run).
    pub fn none() -> Self {
        let mut a = Self::default();
        a.time_roll.enabled = false;
        a.freq_mask.enabled = false;
        a.freq_mixstyle.enabled = false;
        a
    }

    /// Check the settings that could make an augmentation silently do nothing or produce NaN.
    pub fn validate(&self) -> Result<(), AugmentError> {
        let bad = |name, value: f64, why| Err(AugmentError::InvalidSetting { name, value, why });
        let t = &self.time_roll;
        if !(t.max_shift_s.is_finite() && t.max_shift_s >= 0.0) {
            return bad("time_roll.max_shift_s", t.max_shift_s, "must be >= 0");
        }
        if t.hop_length == 0 {
            return bad("time_roll.hop_length", 0.0, "must be > 0");
        }
        let m = &self.freq_mixstyle;
        if !(0.0..=1.0).contains(&m.p) {
            return bad("freq_mixstyle.p", m.p, "must be in [0, 1]");
        }
        if !(m.alpha.is_finite() && m.alpha > 0.0) {
            return bad("freq_mixstyle.alpha", m.alpha, "must be > 0");
        }
        if !(m.eps.is_finite() && m.eps >= 0.0) {
            return bad("freq_mixstyle.eps", m.eps, "must be >= 0");
        }
        if let Some(v) = self.freq_mask.mask_value
            && !v.is_finite()
        {
            return bad("freq_mask.mask_value", v as f64, "must be finite");
        }
        Ok(())
    }

    /// [`Augment::apply`] for an input batch still in host memory (row-major `[B, C, F, T]` =
    /// `shape`), in place: the same RNG draws in the same order, so both paths give the same
    /// batch (Freq-MixStyle up to f32 rounding: its statistics are accumulated in f64 here).
    /// The fast path for inputs (measured in `benches/trainer_blocks.rs`); `apply` is for
    /// tensors already on the device or inside an autodiff graph.
    pub fn apply_host(&self, x: &mut [f32], shape: [usize; 4], rng: &mut StdRng) {
        let [b, _, f, _] = shape;
        if self.time_roll.enabled {
            let shifts = self.time_roll.draw_shifts(rng, b);
            time_roll_host(x, shape, &shifts);
        }
        if self.freq_mask.enabled {
            let bands = self.freq_mask.draw_bands(rng, b, f);
            freq_mask_host(x, shape, &bands, self.freq_mask.fill());
        }
        if self.freq_mixstyle.enabled
            && let Some(draw) = self.freq_mixstyle.draw(rng, b)
        {
            freq_mixstyle_host(x, shape, &draw, self.freq_mixstyle.eps);
        }
    }

    /// Apply the enabled augmentations to a batch `[B, C, F, T]` in the order roll, mask,
    /// Freq-MixStyle, drawing from `rng` in that order.
    pub fn apply(&self, x: Tensor<4>, rng: &mut StdRng) -> Tensor<4> {
        let [b, _, f, _] = x.dims();
        let mut x = x;
        if self.time_roll.enabled {
            let shifts = self.time_roll.draw_shifts(rng, b);
            x = time_roll(x, &shifts);
        }
        if self.freq_mask.enabled {
            let bands = self.freq_mask.draw_bands(rng, b, f);
            x = freq_mask(x, &bands, self.freq_mask.fill());
        }
        if self.freq_mixstyle.enabled
            && let Some(draw) = self.freq_mixstyle.draw(rng, b)
        {
            x = freq_mixstyle_with(x, &draw, self.freq_mixstyle.eps);
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use rand::SeedableRng;

    fn batch(device: &Device, shape: [usize; 4], seed: u64) -> (Vec<f32>, Tensor<4>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0f32..5.0)).collect();
        let t = Tensor::<4>::from_data(TensorData::new(v.clone(), shape), device);
        (v, t)
    }

    fn host(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn max_shift_frames_follows_the_rounding_rule() {
        assert_eq!(TimeRoll::default().max_shift_frames(), 10); // 0.15 * 64 = 9.6
        let base = TimeRoll {
            max_shift_s: 0.1,
            ..TimeRoll::default()
        };
        assert_eq!(base.max_shift_frames(), 6); // 6.4
    }

    #[test]
    fn roll_equals_manual_roll() {
        let device = Device::flex();
        let shape = [3, 2, 4, 7];
        let [_, c, f, t] = shape;
        for shifts in [[2i64, -3, 9], [5, 5, 5], [0, 0, 0], [0, 1, -1]] {
            let (v, x) = batch(&device, shape, 1);
            let got = host(time_roll(x, &shifts));
            for b in 0..3 {
                for row in 0..c * f {
                    let base = (b * c * f + row) * t;
                    for j in 0..t {
                        // Naive roll: the element at time j moves to (j + s) mod T.
                        let dst = (j as i64 + shifts[b]).rem_euclid(t as i64) as usize;
                        assert_eq!(got[base + dst], v[base + j], "shifts {shifts:?}");
                    }
                }
            }
        }
        // Drawn shifts stay within [-R, R] and reach both ends.
        let mut rng = StdRng::seed_from_u64(3);
        let s = TimeRoll::default().draw_shifts(&mut rng, 5_000);
        assert_eq!(*s.iter().max().unwrap(), 10);
        assert_eq!(*s.iter().min().unwrap(), -10);
    }

    #[test]
    fn mask_zeroes_exactly_the_chosen_band() {
        let device = Device::flex();
        let shape = [3, 1, 10, 5];
        let (v, x) = batch(&device, shape, 2);
        let bands = [(2usize, 3usize), (0, 0), (7, 3)];
        let got = host(freq_mask(x, &bands, 0.0));
        for (b, &(f0, w)) in bands.iter().enumerate() {
            for m in 0..10 {
                for j in 0..5 {
                    let i = (b * 10 + m) * 5 + j;
                    if m >= f0 && m < f0 + w {
                        assert_eq!(got[i], 0.0);
                    } else {
                        assert_eq!(got[i], v[i]);
                    }
                }
            }
        }
        // Draws: widths 0..=47 as torchaudio's truncated U[0, 48), bands inside 0..F.
        let mut rng = StdRng::seed_from_u64(4);
        let bands = FreqMask::default().draw_bands(&mut rng, 5_000, 256);
        assert!(bands.iter().all(|&(f0, w)| w <= 47 && f0 + w <= 256));
        assert!(bands.iter().any(|&(_, w)| w == 47) && bands.iter().any(|&(_, w)| w == 0));
        // Fewer bins than the width limit: at most every bin.
        let bands = FreqMask::default().draw_bands(&mut rng, 2_000, 10);
        assert!(bands.iter().all(|&(f0, w)| f0 + w <= 10));
        assert!(bands.iter().any(|&(_, w)| w == 10));
    }

    #[test]
    fn default_fill_is_the_front_ends_log_of_silence() {
        use data_specs::FrontEndConfig;
        // The baseline masks mel power before log(x + 1e-5): masked bins read ln(1e-5).
        let dcase = Augment::default().for_frontend(&FrontEndConfig::dcase2024());
        assert_eq!(dcase.freq_mask.mask_value, Some(1e-5f64.ln() as f32));
        assert!((dcase.freq_mask.fill() + 11.5129).abs() < 1e-4);
        assert_eq!(Augment::default().freq_mask.fill(), dcase.freq_mask.fill());
        // CP-JKU's front end rescales: (ln(1e-5) + 4.5) / 5.
        let cpjku = Augment::default().for_frontend(&FrontEndConfig::cpjku());
        let want = ((1e-5f64.ln() + 4.5) / 5.0) as f32;
        assert!((cpjku.freq_mask.fill() - want).abs() < 1e-6);
        // An explicit fill is kept.
        let mut own = Augment::default();
        own.freq_mask.mask_value = Some(0.0);
        assert_eq!(
            own.for_frontend(&FrontEndConfig::cpjku()).freq_mask.fill(),
            0.0
        );
        // The fill reaches the batch: every masked value is the silence value.
        let device = Device::flex();
        let shape = [8, 1, 256, 4];
        let (v, x) = batch(&device, shape, 3);
        let mut rng = StdRng::seed_from_u64(5);
        let bands = dcase.freq_mask.draw_bands(&mut rng.clone(), 8, 256);
        let aug = Augment {
            freq_mask: dcase.freq_mask.clone(),
            ..Augment::none()
        };
        let got = host(aug.apply(x, &mut rng));
        for (b, &(f0, w)) in bands.iter().enumerate() {
            for m in 0..256 {
                let i = (b * 256 + m) * 4;
                let want = if (f0..f0 + w).contains(&m) {
                    dcase.freq_mask.fill()
                } else {
                    v[i]
                };
                assert_eq!(got[i], want, "example {b} bin {m}");
            }
        }
    }

    /// Mean and unbiased std per (example, bin) over channels and time, in f64.
    fn stats_ref(v: &[f32], [b, c, f, t]: [usize; 4]) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        for i in 0..b {
            for m in 0..f {
                let vals: Vec<f64> = (0..c)
                    .flat_map(|ch| (0..t).map(move |j| ((i * c + ch) * f + m) * t + j))
                    .map(|k| v[k] as f64)
                    .collect();
                let n = vals.len() as f64;
                let mean = vals.iter().sum::<f64>() / n;
                let var = vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
                out.push((mean, var.sqrt()));
            }
        }
        out
    }

    #[test]
    fn mixstyle_with_lambda_one_is_identity() {
        let device = Device::flex();
        let shape = [4, 1, 6, 9];
        let (v, x) = batch(&device, shape, 5);
        let draw = MixDraw {
            lambdas: vec![1.0; 4],
            perm: vec![2, 3, 1, 0],
        };
        let got = host(freq_mixstyle_with(x, &draw, 1e-6));
        for (a, b) in got.iter().zip(&v) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn mixstyle_with_lambda_zero_takes_partner_statistics() {
        let device = Device::flex();
        let shape = [4, 2, 5, 8];
        let (v, x) = batch(&device, shape, 6);
        let perm = vec![1, 3, 0, 2];
        let draw = MixDraw {
            lambdas: vec![0.0; 4],
            perm: perm.clone(),
        };
        let got = host(freq_mixstyle_with(x, &draw, 1e-6));
        let before = stats_ref(&v, shape);
        let after = stats_ref(&got, shape);
        let f = shape[2];
        for b in 0..4 {
            for m in 0..f {
                let (mu_a, sd_a) = after[b * f + m];
                let (mu_p, sd_p) = before[perm[b] * f + m];
                assert!(
                    (mu_a - mu_p).abs() < 1e-4,
                    "mean b{b} f{m}: {mu_a} vs {mu_p}"
                );
                assert!(
                    (sd_a - sd_p).abs() < 1e-4,
                    "std b{b} f{m}: {sd_a} vs {sd_p}"
                );
            }
        }
        // lambda = 0.5: mean is the average of both means.
        let (_, x) = batch(&device, shape, 6);
        let half = MixDraw {
            lambdas: vec![0.5; 4],
            perm: perm.clone(),
        };
        let dev = host(freq_mixstyle_with(x, &half, 1e-6));
        // The host version (f64 statistics) agrees with the tensor version.
        let mut buf = v.clone();
        freq_mixstyle_host(&mut buf, shape, &half, 1e-6);
        for (a, b) in buf.iter().zip(&dev) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        let after = stats_ref(&dev, shape);
        for b in 0..4 {
            for m in 0..f {
                let want = 0.5 * (before[b * f + m].0 + before[perm[b] * f + m].0);
                assert!((after[b * f + m].0 - want).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn mixstyle_gradient_treats_statistics_as_constants() {
        let device = Device::flex().autodiff();
        let shape = [3, 1, 4, 6];
        let (v, x) = batch(&device, shape, 7);
        let x = x.require_grad();
        let draw = MixDraw {
            lambdas: vec![0.2, 0.7, 0.4],
            perm: vec![2, 0, 1],
        };
        let out = freq_mixstyle_with(x.clone(), &draw, 1e-6);
        let grads = out.sum().backward();
        let g = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let st = stats_ref(&v, shape);
        let sig = |k: usize| (st[k].1.powi(2) + 1e-6).sqrt();
        for b in 0..3 {
            for m in 0..4 {
                let l = draw.lambdas[b] as f64;
                let mixed = l * sig(b * 4 + m) + (1.0 - l) * sig(draw.perm[b] * 4 + m);
                let want = mixed / sig(b * 4 + m);
                for j in 0..6 {
                    let got = g[(b * 4 + m) * 6 + j] as f64;
                    assert!((got - want).abs() < 1e-4, "b{b} f{m}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn mixstyle_is_applied_with_probability_p() {
        let device = Device::flex();
        let aug = Augment {
            freq_mixstyle: FreqMixStyle::default(),
            ..Augment::none()
        };
        let mut rng = StdRng::seed_from_u64(8);
        let n = 300;
        let mut applied = 0;
        let shape = [4, 1, 3, 5];
        let (v, _) = batch(&device, shape, 9);
        for _ in 0..n {
            // A clone of the RNG tells what apply is going to draw.
            let expected = aug.freq_mixstyle.draw(&mut rng.clone(), 4);
            let x = Tensor::<4>::from_data(TensorData::new(v.clone(), shape), &device);
            let out = host(aug.apply(x, &mut rng));
            let want = match &expected {
                Some(d) => {
                    applied += 1;
                    let x = Tensor::<4>::from_data(TensorData::new(v.clone(), shape), &device);
                    host(freq_mixstyle_with(x, d, 1e-6))
                }
                None => v.clone(),
            };
            assert_eq!(out, want);
        }
        // Binomial(300, 0.4): mean 120, sd 8.5; allow 4 sd.
        assert!(
            (applied as f64 - 120.0).abs() < 34.0,
            "applied {applied} / {n}"
        );
        // Pure draws: Beta(0.3, 0.3) has mean 0.5, variance 1 / (4 (2 alpha + 1)) = 0.15625.
        let fms = FreqMixStyle::default();
        let mut lam = Vec::new();
        let mut hits = 0;
        for _ in 0..20_000 {
            if let Some(d) = fms.draw(&mut rng, 4) {
                hits += 1;
                let mut p = d.perm.clone();
                p.sort();
                assert_eq!(p, vec![0, 1, 2, 3]);
                lam.extend(d.lambdas);
            }
        }
        // Binomial(20000, 0.4): sd 69.3.
        assert!((hits as f64 - 8_000.0).abs() < 4.0 * 69.3, "hits {hits}");
        let mean = lam.iter().map(|&l| l as f64).sum::<f64>() / lam.len() as f64;
        let var = lam.iter().map(|&l| (l as f64 - mean).powi(2)).sum::<f64>() / lam.len() as f64;
        assert!(
            (mean - 0.5).abs() < 0.01 && (var - 0.15625).abs() < 0.01,
            "{mean} {var}"
        );
    }

    #[test]
    fn apply_is_reproducible_and_validate_catches_bad_settings() {
        let device = Device::flex();
        let aug = Augment {
            freq_mixstyle: FreqMixStyle {
                p: 1.0,
                ..FreqMixStyle::default()
            },
            ..Augment::default()
        };
        aug.validate().unwrap();
        let shape = [4, 1, 64, 65];
        let (v, _) = batch(&device, shape, 10);
        let run = |seed| {
            let x = Tensor::<4>::from_data(TensorData::new(v.clone(), shape), &device);
            host(aug.apply(x, &mut StdRng::seed_from_u64(seed)))
        };
        assert_eq!(run(11), run(11));
        // The host path gives the same batch (up to f32 rounding in Freq-MixStyle).
        for seed in [11, 12, 13] {
            let mut buf = v.clone();
            aug.apply_host(&mut buf, shape, &mut StdRng::seed_from_u64(seed));
            let dev = run(seed);
            // The same draws as apply: shifts, then bands.
            let mut r = StdRng::seed_from_u64(seed);
            let _ = aug.time_roll.draw_shifts(&mut r, 4);
            let bands = aug.freq_mask.draw_bands(&mut r, 4, 64);
            for (i, (a, b)) in buf.iter().zip(&dev).enumerate() {
                // A masked band is constant: its sigma is sqrt(eps) = 1e-3, and Freq-MixStyle
                // scales it by mix(sigma) / sigma (up to ~1e3), which amplifies the f32 rounding
                // of the band's mean (-11.51, not exact in f32 as 0.0 was) to ~1e-3 there.
                let (f0, w) = bands[i / (64 * 65)];
                let masked = (f0..f0 + w).contains(&((i / 65) % 64));
                let tol = 1e-4 * b.abs().max(1.0) + if masked { 5e-3 } else { 0.0 };
                assert!((a - b).abs() < tol, "seed {seed} [{i}]: {a} vs {b}");
            }
        }
        // With a fill whose mean is exact in f32 (0.0) the two paths agree to f32 rounding.
        let mut zero_fill = aug.clone();
        zero_fill.freq_mask.mask_value = Some(0.0);
        let mut buf = v.clone();
        zero_fill.apply_host(&mut buf, shape, &mut StdRng::seed_from_u64(11));
        let x = Tensor::<4>::from_data(TensorData::new(v.clone(), shape), &device);
        let dev = host(zero_fill.apply(x, &mut StdRng::seed_from_u64(11)));
        for (i, (a, b)) in buf.iter().zip(&dev).enumerate() {
            assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "[{i}]: {a} vs {b}");
        }
        assert_ne!(run(11), run(12));
        let mut bad = Augment::default();
        bad.freq_mixstyle.alpha = 0.0;
        assert!(matches!(
            bad.validate(),
            Err(AugmentError::InvalidSetting {
                name: "freq_mixstyle.alpha",
                ..
            })
        ));
    }
}
