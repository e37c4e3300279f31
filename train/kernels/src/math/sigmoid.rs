//! The logistic function.

use super::exp;

/// `sigma(x) = 1 / (1 + e^-x)` (SiLU's derivative factor, softplus' derivative).
#[inline(always)]
pub fn sigmoid<const FMA: bool>(x: f32) -> f32 {
    1.0 / (1.0 + exp::<FMA>(-x))
}
