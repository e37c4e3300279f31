//! Depthwise convolution (`groups == C_in`, channel multiplier `C_out / C_in`, dilation 1, zero
//! padding) as a burn backend extension with a hand-written backward pass.
//!
//! [`DepthwiseConvOps`] is implemented for the CPU backends (Flex; NdArray with the `ndarray`
//! feature) by running [`super::depthwise_cpu`] on host `f32` views of the inputs (Flex storage
//! in place), and
//! for `Autodiff<B, C>` by recording one graph node (parents: input, weight, bias) whose
//! backward step runs [`super::depthwise_cpu::backward`].

use super::depthwise_cpu::{self as cpu, DwDims};
use super::{from_host, host_view, register_host_grads};
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{Backend, TensorMetadata, backend_extension, tensor::FloatTensor};

/// Backends that can run the direct depthwise convolution.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Autodiff)]
pub trait DepthwiseConvOps: Backend {
    /// Depthwise convolution of `x: [B, C_in, H, W]` with `weight: [C, 1, kh, kw]` and
    /// `bias: [C]` (`C` a multiple of `C_in`); `pad` is the top/left zero padding and `output`
    /// the output size `[OH, OW]` (shapes already validated by the caller).
    fn depthwise_conv_fused(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: [usize; 2],
        pad: [usize; 2],
        output: [usize; 2],
    ) -> FloatTensor<Self>;
}

impl_for_cpu_backends!(DepthwiseConvOps {
    fn depthwise_conv_fused(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: [usize; 2],
        pad: [usize; 2],
        output: [usize; 2],
    ) -> FloatTensor<Self> {
        host_forward::<Self>(x, weight, bias, stride, pad, output)
    }
});

/// Geometry of one depthwise-convolution call (everything but the primitive shapes).
#[derive(Clone, Copy, Debug)]
struct Geometry {
    stride: [usize; 2],
    pad: [usize; 2],
    output: [usize; 2],
}

fn dims_of<B: Backend>(x: &FloatTensor<B>, w: &FloatTensor<B>, g: Geometry) -> DwDims {
    let (sx, sw) = (x.shape(), w.shape());
    DwDims {
        batch: sx[0],
        channels: sw[0],
        in_channels: sx[1],
        input: [sx[2], sx[3]],
        kernel: [sw[2], sw[3]],
        stride: g.stride,
        pad: g.pad,
        output: g.output,
    }
}

fn host_forward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    stride: [usize; 2],
    pad: [usize; 2],
    output: [usize; 2],
) -> FloatTensor<B> {
    let d = dims_of::<B>(
        &x,
        &weight,
        Geometry {
            stride,
            pad,
            output,
        },
    );
    let device = x.device();
    let mut y = super::zeros_par(d.y_len());
    cpu::forward(
        d,
        &host_view::<B>(&x),
        &host_view::<B>(&weight),
        &host_view::<B>(&bias),
        &mut y,
    );
    from_host::<B>(y, vec![d.batch, d.channels, output[0], output[1]], &device)
}

/// Backward step (three parents: input, weight, bias); the state holds the forward inputs
/// (reference-counted primitives, no copies) and the geometry.
#[derive(Debug)]
struct DepthwiseConvBackward;

impl<B: Backend> Backward<B, 3> for DepthwiseConvBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, Geometry);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<B>(&ops.node);
        let (x, w, b, geo) = ops.state;
        let d = dims_of::<B>(&x, &w, geo);
        let w_shape = w.shape().to_vec();
        let device = x.device();
        let [px, pw, pb] = ops.parents;
        let g = cpu::backward(
            d,
            &host_view::<B>(&x),
            &host_view::<B>(&w),
            &host_view::<B>(&b),
            &host_view::<B>(&dy),
            px.is_some(),
        );
        register_host_grads::<B>(
            grads,
            &device,
            [
                (
                    px.map(|n| n.id),
                    g.dx,
                    vec![d.batch, d.in_channels, d.input[0], d.input[1]],
                ),
                (pw.map(|n| n.id), g.dw, w_shape),
                (pb.map(|n| n.id), g.db, vec![d.channels]),
            ],
        );
    }
}

impl<B: Backend + DepthwiseConvOps, C: CheckpointStrategy> DepthwiseConvOps for Autodiff<B, C> {
    fn depthwise_conv_fused(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: [usize; 2],
        pad: [usize; 2],
        output: [usize; 2],
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), weight.node(), bias.node()];
        let (px, pw, pb) = (
            x.into_primitive(),
            weight.into_primitive(),
            bias.into_primitive(),
        );
        let y = B::depthwise_conv_fused(px.clone(), pw.clone(), pb.clone(), stride, pad, output);
        let geo = Geometry {
            stride,
            pad,
            output,
        };
        match DepthwiseConvBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((px, pw, pb, geo), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}
