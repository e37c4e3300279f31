//! Exchanging the two middle axes of a `[B, X, Y, Z]` tensor into a contiguous `[B, Y, X, Z]` one
//! ([`swap_mid()`]), as one op with its backward pass (burn backend extension): the layout changes
//! around the parallel Mamba blocks (feature map `[B, C, H*W]` to tokens `[B, H*W, C]` and back,
//! the tokens' channel groups `[B, L, P, d]` to sequences `[B, P, L, d]` and back).
//!
//! burn expresses them as `swap_dims` + `reshape`, which copies the strided view on the calling
//! thread when the next op needs contiguous memory, and copies the gradient again in the
//! backward pass; here both directions run on the rayon pool ([`asc_kernels::swap_mid`]). The
//! backward pass of the swap is the swap of the gradient the other way.

use asc_kernels::swap_mid::swap_mid as swap_mid_host;
use burn::backend::Dispatch;
use burn::tensor::Tensor;

use super::host::{from_host, host_view, impl_for_cpu_backends, register_host_grads};
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{Backend, TensorMetadata, backend_extension, tensor::FloatTensor};

/// `x.swap_dims(1, 2)` of `x: [B, X, Y, Z]`, made contiguous, as one op on the rayon pool.
pub fn swap_mid(x: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as SwapMidOps>::swap_mid_fused(x.into_dispatch()))
}

/// Backends that can run the fused axis swap.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Autodiff)]
pub trait SwapMidOps: Backend {
    /// `[B, X, Y, Z] -> [B, Y, X, Z]`, contiguous.
    fn swap_mid_fused(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The shape as `[B, X, Y, Z]`.
fn dims4(shape: &[usize]) -> [usize; 4] {
    shape
        .try_into()
        .unwrap_or_else(|_| panic!("swap_mid: a 4-D tensor, got {shape:?}"))
}

impl_for_cpu_backends!(SwapMidOps {
    fn swap_mid_fused(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let (shape, device) = (x.shape().to_vec(), x.device());
        let [b, xn, yn, z] = dims4(&shape);
        let y = swap_mid_host(&host_view::<Self>(&x), [b, xn, yn, z]);
        from_host::<Self>(y, vec![b, yn, xn, z], &device)
    }
});

/// Backward step (parent: the input); the state is the input's shape.
#[derive(Debug)]
struct SwapMidBackward;

impl<B: Backend> Backward<B, 1> for SwapMidBackward {
    type State = [usize; 4];

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<B>(&ops.node);
        let [b, xn, yn, z] = ops.state;
        let device = dy.device();
        // dy is [B, Y, X, Z]; its swap is dx [B, X, Y, Z].
        let dx = swap_mid_host(&host_view::<B>(&dy), [b, yn, xn, z]);
        let [px] = ops.parents.map(|p| p.map(|n| n.id));
        register_host_grads::<B>(grads, &device, [(px, dx, vec![b, xn, yn, z])]);
    }
}

impl<B: Backend + SwapMidOps, C: CheckpointStrategy> SwapMidOps for Autodiff<B, C> {
    fn swap_mid_fused(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = dims4(&x.shape().to_vec());
        let nodes = [x.node()];
        let y = B::swap_mid_fused(x.into_primitive());
        match SwapMidBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(shape, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}
