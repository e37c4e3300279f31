//! The fused Mamba mixer as a burn backend extension with a hand-written backward pass.
//!
//! [`MambaMixerOps`] is implemented for the CPU backends (Flex; NdArray with the `ndarray`
//! feature) by running [`super::cpu`] on host `f32` views of the inputs, and for
//! `Autodiff<B, C>` by recording one graph node (eight parents) whose backward step runs
//! [`super::cpu::backward`] from the inputs and the saved scan output.

// burn 0.22 deprecates NdArray; the project still offers it behind the `ndarray` feature.
#![allow(deprecated)]

use super::cpu::{self, MixerDims, MixerWeights};
use crate::ops::{from_host, host_view, impl_for_cpu_backends, register_host_grads};
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{Backend, TensorMetadata, backend_extension, tensor::FloatTensor};

/// Backends that can run the fused Mamba mixer.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Autodiff)]
pub trait MambaMixerOps: Backend {
    /// Fused mixer forward; shapes as in [`super::mamba_mixer`] (already validated).
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
        (dims, cpu::forward(dims, w, xz, keep_scan))
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
            cpu::backward(dims, w, xz, &host_view::<B>(&y), &host_view::<B>(&dout))
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
