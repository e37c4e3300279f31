//! SiLU `y = x sigma(x) = x / (1 + e^-x)` and its derivative
//! `dy/dx = sigma(x) (1 + x (1 - sigma(x)))`.

use super::{exp, sigmoid};

/// `silu(x) = x / (1 + e^-x)`.
#[inline(always)]
pub fn silu<const FMA: bool>(x: f32) -> f32 {
    x / (1.0 + exp::<FMA>(-x))
}

/// The derivative of SiLU, `sigma(x) (1 + x (1 - sigma(x)))`.
#[inline(always)]
pub fn silu_grad<const FMA: bool>(x: f32) -> f32 {
    let s = sigmoid::<FMA>(x);
    s * (1.0 + x * (1.0 - s))
}

/// `x / (1 + e^-x)` on 16 lanes: `e^-x` by [`super::exp2_16`] (`x` raised to -86 first, where
/// `|silu| < 1e-35`, so that `1 + e` and its reciprocal stay normal), the reciprocal by
/// `vrcp14ps` and one Newton step (error about 1e-8, below f32 rounding; a division occupies
/// the divider for about 10 cycles per vector).
///
/// # Safety
/// Callers outside AVX-512 F/DQ + FMA code must check that the CPU has them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,fma")]
#[inline]
pub fn silu_16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let one = _mm512_set1_ps(1.0);
    let x = _mm512_max_ps(x, _mm512_set1_ps(-86.0));
    let t = _mm512_mul_ps(x, _mm512_set1_ps(-std::f32::consts::LOG2_E));
    let d = _mm512_add_ps(super::exp2_16(t), one);
    let r = _mm512_rcp14_ps(d);
    let r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, one), r);
    _mm512_mul_ps(x, r)
}

/// `x = silu(x)` in place ([`silu_16`]).
///
/// # Safety
/// The CPU must support AVX-512 F/DQ and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,fma")]
pub unsafe fn silu_avx512(x: &mut [f32]) {
    crate::simd::map_row16(x, &[], |v, _| silu_16(v));
}

/// The Mamba gate `y *= silu(z)` ([`silu_16`]).
///
/// # Safety
/// The CPU must support AVX-512 F/DQ and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,fma")]
pub unsafe fn gate_avx512(y: &mut [f32], z: &[f32]) {
    use std::arch::x86_64::_mm512_mul_ps;
    crate::simd::map_row16(y, z, |yv, zv| _mm512_mul_ps(yv, silu_16(zv)));
}

#[cfg(test)]
mod tests {
    use super::{silu, silu_grad};

    #[test]
    fn matches_f64() {
        // Wide range, including large magnitudes where the naive formulas overflow.
        let mut x = -100.0f32;
        while x < 100.0 {
            let v = x as f64;
            let s = 1.0 / (1.0 + (-v).exp());
            let (want, dwant) = (v * s, s * (1.0 + v * (1.0 - s)));
            for (y, dy) in [
                (silu::<false>(x), silu_grad::<false>(x)),
                (silu::<true>(x), silu_grad::<true>(x)),
            ] {
                assert!(
                    (y as f64 - want).abs() <= 2e-6 * want.abs().max(1.0),
                    "silu({x}) = {y}, ref {want}"
                );
                assert!(
                    (dy as f64 - dwant).abs() <= 1e-5 * dwant.abs().max(1.0),
                    "silu'({x}) = {dy}, ref {dwant}"
                );
            }
            x += 0.0137;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_silu_and_gate_match_f64() {
        if !crate::Isa::Avx512.is_available() {
            return;
        }
        let xs: Vec<f32> = (0..=16_001)
            .map(|i| -80.0 + 160.0 * i as f32 / 16_001.0)
            .collect();
        let (mut si, mut g) = (xs.clone(), vec![3.0f32; xs.len()]);
        // SAFETY: AVX-512 F/DQ (and FMA, part of the level) checked above.
        unsafe {
            super::silu_avx512(&mut si);
            super::gate_avx512(&mut g, &xs);
        }
        for (i, &x) in xs.iter().enumerate() {
            let v = x as f64;
            let silu = v / (1.0 + (-v).exp());
            // 2^(x log2 e) rounds its argument: relative error about 6e-8 |x| on top.
            let close = |got: f32, want: f64| {
                (got as f64 - want).abs() <= (1e-6 + 1e-7 * v.abs()) * want.abs() + 1e-30
            };
            assert!(close(si[i], silu), "silu({x}) = {}, f64 {silu}", si[i]);
            assert!(close(g[i], 3.0 * silu), "3 silu({x}) = {}", g[i]);
        }
        // Far out: finite, with the right limits.
        let mut far = [-1e30f32, -1000.0, -100.0, 100.0, 1000.0, 1e30];
        // SAFETY: as above.
        unsafe { super::silu_avx512(&mut far) };
        for (v, want) in far.iter().zip([0.0, 0.0, 0.0, 100.0, 1000.0, 1e30]) {
            assert!((v - want).abs() <= 1e-20 + 1e-6 * want, "{far:?}");
        }
    }
}
