//! LayerNorm kernels: over the last axis of `[rows, C]` buffers, forward and hand-written
//! backward on the rayon pool (the training op), and over the rows of one channel-major
//! `[C, L]` buffer, forward (the int8 engine's op).
//!
//! `y = x̂ γ + β` with `x̂ = (x - μ) / sqrt(σ² + ε)` (biased `σ²`, as burn and PyTorch);
//! `dx = (g - mean(g) - x̂ mean(g x̂)) / sqrt(σ² + ε)` with `g = dy γ`;
//! `dγ = Σ dy x̂`, `dβ = Σ dy` over the rows (per-block partial sums, summed in block order).
//! The forward pass is one rayon pass over blocks of rows and the backward one more, from the
//! saved input (mean and `1 / std` are recomputed per row).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::buffer::written_by;
use crate::lanes::{self, LANES};

/// Rows per rayon task (and per partial sum of `dγ`, `dβ`).
const ROWS: usize = 256;

/// Mean and `1 / sqrt(var + eps)` of one row (two passes, f32).
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = lanes::sum(x) / n;
    let var = lanes::sum_sq_dev(x, mean) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Forward pass over `x` `[rows, c]`.
pub fn forward_rows(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let c = gamma.len();
    assert!(
        c > 0 && x.len().is_multiple_of(c) && beta.len() == c,
        "layer norm: sizes"
    );
    let rows = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(ROWS * c)
            .zip(x.par_chunks(ROWS * c))
            .for_each(|(yb, xb)| {
                for (yr, xr) in yb.chunks_exact_mut(c).zip(xb.chunks_exact(c)) {
                    let (mean, rstd) = row_stats(xr, eps);
                    for (((o, &v), &g), &b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
                        o.write((v - mean) * rstd * g + b);
                    }
                }
            })
    };
    // SAFETY: `x.len()` is a multiple of `c` (asserted), so the rows of `c` cover `y`.
    unsafe { written_by(x.len(), rows) }
}

/// Backward pass: `(dx, dgamma, dbeta)` of `sum(dy ⊙ y)`.
pub fn backward_rows(
    x: &[f32],
    gamma: &[f32],
    dy: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = gamma.len();
    assert!(
        c > 0 && x.len().is_multiple_of(c) && dy.len() == x.len(),
        "layer norm: sizes"
    );
    let blocks = x.len().div_ceil(ROWS * c);
    let mut dx = Vec::with_capacity(x.len());
    let mut partials = vec![0.0f32; blocks * 2 * c];
    dx.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(ROWS * c)
        .zip(x.par_chunks(ROWS * c).zip(dy.par_chunks(ROWS * c)))
        .zip(partials.par_chunks_mut(2 * c))
        .for_each(|((dxb, (xb, dyb)), part)| {
            let (dg, db) = part.split_at_mut(c);
            for ((dxr, xr), dyr) in dxb
                .chunks_exact_mut(c)
                .zip(xb.chunks_exact(c))
                .zip(dyb.chunks_exact(c))
            {
                let (mean, rstd) = row_stats(xr, eps);
                // Row sums in 16 partial sums (see `lanes`): `sum dy g`, `sum dy g xhat`.
                let (mut sg, mut sgx) = ([0.0f32; LANES], [0.0f32; LANES]);
                for (i, (((&v, &d), &g), (dgv, dbv))) in xr
                    .iter()
                    .zip(dyr)
                    .zip(gamma)
                    .zip(dg.iter_mut().zip(db.iter_mut()))
                    .enumerate()
                {
                    let xh = (v - mean) * rstd;
                    *dgv += d * xh;
                    *dbv += d;
                    sg[i % LANES] += d * g;
                    sgx[i % LANES] += d * g * xh;
                }
                let n = c as f32;
                let (mg, mgx) = (lanes::fold(sg) / n, lanes::fold(sgx) / n);
                for (((o, &v), &d), &g) in dxr.iter_mut().zip(xr).zip(dyr).zip(gamma) {
                    let xh = (v - mean) * rstd;
                    o.write(rstd * (d * g - mg - xh * mgx));
                }
            }
        });
    // SAFETY: the rows of `c` (`x.len()` a multiple of `c`, asserted) cover `dx`, each written.
    unsafe { dx.set_len(x.len()) };
    let mut dgamma = vec![0.0f32; c];
    let mut dbeta = vec![0.0f32; c];
    for part in partials.chunks_exact(2 * c) {
        for (acc, v) in dgamma.iter_mut().zip(&part[..c]) {
            *acc += v;
        }
        for (acc, v) in dbeta.iter_mut().zip(&part[c..]) {
            *acc += v;
        }
    }
    (dx, dgamma, dbeta)
}

/// Float LayerNorm over the rows (channels) of `x` `[C, L]` at every column, vectorized over
/// the columns: `y = (x - mean) / sqrt(var + eps) * gamma + beta`, biased variance.
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn forward_cols(
    x: &[f32],
    y: &mut [f32],
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    let l = x.len() / c;
    let (mean, rstd) = (&mut mean[..l], &mut rstd[..l]);
    mean.fill(0.0);
    for row in x.chunks_exact(l) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    let inv_c = 1.0 / c as f32;
    mean.iter_mut().for_each(|m| *m *= inv_c);
    rstd.fill(0.0);
    for row in x.chunks_exact(l) {
        for ((s, &v), &m) in rstd.iter_mut().zip(row).zip(mean.iter()) {
            let d = v - m;
            *s += d * d;
        }
    }
    rstd.iter_mut()
        .for_each(|s| *s = 1.0 / (*s * inv_c + eps).sqrt());
    for (ch, (yr, xr)) in y.chunks_exact_mut(l).zip(x.chunks_exact(l)).enumerate() {
        let (g, b) = (gamma[ch], beta[ch]);
        for (((o, &v), &m), &r) in yr.iter_mut().zip(xr).zip(mean.iter()).zip(rstd.iter()) {
            *o = (v - m) * r * g + b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::randv;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn layer_norm_matches_naive_per_token() {
        let mut rng = StdRng::seed_from_u64(3);
        let (c, l) = (6, 11);
        let x = randv(&mut rng, c * l, 3.0);
        let (gamma, beta) = (randv(&mut rng, c, 1.0), randv(&mut rng, c, 1.0));
        let mut y = vec![0.0; c * l];
        let (mut m, mut r) = (vec![0.0; l], vec![0.0; l]);
        forward_cols(&x, &mut y, c, &gamma, &beta, 1e-5, &mut m, &mut r);
        for t in 0..l {
            let tok: Vec<f64> = (0..c).map(|ch| x[ch * l + t] as f64).collect();
            let mean = tok.iter().sum::<f64>() / c as f64;
            let var = tok.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
            for ch in 0..c {
                let want =
                    (tok[ch] - mean) / (var + 1e-5).sqrt() * gamma[ch] as f64 + beta[ch] as f64;
                assert!((y[ch * l + t] as f64 - want).abs() < 1e-5);
            }
        }
    }
}
