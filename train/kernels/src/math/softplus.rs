//! Softplus `y = ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|)` (accurate for large `|x|` too,
//! where PyTorch switches to `x` above 20); its derivative is [`super::sigmoid`].

use super::{exp, ln_1p_unit};

/// `softplus(x) = max(x, 0) + ln(1 + e^-|x|)`.
#[inline(always)]
pub fn softplus<const FMA: bool>(x: f32) -> f32 {
    x.max(0.0) + ln_1p_unit::<FMA>(exp::<FMA>(-x.abs()))
}

/// [`softplus`] on 16 lanes: `e^-|x|` by [`super::exp2_16`], `ln(1 + e) = e q(e)` with
/// [`super::LN_1P_POLY`].
///
/// # Safety
/// Callers outside AVX-512 F/DQ + FMA code must check that the CPU has them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,fma")]
#[inline]
pub fn softplus_16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let a = _mm512_abs_ps(x);
    let e = super::exp2_16(_mm512_mul_ps(a, _mm512_set1_ps(-std::f32::consts::LOG2_E)));
    // No closures here (`array::map`): a closure does not inherit the target features, and
    // an out-of-line `map` per call cost a fifth of the mixer.
    let mut q = _mm512_set1_ps(super::LN_1P_POLY[8]);
    for &c in super::LN_1P_POLY[..8].iter().rev() {
        q = _mm512_fmadd_ps(q, e, _mm512_set1_ps(c));
    }
    _mm512_fmadd_ps(e, q, _mm512_max_ps(x, _mm512_setzero_ps()))
}

/// `x = softplus(x)` in place ([`softplus_16`]).
///
/// # Safety
/// The CPU must support AVX-512 F/DQ and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,fma")]
pub unsafe fn softplus_avx512(x: &mut [f32]) {
    crate::simd::map_row16(x, &[], |v, _| softplus_16(v));
}

#[cfg(test)]
mod tests {
    use super::softplus;

    #[test]
    fn matches_f64_within_a_few_ulp() {
        for i in 0..20_000 {
            let x = -87.0 + 175.0 * i as f32 / 20_000.0;
            // Relative, also far left where softplus(x) ~ e^x is tiny.
            let want = (x as f64).exp().ln_1p();
            for sp in [softplus::<false>(x), softplus::<true>(x)] {
                assert!(
                    ((sp as f64 - want) / want).abs() < 1e-6,
                    "softplus({x}) = {sp}, ref {want}"
                );
            }
        }
        for x in [-100.0f32, 30.0, 100.0] {
            let want = (x as f64).max(0.0) + (-(x as f64).abs()).exp().ln_1p();
            assert!(
                (softplus::<false>(x) as f64 - want).abs() <= 1e-5 * want.max(1.0),
                "{x}"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_softplus_matches_f64() {
        if !crate::Isa::Avx512.is_available() {
            return;
        }
        let xs: Vec<f32> = (0..=16_001)
            .map(|i| -80.0 + 160.0 * i as f32 / 16_001.0)
            .collect();
        let mut sp = xs.clone();
        // SAFETY: AVX-512 F/DQ (and FMA, part of the level) checked above.
        unsafe { super::softplus_avx512(&mut sp) };
        for (i, &x) in xs.iter().enumerate() {
            let v = x as f64;
            let want = v.max(0.0) + (-v.abs()).exp().ln_1p();
            let tol = (1e-6 + 1e-7 * v.abs()) * want.abs() + 1e-30;
            assert!(
                (sp[i] as f64 - want).abs() <= tol,
                "softplus({x}) = {}, f64 {want}",
                sp[i]
            );
        }
        let mut far = [-1e30f32, -1000.0, -100.0, 100.0, 1000.0, 1e30];
        // SAFETY: as above.
        unsafe { super::softplus_avx512(&mut far) };
        for (v, want) in far.iter().zip([0.0, 0.0, 0.0, 100.0, 1000.0, 1e30]) {
            assert!((v - want).abs() <= 1e-20 + 1e-6 * want, "{far:?}");
        }
    }
}
