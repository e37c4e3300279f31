//! The multiply-add of the float kernels.

/// `a * b + c`: one fused instruction (one rounding) when `FMA`, else a multiply then an add.
///
/// Callers instantiate `FMA = true` only inside `target_feature(enable = "...fma")` code:
/// without the instruction `f32::mul_add` is a libm call that blocks vectorisation.
#[inline(always)]
pub fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}
