//! The scalar (and, where a kernel needs it, vector) math of the float kernels: one file per
//! function, each written once, branch-free and without libm calls so that loops over it
//! vectorise.
//!
//! `FMA` parameters select fused multiply-adds ([`madd`]); only code compiled with the `fma`
//! target feature (the [`crate::Isa::Avx2`] and wider instances) instantiates them with
//! `true`. The AVX-512 forms (`*_16`, on `__m512`) evaluate the same formulas on 16 lanes.

mod exp;
mod exp2;
mod ln_1p;
mod madd;
mod round;
mod sigmoid;
mod silu;
mod softplus;

pub use exp::exp;
pub use exp2::{EXP2_POLY, exp2};
pub use ln_1p::{LN_1P_POLY, ln_1p_unit};
pub use madd::madd;
pub use round::{round_even, round_even_i32};
pub use sigmoid::sigmoid;
pub use silu::{silu, silu_grad};
pub use softplus::softplus;

#[cfg(target_arch = "x86_64")]
pub use exp::{exp_8, exp_16};
#[cfg(target_arch = "x86_64")]
pub use exp2::{exp2_8, exp2_16};
#[cfg(target_arch = "x86_64")]
pub use silu::{gate_avx512, silu_16, silu_avx512};
#[cfg(target_arch = "x86_64")]
pub use softplus::{softplus_16, softplus_avx512};
