//! Mamba's selective scan (the S6 recurrence).
//!
//! `h_t = exp(delta_t * A) ⊙ h_{t-1} + delta_t * B_t * u_t`, `y_t = <h_t, C_t> + D * u_t`,
//! `h_0 = 0` (Gu & Dao 2023, Algorithm 2; `selective_scan_ref` without `z` and `delta_bias`:
//! `delta` is already softplus'ed by the caller).
//!
//! [`selective_scan_naive`] is a per-timestep graph of burn tensor ops (the reference);
//! [`selective_scan`] is the fused kernel with a hand-written backward pass.

mod naive;

pub use naive::selective_scan_naive;

use burn::tensor::Tensor;

/// Fused selective scan: same contract and shapes as [`selective_scan_naive`].
///
/// `u`, `delta`: `[batch, d_inner, L]`; `a`: `[d_inner, d_state]` (negative);
/// `b`, `c`: `[batch, d_state, L]`; `d`: `[d_inner]`. Returns `y`: `[batch, d_inner, L]`.
pub fn selective_scan(
    u: Tensor<3>,
    delta: Tensor<3>,
    a: Tensor<2>,
    b: Tensor<3>,
    c: Tensor<3>,
    d: Tensor<1>,
) -> Tensor<3> {
    // Temporary: the fused kernel lands in the next commit.
    selective_scan_naive(u, delta, a, b, c, d)
}
