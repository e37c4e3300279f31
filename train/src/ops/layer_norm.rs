//! LayerNorm over the last axis ([`layer_norm()`]) as one fused op with a hand-written backward
//! pass (burn backend extension).
//!
//! Under autodiff burn composes LayerNorm from nine tensor ops (two means, subtract, square,
//! add, sqrt, divide, scale, shift), each a pass over memory on the calling thread, and as many
//! backward steps. Here the forward is one rayon pass over blocks of rows and the backward one
//! more, from the saved input ([`asc_kernels::layer_norm`]: `forward_rows`, `backward_rows`).

use asc_kernels::layer_norm::{backward_rows, forward_rows};
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

/// `norm.forward(x)` for burn's `LayerNorm` over the last axis of `x: [S, L, C]` as one fused
/// op; `epsilon` must be the one `norm` was built with (burn keeps it
/// private); a LayerNorm without bias uses zeros.
pub fn layer_norm(norm: &burn::nn::LayerNorm, epsilon: f64, x: Tensor<3>) -> Tensor<3> {
    let c = x.dims()[2];
    let gamma = norm.gamma.val();
    assert_eq!(gamma.dims(), [c], "layer norm: gamma for {c} features");
    let beta = match &norm.beta {
        Some(b) => b.val(),
        None => Tensor::zeros([c], &x.device()),
    };
    Tensor::from_dispatch(<Dispatch as LayerNormOps>::layer_norm_fused(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    ))
}

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

impl_for_cpu_backends!(LayerNormOps {
    fn layer_norm_fused(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let (shape, device) = (x.shape().to_vec(), x.device());
        let y = forward_rows(
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
        let (dx, dg, db) = backward_rows(
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
