//! Shared-weight products ([`super::matmul_cpu`]) as a burn backend extension with a
//! hand-written backward pass: the pointwise convolutions and the token-major linear layers.
//!
//! Flex runs a batched `matmul` with a broadcast weight by copying operands into contiguous
//! (and, in the backward pass, transposed) buffers on the calling thread; here the transposes
//! are strides of the `gemm` calls and every block runs on the rayon pool.

use super::matmul_cpu::{self as cpu, SharedMatmul};
use super::{from_host, host_view, register_host_grads};
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{Backend, TensorMetadata, backend_extension, tensor::FloatTensor};

/// Backends that can run the shared-weight product.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Autodiff)]
pub trait SharedMatmulOps: Backend {
    /// `Y_c = X_c M` for the blocks of `plan` (sizes already validated); the output has shape
    /// `out_shape` (row-major, `plan`'s `Y` views).
    fn shared_matmul_fused(
        x: FloatTensor<Self>,
        m: FloatTensor<Self>,
        plan: SharedMatmul,
        out_shape: [usize; 3],
    ) -> FloatTensor<Self>;
}

impl_for_cpu_backends!(SharedMatmulOps {
    fn shared_matmul_fused(
        x: FloatTensor<Self>,
        m: FloatTensor<Self>,
        plan: SharedMatmul,
        out_shape: [usize; 3],
    ) -> FloatTensor<Self> {
        let device = x.device();
        let y = cpu::forward(&plan, &host_view::<Self>(&x), &host_view::<Self>(&m));
        from_host::<Self>(y, out_shape.to_vec(), &device)
    }
});

/// Backward step (parents: `x`, `m`); the state is both inputs and the plan.
#[derive(Debug)]
struct SharedMatmulBackward;

impl<B: Backend> Backward<B, 2> for SharedMatmulBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, SharedMatmul);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<B>(&ops.node);
        let (x, m, plan) = ops.state;
        let device = x.device();
        let (sx, sm) = (x.shape().to_vec(), m.shape().to_vec());
        let (dx, dm) = cpu::backward(
            &plan,
            &host_view::<B>(&x),
            &host_view::<B>(&m),
            &host_view::<B>(&dy),
        );
        let [px, pm] = ops.parents.map(|p| p.map(|n| n.id));
        register_host_grads::<B>(grads, &device, [(px, dx, sx), (pm, dm, sm)]);
    }
}

impl<B: Backend + SharedMatmulOps, C: CheckpointStrategy> SharedMatmulOps for Autodiff<B, C> {
    fn shared_matmul_fused(
        x: FloatTensor<Self>,
        m: FloatTensor<Self>,
        plan: SharedMatmul,
        out_shape: [usize; 3],
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), m.node()];
        let (px, pm) = (x.into_primitive(), m.into_primitive());
        let y = B::shared_matmul_fused(px.clone(), pm.clone(), plan, out_shape);
        match SharedMatmulBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((px, pm, plan), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}
