//! Reference selective scan: a graph of per-timestep burn tensor ops (Mamba's
//! `selective_scan_ref` without `z` and `delta_bias`). Slow but differentiable by burn's
//! autodiff; it is the oracle for the fused kernel.

use burn::tensor::Tensor;

/// Selective scan (S6 recurrence) as a per-timestep graph of tensor ops.
///
/// Shapes: `u`, `delta`: `[batch, d_inner, L]`; `a`: `[d_inner, d_state]` (already negative,
/// `A = -exp(A_log)`); `b`, `c`: `[batch, d_state, L]`; `d`: `[d_inner]`.
/// Returns `y`: `[batch, d_inner, L]` with, for `h_0 = 0`,
///
/// `h_t = exp(delta_t * A) ⊙ h_{t-1} + delta_t * B_t * u_t`,
/// `y_t = <h_t, C_t> + D * u_t`.
pub fn selective_scan_naive(
    u: Tensor<3>,
    delta: Tensor<3>,
    a: Tensor<2>,
    b: Tensor<3>,
    c: Tensor<3>,
    d: Tensor<1>,
) -> Tensor<3> {
    let [batch, d_inner, len] = u.dims();
    let [_, d_state] = a.dims();
    // Discretisation for all time steps at once: [batch, d_inner, L, d_state].
    let delta_a = (delta.clone().unsqueeze_dim::<4>(3) * a.reshape([1, d_inner, 1, d_state])).exp();
    // delta_t * u_t * B_t: [batch, d_inner, L, 1] * [batch, 1, L, d_state].
    let b_t = b.swap_dims(1, 2).unsqueeze_dim::<4>(1);
    let delta_b_u = (delta * u.clone()).unsqueeze_dim::<4>(3) * b_t;
    let c_t = c.swap_dims(1, 2).unsqueeze_dim::<4>(1); // [batch, 1, L, d_state]

    let mut h: Option<Tensor<4>> = None; // [batch, d_inner, 1, d_state]
    let mut ys = Vec::with_capacity(len);
    for t in 0..len {
        let da_t = delta_a.clone().narrow(2, t, 1);
        let dbu_t = delta_b_u.clone().narrow(2, t, 1);
        let h_t = match h {
            Some(prev) => da_t * prev + dbu_t,
            None => dbu_t,
        };
        let y_t = (h_t.clone() * c_t.clone().narrow(2, t, 1)).sum_dim(3); // [batch, d_inner, 1, 1]
        ys.push(y_t.reshape([batch, d_inner, 1]));
        h = Some(h_t);
    }
    let y = Tensor::cat(ys, 2);
    y + u * d.reshape([1, d_inner, 1])
}
