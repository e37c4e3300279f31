//! The integer kernels of the int8 engine: convolutions and linear layers on `u8` codes with
//! `i8` weights, `i32` accumulators and fixed-point requantization ([`requant`]), the residual
//! add ([`add`]). Every instruction set gives bit-identical codes.
//!
//! - [`conv`]: convolution geometry and the direct convolution (integer or float);
//! - [`qconv`]: [`QConvKernel`], a prepared quantized convolution and its dispatch;
//! - [`pointwise`]: its pointwise GEMMs (`pmaddwd` tiles, AVX-512 VNNI);
//! - [`channelwise`]: its depthwise / one-input-channel path over stride-phase planes;
//! - [`requant`]: the fixed-point multiplier [`FixedMul`] and the fused AVX-512 requantization;
//! - [`add`]: the quantized residual add, [`QAddKernel`].

pub mod add;
pub mod channelwise;
pub mod conv;
#[cfg(target_arch = "x86_64")]
pub mod pointwise;
pub mod qconv;
pub mod requant;

pub use add::QAddKernel;
pub use conv::{ConvElem, ConvGeom, conv2d_direct, pad_input};
pub use qconv::QConvKernel;
pub use requant::FixedMul;
