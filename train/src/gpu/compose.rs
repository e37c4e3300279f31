//! The fused ops as compositions of burn's tensor ops: what they run on a Cube device
//! ([`super::on_cube`]). Each is the reference its fused CPU kernel is tested against (burn's
//! grouped convolutions, `batch_norm_train`, `LayerNorm`, `MaxPool2d`, `swap_dims`, ...), so
//! burn's kernels compute it and burn's autodiff differentiates it.

use burn::tensor::Tensor;
use burn::tensor::activation::{relu, silu, softplus};
use burn::tensor::module::{conv1d, conv2d};
use burn::tensor::ops::ConvOptions;

use crate::mixer::MixerParams;

/// [`crate::ops::pointwise_conv2d`]: a 1x1 convolution (stride 1, no padding, one group).
pub fn pointwise_conv2d(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
    conv2d(x, weight, bias, ConvOptions::new([1, 1], [0, 0], [1, 1], 1))
}

/// [`crate::ops::max_pool2d`]: burn's `MaxPool2d` with kernel and stride `size`, no padding.
pub fn max_pool2d(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    burn::nn::pool::MaxPool2dConfig::new(size)
        .with_strides(size)
        .init()
        .forward(x)
}

/// [`crate::ops::scaled_add`]: `a + s r` with `s: [1]` broadcast.
pub fn scaled_add<const D: usize>(a: Tensor<D>, r: Tensor<D>, s: Tensor<1>) -> Tensor<D> {
    a + r * s.reshape([1; D])
}

/// [`crate::ops::swap_mid`]: `x.swap_dims(1, 2)` (a strided view; burn copies where needed).
pub fn swap_mid(x: Tensor<4>) -> Tensor<4> {
    x.swap_dims(1, 2)
}

/// [`crate::ops::batch_norm_train`]: burn's `batch_norm_train`, then ReLU when `relu`; the
/// statistics detached.
pub fn batch_norm_train<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    relu_after: bool,
) -> (Tensor<D>, Tensor<1>, Tensor<1>) {
    let r = burn::tensor::module::batch_norm_train(x, gamma, beta, epsilon);
    let y = if relu_after { relu(r.output) } else { r.output };
    (y, r.mean.detach(), r.variance.detach())
}

/// [`crate::mixer::mamba_mixer`] from burn's ops around `scan` (the fused scan: its CubeCL
/// kernel on a Cube device; or the per-timestep reference): grouped causal `conv1d`, SiLU,
/// the `x_proj` / `dt_proj` products, softplus, the scan and the SiLU gate, as in
/// `mamba_simple.Mamba.forward` without `in_proj` / `out_proj`.
pub fn mamba_mixer(
    xz: Tensor<3>,
    p: MixerParams,
    scan: fn(Tensor<3>, Tensor<3>, Tensor<2>, Tensor<3>, Tensor<3>, Tensor<1>) -> Tensor<3>,
) -> Tensor<3> {
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
    let y = scan(u, delta, p.a, b, c, p.d).swap_dims(1, 2);
    y * silu(z)
}
