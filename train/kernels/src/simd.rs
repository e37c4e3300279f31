//! Small x86-64 helpers shared by the explicit-SIMD kernels.

use std::arch::x86_64::*;

/// The mask of the first `min(k, 16)` of 16 lanes (the tail of a row in masked AVX-512 loads
/// and stores).
#[inline(always)]
pub(crate) fn mask16(k: usize) -> u16 {
    if k >= 16 { !0 } else { (1u16 << k) - 1 }
}

/// `y[i] = f(y[i], z[i])` over a row (`z` as long as `y`, or empty: then zeros), 16 lanes per
/// step, the tail masked.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn map_row16(y: &mut [f32], z: &[f32], f: impl Fn(__m512, __m512) -> __m512) {
    let n = y.len();
    assert!(z.is_empty() || z.len() == n);
    let mut i = 0;
    while i < n {
        let k = (n - i).min(16);
        let mask: __mmask16 = mask16(k);
        // SAFETY: lanes `i..i + k <= n` of `y` (and of `z` when not empty); masked-off lanes
        // are not accessed.
        unsafe {
            let yv = _mm512_maskz_loadu_ps(mask, y.as_ptr().add(i));
            let zv = if z.is_empty() {
                _mm512_setzero_ps()
            } else {
                _mm512_maskz_loadu_ps(mask, z.as_ptr().add(i))
            };
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(i), mask, f(yv, zv));
        }
        i += 16;
    }
}
