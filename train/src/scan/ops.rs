//! The fused selective scan as a burn backend extension with a hand-written backward pass.
//!
//! [`SelectiveScanOps`] is implemented for the CPU backends (Flex; NdArray with the `ndarray`
//! feature) by running [`super::cpu`] on host `f32` views of the inputs (Flex storage in
//! place), for burn's Cube backend (train's `wgpu`/`cuda` features) by the CubeCL kernels of
//! `crate::gpu::scan`, and for `Autodiff<B, C>` by recording one graph node whose backward step
//! runs [`super::cpu::backward`] (the Cube kernel on a Cube backend).

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

/// Backends that can run the fused selective scan.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Cube: cfg(feature = "cube"), Autodiff)]
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
        host_forward::<Self>([u, delta, a, b, c, d])
    }
});

/// Dimensions of a (validated) scan call from the primitive shapes: `u` is `[B, d_inner, L]`,
/// `a` is `[d_inner, d_state]`.
fn dims_of<B: Backend>(u: &FloatTensor<B>, a: &FloatTensor<B>) -> ScanDims {
    let (su, sa) = (u.shape(), a.shape());
    ScanDims {
        batch: su[0],
        d_inner: su[1],
        d_state: sa[1],
        len: su[2],
    }
}

/// Forward scan on any backend through host buffers: inputs `[u, delta, A, B, C, D]`.
fn host_forward<B: Backend>(inputs: [FloatTensor<B>; 6]) -> FloatTensor<B> {
    let [u, delta, a, b, c, d] = &inputs;
    let dims = dims_of::<B>(u, a);
    let device = u.device();
    let mut y = vec![0.0f32; dims.batch * dims.d_inner * dims.len];
    cpu::forward(
        dims,
        &host_view::<B>(u),
        &host_view::<B>(delta),
        &host_view::<B>(a),
        &host_view::<B>(b),
        &host_view::<B>(c),
        &host_view::<B>(d),
        &mut y,
    );
    from_host::<B>(y, vec![dims.batch, dims.d_inner, dims.len], &device)
}

/// Saved forward inputs (reference-counted primitives, no copies) for the backward step.
type ScanState<B> = [FloatTensor<B>; 6];

/// Backward step of the fused scan (six parents: u, delta, A, B, C, D).
#[derive(Debug)]
struct SelectiveScanBackward;

impl<B: Backend> Backward<B, 6> for SelectiveScanBackward {
    type State = ScanState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 6>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<B>(&ops.node);
        #[cfg(feature = "cube")]
        if let Some(g) = crate::gpu::scan::cube_backward::<B>(&ops.state, &dy) {
            for (parent, g) in ops.parents.into_iter().zip(g) {
                if let Some(p) = parent {
                    grads.register::<B>(p.id, g);
                }
            }
            return;
        }
        let [u, delta, a, b, c, d] = ops.state;
        let dims = dims_of::<B>(&u, &a);
        let device = u.device();
        let ScanDims {
            batch,
            d_inner,
            d_state,
            len,
        } = dims;
        let g = cpu::backward(
            dims,
            &host_view::<B>(&u),
            &host_view::<B>(&delta),
            &host_view::<B>(&a),
            &host_view::<B>(&b),
            &host_view::<B>(&c),
            &host_view::<B>(&d),
            &host_view::<B>(&dy),
        );
        let outs: [(Vec<f32>, Vec<usize>); 6] = [
            (g.du, vec![batch, d_inner, len]),
            (g.ddelta, vec![batch, d_inner, len]),
            (g.da, vec![d_inner, d_state]),
            (g.db, vec![batch, d_state, len]),
            (g.dc, vec![batch, d_state, len]),
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

impl<B: Backend + SelectiveScanOps, C: CheckpointStrategy> SelectiveScanOps for Autodiff<B, C> {
    fn selective_scan_fused(
        u: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let inputs = [u, delta, a, b, c, d];
        let nodes = inputs.each_ref().map(|t| t.node());
        let prims = inputs.map(|t| t.into_primitive());
        let [u, delta, a, b, c, d] = prims.clone();
        let y = B::selective_scan_fused(u, delta, a, b, c, d);
        match SelectiveScanBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(prims, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}
