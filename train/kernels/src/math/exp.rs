//! `exp(x)` in `f32` by the Cephes `expf` scheme: `exp(x) = 2^k p(r)`, `k = round(x / ln 2)`,
//! `r = x - k ln 2` (Cody-Waite: `ln 2` split in two), `p(r) = 1 + r + r^2 P(r)` with the
//! degree-5 polynomial `P` of Cephes `expf.c` on `|r| <= ln 2 / 2`, `2^k` built in the exponent
//! bits. Relative error about 2e-7; inputs clamped to `[-87, 88]` (no subnormals, no overflow;
//! NaN goes to -87). Branch-free and without libm calls, so that loops over it vectorise.

use super::madd;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2 = LN2_HI + LN2_LO`, `LN2_HI` with few mantissa bits (`k LN2_HI` is exact).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5 * 2^23`: `x log2(e) + ROUND` holds `round(x log2(e))` in its low mantissa bits.
const ROUND: f32 = 12_582_912.0;
/// Cephes `expf` coefficients, highest degree first.
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `exp(x)` (see the module docs); fused multiply-adds when `FMA`.
#[inline(always)]
pub fn exp<const FMA: bool>(x: f32) -> f32 {
    // max/min rather than clamp: maps to vmaxps/vminps and sends NaN to a finite value.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    let t = madd::<FMA>(x, LOG2E, ROUND);
    let k = t - ROUND;
    let r = madd::<FMA>(k, -LN2_LO, madd::<FMA>(k, -LN2_HI, x));
    let mut p = P[0];
    p = madd::<FMA>(p, r, P[1]);
    p = madd::<FMA>(p, r, P[2]);
    p = madd::<FMA>(p, r, P[3]);
    p = madd::<FMA>(p, r, P[4]);
    p = madd::<FMA>(p, r, P[5]);
    let p = madd::<FMA>(p * r, r, r) + 1.0;
    let ki = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    f32::from_bits((ki.wrapping_add(127) as u32) << 23) * p
}

/// [`exp`] with fused multiply-adds on the lanes of a vector register (the same operations in
/// the same order: the lanes equal `exp::<true>` bit for bit).
#[cfg(target_arch = "x86_64")]
macro_rules! exp_lanes {
    ($(#[$doc:meta])* $name:ident, $feat:literal, $v:ty, $set1:ident, $set1i:ident, $mul:ident,
     $add:ident, $sub:ident, $fmadd:ident, $min:ident, $max:ident, $castps:ident,
     $castsi:ident, $subi:ident, $addi:ident, $slli:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Callers outside code with these target features must check that the CPU has them.
        #[target_feature(enable = $feat)]
        #[inline]
        pub fn $name(x: $v) -> $v {
            use std::arch::x86_64::*;
            let x = $min($max(x, $set1(-87.0)), $set1(88.0));
            let t = $fmadd(x, $set1(LOG2E), $set1(ROUND));
            let ki = $subi($castps(t), $set1i(ROUND.to_bits() as i32));
            let k = $sub(t, $set1(ROUND));
            let r = $fmadd(k, $set1(-LN2_LO), $fmadd(k, $set1(-LN2_HI), x));
            let mut p = $fmadd($set1(P[0]), r, $set1(P[1]));
            p = $fmadd(p, r, $set1(P[2]));
            p = $fmadd(p, r, $set1(P[3]));
            p = $fmadd(p, r, $set1(P[4]));
            p = $fmadd(p, r, $set1(P[5]));
            let p = $add($fmadd($mul(p, r), r, r), $set1(1.0));
            $mul($castsi($slli::<23>($addi(ki, $set1i(127)))), p)
        }
    };
}

#[cfg(target_arch = "x86_64")]
exp_lanes!(
    /// [`exp`] on 8 lanes (AVX2, FMA).
    exp_8,
    "avx2,fma",
    std::arch::x86_64::__m256,
    _mm256_set1_ps,
    _mm256_set1_epi32,
    _mm256_mul_ps,
    _mm256_add_ps,
    _mm256_sub_ps,
    _mm256_fmadd_ps,
    _mm256_min_ps,
    _mm256_max_ps,
    _mm256_castps_si256,
    _mm256_castsi256_ps,
    _mm256_sub_epi32,
    _mm256_add_epi32,
    _mm256_slli_epi32
);

#[cfg(target_arch = "x86_64")]
exp_lanes!(
    /// [`exp`] on 16 lanes (AVX-512 F, FMA).
    exp_16,
    "avx512f,avx2,fma",
    std::arch::x86_64::__m512,
    _mm512_set1_ps,
    _mm512_set1_epi32,
    _mm512_mul_ps,
    _mm512_add_ps,
    _mm512_sub_ps,
    _mm512_fmadd_ps,
    _mm512_min_ps,
    _mm512_max_ps,
    _mm512_castps_si512,
    _mm512_castsi512_ps,
    _mm512_sub_epi32,
    _mm512_add_epi32,
    _mm512_slli_epi32
);

#[cfg(test)]
mod tests {
    use super::exp;

    #[test]
    fn matches_std_within_a_few_ulp() {
        for i in 0..20_000 {
            let x = -87.0 + 175.0 * i as f32 / 20_000.0;
            let want = (x as f64).exp();
            for e in [exp::<false>(x), exp::<true>(x)] {
                assert!(
                    ((e as f64 - want) / want).abs() < 3e-7,
                    "exp({x}) = {e}, ref {want}"
                );
            }
        }
        let mut x = -30.0f32;
        while x < 30.0 {
            let e = exp::<false>(x);
            assert!(
                ((e - x.exp()) / x.exp()).abs() < 1e-6,
                "exp({x}) = {e}, std {}",
                x.exp()
            );
            x += 0.0137;
        }
        // Clamped, finite, NaN to the lower clamp.
        assert_eq!(exp::<true>(-1e30), exp::<true>(-87.0));
        assert_eq!(exp::<true>(1e30), exp::<true>(88.0));
        assert_eq!(exp::<true>(f32::NAN), exp::<true>(-87.0));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_lanes_equal_the_scalar_form() {
        use std::arch::x86_64::*;
        let xs: Vec<f32> = (0..4096)
            .map(|i| -100.0 + 200.0 * i as f32 / 4096.0)
            .collect();
        let want: Vec<u32> = xs.iter().map(|&x| exp::<true>(x).to_bits()).collect();
        if crate::Isa::Avx2.is_available() {
            for (c, w) in xs.chunks_exact(8).zip(want.chunks_exact(8)) {
                let mut got = [0f32; 8];
                // SAFETY: AVX2 and FMA checked above; 8 floats in and out.
                unsafe {
                    _mm256_storeu_ps(got.as_mut_ptr(), super::exp_8(_mm256_loadu_ps(c.as_ptr())))
                };
                assert_eq!(got.map(f32::to_bits), w, "{c:?}");
            }
        }
        if crate::Isa::Avx512.is_available() {
            for (c, w) in xs.chunks_exact(16).zip(want.chunks_exact(16)) {
                let mut got = [0f32; 16];
                // SAFETY: AVX-512 F and FMA checked above; 16 floats in and out.
                unsafe {
                    _mm512_storeu_ps(got.as_mut_ptr(), super::exp_16(_mm512_loadu_ps(c.as_ptr())))
                };
                assert_eq!(got.map(f32::to_bits), w, "{c:?}");
            }
        }
    }
}
