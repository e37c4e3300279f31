//! `2^x` as the AVX-512 scans evaluate `exp(delta a) = 2^(delta (a log2 e))`: `2^floor(x)
//! p(x - floor(x))` with the degree-5 polynomial [`EXP2_POLY`] (`vreduceps` for the fraction
//! and `vscalefps`, which floors its exponent itself, on the vector lanes).

/// Coefficients of the degree-5 polynomial `p(f) ~ 2^f` on `[0, 1)` (`c0 + c1 f + ...`),
/// fitted for the least maximal relative error (Lawson-weighted least squares on Chebyshev
/// nodes); evaluated in f32 with fused multiply-adds the relative error stays below 2e-7.
pub const EXP2_POLY: [f32; 6] = [
    0.999_999_94,
    0.693_153_1,
    0.240_153_61,
    0.055_826_318,
    0.008_989_341,
    0.001_877_576_6,
];

/// `2^x` for `x >= -126` (clamped there): the scalar form of [`exp2_16`] (the vector form goes
/// on below -126 into subnormals and zero).
#[inline(always)]
pub fn exp2(x: f32) -> f32 {
    let x = x.clamp(-126.0, 127.0);
    let n = x.floor();
    let f = x - n;
    let mut p = EXP2_POLY[5];
    for &c in EXP2_POLY[..5].iter().rev() {
        p = p.mul_add(f, c);
    }
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `2^x` on vector lanes ([`EXP2_POLY`], `vreduceps`, `vscalefps`: far below -126 the result
/// is 0, above 128 infinity).
#[cfg(target_arch = "x86_64")]
macro_rules! exp2_lanes {
    ($(#[$doc:meta])* $name:ident, $feat:literal, $v:ty, $set1:ident, $fmadd:ident,
     $reduce:ident, $scalef:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Callers outside code with these target features must check that the CPU has them.
        #[target_feature(enable = $feat)]
        #[inline]
        pub fn $name(x: $v) -> $v {
            use std::arch::x86_64::*;
            let f = $reduce::<0x09>(x);
            let mut p = $fmadd($set1(EXP2_POLY[5]), f, $set1(EXP2_POLY[4]));
            p = $fmadd(p, f, $set1(EXP2_POLY[3]));
            p = $fmadd(p, f, $set1(EXP2_POLY[2]));
            p = $fmadd(p, f, $set1(EXP2_POLY[1]));
            p = $fmadd(p, f, $set1(EXP2_POLY[0]));
            $scalef(p, x)
        }
    };
}

#[cfg(target_arch = "x86_64")]
exp2_lanes!(
    /// `2^x` on 16 lanes (AVX-512 F/DQ, FMA).
    exp2_16,
    "avx512f,avx512dq,fma",
    std::arch::x86_64::__m512,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_reduce_ps,
    _mm512_scalef_ps
);

#[cfg(target_arch = "x86_64")]
exp2_lanes!(
    /// `2^x` on 8 lanes (AVX-512 F/DQ/VL on ymm registers, FMA).
    exp2_8,
    "avx512f,avx512dq,avx512vl,fma",
    std::arch::x86_64::__m256,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_reduce_ps,
    _mm256_scalef_ps
);

#[cfg(test)]
mod tests {
    use super::exp2;

    #[test]
    fn matches_std_within_a_few_ulp() {
        for i in 0..=40_000 {
            let x = -126.0 + 140.0 * i as f32 / 40_000.0;
            let (e, e_ref) = (exp2(x), (x as f64).exp2());
            assert!(
                ((e as f64 - e_ref) / e_ref).abs() < 2.5e-7,
                "2^{x} = {e}, ref {e_ref}"
            );
        }
        assert_eq!(exp2(-1000.0), exp2(-126.0));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_lanes_equal_the_scalar_form() {
        use std::arch::x86_64::*;
        if !crate::Isa::Avx512.is_available() {
            return;
        }
        let xs: Vec<f32> = (0..4096)
            .map(|i| -120.0 + 240.0 * i as f32 / 4096.0)
            .collect();
        for c in xs.chunks_exact(16) {
            let (mut g16, mut g8) = ([0f32; 16], [0f32; 8]);
            // SAFETY: AVX-512 F/DQ/VL and FMA checked above; whole registers in and out.
            unsafe {
                _mm512_storeu_ps(
                    g16.as_mut_ptr(),
                    super::exp2_16(_mm512_loadu_ps(c.as_ptr())),
                );
                _mm256_storeu_ps(g8.as_mut_ptr(), super::exp2_8(_mm256_loadu_ps(c.as_ptr())));
            }
            for (j, &x) in c.iter().enumerate() {
                let want = exp2(x.min(127.0));
                assert_eq!(g16[j], want, "2^{x}");
                if j < 8 {
                    assert_eq!(g8[j], want, "2^{x}");
                }
            }
        }
    }
}
