//! LayerNorm over the last axis as one fused op with a hand-written backward pass (burn
//! backend extension).
//!
//! Under autodiff burn composes LayerNorm from nine tensor ops (two means, subtract, square,
//! add, sqrt, divide, scale, shift), each a pass over memory on the calling thread, and as many
//! backward steps. Here the forward is one rayon pass over blocks of rows and the backward one
//! more, from the saved input (mean and `1 / std` are recomputed per row):
//!
//! `y = x̂ γ + β` with `x̂ = (x - μ) / sqrt(σ² + ε)` (biased `σ²`, as burn and PyTorch);
//! `dx = (g - mean(g) - x̂ mean(g x̂)) / sqrt(σ² + ε)` with `g = dy γ`;
//! `dγ = Σ dy x̂`, `dβ = Σ dy` over the rows (per-block partial sums, summed in block order).

use std::mem::MaybeUninit;

use super::lanes::{self, LANES};
use super::{from_host, host_view, register_host_grads, written_by};
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{Backend, TensorMetadata, backend_extension, tensor::FloatTensor};
use rayon::prelude::*;

/// Rows per rayon task (and per partial sum of `dγ`, `dβ`).
const ROWS: usize = 256;

/// Backends that can run the fused LayerNorm.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Autodiff)]
pub trait LayerNormOps: Backend {
    /// LayerNorm of `x: [..., C]` with `gamma`, `beta`: `[C]` (shapes already validated).
    fn layer_norm_fused(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
}

/// Mean and `1 / sqrt(var + eps)` of one row (two passes, f32).
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = lanes::sum(x) / n;
    let var = lanes::sum_sq_dev(x, mean) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Forward pass over `x` `[rows, c]`.
pub fn forward_host(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
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
pub fn backward_host(
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

impl_for_cpu_backends!(LayerNormOps {
    fn layer_norm_fused(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let (shape, device) = (x.shape().to_vec(), x.device());
        let y = forward_host(
            &host_view::<Self>(&x),
            &host_view::<Self>(&gamma),
            &host_view::<Self>(&beta),
            epsilon as f32,
        );
        from_host::<Self>(y, shape, &device)
    }
});

/// Backward step (parents: `x`, `gamma`, `beta`); the state is `x`, `gamma` and epsilon.
#[derive(Debug)]
struct LayerNormBackward;

impl<B: Backend> Backward<B, 3> for LayerNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<B>(&ops.node);
        let (x, gamma, eps) = ops.state;
        let (shape, device) = (x.shape().to_vec(), x.device());
        let c = gamma.shape()[0];
        let (dx, dg, db) = backward_host(
            &host_view::<B>(&x),
            &host_view::<B>(&gamma),
            &host_view::<B>(&dy),
            eps as f32,
        );
        let [px, pg, pb] = ops.parents.map(|p| p.map(|n| n.id));
        register_host_grads::<B>(
            grads,
            &device,
            [(px, dx, shape), (pg, dg, vec![c]), (pb, db, vec![c])],
        );
    }
}

impl<B: Backend + LayerNormOps, C: CheckpointStrategy> LayerNormOps for Autodiff<B, C> {
    fn layer_norm_fused(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), gamma.node(), beta.node()];
        let (px, pg, pb) = (
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
        );
        let y = B::layer_norm_fused(px.clone(), pg.clone(), pb, epsilon);
        match LayerNormBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((px, pg, epsilon), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}
