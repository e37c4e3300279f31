//! Non-overlapping 2-D max pooling (kernel = stride, no padding, floor mode: IRMamba's pooling
//! between the parallel Mamba blocks) as one fused op with a hand-written backward pass (burn
//! backend extension).
//!
//! Under autodiff burn runs its generic 3-D pooling kernel, which writes an `i64` index per
//! output (twice the output's bytes) and scatters the gradient through them into a zeroed
//! input-sized buffer. Here the forward pass writes the maxima only, and the backward pass
//! finds each window's maximum again in the saved input and writes every `dx` value once:
//!
//! `y[b, c, i, j] = max_{p < kh, q < kw} x[b, c, i kh + p, j kw + q]`;
//! `dx = dy[b, c, i, j]` at the first maximum of its window (row-major order, as burn and
//! PyTorch), zero elsewhere, including the rows and columns the windows leave out.

use std::mem::MaybeUninit;

use super::{from_host, host_view, register_host_grads, written_by};
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{Backend, TensorMetadata, backend_extension, tensor::FloatTensor};
use rayon::prelude::*;

/// Planes per rayon task.
const PLANES: usize = 64;

/// Backends that can run the fused max pooling.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Autodiff)]
pub trait MaxPoolOps: Backend {
    /// Max pooling of `x: [B, C, H, W]` with kernel and stride `size` (`size` >= 1, checked
    /// by the caller).
    fn max_pool_fused(x: FloatTensor<Self>, size: [usize; 2]) -> FloatTensor<Self>;
}

/// Sizes of one pooling call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolDims {
    /// `B * C` planes.
    pub planes: usize,
    /// Input height and width.
    pub input: [usize; 2],
    /// Kernel (= stride) height and width.
    pub size: [usize; 2],
}

impl PoolDims {
    /// Output height and width, `floor(input / size)`.
    pub fn output(&self) -> [usize; 2] {
        [self.input[0] / self.size[0], self.input[1] / self.size[1]]
    }

    fn in_plane(&self) -> usize {
        self.input[0] * self.input[1]
    }

    fn out_plane(&self) -> usize {
        let [oh, ow] = self.output();
        oh * ow
    }
}

/// Flat index in the plane and value of the first maximum of output `(i, j)`'s window.
#[inline(always)]
fn window_max(d: &PoolDims, x_p: &[f32], i: usize, j: usize) -> (usize, f32) {
    let ([kh, kw], w) = (d.size, d.input[1]);
    let first = i * kh * w + j * kw;
    let mut best = (first, x_p[first]);
    for p in 0..kh {
        let row = first + p * w;
        for (q, &v) in x_p[row..row + kw].iter().enumerate() {
            if v > best.1 {
                best = (row + q, v);
            }
        }
    }
    best
}

/// Forward pass: `y` `[planes, OH, OW]` from `x` `[planes, H, W]`.
pub fn forward_host(d: PoolDims, x: &[f32]) -> Vec<f32> {
    assert!(d.size[0] > 0 && d.size[1] > 0, "max pool: zero kernel");
    assert_eq!(x.len(), d.planes * d.in_plane(), "max pool: input size");
    let (in_plane, out_plane) = (d.in_plane(), d.out_plane());
    let ow = d.output()[1];
    let fill = |y: &mut [MaybeUninit<f32>]| {
        if out_plane == 0 {
            return;
        }
        y.par_chunks_mut(PLANES * out_plane)
            .zip(x.par_chunks(PLANES * in_plane))
            .for_each(|(yb, xb)| {
                for (y_p, x_p) in yb
                    .chunks_exact_mut(out_plane)
                    .zip(xb.chunks_exact(in_plane))
                {
                    for (o, slot) in y_p.iter_mut().enumerate() {
                        slot.write(window_max(&d, x_p, o / ow, o % ow).1);
                    }
                }
            });
    };
    // SAFETY: every plane task writes each of its `out_plane` outputs.
    unsafe { written_by(d.planes * out_plane, fill) }
}

/// Backward pass: `dx` `[planes, H, W]` of `sum(dy ⊙ y)`.
pub fn backward_host(d: PoolDims, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), d.planes * d.in_plane(), "max pool: input size");
    assert_eq!(
        dy.len(),
        d.planes * d.out_plane(),
        "max pool: output gradient size"
    );
    let (in_plane, out_plane) = (d.in_plane(), d.out_plane());
    let ow = d.output()[1];
    let mut dx = super::zeros_par(x.len());
    if in_plane == 0 || out_plane == 0 {
        return dx;
    }
    dx.par_chunks_mut(PLANES * in_plane)
        .zip(x.par_chunks(PLANES * in_plane))
        .zip(dy.par_chunks(PLANES * out_plane))
        .for_each(|((dxb, xb), dyb)| {
            for ((dx_p, x_p), dy_p) in dxb
                .chunks_exact_mut(in_plane)
                .zip(xb.chunks_exact(in_plane))
                .zip(dyb.chunks_exact(out_plane))
            {
                for (o, &g) in dy_p.iter().enumerate() {
                    dx_p[window_max(&d, x_p, o / ow, o % ow).0] = g;
                }
            }
        });
    dx
}

/// `[B, C, H, W]` of a tensor as pooling sizes.
fn dims_of(shape: &[usize], size: [usize; 2]) -> PoolDims {
    let [b, c, h, w] = shape else {
        panic!("max pool: a 4-D input, got {shape:?}")
    };
    PoolDims {
        planes: b * c,
        input: [*h, *w],
        size,
    }
}

impl_for_cpu_backends!(MaxPoolOps {
    fn max_pool_fused(x: FloatTensor<Self>, size: [usize; 2]) -> FloatTensor<Self> {
        let (shape, device) = (x.shape().to_vec(), x.device());
        let d = dims_of(&shape, size);
        let y = forward_host(d, &host_view::<Self>(&x));
        let [oh, ow] = d.output();
        from_host::<Self>(y, vec![shape[0], shape[1], oh, ow], &device)
    }
});

/// Backward step (parent: `x`); the state is `x` and the pooling size.
#[derive(Debug)]
struct MaxPoolBackward;

impl<B: Backend> Backward<B, 1> for MaxPoolBackward {
    type State = (FloatTensor<B>, [usize; 2]);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<B>(&ops.node);
        let (x, size) = ops.state;
        let (shape, device) = (x.shape().to_vec(), x.device());
        let dx = backward_host(
            dims_of(&shape, size),
            &host_view::<B>(&x),
            &host_view::<B>(&dy),
        );
        let [px] = ops.parents.map(|p| p.map(|n| n.id));
        register_host_grads::<B>(grads, &device, [(px, dx, shape)]);
    }
}

impl<B: Backend + MaxPoolOps, C: CheckpointStrategy> MaxPoolOps for Autodiff<B, C> {
    fn max_pool_fused(x: FloatTensor<Self>, size: [usize; 2]) -> FloatTensor<Self> {
        let nodes = [x.node()];
        let px = x.into_primitive();
        let y = B::max_pool_fused(px.clone(), size);
        match MaxPoolBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((px, size), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}
