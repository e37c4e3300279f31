//! Fixed-point requantization (gemmlowp): an i32 accumulator times a positive real multiplier
//! `m / 2^shift`, rounded half up, plus the output zero point, clamped to the output range;
//! exact integer arithmetic, the same codes on every instruction set.

/// A positive real multiplier as a fixed-point `m / 2^shift`, `m` in `[2^30, 2^31)` (gemmlowp's
/// `QuantizeMultiplier`, kept in i64): `apply(acc) = (acc * m + 2^(shift-1)) >> shift`, i.e.
/// `acc * real` rounded half up, exact integer arithmetic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedMul {
    /// Mantissa.
    pub m: i64,
    /// Right shift, `1..=62`.
    pub shift: u32,
}

impl FixedMul {
    /// Represents `real` (>= 0, < 2^30).
    pub fn new(real: f64) -> Self {
        if real.is_nan() || real <= 0.0 || !real.is_finite() {
            return Self { m: 0, shift: 1 };
        }
        let e = real.log2().floor() as i32;
        let mut shift = 30 - e;
        let mut m = (real * 2f64.powi(shift)).round() as i64;
        if m >= 1 << 31 {
            m /= 2;
            shift -= 1;
        }
        if shift > 62 {
            m = (real * 2f64.powi(62)).round() as i64;
            shift = 62;
        }
        if shift < 1 {
            shift = 1;
            m = ((real * 2.0).round() as i64).min(1 << 31);
        }
        Self {
            m,
            shift: shift as u32,
        }
    }

    /// `round(acc * real)`.
    #[inline(always)]
    pub fn apply(&self, acc: i32) -> i32 {
        ((acc as i64 * self.m + (1i64 << (self.shift - 1))) >> self.shift) as i32
    }
}

/// `y = clamp(zp_out + round(acc * M), lo, hi)` over a row (vectorizes: i32 x i32 -> i64
/// products with `pmuldq`).
#[inline(always)]
pub(crate) fn requantize(m: FixedMul, zo: i32, lo: i32, hi: i32, acc: &[i32], y: &mut [u8]) {
    for (o, &v) in y.iter_mut().zip(acc) {
        *o = (m.apply(v) + zo).clamp(lo, hi) as u8;
    }
}

/// The requantization of 16 i32 lanes in AVX-512 registers.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    #[allow(clippy::wildcard_imports)]
    use std::arch::x86_64::*;

    use super::FixedMul;

    /// Broadcast constants of one output channel's requantization.
    #[derive(Clone, Copy)]
    pub struct Requant {
        m: __m512i,
        /// `2^(shift-1) + zo 2^shift`: rounding and the output zero point in one add.
        round: __m512i,
        /// `shift` for the even lanes.
        shift: __m128i,
        /// The odd lanes: right by `shift - 32` where `shift >= 32`, else left by `32 - shift`.
        shift_odd: __m128i,
        odd_left: bool,
        lo: __m512i,
        /// `None` when `hi` is 255: the unsigned saturating narrow clamps there.
        hi: Option<__m512i>,
    }

    impl Requant {
        /// The constants of `clamp(zo + m.apply(acc), lo, hi)`; `None` when the mantissa does
        /// not fit the signed 32-bit multiplier of `vpmuldq`, the zero point does not fold into
        /// the rounding constant (`shift > 54`, a multiplier below 2^-24) or the clamp range is
        /// not within `0..=255` (then the scalar path runs).
        #[target_feature(enable = "avx512f")]
        #[inline]
        pub fn new(m: FixedMul, zo: i32, lo: i32, hi: i32) -> Option<Self> {
            if m.m > i32::MAX as i64 || m.m < 0 || m.shift > 54 {
                return None;
            }
            if !(0..=255).contains(&lo) || !(lo..=255).contains(&hi) || !(-255..=255).contains(&zo)
            {
                return None;
            }
            Some(Self {
                m: _mm512_set1_epi64(m.m),
                round: _mm512_set1_epi64((1i64 << (m.shift - 1)) + ((zo as i64) << m.shift)),
                shift: _mm_cvtsi32_si128(m.shift as i32),
                shift_odd: _mm_cvtsi32_si128((m.shift as i32 - 32).abs()),
                odd_left: m.shift < 32,
                lo: _mm512_set1_epi32(lo),
                hi: (hi < 255).then(|| _mm512_set1_epi32(hi)),
            })
        }

        /// `clamp(zo + ((acc * m + 2^(shift-1)) >> shift), lo, hi)` per lane, exactly as
        /// [`FixedMul::apply`] (64-bit products, arithmetic shift, low 32 bits), as 16 bytes.
        /// `zo` rides in the rounding constant (`floor((p + r + zo 2^s) / 2^s) =
        /// floor((p + r) / 2^s) + zo`, exact); the odd lanes shift so that bits
        /// `shift..shift + 32` of their sums land in the high half of each 64-bit lane, where
        /// the blend takes them.
        #[target_feature(enable = "avx512f,avx512bw")]
        #[inline]
        pub fn apply(&self, acc: __m512i) -> __m128i {
            let even = mul_epi32(acc, self.m);
            let odd = mul_epi32(_mm512_srli_epi64::<32>(acc), self.m);
            let even = _mm512_sra_epi64(_mm512_add_epi64(even, self.round), self.shift);
            let odd = _mm512_add_epi64(odd, self.round);
            let odd = if self.odd_left {
                _mm512_sll_epi64(odd, self.shift_odd)
            } else {
                _mm512_sra_epi64(odd, self.shift_odd)
            };
            let v = _mm512_max_epi32(_mm512_mask_blend_epi32(0xAAAA, even, odd), self.lo);
            match self.hi {
                // Lanes are >= lo >= 0 here: unsigned saturation is the clamp at 255.
                None => _mm512_cvtusepi32_epi8(v),
                Some(hi) => _mm512_cvtepi32_epi8(_mm512_min_epi32(v, hi)),
            }
        }
    }

    /// `vpmuldq`: the signed 64-bit products of the low 32 bits of each 64-bit lane
    /// (`_mm512_mul_epi32`), as one instruction. LLVM hoists the sign extension of the
    /// loop-invariant multiplier out of the loop, then no longer sees that the product fits
    /// `vpmuldq` and emits `vpmullq` (3 uops, 15 cycles latency) with a redundant shift pair:
    /// measured as a third of the depthwise kernel's time.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn mul_epi32(a: __m512i, b: __m512i) -> __m512i {
        let p: __m512i;
        // SAFETY: register-only arithmetic; the enclosing `target_feature` enables AVX-512 F.
        unsafe {
            std::arch::asm!(
                "vpmuldq {p}, {a}, {b}",
                p = lateout(zmm_reg) p,
                a = in(zmm_reg) a,
                b = in(zmm_reg) b,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        p
    }

    /// `y[i] = clamp(zo + m.apply(acc[i]), lo, hi)` over a row, 16 lanes per step (the tail
    /// masked): the fused form of the scalar `requantize`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    pub unsafe fn requantize_row(rq: &Requant, acc: &[i32], y: &mut [u8]) {
        let n = acc.len().min(y.len());
        let mut i = 0;
        while i < n {
            let k = (n - i).min(16);
            let mask: __mmask16 = crate::simd::mask16(k);
            // SAFETY: lanes `i..i + k <= n` of both slices; masked-off lanes are not accessed.
            unsafe {
                let a = _mm512_maskz_loadu_epi32(mask, acc.as_ptr().add(i));
                let v = _mm512_castsi128_si512(rq.apply(a));
                _mm512_mask_storeu_epi8(y.as_mut_ptr().add(i) as *mut i8, mask as u64, v);
            }
            i += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn fixed_point_multiplier_rounds_like_f64() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut exact = 0;
        let n = 20_000;
        for _ in 0..n {
            let real = 10f64.powf(rng.random_range(-6.0..1.0));
            let acc: i32 = rng.random_range(-(1 << 22)..(1 << 22));
            let m = FixedMul::new(real);
            let want = (acc as f64 * real + 0.5).floor() as i64;
            let got = m.apply(acc) as i64;
            assert!((got - want).abs() <= 1, "{acc} * {real}: {got} vs {want}");
            exact += (got == want) as usize;
        }
        assert!(exact as f64 / n as f64 > 0.99, "only {exact}/{n} exact");
    }
}
