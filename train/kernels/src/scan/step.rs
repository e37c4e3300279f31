//! One time step of the selective scan for a block of `W` channels, the states in memory
//! (`h` `[d_state, d_inner]`): the inference mixer's scan for any `d_state`
//! ([`crate::mixer::inference::MambaKernel`]; `d_state` 16 on AVX-512 runs
//! [`super::time_major::forward16`] instead).
//!
//! `h[s][c] = exp(delta[c] a[s][c]) h[s][c] + du[c] b[s]`, `acc[c] += h[s][c] c[s]` for the
//! channels `c0..c0 + W`, with `acc` held in registers (the same summation order as a plain
//! loop over `s`). [`block`] is the generic body (auto-vectorised); [`block8_avx2`] and
//! [`block16_avx512`] do the same arithmetic with explicit registers and [`crate::math::exp_8`]
//! / [`crate::math::exp_16`], so their results equal the generic body's with `FMA = true`.

use crate::math::{exp, madd};

/// One scan step for the `W` channels `c0..c0 + W`, all `d_state = bs.len()` states (see the
/// module docs).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn block<const FMA: bool, const W: usize>(
    c0: usize,
    di: usize,
    h: &mut [f32],
    a_t: &[f32],
    delta: &[f32],
    du: &[f32],
    acc: &mut [f32],
    bs: &[f32],
    cs: &[f32],
) {
    let d: [f32; W] = delta[c0..c0 + W].try_into().expect("W lanes");
    let u: [f32; W] = du[c0..c0 + W].try_into().expect("W lanes");
    let mut y: [f32; W] = acc[c0..c0 + W].try_into().expect("W lanes");
    for (s, (&b, &c)) in bs.iter().zip(cs).enumerate() {
        let hs: &mut [f32; W] = (&mut h[s * di + c0..s * di + c0 + W])
            .try_into()
            .expect("W lanes");
        let a: &[f32; W] = a_t[s * di + c0..s * di + c0 + W]
            .try_into()
            .expect("W lanes");
        for j in 0..W {
            let e = exp::<FMA>(d[j] * a[j]);
            hs[j] = madd::<FMA>(e, hs[j], u[j] * b);
            y[j] = madd::<FMA>(hs[j], c, y[j]);
        }
    }
    acc[c0..c0 + W].copy_from_slice(&y);
}

#[cfg(target_arch = "x86_64")]
macro_rules! block_lanes {
    ($name:ident, $feat:literal, $w:literal, $set1:ident, $loadu:ident, $storeu:ident,
     $mul:ident, $fmadd:ident, $exp:ident) => {
        /// [`block`] for the channels `c0..c0 + W` in one vector register.
        ///
        /// # Safety
        /// The CPU must support the enabled features; `c0 + W <= di`, `h` and `a_t` hold
        /// `bs.len() * di` values, `delta`, `du`, `acc` at least `c0 + W`,
        /// `cs.len() >= bs.len()`.
        #[target_feature(enable = $feat)]
        #[inline]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $name(
            c0: usize,
            di: usize,
            h: &mut [f32],
            a_t: &[f32],
            delta: &[f32],
            du: &[f32],
            acc: &mut [f32],
            bs: &[f32],
            cs: &[f32],
        ) {
            use std::arch::x86_64::*;
            let n = bs.len();
            assert!(
                c0 + $w <= di
                    && h.len() >= n * di
                    && a_t.len() >= n * di
                    && delta.len() >= c0 + $w
                    && du.len() >= c0 + $w
                    && acc.len() >= c0 + $w
                    && cs.len() >= n
            );
            // SAFETY: every access is inside the lengths asserted above.
            unsafe {
                let d = $loadu(delta.as_ptr().add(c0));
                let u = $loadu(du.as_ptr().add(c0));
                let mut y = $loadu(acc.as_ptr().add(c0));
                for s in 0..n {
                    let hp = h.as_mut_ptr().add(s * di + c0);
                    let a = $loadu(a_t.as_ptr().add(s * di + c0));
                    let e = crate::math::$exp($mul(d, a));
                    let hv = $fmadd(e, $loadu(hp), $mul(u, $set1(*bs.get_unchecked(s))));
                    $storeu(hp, hv);
                    y = $fmadd(hv, $set1(*cs.get_unchecked(s)), y);
                }
                $storeu(acc.as_mut_ptr().add(c0), y);
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
block_lanes!(
    block16_avx512,
    "avx512f,avx2,fma",
    16,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_mul_ps,
    _mm512_fmadd_ps,
    exp_16
);

#[cfg(target_arch = "x86_64")]
block_lanes!(
    block8_avx2,
    "avx2,fma",
    8,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_mul_ps,
    _mm256_fmadd_ps,
    exp_8
);
