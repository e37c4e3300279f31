//! The fused tensor operations of the models, with hand-written backward passes: one module per
//! op, each holding the op's tensor-level function (checked shapes, typed errors), its burn
//! backend-extension trait, the CPU implementation (host views of the tensors handed to the
//! kernels of [`asc_kernels`]) and the autodiff backward step.
//!
//! - [`depthwise`]: [`depthwise_conv2d`], the 3x3 convolutions of the inverted residual blocks
//!   and the stem; [`depthwise_conv1d_causal`], Mamba's causal depthwise conv1d (direct
//!   kernels instead of burn's im2col convolution, whose backward pass is 6-10x its forward on
//!   the Flex backend).
//! - [`batch_norm`]: [`batch_norm_train`], training-mode BatchNorm (batch statistics) with an
//!   optional fused ReLU, two passes forward and two backward.
//! - [`matmul`]: [`pointwise_conv2d`], [`linear_tokens`]: products with a shared weight matrix
//!   per batch element / sequence on the rayon pool, transposes as strides.
//! - [`mod@layer_norm`]: [`layer_norm()`], LayerNorm over the last axis, one pass each way.
//! - [`mod@max_pool`]: [`max_pool2d`], non-overlapping max pooling without `i64` indices.
//! - [`mod@swap_mid`]: [`swap_mid()`], `[B, X, Y, Z] -> [B, Y, X, Z]` on the rayon pool, the
//!   layout changes around the parallel Mamba blocks.
//! - [`mod@scaled_add`]: [`scaled_add()`], `a + s r` with a learned scalar `s`, the parallel
//!   Mamba blocks' skip connection.
//! - [`scan`]: [`scan::selective_scan`], Mamba's selective scan (and its per-timestep
//!   tensor-op reference).
//! - [`mixer`]: [`mixer::mamba_mixer`], the Mamba mixer between `in_proj` and `out_proj` as
//!   one graph node (and its composed reference).
//! - [`conv`]: [`conv2d_forward`], [`conv1d_causal_forward`]: burn's convolution modules
//!   through the ops above where their configuration allows.
//!
//! The backend extensions are implemented for the CPU backends that run host kernels (Flex;
//! NdArray with the `ndarray` feature) and for `Autodiff<B, C>` over them.

mod host;

// The backend-extension attributes of these modules name burn's deprecated NdArray backend,
// which the project still offers behind the `ndarray` feature.
#[allow(deprecated)]
pub mod batch_norm;
pub mod conv;
#[allow(deprecated)]
pub mod depthwise;
#[allow(deprecated)]
pub mod layer_norm;
#[allow(deprecated)]
pub mod matmul;
#[allow(deprecated)]
pub mod max_pool;
#[allow(deprecated)]
pub mod mixer;
#[allow(deprecated)]
pub mod scaled_add;
#[allow(deprecated)]
pub mod scan;
#[allow(deprecated)]
pub mod swap_mid;
#[cfg(test)]
mod tests;

pub use batch_norm::{BatchNormOps, batch_norm_train};
pub use conv::{conv1d_causal_forward, conv2d_forward};
pub use depthwise::{
    DepthwiseConvOps, DepthwiseError, depthwise_conv1d_causal, depthwise_conv1d_causal_reference,
    depthwise_conv2d, depthwise_conv2d_reference, depthwise_output_size,
    try_depthwise_conv1d_causal, try_depthwise_conv2d,
};
pub use layer_norm::{LayerNormOps, layer_norm};
pub use matmul::{SharedMatmulOps, linear_tokens, pointwise_conv2d};
pub use max_pool::{MaxPoolOps, max_pool2d};
pub use scaled_add::{ScaledAddOps, scaled_add};
pub use swap_mid::{SwapMidOps, swap_mid};
