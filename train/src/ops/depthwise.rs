//! Depthwise convolution (`groups == C_in`, channel multiplier `C_out / C_in`, dilation 1, zero
//! padding): [`depthwise_conv2d`] (the 3x3 convolutions of the inverted residual blocks and
//! the stem) and [`depthwise_conv1d_causal`] (Mamba's causal conv1d), as a burn backend
//! extension with a hand-written backward pass, instead of burn's im2col convolution, whose
//! backward pass is 6-10x its forward on the Flex backend.
//!
//! [`DepthwiseConvOps`] is implemented for the CPU backends (Flex; NdArray with the `ndarray`
//! feature) by running [`asc_kernels::depthwise`] (forward, `dx` by the transposed stencil,
//! `dw`/`db` as race-free per-channel reductions) on host `f32` views of the inputs (Flex
//! storage in place), and for `Autodiff<B, C>` by recording one graph node (parents: input,
//! weight, bias) whose backward step runs [`asc_kernels::depthwise::backward`].
//! [`depthwise_conv2d_reference`] and [`depthwise_conv1d_causal_reference`] are the same
//! contracts through burn's grouped `conv2d` / `conv1d` (the reference of the tests).

use asc_kernels::depthwise::{self as kernel, DwDims};
use burn::backend::Dispatch;
use burn::tensor::Tensor;
use burn::tensor::module::{conv1d, conv2d};
use burn::tensor::ops::ConvOptions;

use super::host::{from_host, host_view, impl_for_cpu_backends, register_host_grads};
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{Backend, TensorMetadata, backend_extension, tensor::FloatTensor};

/// A depthwise-convolution call whose shapes or options do not agree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepthwiseError {
    /// The weight is not `[C, 1, kh, kw]` (resp. `[C, 1, k]`) for an input with `C` channels.
    #[error("depthwise conv: weight shape {weight:?} does not fit {channels} input channels")]
    Weight {
        /// The weight's shape.
        weight: Vec<usize>,
        /// Channels of the input.
        channels: usize,
    },
    /// The bias is not `[C]`.
    #[error("depthwise conv: bias shape {bias:?}, expected [{channels}]")]
    Bias {
        /// The bias's shape.
        bias: Vec<usize>,
        /// Channels of the input.
        channels: usize,
    },
    /// A stride is zero, a kernel dimension is zero, or the kernel is larger than the padded input.
    #[error(
        "depthwise conv: kernel {kernel:?} with stride {stride:?} and padding {padding:?} does not fit input {input:?}"
    )]
    Geometry {
        /// Input `[H, W]`.
        input: [usize; 2],
        /// Kernel `[kh, kw]`.
        kernel: [usize; 2],
        /// Stride.
        stride: [usize; 2],
        /// Symmetric padding.
        padding: [usize; 2],
    },
}

/// Output size of a depthwise 2-D convolution: `(H + 2 p - k) / s + 1` per axis.
pub fn depthwise_output_size(
    input: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<[usize; 2], DepthwiseError> {
    let err = DepthwiseError::Geometry {
        input,
        kernel,
        stride,
        padding,
    };
    let mut out = [0; 2];
    for a in 0..2 {
        let padded = input[a] + 2 * padding[a];
        if stride[a] == 0 || kernel[a] == 0 || kernel[a] > padded {
            return Err(err);
        }
        out[a] = (padded - kernel[a]) / stride[a] + 1;
    }
    Ok(out)
}

/// Checks a depthwise weight `[C_out, 1, ...]` against `channels` input channels (`C_out` a
/// multiple of them when `multiplier`, else equal) and the bias against `[C_out]`.
fn check_params(
    channels: usize,
    weight: &[usize],
    bias: Option<&[usize]>,
    multiplier: bool,
) -> Result<(), DepthwiseError> {
    let fits = |c_out: usize| {
        if multiplier {
            channels > 0 && c_out > 0 && c_out.is_multiple_of(channels)
        } else {
            c_out == channels
        }
    };
    if weight.len() < 3 || !fits(weight[0]) || weight[1] != 1 {
        return Err(DepthwiseError::Weight {
            weight: weight.to_vec(),
            channels,
        });
    }
    if let Some(b) = bias
        && b != [weight[0]]
    {
        return Err(DepthwiseError::Bias {
            bias: b.to_vec(),
            channels: weight[0],
        });
    }
    Ok(())
}

/// Depthwise 2-D convolution with checked shapes; see [`depthwise_conv2d`].
pub fn try_depthwise_conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Tensor<4>, DepthwiseError> {
    let [_, c, h, w] = x.dims();
    let [c_out, _, kh, kw] = weight.dims();
    check_params(
        c,
        &weight.dims(),
        bias.as_ref().map(|b| b.dims()).as_ref().map(|d| &d[..]),
        true,
    )?;
    let output = depthwise_output_size([h, w], [kh, kw], stride, padding)?;
    let bias = bias.unwrap_or_else(|| Tensor::zeros([c_out], &x.device()));
    let y = <Dispatch as DepthwiseConvOps>::depthwise_conv_fused(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        stride,
        padding,
        output,
    );
    Ok(Tensor::from_dispatch(y))
}

/// Depthwise 2-D convolution (`groups == C_in`, channel multiplier `C / C_in`, dilation 1,
/// symmetric zero padding), differentiable under `device.autodiff()` with a hand-written
/// backward pass.
///
/// `x`: `[B, C_in, H, W]`; `weight`: `[C, 1, kh, kw]` (`C` a multiple of `C_in`; output
/// channel `c` filters input channel `c / (C / C_in)`); `bias`: `[C]`. Returns
/// `[B, C, (H + 2 ph - kh) / sh + 1, (W + 2 pw - kw) / sw + 1]`, equal to burn's `conv2d` with
/// `groups = C_in`.
///
/// # Panics
/// On inconsistent shapes, like burn's own tensor ops; [`try_depthwise_conv2d`] returns a typed
/// error instead.
pub fn depthwise_conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Tensor<4> {
    try_depthwise_conv2d(x, weight, bias, stride, padding).unwrap_or_else(|e| panic!("{e}"))
}

/// Causal depthwise 1-D convolution with checked shapes; see [`depthwise_conv1d_causal`].
pub fn try_depthwise_conv1d_causal(
    x: Tensor<3>,
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
) -> Result<Tensor<3>, DepthwiseError> {
    let [b, c, len] = x.dims();
    let [_, _, k] = weight.dims();
    check_params(
        c,
        &weight.dims(),
        bias.as_ref().map(|b| b.dims()).as_ref().map(|d| &d[..]),
        false,
    )?;
    if k == 0 {
        return Err(DepthwiseError::Geometry {
            input: [1, len],
            kernel: [1, k],
            stride: [1, 1],
            padding: [0, 0],
        });
    }
    let bias = bias.unwrap_or_else(|| Tensor::zeros([c], &x.device()));
    // The 2-D kernel with H = 1, left padding k - 1 and the output trimmed to L.
    let y = <Dispatch as DepthwiseConvOps>::depthwise_conv_fused(
        x.reshape([b, c, 1, len]).into_dispatch(),
        weight.reshape([c, 1, 1, k]).into_dispatch(),
        bias.into_dispatch(),
        [1, 1],
        [0, k - 1],
        [1, len],
    );
    Ok(Tensor::<4>::from_dispatch(y).reshape([b, c, len]))
}

/// Causal depthwise 1-D convolution (Mamba's `conv1d`): `y[b, c, t] = bias[c] +
/// sum_j w[c, 0, j] x[b, c, t + j - (k - 1)]` with zeros before `t = 0`; the output keeps the
/// input length `L` (PyTorch's `conv1d(padding = k - 1)[..., :L]`).
///
/// `x`: `[B, C, L]`; `weight`: `[C, 1, k]`; `bias`: `[C]`. Differentiable under autodiff.
///
/// # Panics
/// On inconsistent shapes; [`try_depthwise_conv1d_causal`] returns a typed error instead.
pub fn depthwise_conv1d_causal(
    x: Tensor<3>,
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
) -> Tensor<3> {
    try_depthwise_conv1d_causal(x, weight, bias).unwrap_or_else(|e| panic!("{e}"))
}

/// Reference for [`depthwise_conv2d`]: burn's `conv2d` with `groups = C`.
pub fn depthwise_conv2d_reference(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Tensor<4> {
    let c = x.dims()[1];
    conv2d(
        x,
        weight,
        bias,
        ConvOptions::new(stride, padding, [1, 1], c),
    )
}

/// Reference for [`depthwise_conv1d_causal`]: burn's `conv1d` with `groups = C` and padding
/// `(k - 1, 0)`.
pub fn depthwise_conv1d_causal_reference(
    x: Tensor<3>,
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
) -> Tensor<3> {
    let c = x.dims()[1];
    let k = weight.dims()[2];
    conv1d(
        x,
        weight,
        bias,
        ConvOptions::new_with_padding([1], [(k - 1, 0)], [1], c),
    )
}

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
    let mut y = asc_kernels::buffer::zeros_par(d.y_len());
    kernel::forward(
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
        let g = kernel::backward(
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
