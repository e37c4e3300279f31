//! # asc-kernels
//!
//! The CPU kernels of the ASC toolkit, on plain `f32` / `u8` buffers: no tensor type, no graph,
//! no framework. The `train` crate wraps the float kernels as burn backend extensions (forward
//! and hand-written backward); the int8 engine (`asc-int8`) runs the integer and inference
//! kernels.
//!
//! - [`Isa`]: the one instruction-set detection and dispatch table (portable, AVX2, AVX-512,
//!   AVX-512 VNNI): every kernel's entry point picks one `#[target_feature]` instance per call.
//! - [`math`]: `exp`, `2^x`, `ln(1 + e)`, sigmoid, SiLU, softplus, rounding, the multiply-add:
//!   one definition each (scalar, and vector forms where a kernel needs them).
//! - [`lanes`], [`buffer`], [`transpose`], [`gemm`]: partial-sum reductions, output buffers,
//!   tiled transposes, matrix products (the `gemm` crate's kernels and register blocks).
//! - [`scan`]: the selective scan (channel-major forward/backward, the AVX-512 time-major
//!   register scan, the per-step block scan); [`mixer`]: the fused Mamba mixer (training
//!   forward/backward, inference forward).
//! - [`depthwise`], [`batch_norm`], [`layer_norm`], [`max_pool`], [`swap_mid`],
//!   [`scaled_add`]: the other fused training ops (and the engine's LayerNorm and pooling).
//! - [`quant`]: the int8 convolutions, linear layers and adds with fixed-point requantization.

#![warn(missing_docs)]

mod isa;
#[cfg(target_arch = "x86_64")]
mod simd;
#[cfg(test)]
mod test_util;

pub mod batch_norm;
pub mod buffer;
pub mod depthwise;
pub mod gemm;
pub mod lanes;
pub mod layer_norm;
pub mod math;
pub mod max_pool;
pub mod mixer;
pub mod quant;
pub mod scaled_add;
pub mod scan;
pub mod swap_mid;
pub mod transpose;

pub use isa::Isa;
