//! Non-overlapping 2-D max pooling ([`max_pool2d`]: kernel = stride, no padding, floor mode:
//! IRMamba's pooling between the parallel Mamba blocks) as one fused op with a hand-written
//! backward pass (burn backend extension; kernels in [`asc_kernels::max_pool`]).
//!
//! Under autodiff burn runs its generic 3-D pooling kernel, which writes an `i64` index per
//! output (twice the output's bytes) and scatters the gradient through them into a zeroed
//! input-sized buffer. Here the forward pass writes the maxima only, and the backward pass
//! finds each window's maximum again in the saved input and writes every `dx` value once:
//!
//! `y[b, c, i, j] = max_{p < kh, q < kw} x[b, c, i kh + p, j kw + q]`;
//! `dx = dy[b, c, i, j]` at the first maximum of its window (row-major order, as burn and
//! PyTorch), zero elsewhere, including the rows and columns the windows leave out.

use asc_kernels::max_pool::{self as kernel, PoolDims};
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

/// Max pooling of `x: [B, C, H, W]` with kernel and stride `size`, no padding, floor mode, as
/// one fused op; equal to burn's `MaxPool2d` with those settings.
///
/// # Panics
/// When a pooling size is zero.
pub fn max_pool2d(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    assert!(size[0] > 0 && size[1] > 0, "max pool: size {size:?}");
    Tensor::from_dispatch(<Dispatch as MaxPoolOps>::max_pool_fused(
        x.into_dispatch(),
        size,
    ))
}

/// Backends that can run the fused max pooling.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Autodiff)]
pub trait MaxPoolOps: Backend {
    /// Max pooling of `x: [B, C, H, W]` with kernel and stride `size` (`size` >= 1, checked
    /// by the caller).
    fn max_pool_fused(x: FloatTensor<Self>, size: [usize; 2]) -> FloatTensor<Self>;
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
        let y = kernel::forward(d, &host_view::<Self>(&x));
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
        let dx = kernel::backward(
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
