//! Shared-weight products ([`asc_kernels::gemm::SharedMatmul`]) as a burn backend extension
//! with a hand-written backward pass: the pointwise convolutions ([`pointwise_conv2d`]) and the
//! token-major linear layers ([`linear_tokens`]).
//!
//! Flex runs a batched `matmul` with a broadcast weight by copying operands into contiguous
//! (and, in the backward pass, transposed) buffers on the calling thread; here the transposes
//! are strides of the `gemm` calls and every block runs on the rayon pool.

use asc_kernels::gemm::{self as kernel, SharedMatmul};
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

/// Pointwise (1x1, stride 1, unpadded, one group) convolution: `y[b] = W x[b]` with
/// `W: [C_out, C_in]` and `x[b]: [C_in, H W]` (then `+ bias`), one shared-weight product per
/// batch element on the rayon pool ([`asc_kernels::gemm`]), differentiable with a hand-written
/// backward pass (`dx[b] = W^T dy[b]`, `dW = sum_b dy[b] x[b]^T`) that needs no transposed
/// copies.
pub fn pointwise_conv2d(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
    let [b, c_in, h, w] = x.dims();
    let [c_out, w_in, kh, kw] = weight.dims();
    assert!(
        w_in == c_in && [kh, kw] == [1, 1],
        "pointwise conv: weight {:?} for {c_in} input channels",
        weight.dims()
    );
    let plan = SharedMatmul::pointwise(b, c_in, c_out, h * w);
    let y = <Dispatch as SharedMatmulOps>::shared_matmul_fused(
        x.reshape([b, c_in, h * w]).into_dispatch(),
        weight.reshape([c_out, c_in]).into_dispatch(),
        plan,
        [b, c_out, h * w],
    );
    let y = Tensor::<3>::from_dispatch(y);
    let y = match bias {
        Some(bias) => y + bias.reshape([1, c_out, 1]),
        None => y,
    };
    y.reshape([b, c_out, h, w])
}

/// `linear.forward(x)` on token-major `x: [S, L, d_in]`: one shared-weight product per
/// sequence on the rayon pool ([`asc_kernels::gemm`]), differentiable with a hand-written backward
/// pass; equal to burn's `Linear::forward`.
pub fn linear_tokens(linear: &burn::nn::Linear, x: Tensor<3>) -> Tensor<3> {
    let [s, l, d_in] = x.dims();
    let [w_in, d_out] = linear.weight.dims();
    assert_eq!(
        w_in, d_in,
        "linear: weight [{w_in}, {d_out}] for {d_in} input features"
    );
    if s * l == 0 {
        return linear.forward(x);
    }
    let plan = SharedMatmul::rows(s * l, l, d_in, d_out);
    let y = <Dispatch as SharedMatmulOps>::shared_matmul_fused(
        x.into_dispatch(),
        linear.weight.val().into_dispatch(),
        plan,
        [s, l, d_out],
    );
    let y = Tensor::<3>::from_dispatch(y);
    match &linear.bias {
        Some(bias) => y + bias.val().reshape([1, 1, d_out]),
        None => y,
    }
}

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
        let y = kernel::forward(&plan, &host_view::<Self>(&x), &host_view::<Self>(&m));
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
        let (dx, dm) = kernel::backward(
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
