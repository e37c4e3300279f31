//! The fused selective scan as a burn backend extension with a hand-written backward pass.
//!
//! [`SelectiveScanOps`] is implemented for the CPU backends (Flex; NdArray with the `ndarray`
//! feature) by running [`super::cpu`] on host `f32` views of the inputs (Flex storage in
//! place), and for `Autodiff<B, C>` by recording one graph node whose backward step runs
//! [`super::cpu::backward`].

// burn 0.22 deprecates NdArray; the project still offers it behind the `ndarray` feature.
#![allow(deprecated)]

use super::cpu::{self, ScanDims};
use crate::ops::{from_host, host_view, impl_for_cpu_backends, register_host_grads};
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{Backend, TensorMetadata, backend_extension, tensor::FloatTensor};
use rayon::prelude::*;

/// Backends that can run the fused selective scan.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Autodiff)]
pub trait SelectiveScanOps: Backend {
    /// Fused forward scan; shapes as in [`super::selective_scan`] (already validated).
    fn selective_scan_fused(
        u: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// Fused forward scan on token-major inputs: `u`, `delta`: `[B, L, d_inner]`, `b`, `c`:
    /// `[B, L, d_state]` (the layout of Mamba's linear projections); returns `[B, L, d_inner]`.
    fn selective_scan_tokens_fused(
        u: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

impl_for_cpu_backends!(SelectiveScanOps {
    fn selective_scan_fused(
        u: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        host_forward::<Self>(false, [u, delta, a, b, c, d])
    }

    fn selective_scan_tokens_fused(
        u: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        host_forward::<Self>(true, [u, delta, a, b, c, d])
    }
});

/// Dimensions of a (validated) scan call from the primitive shapes: `u` is `[B, d_inner, L]`,
/// or `[B, L, d_inner]` when `token_major`; `a` is `[d_inner, d_state]`.
fn dims_of<B: Backend>(u: &FloatTensor<B>, a: &FloatTensor<B>, token_major: bool) -> ScanDims {
    let (su, sa) = (u.shape(), a.shape());
    let (d_inner, len) = if token_major {
        (su[2], su[1])
    } else {
        (su[1], su[2])
    };
    ScanDims {
        batch: su[0],
        d_inner,
        d_state: sa[1],
        len,
    }
}

/// Forward scan on any backend through host buffers, for either layout (see
/// [`SelectiveScanBackward`]): inputs `[u, delta, A, B, C, D]`.
fn host_forward<B: Backend>(token_major: bool, inputs: [FloatTensor<B>; 6]) -> FloatTensor<B> {
    let [u, delta, a, b, c, d] = &inputs;
    let dims = dims_of::<B>(u, a, token_major);
    let device = u.device();
    let (di, n) = (dims.d_inner, dims.d_state);
    let to_kernel = |t, width| kernel_layout::<B>(t, dims, width, token_major);
    let mut y = vec![0.0f32; dims.batch * di * dims.len];
    cpu::forward(
        dims,
        &to_kernel(u, di),
        &to_kernel(delta, di),
        &host_view::<B>(a),
        &to_kernel(b, n),
        &to_kernel(c, n),
        &host_view::<B>(d),
        &mut y,
    );
    let (y, shape) = from_kernel(y, dims, di, token_major);
    from_host::<B>(y, shape, &device)
}

/// `src: [batch, rows, cols]` -> `[batch, cols, rows]`, 32 x 32 tiles, parallel over batch.
fn transpose_batched(src: &[f32], batch: usize, rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(src.len(), batch * rows * cols, "transpose: length mismatch");
    const T: usize = 32;
    let mut dst = vec![0.0f32; src.len()];
    let plane = rows * cols;
    if plane == 0 {
        return dst;
    }
    dst.par_chunks_mut(plane)
        .zip(src.par_chunks(plane))
        .for_each(|(d, s)| {
            for r0 in (0..rows).step_by(T) {
                for c0 in (0..cols).step_by(T) {
                    for r in r0..(r0 + T).min(rows) {
                        for c in c0..(c0 + T).min(cols) {
                            d[c * rows + r] = s[r * cols + c];
                        }
                    }
                }
            }
        });
    dst
}

/// Channel-major host copy of a token-major `[B, L, width]` tensor.
fn channel_major<B: Backend>(t: &FloatTensor<B>, dims: ScanDims, width: usize) -> Vec<f32> {
    transpose_batched(&host_view::<B>(t), dims.batch, dims.len, width)
}

/// Saved forward inputs (reference-counted primitives, no copies) for the backward step.
type ScanState<B> = [FloatTensor<B>; 6];

/// Backward step of the fused scan (six parents: u, delta, A, B, C, D), for either layout:
/// `token_major` for `u`, `delta`, `B`, `C`, `y` as `[B, L, width]` (transposed to the kernel's
/// channel-major layout and the gradients back), else channel-major `[B, width, L]`.
#[derive(Debug)]
struct SelectiveScanBackward {
    token_major: bool,
}

impl<B: Backend> Backward<B, 6> for SelectiveScanBackward {
    type State = ScanState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 6>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<B>(&ops.node);
        let [u, delta, a, b, c, d] = ops.state;
        let token_major = self.token_major;
        let dims = dims_of::<B>(&u, &a, token_major);
        let device = u.device();
        let (d_inner, d_state) = (dims.d_inner, dims.d_state);
        // A `[B, *, width]` input in the kernel's channel-major layout, and a channel-major
        // gradient back in the input's layout with its shape.
        let to_kernel = |t, width| kernel_layout::<B>(t, dims, width, token_major);
        let back = |g, width| from_kernel(g, dims, width, token_major);
        let g = cpu::backward(
            dims,
            &to_kernel(&u, d_inner),
            &to_kernel(&delta, d_inner),
            &host_view::<B>(&a),
            &to_kernel(&b, d_state),
            &to_kernel(&c, d_state),
            &host_view::<B>(&d),
            &to_kernel(&dy, d_inner),
        );
        let outs: [(Vec<f32>, Vec<usize>); 6] = [
            back(g.du, d_inner),
            back(g.ddelta, d_inner),
            (g.da, vec![d_inner, d_state]),
            back(g.db, d_state),
            back(g.dc, d_state),
            (g.dd, vec![d_inner]),
        ];
        let ids = ops.parents.map(|p| p.map(|n| n.id));
        register_host_grads::<B>(
            grads,
            &device,
            ids.into_iter()
                .zip(outs)
                .map(|(id, (grad, shape))| (id, grad, shape)),
        );
    }
}

/// A `[B, *, width]` scan input in the kernel's channel-major layout: transposed from
/// token-major, borrowed as it is otherwise.
fn kernel_layout<B: Backend>(
    t: &FloatTensor<B>,
    dims: ScanDims,
    width: usize,
    token_major: bool,
) -> std::borrow::Cow<'_, [f32]> {
    if token_major {
        channel_major::<B>(t, dims, width).into()
    } else {
        host_view::<B>(t)
    }
}

/// A channel-major `[B, width, L]` kernel output back in the inputs' layout, with its shape.
fn from_kernel(
    g: Vec<f32>,
    dims: ScanDims,
    width: usize,
    token_major: bool,
) -> (Vec<f32>, Vec<usize>) {
    let ScanDims { batch, len, .. } = dims;
    if token_major {
        (
            transpose_batched(&g, batch, width, len),
            vec![batch, len, width],
        )
    } else {
        (g, vec![batch, width, len])
    }
}

/// Records one scan node: runs `forward` on the inner primitives of `[u, delta, A, B, C, D]`
/// and, when any input is tracked, keeps them (reference-counted) for `step`'s backward.
fn record_scan<B, C, S>(
    step: S,
    inputs: [FloatTensor<Autodiff<B, C>>; 6],
    forward: impl FnOnce([FloatTensor<B>; 6]) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend,
    C: CheckpointStrategy,
    S: Backward<B, 6, State = ScanState<B>>,
{
    let nodes = inputs.each_ref().map(|t| t.node());
    let prims = inputs.map(|t| t.into_primitive());
    let y = forward(prims.clone());
    match step.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(prims, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

impl<B: Backend + SelectiveScanOps, C: CheckpointStrategy> SelectiveScanOps for Autodiff<B, C> {
    fn selective_scan_fused(
        u: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        record_scan::<B, C, _>(
            SelectiveScanBackward { token_major: false },
            [u, delta, a, b, c, d],
            |[u, delta, a, b, c, d]| B::selective_scan_fused(u, delta, a, b, c, d),
        )
    }

    fn selective_scan_tokens_fused(
        u: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        record_scan::<B, C, _>(
            SelectiveScanBackward { token_major: true },
            [u, delta, a, b, c, d],
            |[u, delta, a, b, c, d]| B::selective_scan_tokens_fused(u, delta, a, b, c, d),
        )
    }
}
