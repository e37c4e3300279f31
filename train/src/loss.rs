//! Losses: cross-entropy and the knowledge-distillation loss with precomputed teacher logits.
//!
//! Knowledge distillation (Hinton et al. 2015; CP-JKU DCASE2023/2024; the IRMamba paper with
//! tau = 2, lambda = 0.02), per example `b` with student logits `y`, label `c`, teacher logits `t`:
//!
//! ```text
//! CE_b = -log softmax(y_b)[c_b]
//! KL_b = sum_k p_k (log p_k - log q_k),   p = softmax(t_b / tau),  q = softmax(y_b / tau)
//! l_b  = lambda * CE_b + (1 - lambda) * tau^2 * KL_b     (example with teacher logits, m_b = 1)
//! l_b  = CE_b                                            (example without, m_b = 0)
//! L    = (1 / B) * sum_b l_b
//! ```
//!
//! Reduction, decided once and used everywhere: the KL is summed over classes and averaged over
//! examples (PyTorch `kl_div(..., reduction="batchmean")`), every example of the batch weighs
//! `1 / B`, and an example without teacher logits falls back to plain cross-entropy, so a batch
//! with no teacher logits at all gives exactly [`cross_entropy`] and a batch where every example
//! has them gives `lambda * mean CE + (1 - lambda) * tau^2 * batchmean KL`.
//! CP-JKU's code calls `kl_div(reduction="mean")`, which averages over all `B x C` elements, i.e.
//! divides the KL by `C` as well; [`KlReduction::ElementMean`] reproduces that choice.
//!
//! All forms are computed from `log_softmax` (log-sum-exp with the max subtracted), never from
//! `log(softmax(.))`, so large logits neither overflow nor give `log(0)`. Teacher logits are
//! constants: they are detached before use.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

/// How the per-example KL divergence (summed over classes) is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlReduction {
    /// KL summed over classes (PyTorch `batchmean` once averaged over examples). Default.
    #[default]
    BatchMean,
    /// KL averaged over classes too (PyTorch `reduction="mean"`, the CP-JKU code): `KL_b / C`.
    ElementMean,
}

/// Settings of the distillation loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KdConfig {
    /// Weight of the label cross-entropy (paper: 0.02); the KL gets `1 - lambda`.
    pub lambda: f64,
    /// Softmax temperature applied to both teacher and student logits (paper: 2).
    pub tau: f64,
    /// Scaling of the KL term (default: summed over classes).
    #[serde(default)]
    pub kl_reduction: KlReduction,
}

impl Default for KdConfig {
    /// The paper's setting: lambda 0.02, tau 2, KL summed over classes.
    fn default() -> Self {
        Self {
            lambda: 0.02,
            tau: 2.0,
            kl_reduction: KlReduction::BatchMean,
        }
    }
}

/// The loss and its two parts, each a `[1]` tensor (the parts are for logging).
#[derive(Debug, Clone)]
pub struct KdLoss {
    /// The training objective `L` (module docs).
    pub total: Tensor<1>,
    /// Mean cross-entropy over the whole batch `(1/B) sum_b CE_b` (no lambda).
    pub ce: Tensor<1>,
    /// Mean KL over the examples with teacher logits, `sum_b m_b KL_b / max(1, sum_b m_b)`
    /// (no lambda, no tau^2; 0 when no example has teacher logits).
    pub kl: Tensor<1>,
}

/// Per-example cross-entropy `-log softmax(logits)[label]`, shape `[B]`.
///
/// `logits: [B, C]`, `labels: [B]` with values in `0..C`.
pub fn cross_entropy_per_example(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let log_probs = log_softmax(logits, 1);
    let idx = labels.unsqueeze_dim::<2>(1);
    log_probs.gather(1, idx).squeeze_dim::<1>(1).neg()
}

/// Mean cross-entropy over the batch, shape `[1]`: `(1/B) sum_b -log softmax(y_b)[c_b]`.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    cross_entropy_per_example(logits, labels).mean()
}

/// Per-example `KL(softmax(t / tau) || softmax(y / tau))` summed over classes, shape `[B]`.
///
/// The teacher logits are detached (constants for the gradient).
pub fn kl_per_example(student_logits: Tensor<2>, teacher_logits: Tensor<2>, tau: f64) -> Tensor<1> {
    let log_q = log_softmax(student_logits.div_scalar(tau), 1);
    let log_p = log_softmax(teacher_logits.detach().div_scalar(tau), 1);
    let p = log_p.clone().exp();
    (p * (log_p - log_q)).sum_dim(1).squeeze_dim::<1>(1)
}

/// The distillation loss and its parts (formula and reduction in the module docs).
///
/// Shapes: `student_logits [B, C]`, `labels [B]`, `teacher_logits [B, C]` (any finite values
/// where `teacher_mask` is 0), `teacher_mask [B]` with 1.0 where the example has teacher logits
/// and 0.0 where it has none.
pub fn kd_loss_parts(
    student_logits: Tensor<2>,
    labels: Tensor<1, Int>,
    teacher_logits: Tensor<2>,
    teacher_mask: Tensor<1>,
    config: &KdConfig,
) -> KdLoss {
    let [_, n_classes] = student_logits.dims();
    let mask = teacher_mask.detach();
    let ce_b = cross_entropy_per_example(student_logits.clone(), labels);
    let mut kl_b = kl_per_example(student_logits, teacher_logits, config.tau);
    if config.kl_reduction == KlReduction::ElementMean {
        kl_b = kl_b.div_scalar(n_classes as f64);
    }
    let lambda = config.lambda;
    let kd_weight = (1.0 - lambda) * config.tau * config.tau;
    // l_b = CE_b + m_b * ((lambda - 1) * CE_b + (1 - lambda) tau^2 KL_b)
    let teacher_part = ce_b
        .clone()
        .mul_scalar(lambda - 1.0)
        .add(kl_b.clone().mul_scalar(kd_weight));
    let per_example = ce_b.clone() + mask.clone() * teacher_part;
    let n_teacher = mask.clone().sum().clamp_min(1.0);
    KdLoss {
        total: per_example.mean(),
        ce: ce_b.detach().mean(),
        kl: (kl_b.detach() * mask).sum() / n_teacher,
    }
}

/// The distillation objective `L` of the module docs, shape `[1]`:
/// `lambda * CE + (1 - lambda) * tau^2 * KL` on examples with teacher logits, plain CE on
/// the others, averaged over the batch.
pub fn kd_loss(
    student_logits: Tensor<2>,
    labels: Tensor<1, Int>,
    teacher_logits: Tensor<2>,
    teacher_mask: Tensor<1>,
    lambda: f64,
    tau: f64,
) -> Tensor<1> {
    let config = KdConfig {
        lambda,
        tau,
        kl_reduction: KlReduction::BatchMean,
    };
    kd_loss_parts(
        student_logits,
        labels,
        teacher_logits,
        teacher_mask,
        &config,
    )
    .total
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    const B: usize = 3;
    const C: usize = 4;
    const Y: [f64; B * C] = [
        1.0, -0.5, 2.0, 0.3, //
        -1.2, 0.7, 0.1, 0.0, //
        30.0, -25.0, 4.0, 29.5, // large logits: log-sum-exp must stay finite
    ];
    const T: [f64; B * C] = [
        0.5, 0.2, 1.5, -0.3, //
        2.0, -1.0, 0.0, 0.4, //
        5.0, -3.0, 1.0, 4.0,
    ];
    const LABELS: [i64; B] = [2, 1, 3];

    /// Independent f64 reference: log-sum-exp written out by hand.
    fn log_softmax_ref(z: &[f64]) -> Vec<f64> {
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        z.iter().map(|v| v - lse).collect()
    }

    fn kd_ref(y: &[f64], t: &[f64], labels: &[i64], mask: &[f64], lambda: f64, tau: f64) -> f64 {
        let mut total = 0.0;
        for b in 0..labels.len() {
            let yb = &y[b * C..(b + 1) * C];
            let tb = &t[b * C..(b + 1) * C];
            let ce = -log_softmax_ref(yb)[labels[b] as usize];
            let ys: Vec<f64> = yb.iter().map(|v| v / tau).collect();
            let ts: Vec<f64> = tb.iter().map(|v| v / tau).collect();
            let lq = log_softmax_ref(&ys);
            let lp = log_softmax_ref(&ts);
            let kl: f64 = (0..C).map(|k| lp[k].exp() * (lp[k] - lq[k])).sum();
            total += if mask[b] > 0.5 {
                lambda * ce + (1.0 - lambda) * tau * tau * kl
            } else {
                ce
            };
        }
        total / labels.len() as f64
    }

    fn tensors(
        device: &Device,
        y: &[f64],
        mask: &[f64],
    ) -> (Tensor<2>, Tensor<1, Int>, Tensor<2>, Tensor<1>) {
        let y: Vec<f32> = y.iter().map(|&v| v as f32).collect();
        let t: Vec<f32> = T.iter().map(|&v| v as f32).collect();
        let m: Vec<f32> = mask.iter().map(|&v| v as f32).collect();
        (
            Tensor::<2>::from_data(TensorData::new(y, [B, C]), device),
            Tensor::<1, Int>::from_data(TensorData::new(LABELS.to_vec(), [B]), device),
            Tensor::<2>::from_data(TensorData::new(t, [B, C]), device),
            Tensor::<1>::from_data(TensorData::new(m, [B]), device),
        )
    }

    fn scalar(t: Tensor<1>) -> f64 {
        t.into_scalar::<f32>() as f64
    }

    #[test]
    fn cross_entropy_matches_hand_computed_values() {
        // Row 0 by hand: log(e^1 + e^-0.5 + e^2 + e^0.3) - 2.
        let lse0 = (1f64.exp() + (-0.5f64).exp() + 2f64.exp() + 0.3f64.exp()).ln();
        let ce0 = lse0 - 2.0;
        assert!((ce0 + log_softmax_ref(&Y[0..4])[2]).abs() < 1e-12);
        let device = Device::flex();
        let (y, labels, _, _) = tensors(&device, &Y, &[1.0; B]);
        let per = cross_entropy_per_example(y.clone(), labels.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!((per[0] as f64 - ce0).abs() < 1e-5, "{} vs {ce0}", per[0]);
        for b in 0..B {
            let r = -log_softmax_ref(&Y[b * C..(b + 1) * C])[LABELS[b] as usize];
            assert!(per[b].is_finite());
            assert!(
                (per[b] as f64 - r).abs() < 1e-4,
                "row {b}: {} vs {r}",
                per[b]
            );
        }
        let mean = scalar(cross_entropy(y, labels));
        let r = kd_ref(&Y, &T, &LABELS, &[0.0; B], 0.02, 2.0);
        assert!((mean - r).abs() < 1e-4);
    }

    #[test]
    fn kd_loss_matches_reference_for_all_mask_patterns() {
        let device = Device::flex();
        for mask in [[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]] {
            for (lambda, tau) in [(0.02, 2.0), (0.5, 1.0), (1.0, 3.0)] {
                let (y, l, t, m) = tensors(&device, &Y, &mask);
                let got = scalar(kd_loss(y, l, t, m, lambda, tau));
                let want = kd_ref(&Y, &T, &LABELS, &mask, lambda, tau);
                assert!(
                    (got - want).abs() < 1e-4 * want.abs().max(1.0),
                    "mask {mask:?} lambda {lambda} tau {tau}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn parts_and_element_mean_reduction() {
        let device = Device::flex();
        let mask = [1.0, 0.0, 1.0];
        let (y, l, t, m) = tensors(&device, &Y, &mask);
        let cfg = KdConfig {
            lambda: 0.0,
            tau: 2.0,
            kl_reduction: KlReduction::ElementMean,
        };
        let parts = kd_loss_parts(y, l, t, m, &cfg);
        // Reference KL per example (summed over classes).
        let kl: Vec<f64> = (0..B)
            .map(|b| {
                let ys: Vec<f64> = Y[b * C..(b + 1) * C].iter().map(|v| v / 2.0).collect();
                let ts: Vec<f64> = T[b * C..(b + 1) * C].iter().map(|v| v / 2.0).collect();
                let (lq, lp) = (log_softmax_ref(&ys), log_softmax_ref(&ts));
                (0..C).map(|k| lp[k].exp() * (lp[k] - lq[k])).sum()
            })
            .collect();
        let ce: Vec<f64> = (0..B)
            .map(|b| -log_softmax_ref(&Y[b * C..(b + 1) * C])[LABELS[b] as usize])
            .collect();
        // lambda 0: l_b = 4 * KL_b / C on teacher rows, CE_b on the other.
        let want = (4.0 * kl[0] / C as f64 + ce[1] + 4.0 * kl[2] / C as f64) / 3.0;
        assert!((scalar(parts.total) - want).abs() < 1e-4);
        assert!((scalar(parts.ce) - ce.iter().sum::<f64>() / 3.0).abs() < 1e-4);
        assert!((scalar(parts.kl) - (kl[0] + kl[2]) / 2.0 / C as f64).abs() < 1e-5);
    }

    #[test]
    fn gradient_matches_finite_differences_and_closed_form() {
        let device = Device::flex().autodiff();
        let y_small: [f64; B * C] = [
            0.3, -0.2, 0.8, 0.1, -0.4, 0.6, 0.0, 0.2, 1.0, -1.0, 0.5, 0.7,
        ];
        let mask = [1.0, 0.0, 1.0];
        let (lambda, tau) = (0.3, 2.0);
        let (y, l, t, m) = tensors(&device, &y_small, &mask);
        let y = y.require_grad();
        let loss = kd_loss(y.clone(), l, t, m, lambda, tau);
        let grads = loss.backward();
        let g = y
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let h = 1e-5;
        for i in 0..B * C {
            let mut plus = y_small;
            let mut minus = y_small;
            plus[i] += h;
            minus[i] -= h;
            let fd = (kd_ref(&plus, &T, &LABELS, &mask, lambda, tau)
                - kd_ref(&minus, &T, &LABELS, &mask, lambda, tau))
                / (2.0 * h);
            assert!(
                (g[i] as f64 - fd).abs() < 1e-4,
                "d/dy[{i}]: {} vs {fd}",
                g[i]
            );
            // Closed form: lambda (q1 - e_c)/B + (1-lambda) tau (q_tau - p_tau)/B on teacher rows.
            let (b, k) = (i / C, i % C);
            let row = &y_small[b * C..(b + 1) * C];
            let q1 = log_softmax_ref(row)[k].exp();
            let onehot = if LABELS[b] as usize == k { 1.0 } else { 0.0 };
            let closed = if mask[b] > 0.5 {
                let ys: Vec<f64> = row.iter().map(|v| v / tau).collect();
                let ts: Vec<f64> = T[b * C..(b + 1) * C].iter().map(|v| v / tau).collect();
                let qt = log_softmax_ref(&ys)[k].exp();
                let pt = log_softmax_ref(&ts)[k].exp();
                (lambda * (q1 - onehot) + (1.0 - lambda) * tau * (qt - pt)) / B as f64
            } else {
                (q1 - onehot) / B as f64
            };
            assert!((g[i] as f64 - closed).abs() < 1e-5, "closed form [{i}]");
        }
    }
}
