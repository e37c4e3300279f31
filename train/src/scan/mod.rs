//! Mamba's selective scan (the S6 recurrence).
//!
//! `h_t = exp(delta_t * A) ⊙ h_{t-1} + delta_t * B_t * u_t`, `y_t = <h_t, C_t> + D * u_t`,
//! `h_0 = 0` (Gu & Dao 2023, Algorithm 2; `selective_scan_ref` without `z` and `delta_bias`:
//! `delta` is already softplus'ed by the caller).
//!
//! [`selective_scan_naive`] is a per-timestep graph of burn tensor ops (the reference);
//! [`selective_scan`] is the fused kernel ([`cpu`]) with a hand-written backward pass, exposed to
//! burn as the backend extension [`SelectiveScanOps`].

pub mod cpu;
mod naive;
mod ops;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
pub(crate) mod time_major;

pub use naive::selective_scan_naive;
pub use ops::SelectiveScanOps;

use burn::backend::Dispatch;
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

/// Fused selective scan (forward and backward in [`cpu`]), differentiable under
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
