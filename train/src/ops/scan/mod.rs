//! Mamba's selective scan (the S6 recurrence).
//!
//! `h_t = exp(delta_t * A) ⊙ h_{t-1} + delta_t * B_t * u_t`, `y_t = <h_t, C_t> + D * u_t`,
//! `h_0 = 0` (Gu & Dao 2023, Algorithm 2; `selective_scan_ref` without `z` and `delta_bias`:
//! `delta` is already softplus'ed by the caller).
//!
//! [`selective_scan_naive`] is a per-timestep graph of burn tensor ops (the reference);
//! [`selective_scan`] is the fused kernel ([`asc_kernels::scan`]) with a hand-written backward
//! pass, exposed to burn as the backend extension [`SelectiveScanOps`]: implemented for the CPU
//! backends (Flex; NdArray with the `ndarray` feature) by running the kernel on host `f32`
//! views of the inputs (Flex storage in place), and for `Autodiff<B, C>` by recording one graph
//! node whose backward step runs [`asc_kernels::scan::backward`].

mod naive;
#[cfg(test)]
mod tests;

pub use naive::selective_scan_naive;

use super::host::{from_host, host_view, impl_for_cpu_backends, register_host_grads};
use asc_kernels::scan::{self as kernel, ScanDims};
use burn::backend::Dispatch;
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{Backend, TensorMetadata, backend_extension, tensor::FloatTensor};
use burn::tensor::Tensor;

/// A selective-scan call whose input shapes do not agree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanShapeError {
    /// An input's shape differs from the one implied by `u` and `a`.
    #[error("selective scan: `{input}` has shape {actual:?}, expected {expected:?}")]
    Mismatch {
        /// Name of the offending input (`delta`, `b`, `c`, `d`).
        input: &'static str,
        /// Its shape.
        actual: Vec<usize>,
        /// The shape implied by `u: [batch, d_inner, L]` and `a: [d_inner, d_state]`.
        expected: Vec<usize>,
    },
    /// `d_state` is zero.
    #[error("selective scan: d_state must be positive")]
    EmptyState,
}

/// Checks the shapes of a selective-scan call (see [`selective_scan`]).
pub fn check_scan_shapes(
    u: &Tensor<3>,
    delta: &Tensor<3>,
    a: &Tensor<2>,
    b: &Tensor<3>,
    c: &Tensor<3>,
    d: &Tensor<1>,
) -> Result<(), ScanShapeError> {
    let [batch, d_inner, len] = u.dims();
    let [a_rows, d_state] = a.dims();
    if d_state == 0 {
        return Err(ScanShapeError::EmptyState);
    }
    let checks: [(&'static str, Vec<usize>, Vec<usize>); 5] = [
        ("delta", delta.dims().to_vec(), vec![batch, d_inner, len]),
        ("a", vec![a_rows, d_state], vec![d_inner, d_state]),
        ("b", b.dims().to_vec(), vec![batch, d_state, len]),
        ("c", c.dims().to_vec(), vec![batch, d_state, len]),
        ("d", d.dims().to_vec(), vec![d_inner]),
    ];
    for (input, actual, expected) in checks {
        if actual != expected {
            return Err(ScanShapeError::Mismatch {
                input,
                actual,
                expected,
            });
        }
    }
    Ok(())
}

/// Fused selective scan with a hand-written backward pass; same contract as
/// [`selective_scan_naive`], checked shapes.
///
/// `u`, `delta`: `[batch, d_inner, L]`; `a`: `[d_inner, d_state]` (negative);
/// `b`, `c`: `[batch, d_state, L]`; `d`: `[d_inner]`. Returns `y`: `[batch, d_inner, L]`.
pub fn try_selective_scan(
    u: Tensor<3>,
    delta: Tensor<3>,
    a: Tensor<2>,
    b: Tensor<3>,
    c: Tensor<3>,
    d: Tensor<1>,
) -> Result<Tensor<3>, ScanShapeError> {
    check_scan_shapes(&u, &delta, &a, &b, &c, &d)?;
    let y = <Dispatch as SelectiveScanOps>::selective_scan_fused(
        u.into_dispatch(),
        delta.into_dispatch(),
        a.into_dispatch(),
        b.into_dispatch(),
        c.into_dispatch(),
        d.into_dispatch(),
    );
    Ok(Tensor::from_dispatch(y))
}

/// Fused selective scan (forward and backward in [`asc_kernels::scan`]), differentiable under
/// `device.autodiff()`.
///
/// `u`, `delta`: `[batch, d_inner, L]`; `a`: `[d_inner, d_state]` (`A = -exp(A_log)`);
/// `b`, `c`: `[batch, d_state, L]`; `d`: `[d_inner]`. Returns `y`: `[batch, d_inner, L]`.
///
/// # Panics
/// On inconsistent shapes, like burn's own tensor ops; use [`try_selective_scan`] for a typed
/// error instead.
pub fn selective_scan(
    u: Tensor<3>,
    delta: Tensor<3>,
    a: Tensor<2>,
    b: Tensor<3>,
    c: Tensor<3>,
    d: Tensor<1>,
) -> Tensor<3> {
    match try_selective_scan(u, delta, a, b, c, d) {
        Ok(y) => y,
        Err(e) => panic!("{e}"),
    }
}

/// Backends that can run the fused selective scan.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Autodiff)]
pub trait SelectiveScanOps: Backend {
    /// Fused forward scan; shapes as in [`selective_scan`] (already validated).
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
    kernel::forward(
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
        let [u, delta, a, b, c, d] = ops.state;
        let dims = dims_of::<B>(&u, &a);
        let device = u.device();
        let ScanDims {
            batch,
            d_inner,
            d_state,
            len,
        } = dims;
        let g = kernel::backward(
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
