//! Fused tensor operations with hand-written backward passes (burn backend extensions).
//!
//! - [`depthwise_conv2d`]: depthwise 2-D convolution (`groups == C`), the 3x3 convolutions of the
//!   inverted residual blocks and the stem; [`depthwise_conv1d_causal`]: Mamba's causal
//!   depthwise conv1d. Both run the direct kernels of [`depthwise_cpu`] (forward, `dx` by the
//!   transposed stencil, `dw`/`db` as race-free per-channel reductions) instead of burn's
//!   im2col convolution, whose backward pass is 6-10x its forward on the Flex backend.
//! - [`batch_norm_train`]: training-mode BatchNorm (batch statistics) with an optional fused
//!   ReLU, two passes forward and two backward ([`batch_norm_cpu`]) instead of the generic
//!   tensor-op formulation that Flex runs over channel-swapped strided views.
//! - [`pointwise_conv2d`], [`linear_tokens`]: products with a shared weight matrix per batch
//!   element / sequence on the rayon pool ([`matmul_cpu`]), transposes as strides.
//! - [`layer_norm()`]: LayerNorm over the last axis, one pass each way ([`mod@layer_norm`]).
//! - [`max_pool2d`]: non-overlapping max pooling without `i64` indices ([`mod@max_pool`]).
//! - [`swap_mid()`]: `[B, X, Y, Z] -> [B, Y, X, Z]` on the rayon pool ([`mod@swap_mid`]), the
//!   layout changes around the parallel Mamba blocks.
//! - [`scaled_add()`]: `a + s r` with a learned scalar `s` on the rayon pool
//!   ([`mod@scaled_add`]), the parallel Mamba blocks' skip connection.
//! - [`depthwise_conv2d_reference`], [`depthwise_conv1d_causal_reference`]: the same contracts
//!   through burn's grouped `conv2d` / `conv1d` (the reference for the tests).

/// Implements a backend-extension trait for the CPU backends that run host kernels: Flex, and
/// NdArray with the `ndarray` feature. The body (the trait's methods, written against `Self`)
/// is the same for both.
macro_rules! impl_for_cpu_backends {
    ($trait:path { $($body:tt)* }) => {
        impl $trait for burn::backend::Flex {
            $($body)*
        }

        // burn 0.22 deprecates NdArray; the project still offers it behind the `ndarray` feature.
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        impl $trait for burn::backend::NdArray {
            $($body)*
        }
    };
}
pub(crate) use impl_for_cpu_backends;

// The backend-extension attributes of these modules name burn's deprecated NdArray backend,
// which the project still offers behind the `ndarray` feature.
pub mod activation;
#[allow(deprecated)]
mod batch_norm;
pub mod batch_norm_cpu;
#[allow(deprecated)]
mod depthwise;
pub mod depthwise_cpu;
pub mod lanes;
#[allow(deprecated)]
pub mod layer_norm;
#[allow(deprecated)]
mod matmul;
pub mod matmul_cpu;
#[allow(deprecated)]
pub mod max_pool;
#[allow(deprecated)]
pub mod scaled_add;
#[allow(deprecated)]
pub mod swap_mid;
#[cfg(test)]
mod tests;

pub use batch_norm::BatchNormOps;
pub use depthwise::DepthwiseConvOps;
pub use layer_norm::LayerNormOps;
pub use matmul::SharedMatmulOps;
pub use max_pool::MaxPoolOps;
pub use scaled_add::ScaledAddOps;
pub use swap_mid::SwapMidOps;

use std::borrow::Cow;

use burn::backend::{Backend, Dispatch, tensor::FloatTensor};
use burn::tensor::module::{conv1d, conv2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData, read_sync};

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
    if crate::gpu::on_cube(&x.device()) {
        return Ok(depthwise_conv2d_reference(x, weight, bias, stride, padding));
    }
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
    if crate::gpu::on_cube(&x.device()) {
        return Ok(depthwise_conv1d_causal_reference(x, weight, bias));
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

/// Pointwise (1x1, stride 1, unpadded, one group) convolution: `y[b] = W x[b]` with
/// `W: [C_out, C_in]` and `x[b]: [C_in, H W]` (then `+ bias`), one shared-weight product per
/// batch element on the rayon pool ([`matmul_cpu`]), differentiable with a hand-written
/// backward pass (`dx[b] = W^T dy[b]`, `dW = sum_b dy[b] x[b]^T`) that needs no transposed
/// copies.
pub fn pointwise_conv2d(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
    let [b, c_in, h, w] = x.dims();
    let [c_out, w_in, kh, kw] = weight.dims();
    assert!(
        w_in == c_in && [kh, kw] == [1, 1],
        "pointwise conv: weight {:?} for {c_in} input channels",
        weight.dims()
    );
    if crate::gpu::on_cube(&x.device()) {
        return crate::gpu::compose::pointwise_conv2d(x, weight, bias);
    }
    let plan = matmul_cpu::SharedMatmul::pointwise(b, c_in, c_out, h * w);
    let y = <Dispatch as SharedMatmulOps>::shared_matmul_fused(
        x.reshape([b, c_in, h * w]).into_dispatch(),
        weight.reshape([c_out, c_in]).into_dispatch(),
        plan,
        [b, c_out, h * w],
    );
    let y = Tensor::<3>::from_dispatch(y);
    let y = match bias {
        Some(bias) => y + bias.reshape([1, c_out, 1]),
        None => y,
    };
    y.reshape([b, c_out, h, w])
}

/// Max pooling of `x: [B, C, H, W]` with kernel and stride `size`, no padding, floor mode, as
/// one fused op ([`mod@max_pool`]); equal to burn's `MaxPool2d` with those settings.
///
/// # Panics
/// When a pooling size is zero.
pub fn max_pool2d(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    assert!(size[0] > 0 && size[1] > 0, "max pool: size {size:?}");
    if crate::gpu::on_cube(&x.device()) {
        return crate::gpu::compose::max_pool2d(x, size);
    }
    Tensor::from_dispatch(<Dispatch as MaxPoolOps>::max_pool_fused(
        x.into_dispatch(),
        size,
    ))
}

/// `a + s r` for `a`, `r` of one shape and a scalar `s: [1]`, as one op on the rayon pool
/// ([`mod@scaled_add`]); differentiable in all three.
///
/// # Panics
/// When the shapes of `a` and `r` differ or `s` is not one value.
pub fn scaled_add<const D: usize>(a: Tensor<D>, r: Tensor<D>, s: Tensor<1>) -> Tensor<D> {
    assert_eq!(a.dims(), r.dims(), "scaled add: shapes");
    assert_eq!(s.dims(), [1], "scaled add: the scale is one value");
    if crate::gpu::on_cube(&a.device()) {
        return crate::gpu::compose::scaled_add(a, r, s);
    }
    Tensor::from_dispatch(<Dispatch as ScaledAddOps>::scaled_add_fused(
        a.into_dispatch(),
        r.into_dispatch(),
        s.into_dispatch(),
    ))
}

/// `x.swap_dims(1, 2)` of `x: [B, X, Y, Z]`, made contiguous, as one op on the rayon pool
/// ([`mod@swap_mid`]).
pub fn swap_mid(x: Tensor<4>) -> Tensor<4> {
    if crate::gpu::on_cube(&x.device()) {
        return crate::gpu::compose::swap_mid(x);
    }
    Tensor::from_dispatch(<Dispatch as SwapMidOps>::swap_mid_fused(x.into_dispatch()))
}

/// `norm.forward(x)` for burn's `LayerNorm` over the last axis of `x: [S, L, C]` as one fused
/// op ([`mod@layer_norm`]); `epsilon` must be the one `norm` was built with (burn keeps it
/// private); a LayerNorm without bias uses zeros.
pub fn layer_norm(norm: &burn::nn::LayerNorm, epsilon: f64, x: Tensor<3>) -> Tensor<3> {
    if crate::gpu::on_cube(&x.device()) {
        return norm.forward(x);
    }
    let c = x.dims()[2];
    let gamma = norm.gamma.val();
    assert_eq!(gamma.dims(), [c], "layer norm: gamma for {c} features");
    let beta = match &norm.beta {
        Some(b) => b.val(),
        None => Tensor::zeros([c], &x.device()),
    };
    Tensor::from_dispatch(<Dispatch as LayerNormOps>::layer_norm_fused(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    ))
}

/// `linear.forward(x)` on token-major `x: [S, L, d_in]`: one shared-weight product per
/// sequence on the rayon pool ([`matmul_cpu`]), differentiable with a hand-written backward
/// pass; equal to burn's `Linear::forward`.
pub fn linear_tokens(linear: &burn::nn::Linear, x: Tensor<3>) -> Tensor<3> {
    let [s, l, d_in] = x.dims();
    let [w_in, d_out] = linear.weight.dims();
    assert_eq!(
        w_in, d_in,
        "linear: weight [{w_in}, {d_out}] for {d_in} input features"
    );
    if s * l == 0 || crate::gpu::on_cube(&x.device()) {
        return linear.forward(x);
    }
    let plan = matmul_cpu::SharedMatmul::rows(s * l, l, d_in, d_out);
    let y = <Dispatch as SharedMatmulOps>::shared_matmul_fused(
        x.into_dispatch(),
        linear.weight.val().into_dispatch(),
        plan,
        [s, l, d_out],
    );
    let y = Tensor::<3>::from_dispatch(y);
    match &linear.bias {
        Some(bias) => y + bias.val().reshape([1, 1, d_out]),
        None => y,
    }
}

/// `conv.forward(x)`, through [`depthwise_conv2d`] when `conv` is a depthwise convolution
/// (`groups == C_in`, `C_out` a multiple of it, dilation 1, symmetric explicit padding), through
/// [`pointwise_conv2d`] when it is a plain 1x1 convolution (stride 1, no padding), and through
/// burn's convolution otherwise. The module stays the parameter holder (checkpoints,
/// complexity counting and QAT see the same `Conv2d`).
pub fn conv2d_forward(conv: &burn::nn::conv::Conv2d, x: Tensor<4>) -> Tensor<4> {
    use burn::nn::PaddingConfig2d;
    let [c_out, c_per_group, kh, kw] = conv.weight.dims();
    // One input channel per group: depthwise, with a channel multiplier `c_out / groups`
    // (the stem's first conv, 1 -> c1, is such a conv with one group).
    let c_in = x.dims()[1];
    let depthwise = c_per_group == 1
        && conv.groups == c_in
        && c_out.is_multiple_of(c_in.max(1))
        && conv.dilation == [1, 1];
    let pointwise = [kh, kw] == [1, 1]
        && conv.groups == 1
        && conv.stride == [1, 1]
        && matches!(
            conv.padding,
            PaddingConfig2d::Valid | PaddingConfig2d::Same | PaddingConfig2d::Explicit(0, 0, 0, 0)
        );
    if pointwise {
        return pointwise_conv2d(x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()));
    }
    match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right)
            if depthwise && top == bottom && left == right =>
        {
            depthwise_conv2d(
                x,
                conv.weight.val(),
                conv.bias.as_ref().map(|b| b.val()),
                conv.stride,
                [top, left],
            )
        }
        _ => conv.forward(x),
    }
}

/// `conv.forward(x)` for Mamba's causal depthwise `conv1d` (`groups == C`, stride 1, dilation 1,
/// padding `(k - 1, 0)`) through [`depthwise_conv1d_causal`]; any other configuration goes
/// through burn's convolution.
pub fn conv1d_causal_forward(conv: &burn::nn::conv::Conv1d, x: Tensor<3>) -> Tensor<3> {
    use burn::nn::PaddingConfig1d;
    let [c_out, c_per_group, k] = conv.weight.dims();
    let causal = c_per_group == 1
        && conv.groups == c_out
        && x.dims()[1] == c_out
        && conv.stride == 1
        && conv.dilation == 1
        && k >= 1
        && conv.padding == PaddingConfig1d::Explicit(k.saturating_sub(1), 0);
    if causal {
        depthwise_conv1d_causal(x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()))
    } else {
        conv.forward(x)
    }
}

/// Contiguous row-major `f32` view of a backend tensor for the host kernels: Flex's storage is
/// borrowed in place when it is contiguous `f32` (no copy); anything else is read back.
pub(crate) fn host_view<B: Backend>(t: &FloatTensor<B>) -> Cow<'_, [f32]> {
    let any: &dyn std::any::Any = t;
    if let Some(s) = any
        .downcast_ref::<FloatTensor<burn::backend::Flex>>()
        .and_then(|f| f.as_slice::<f32>())
    {
        return Cow::Borrowed(s);
    }
    let data = read_sync(B::float_into_data(t.clone()))
        .expect("fused op: reading a tensor back to the host failed");
    Cow::Owned(
        data.try_into_vec_as::<f32>()
            .expect("fused op: tensor data is not convertible to f32"),
    )
}

/// A zero-filled buffer of `n` floats, written on the rayon pool.
///
/// The fused ops' outputs and gradients are activation-sized (up to 32 MB at batch 64); a
/// serial `vec![0.0; n]` over reused heap memory (see [`crate::backend::keep_freed_buffers`])
/// is a `memset` on the calling thread while the pool waits: 6 % of a training step in `perf`.
pub(crate) fn zeros_par(n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()
        .par_chunks_mut(1 << 15)
        .for_each(|c| c.fill(std::mem::MaybeUninit::new(0.0f32)));
    // SAFETY: the loop above initialised all `n` elements of the capacity.
    unsafe { v.set_len(n) };
    v
}

/// A buffer of `n` floats that `fill` writes on the vector's spare capacity: no zero-fill
/// first (which was 7 % of a training step in `perf`, one more pass over every output).
///
/// # Safety
/// `fill` must initialise every element of the slice it is given.
pub(crate) unsafe fn written_by(
    n: usize,
    fill: impl FnOnce(&mut [std::mem::MaybeUninit<f32>]),
) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: the caller guarantees that `fill` initialised all `n` elements.
    unsafe { v.set_len(n) };
    v
}

/// Wraps a host buffer (moved, not copied, on Flex) as a float tensor of `shape`.
pub(crate) fn from_host<B: Backend>(
    v: Vec<f32>,
    shape: Vec<usize>,
    device: &B::Device,
) -> FloatTensor<B> {
    B::float_from_data(TensorData::new(v, shape), device)
}

/// The last step of a fused op's backward: registers each tracked parent's host gradient
/// (`None`: the parent is not tracked) as a tensor of its shape on `device`.
pub(crate) fn register_host_grads<B: Backend>(
    grads: &mut burn::backend::autodiff::grads::Gradients,
    device: &B::Device,
    outs: impl IntoIterator<
        Item = (
            Option<burn::backend::autodiff::NodeId>,
            Vec<f32>,
            Vec<usize>,
        ),
    >,
) {
    for (id, grad, shape) in outs {
        if let Some(id) = id {
            grads.register::<B>(id, from_host::<B>(grad, shape, device));
        }
    }
}

/// Training-mode BatchNorm over the channel axis of `x: [B, C, ...]` with the batch's own
/// statistics, then ReLU when `relu`; differentiable for `x`, `gamma` and `beta` under
/// autodiff (one graph node, hand-written backward).
///
/// Returns `(y, mean, variance)`: the batch mean and the biased batch variance per channel,
/// detached, for the running statistics (the contract of burn's `batch_norm_train`).
pub fn batch_norm_train<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    relu: bool,
) -> (Tensor<D>, Tensor<1>, Tensor<1>) {
    if crate::gpu::on_cube(&x.device()) {
        return crate::gpu::compose::batch_norm_train(x, gamma, beta, epsilon, relu);
    }
    let (y, mean, var) = <Dispatch as BatchNormOps>::batch_norm_train_fused(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
        relu,
    );
    (
        Tensor::from_dispatch(y),
        Tensor::from_dispatch(mean),
        Tensor::from_dispatch(var),
    )
}
