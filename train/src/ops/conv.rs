//! Convolution modules through the fused ops: depthwise and pointwise `Conv2d`s and Mamba's
//! causal `Conv1d` run the direct kernels, any other configuration burn's convolution. The
//! burn module stays the parameter holder (checkpoints, complexity counting and QAT see the
//! same `Conv2d` / `Conv1d`).

use burn::tensor::Tensor;

use super::depthwise::{depthwise_conv1d_causal, depthwise_conv2d};
use super::matmul::pointwise_conv2d;

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
