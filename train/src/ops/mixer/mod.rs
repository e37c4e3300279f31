//! The Mamba mixer (everything between `in_proj` and `out_proj`) as one fused op.
//!
//! For `xz = in_proj(u)` `[S, L, 2 d_inner]` split into `x` and the gate `z`:
//! `u' = SiLU(causal depthwise conv1d(x))`, `dt, B, C = x_proj(u')`,
//! `delta = softplus(dt_proj(dt))`, `y = selective_scan(u', delta, A, B, C, D)` and the output
//! `y * SiLU(z)` (Gu & Dao 2023, `mamba_simple.Mamba.forward` without `in_proj`/`out_proj`).
//!
//! [`mamba_mixer_reference`] composes it from burn's own ops and the per-timestep scan (the
//! oracle of the tests); [`mamba_mixer`] is one graph node ([`asc_kernels::mixer::training`],
//! [`MambaMixerOps`]) that
//! replaces the dozen nodes and the ten `[S, L, d_inner]`-sized activations (and their
//! transposes) of the composed graph: each sequence runs in one rayon task, channel-major, in
//! cache, forward and backward.

#[cfg(test)]
mod tests;

use super::host::{from_host, host_view, impl_for_cpu_backends, register_host_grads};
use asc_kernels::mixer::training::{self as kernel, MixerDims, MixerWeights};
use burn::backend::Dispatch;
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{Backend, TensorMetadata, backend_extension, tensor::FloatTensor};
use burn::tensor::Tensor;
use burn::tensor::activation::{silu, softplus};
use burn::tensor::module::conv1d;
use burn::tensor::ops::ConvOptions;

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
        let dims = MixerDims {
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
        for ((input, actual), expected) in kernel::INPUTS.into_iter().zip(actual).zip(dims.shapes())
        {
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
/// and the per-timestep [`super::scan::selective_scan_naive`]: the reference of the tests
/// (slow; short sequences only).
pub fn mamba_mixer_reference(xz: Tensor<3>, p: MixerParams) -> Tensor<3> {
    let (di, n, r, k) = p.check(&xz).unwrap_or_else(|e| panic!("{e}"));
    let x = xz.clone().narrow(2, 0, di).swap_dims(1, 2); // [S, di, L]
    let z = xz.narrow(2, di, di);
    let len = x.dims()[2];
    let x = conv1d(
        x,
        p.conv_w,
        Some(p.conv_b),
        ConvOptions::new_with_padding([1], [(k - 1, 0)], [1], di),
    )
    .narrow(2, 0, len);
    let u = silu(x); // [S, di, L]
    let proj = u
        .clone()
        .swap_dims(1, 2)
        .matmul(p.x_proj.unsqueeze_dim::<3>(0)); // [S, L, R + 2N]
    let dt = proj.clone().narrow(2, 0, r);
    let b = proj.clone().narrow(2, r, n).swap_dims(1, 2); // [S, N, L]
    let c = proj.narrow(2, r + n, n).swap_dims(1, 2);
    let dtp = dt.matmul(p.dt_proj.unsqueeze_dim::<3>(0)) + p.dt_b.reshape([1, 1, di]);
    let delta = softplus(dtp, 1.0).swap_dims(1, 2); // [S, di, L]
    let y = super::scan::selective_scan_naive(u, delta, p.a, b, c, p.d).swap_dims(1, 2);
    y * silu(z)
}

/// Backends that can run the fused Mamba mixer.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Autodiff)]
pub trait MambaMixerOps: Backend {
    /// Fused mixer forward; shapes as in [`mamba_mixer`] (already validated).
    #[allow(clippy::too_many_arguments)]
    fn mamba_mixer_fused(
        xz: FloatTensor<Self>,
        conv_w: FloatTensor<Self>,
        conv_b: FloatTensor<Self>,
        x_proj: FloatTensor<Self>,
        dt_proj: FloatTensor<Self>,
        dt_b: FloatTensor<Self>,
        a: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

impl_for_cpu_backends!(MambaMixerOps {
    fn mamba_mixer_fused(
        xz: FloatTensor<Self>,
        conv_w: FloatTensor<Self>,
        conv_b: FloatTensor<Self>,
        x_proj: FloatTensor<Self>,
        dt_proj: FloatTensor<Self>,
        dt_b: FloatTensor<Self>,
        a: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        host_forward::<Self>(&[xz, conv_w, conv_b, x_proj, dt_proj, dt_b, a, d], false).0
    }
});

/// The eight inputs `[xz, conv_w, conv_b, x_proj, dt_proj, dt_b, A, D]`.
type Inputs<B> = [FloatTensor<B>; 8];

/// Dimensions of a (validated) call from the primitive shapes.
fn dims_of<B: Backend>(inputs: &Inputs<B>) -> MixerDims {
    let [xz, conv_w, _, _, dt_proj, _, a, _] = inputs;
    let (sx, sw, sr, sa) = (xz.shape(), conv_w.shape(), dt_proj.shape(), a.shape());
    MixerDims {
        seqs: sx[0],
        len: sx[1],
        d_inner: sa[0],
        d_state: sa[1],
        dt_rank: sr[0],
        d_conv: sw[2],
    }
}

/// Runs `f` on host views of the inputs (Flex storage borrowed in place).
fn with_host<B: Backend, T>(
    inputs: &Inputs<B>,
    f: impl FnOnce(MixerDims, &MixerWeights, &[f32]) -> T,
) -> T {
    let dims = dims_of::<B>(inputs);
    let [xz, conv_w, conv_b, x_proj, dt_proj, dt_b, a, d] = inputs.each_ref().map(host_view::<B>);
    let w = MixerWeights {
        conv_w: &conv_w,
        conv_b: &conv_b,
        x_proj: &x_proj,
        dt_proj: &dt_proj,
        dt_b: &dt_b,
        a: &a,
        d: &d,
    };
    f(dims, &w, &xz)
}

/// Forward pass through host buffers: the output `[S, L, d_inner]` and, when `keep_scan`,
/// the saved scan output `[S, L, d_inner]` for the backward step.
fn host_forward<B: Backend>(
    inputs: &Inputs<B>,
    keep_scan: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let device = inputs[0].device();
    let (dims, (out, y)) = with_host::<B, _>(inputs, |dims, w, xz| {
        (dims, kernel::forward(dims, w, xz, keep_scan))
    });
    (
        from_host::<B>(out, vec![dims.seqs, dims.len, dims.d_inner], &device),
        y.map(|y| from_host::<B>(y, vec![dims.seqs, dims.len, dims.d_inner], &device)),
    )
}

/// Backward step of the fused mixer; the state is the inputs and the saved scan output.
#[derive(Debug)]
struct MambaMixerBackward;

impl<B: Backend> Backward<B, 8> for MambaMixerBackward {
    type State = (Inputs<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 8>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dout = grads.consume::<B>(&ops.node);
        let (inputs, y) = ops.state;
        let device = dout.device();
        let shapes = inputs.each_ref().map(|t| t.shape().to_vec());
        let g = with_host::<B, _>(&inputs, |dims, w, xz| {
            kernel::backward(dims, w, xz, &host_view::<B>(&y), &host_view::<B>(&dout))
        });
        let ids = ops.parents.map(|p| p.map(|n| n.id));
        let outs = [
            g.dxz, g.conv_w, g.conv_b, g.x_proj, g.dt_proj, g.dt_b, g.a, g.d,
        ];
        register_host_grads::<B>(
            grads,
            &device,
            ids.into_iter()
                .zip(outs.into_iter().zip(shapes))
                .map(|(id, (grad, shape))| (id, grad, shape)),
        );
    }
}

impl<B: Backend + MambaMixerOps, C: CheckpointStrategy> MambaMixerOps for Autodiff<B, C> {
    fn mamba_mixer_fused(
        xz: FloatTensor<Self>,
        conv_w: FloatTensor<Self>,
        conv_b: FloatTensor<Self>,
        x_proj: FloatTensor<Self>,
        dt_proj: FloatTensor<Self>,
        dt_b: FloatTensor<Self>,
        a: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let inputs = [xz, conv_w, conv_b, x_proj, dt_proj, dt_b, a, d];
        let nodes = inputs.each_ref().map(|t| t.node());
        let prims = inputs.map(|t| t.into_primitive());
        match MambaMixerBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, y) = host_forward::<B>(&prims, true);
                let y = y.expect("forward kept the scan output");
                prep.finish((prims, y), out)
            }
            OpsKind::UnTracked(prep) => {
                let [xz, conv_w, conv_b, x_proj, dt_proj, dt_b, a, d] = prims;
                prep.finish(B::mamba_mixer_fused(
                    xz, conv_w, conv_b, x_proj, dt_proj, dt_b, a, d,
                ))
            }
        }
    }
}
