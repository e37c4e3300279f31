//! Training-mode BatchNorm (+ optional ReLU) kernels over contiguous `f32` buffers: forward with
//! the batch statistics and the hand-written backward pass.
//!
//! Layout: `x`, `y`, `dy`, `dx`: `[batch, C, S]` row-major (`S = H * W`, burn's NCHW flattened);
//! `gamma`, `beta`, `mean`, `var`: `[C]`.
//!
//! Forward (Ioffe & Szegedy 2015, eq. of Algorithm 1), with `N = batch * S` values per channel:
//! `mean_c = (1/N) sum x`, `var_c = (1/N) sum (x - mean_c)^2` (biased, as burn's
//! `batch_norm_train` returns it), `xhat = (x - mean_c) / sqrt(var_c + eps)`,
//! `z = gamma_c xhat + beta_c`, `y = z` or `max(z, 0)`.
//!
//! Backward, with `dz = dy * [z > 0]` when the ReLU is fused (else `dz = dy`):
//! `dbeta_c = sum dz`, `dgamma_c = sum dz xhat`,
//! `dx = gamma_c / (N sqrt(var_c + eps)) * (N dz - dbeta_c - xhat dgamma_c)`.
//!
//! Work is split over channels with rayon; each channel reads its `batch` contiguous rows of
//! length `S`. Sums accumulate per row in `f32` ([`super::lanes`]: 16 partial sums) and across
//! rows in `f64`; the variance is a second, centred pass (no `E[x^2] - E[x]^2` cancellation).
//! `z` is recomputed in the backward pass from `x` and the statistics, so nothing but the
//! forward inputs is kept.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::lanes::{self, LANES};

/// Sizes of one BatchNorm call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnDims {
    /// Batch size.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Values per channel and sample (`H * W`, or 1).
    pub spatial: usize,
}

impl BnDims {
    /// Elements of `x`.
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.spatial
    }

    /// Whether `x` is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values per channel `N = batch * S`.
    pub fn per_channel(&self) -> usize {
        self.batch * self.spatial
    }

    /// Row `b` of channel `c` (start offset of `S` contiguous values).
    fn row(&self, b: usize, c: usize) -> usize {
        (b * self.channels + c) * self.spatial
    }
}

/// Gradients of a scalar loss with respect to the inputs of the BatchNorm.
#[derive(Clone, Debug, PartialEq)]
pub struct BnGrads {
    /// `dL/dx`, `[batch, C, S]`.
    pub dx: Vec<f32>,
    /// `dL/dgamma`, `[C]`.
    pub dgamma: Vec<f32>,
    /// `dL/dbeta`, `[C]`.
    pub dbeta: Vec<f32>,
}

fn check(d: &BnDims, x: &[f32], gamma: &[f32], beta: &[f32]) {
    assert_eq!(x.len(), d.len(), "batch norm: x has the wrong length");
    assert_eq!(
        gamma.len(),
        d.channels,
        "batch norm: gamma has the wrong length"
    );
    assert_eq!(
        beta.len(),
        d.channels,
        "batch norm: beta has the wrong length"
    );
    assert!(d.per_channel() > 0, "batch norm: no values per channel");
}

/// Per-channel batch mean and biased variance of `x`.
pub fn batch_stats(d: BnDims, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let n = d.per_channel() as f64;
    let stats: Vec<(f32, f32)> = (0..d.channels)
        .into_par_iter()
        .map(|c| {
            let rows = (0..d.batch).map(|b| &x[d.row(b, c)..d.row(b, c) + d.spatial]);
            let sum: f64 = rows.clone().map(|r| lanes::sum(r) as f64).sum();
            let mean = (sum / n) as f32;
            let ss: f64 = rows.map(|r| lanes::sum_sq_dev(r, mean) as f64).sum();
            (mean, (ss / n) as f32)
        })
        .collect();
    stats.into_iter().unzip()
}

/// Normalizes `x` with the batch statistics into `y` (ReLU applied when `relu`); returns the
/// batch mean and biased variance per channel.
pub fn forward(
    d: BnDims,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    relu: bool,
    y: &mut [MaybeUninit<f32>],
) -> (Vec<f32>, Vec<f32>) {
    check(&d, x, gamma, beta);
    assert_eq!(y.len(), d.len(), "batch norm: y has the wrong length");
    let (mean, var) = batch_stats(d, x);
    // Per-channel affine map z = scale x + shift.
    let scale: Vec<f32> = (0..d.channels)
        .map(|c| gamma[c] / (var[c] + eps).sqrt())
        .collect();
    let shift: Vec<f32> = (0..d.channels)
        .map(|c| beta[c] - mean[c] * scale[c])
        .collect();
    let s = d.spatial;
    y.par_chunks_mut(s)
        .zip(x.par_chunks(s))
        .enumerate()
        .for_each(|(row, (yr, xr))| {
            let c = row % d.channels;
            let (a, b) = (scale[c], shift[c]);
            if relu {
                for (o, &v) in yr.iter_mut().zip(xr) {
                    o.write((a * v + b).max(0.0));
                }
            } else {
                for (o, &v) in yr.iter_mut().zip(xr) {
                    o.write(a * v + b);
                }
            }
        });
    (mean, var)
}

/// `dz = dy [z > 0]` where the ReLU is fused, else `dy`: a select on values already loaded
/// (no branch, no conditional load), so the loops around it vectorise.
#[inline(always)]
fn relu_grad(relu: bool, z: f32, dy: f32) -> f32 {
    if relu & (z <= 0.0) { 0.0 } else { dy }
}

/// Backward pass: gradients for `x`, `gamma` and `beta` from the forward inputs, the batch
/// statistics the forward returned, and `dy`. `dx` is only computed when `need_dx`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    d: BnDims,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
    relu: bool,
    dy: &[f32],
    need_dx: bool,
) -> BnGrads {
    check(&d, x, gamma, beta);
    assert_eq!(dy.len(), d.len(), "batch norm: dy has the wrong length");
    let s = d.spatial;
    let inv_std: Vec<f32> = var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect();
    // Pass 1 per channel: dbeta = sum dz, dgamma = sum dz xhat.
    let sums: Vec<(f32, f32)> = (0..d.channels)
        .into_par_iter()
        .map(|c| {
            let (m, is, g, bt) = (mean[c], inv_std[c], gamma[c], beta[c]);
            let (mut sb, mut sg) = (0f64, 0f64);
            for b in 0..d.batch {
                let o = d.row(b, c);
                let (xr, dyr) = (&x[o..o + s], &dy[o..o + s]);
                // Sixteen partial sums each (see `lanes`); the tail in one more.
                let (mut rb, mut rg) = ([0f32; LANES], [0f32; LANES]);
                let (xc, dyc) = (xr.chunks_exact(LANES), dyr.chunks_exact(LANES));
                let (mut tb, mut tg) = (0f32, 0f32);
                for (&v, &gy) in xc.remainder().iter().zip(dyc.remainder()) {
                    let xh = (v - m) * is;
                    let dz = relu_grad(relu, g * xh + bt, gy);
                    tb += dz;
                    tg += dz * xh;
                }
                for (xv, gv) in xc.zip(dyc) {
                    for i in 0..LANES {
                        let xh = (xv[i] - m) * is;
                        let dz = relu_grad(relu, g * xh + bt, gv[i]);
                        rb[i] += dz;
                        rg[i] += dz * xh;
                    }
                }
                sb += (lanes::fold(rb) + tb) as f64;
                sg += (lanes::fold(rg) + tg) as f64;
            }
            (sg as f32, sb as f32)
        })
        .collect();
    let (dgamma, dbeta): (Vec<f32>, Vec<f32>) = sums.into_iter().unzip();
    let mut dx = Vec::new();
    if need_dx {
        let n = d.per_channel() as f32;
        // Pass 2: dx = gamma inv_std / N (N dz - dbeta - xhat dgamma).
        let pass2 = |dx: &mut [MaybeUninit<f32>]| {
            dx.par_chunks_mut(s)
                .zip(x.par_chunks(s).zip(dy.par_chunks(s)))
                .enumerate()
                .for_each(|(row, (dxr, (xr, dyr)))| {
                    let c = row % d.channels;
                    let (m, is, g, bt) = (mean[c], inv_std[c], gamma[c], beta[c]);
                    let k = g * is;
                    let (mb, mg) = (dbeta[c] / n, dgamma[c] / n);
                    for ((o, &v), &gy) in dxr.iter_mut().zip(xr).zip(dyr) {
                        let xh = (v - m) * is;
                        let dz = relu_grad(relu, g * xh + bt, gy);
                        o.write(k * (dz - mb - xh * mg));
                    }
                });
        };
        // SAFETY: the rows of `S` values cover `dx` (`len = batch * C * S`), each written.
        dx = unsafe { super::written_by(d.len(), pass2) };
    }
    BnGrads { dx, dgamma, dbeta }
}
