//! `y = a + s r` for same-shaped `a`, `r` and a learned scalar `s` ([`scaled_add()`]: the
//! parallel Mamba block's skip connection, `mamba(g) + skip_scale g`) as one op on the rayon
//! pool, with its backward pass (burn backend extension; kernels in
//! [`asc_kernels::scaled_add`]).
//!
//! burn runs it as a broadcast multiply and an add on the calling thread, and the backward pass
//! as two more multiplies and a sum; here `y` is one parallel pass, and the backward pass
//! hands `dy` on to `a` unchanged and computes `dr = s dy` and `ds = sum(dy r)` in one parallel
//! pass (per-block partial sums added in block order: deterministic).

use asc_kernels::scaled_add as kernel;
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

/// `a + s r` for `a`, `r` of one shape and a scalar `s: [1]`, as one op on the rayon pool;
/// differentiable in all three.
///
/// # Panics
/// When the shapes of `a` and `r` differ or `s` is not one value.
pub fn scaled_add<const D: usize>(a: Tensor<D>, r: Tensor<D>, s: Tensor<1>) -> Tensor<D> {
    assert_eq!(a.dims(), r.dims(), "scaled add: shapes");
    assert_eq!(s.dims(), [1], "scaled add: the scale is one value");
    Tensor::from_dispatch(<Dispatch as ScaledAddOps>::scaled_add_fused(
        a.into_dispatch(),
        r.into_dispatch(),
        s.into_dispatch(),
    ))
}

/// Backends that can run the fused scaled add.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Autodiff)]
pub trait ScaledAddOps: Backend {
    /// `a + s r` for `a`, `r` of one shape and `s: [1]` (checked by the caller).
    fn scaled_add_fused(
        a: FloatTensor<Self>,
        r: FloatTensor<Self>,
        s: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The scalar of a `[1]` host buffer.
fn scalar(s: &[f32]) -> f32 {
    assert_eq!(s.len(), 1, "scaled add: the scale is one value");
    s[0]
}

impl_for_cpu_backends!(ScaledAddOps {
    fn scaled_add_fused(
        a: FloatTensor<Self>,
        r: FloatTensor<Self>,
        s: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (shape, device) = (a.shape().to_vec(), a.device());
        let y = kernel::forward(
            &host_view::<Self>(&a),
            &host_view::<Self>(&r),
            scalar(&host_view::<Self>(&s)),
        );
        from_host::<Self>(y, shape, &device)
    }
});

/// Backward step (parents: `a`, `r`, `s`); the state is `r` and `s`.
#[derive(Debug)]
struct ScaledAddBackward;

impl<B: Backend> Backward<B, 3> for ScaledAddBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<B>(&ops.node);
        let (r, s) = ops.state;
        let (shape, device) = (r.shape().to_vec(), r.device());
        let [pa, pr, ps] = ops.parents.map(|p| p.map(|n| n.id));
        let (dr, ds) = kernel::backward(
            &host_view::<B>(&r),
            scalar(&host_view::<B>(&s)),
            &host_view::<B>(&dy),
        );
        register_host_grads::<B>(grads, &device, [(pr, dr, shape), (ps, vec![ds], vec![1])]);
        if let Some(id) = pa {
            grads.register::<B>(id, dy);
        }
    }
}

impl<B: Backend + ScaledAddOps, C: CheckpointStrategy> ScaledAddOps for Autodiff<B, C> {
    fn scaled_add_fused(
        a: FloatTensor<Self>,
        r: FloatTensor<Self>,
        s: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let nodes = [a.node(), r.node(), s.node()];
        let (pa, pr, ps) = (a.into_primitive(), r.into_primitive(), s.into_primitive());
        let y = B::scaled_add_fused(pa, pr.clone(), ps.clone());
        match ScaledAddBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((pr, ps), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}
