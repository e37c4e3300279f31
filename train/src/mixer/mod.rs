//! The Mamba mixer (everything between `in_proj` and `out_proj`) as one fused op.
//!
//! For `xz = in_proj(u)` `[S, L, 2 d_inner]` split into `x` and the gate `z`:
//! `u' = SiLU(causal depthwise conv1d(x))`, `dt, B, C = x_proj(u')`,
//! `delta = softplus(dt_proj(dt))`, `y = selective_scan(u', delta, A, B, C, D)` and the output
//! `y * SiLU(z)` (Gu & Dao 2023, `mamba_simple.Mamba.forward` without `in_proj`/`out_proj`).
//!
//! [`mamba_mixer_reference`] composes it from burn's own ops and the per-timestep scan (the
//! oracle of the tests); [`mamba_mixer`] is one graph node ([`cpu`], [`MambaMixerOps`]) that
//! replaces the dozen nodes and the ten `[S, L, d_inner]`-sized activations (and their
//! transposes) of the composed graph: each sequence runs in one rayon task, channel-major, in
//! cache, forward and backward.

pub mod cpu;
mod ops;
#[cfg(test)]
mod tests;

pub use ops::MambaMixerOps;

use burn::backend::Dispatch;
use burn::tensor::Tensor;

/// The mixer's parameters as tensors (a [`crate::model::Mamba`]'s, or any others of the same
/// shapes).
#[derive(Clone, Debug)]
pub struct MixerParams {
    /// Causal depthwise conv weight `[d_inner, 1, K]`.
    pub conv_w: Tensor<3>,
    /// Conv bias `[d_inner]`.
    pub conv_b: Tensor<1>,
    /// `x_proj` weight `[d_inner, R + 2N]` (burn's `Linear` layout, `[d_in, d_out]`).
    pub x_proj: Tensor<2>,
    /// `dt_proj` weight `[R, d_inner]`.
    pub dt_proj: Tensor<2>,
    /// `dt_proj` bias `[d_inner]`.
    pub dt_b: Tensor<1>,
    /// `A = -exp(A_log)`, `[d_inner, N]`.
    pub a: Tensor<2>,
    /// Skip `D`, `[d_inner]`.
    pub d: Tensor<1>,
}

/// A mixer call whose shapes do not agree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixerShapeError {
    /// An input's shape differs from the one implied by `xz` and `A`.
    #[error("Mamba mixer: `{input}` has shape {actual:?}, expected {expected:?}")]
    Mismatch {
        /// Name of the offending input.
        input: &'static str,
        /// Its shape.
        actual: Vec<usize>,
        /// The expected shape.
        expected: Vec<usize>,
    },
    /// `d_state`, `dt_rank` or the conv width is zero.
    #[error("Mamba mixer: d_state, dt_rank and the conv width must be positive")]
    Empty,
}

impl MixerParams {
    /// Checks the shapes against `xz: [S, L, 2 d_inner]`; returns `(d_inner, d_state, dt_rank,
    /// d_conv)`.
    pub fn check(&self, xz: &Tensor<3>) -> Result<(usize, usize, usize, usize), MixerShapeError> {
        let [s, l, two_di] = xz.dims();
        let [di, n] = self.a.dims();
        let [r, _] = self.dt_proj.dims();
        let k = self.conv_w.dims()[2];
        if n == 0 || r == 0 || k == 0 {
            return Err(MixerShapeError::Empty);
        }
        let dims = cpu::MixerDims {
            seqs: s,
            len: l,
            d_inner: di,
            d_state: n,
            dt_rank: r,
            d_conv: k,
        };
        let actual = [
            vec![s, l, two_di],
            self.conv_w.dims().to_vec(),
            self.conv_b.dims().to_vec(),
            self.x_proj.dims().to_vec(),
            self.dt_proj.dims().to_vec(),
            self.dt_b.dims().to_vec(),
            self.a.dims().to_vec(),
            self.d.dims().to_vec(),
        ];
        for ((input, actual), expected) in cpu::INPUTS.into_iter().zip(actual).zip(dims.shapes()) {
            if actual != expected {
                return Err(MixerShapeError::Mismatch {
                    input,
                    actual,
                    expected,
                });
            }
        }
        Ok((di, n, r, k))
    }
}

/// Fused Mamba mixer with checked shapes; see [`mamba_mixer`].
pub fn try_mamba_mixer(xz: Tensor<3>, p: MixerParams) -> Result<Tensor<3>, MixerShapeError> {
    p.check(&xz)?;
    if crate::gpu::on_cube(&xz.device()) {
        return Ok(crate::gpu::compose::mamba_mixer(
            xz,
            p,
            crate::scan::selective_scan,
        ));
    }
    let y = <Dispatch as MambaMixerOps>::mamba_mixer_fused(
        xz.into_dispatch(),
        p.conv_w.into_dispatch(),
        p.conv_b.into_dispatch(),
        p.x_proj.into_dispatch(),
        p.dt_proj.into_dispatch(),
        p.dt_b.into_dispatch(),
        p.a.into_dispatch(),
        p.d.into_dispatch(),
    );
    Ok(Tensor::from_dispatch(y))
}

/// Fused Mamba mixer, differentiable under `device.autodiff()` (one node, hand-written
/// backward): `xz: [S, L, 2 d_inner]` -> `[S, L, d_inner]`, equal to
/// [`mamba_mixer_reference`].
///
/// # Panics
/// On inconsistent shapes, like burn's own tensor ops; [`try_mamba_mixer`] returns a typed error.
pub fn mamba_mixer(xz: Tensor<3>, p: MixerParams) -> Tensor<3> {
    try_mamba_mixer(xz, p).unwrap_or_else(|e| panic!("{e}"))
}

/// The mixer composed from burn's tensor ops (grouped `conv1d`, `silu`, `softplus`, matmuls)
/// and the per-timestep [`crate::scan::selective_scan_naive`]: the reference of the tests
/// (slow; short sequences only).
pub fn mamba_mixer_reference(xz: Tensor<3>, p: MixerParams) -> Tensor<3> {
    crate::gpu::compose::mamba_mixer(xz, p, crate::scan::selective_scan_naive)
}
