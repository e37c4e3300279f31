//! Pointwise layers (1x1, stride 1, groups 1) of [`QConvKernel`] as GEMMs: over channel pairs
//! with `pmaddwd` (SSE2, AVX2, AVX-512BW register tiles), or over channel quads with the
//! AVX-512 VNNI `vpdpbusd` (u8 x i8, the input zero point folded into the bias).

#![cfg(target_arch = "x86_64")]

use crate::Isa;

use super::qconv::{QConvKernel, VNNI_TILE_C, VNNI_TILE_P};
use super::requant::{avx512 as qsimd, requantize};

impl QConvKernel {
    /// Pointwise layer as a GEMM over channel pairs: the input is packed as
    /// `xp[k][p] = (x[2k][p] - zp, x[2k+1][p] - zp)` so that one `pmaddwd` does 2 multiply-adds
    /// per i32 lane (positions x 2 channels); register tiles of 4 output channels x 8 (SSE2),
    /// 16 (AVX2) or 32 (AVX-512) positions.
    #[inline(always)]
    pub(super) fn run_pointwise(
        &self,
        isa: Isa,
        x: &[u8],
        y: &mut [u8],
        xp: &mut [i16],
        acc: &mut [i32],
    ) {
        let g = &self.geom;
        let (cin, p) = (g.cin, g.h * g.w);
        let cin2 = cin.div_ceil(2);
        let zp = self.zp_in as i16;
        let xp = &mut xp[..cin2 * 2 * p];
        for k in 0..cin2 {
            let dst = &mut xp[k * 2 * p..(k + 1) * 2 * p];
            let r0 = &x[2 * k * p..(2 * k + 1) * p];
            if 2 * k + 1 < cin {
                let r1 = &x[(2 * k + 1) * p..(2 * k + 2) * p];
                for ((d, &a), &b) in dst.chunks_exact_mut(2).zip(r0).zip(r1) {
                    d[0] = a as i16 - zp;
                    d[1] = b as i16 - zp;
                }
            } else {
                for (d, &a) in dst.chunks_exact_mut(2).zip(r0) {
                    d[0] = a as i16 - zp;
                    d[1] = 0;
                }
            }
        }
        let mut co = 0;
        while co < g.cout {
            let nc = if co + 4 <= g.cout { 4 } else { 1 };
            let acc = &mut acc[..nc * p];
            let (pairs, bias) = (
                &self.pairs[co * cin2..(co + nc) * cin2],
                &self.bias[co..co + nc],
            );
            // SAFETY: (both AVX arms) `run_pointwise` is only reached with `isa` equal to the
            // level of the enclosing `target_feature` function, which `run_isa` checked.
            match (isa, nc) {
                // SAFETY: the AVX-512 level was checked (above).
                (Isa::Avx512 | Isa::Avx512Vnni, 4) => unsafe {
                    gemm_tile_avx512::<4>(xp, pairs, bias, cin2, p, acc)
                },
                // SAFETY: the AVX-512 level was checked (above).
                (Isa::Avx512 | Isa::Avx512Vnni, _) => unsafe {
                    gemm_tile_avx512::<1>(xp, pairs, bias, cin2, p, acc)
                },
                // SAFETY: the AVX2 level was checked (above).
                (Isa::Avx2, 4) => unsafe { gemm_tile_avx2::<4>(xp, pairs, bias, cin2, p, 0, acc) },
                // SAFETY: the AVX2 level was checked (above).
                (Isa::Avx2, _) => unsafe { gemm_tile_avx2::<1>(xp, pairs, bias, cin2, p, 0, acc) },
                (_, 4) => gemm_tile::<4>(xp, pairs, bias, cin2, p, acc),
                _ => gemm_tile::<1>(xp, pairs, bias, cin2, p, acc),
            }
            for (j, a) in acc.chunks_exact(p).enumerate() {
                requantize(
                    self.mul[co + j],
                    self.zp_out,
                    self.lo,
                    self.hi,
                    a,
                    &mut y[(co + j) * p..(co + j + 1) * p],
                );
            }
            co += nc;
        }
    }
}

/// Scalar tail of the pair GEMM: positions `p0..p` of `acc[j][p] = bias[j] + sum_k ...`.
#[inline(always)]
fn gemm_tail<const NC: usize>(
    xp: &[i16],
    pairs: &[[i32; 4]],
    bias: &[i32],
    cin2: usize,
    p: usize,
    p0: usize,
    acc: &mut [i32],
) {
    for pp in p0..p {
        for j in 0..NC {
            let mut s = bias[j];
            for k in 0..cin2 {
                let w = pairs[j * cin2 + k][0];
                let (w0, w1) = (w as i16 as i32, (w >> 16) as i16 as i32);
                s += xp[(k * p + pp) * 2] as i32 * w0 + xp[(k * p + pp) * 2 + 1] as i32 * w1;
            }
            acc[j * p + pp] = s;
        }
    }
}

/// [`gemm_tile`] with AVX2 `vpmaddwd` on 16 positions per step, from position `p_start`.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn gemm_tile_avx2<const NC: usize>(
    xp: &[i16],
    pairs: &[[i32; 4]],
    bias: &[i32],
    cin2: usize,
    p: usize,
    p_start: usize,
    acc: &mut [i32],
) {
    use std::arch::x86_64::{
        __m256i, _mm256_add_epi32, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_set1_epi32,
        _mm256_storeu_si256,
    };
    assert!(
        xp.len() >= cin2 * 2 * p
            && pairs.len() >= NC * cin2
            && bias.len() >= NC
            && acc.len() >= NC * p
    );
    let mut p0 = p_start;
    while p0 + 16 <= p {
        // SAFETY: loads read 16 i16 at `(k * p + p0) * 2 (+ 16)` with `p0 + 16 <= p`, `k < cin2`,
        // inside `xp` (asserted length); stores write 8 i32 at `j * p + p0 (+ 8)` inside `acc`.
        unsafe {
            let mut a: [[__m256i; 2]; NC] = [[_mm256_set1_epi32(0); 2]; NC];
            for (j, aj) in a.iter_mut().enumerate() {
                *aj = [_mm256_set1_epi32(bias[j]); 2];
            }
            for k in 0..cin2 {
                let xb = xp.as_ptr().add((k * p + p0) * 2);
                let x0 = _mm256_loadu_si256(xb as *const __m256i);
                let x1 = _mm256_loadu_si256(xb.add(16) as *const __m256i);
                for (j, aj) in a.iter_mut().enumerate() {
                    let w = _mm256_set1_epi32(pairs.get_unchecked(j * cin2 + k)[0]);
                    aj[0] = _mm256_add_epi32(aj[0], _mm256_madd_epi16(x0, w));
                    aj[1] = _mm256_add_epi32(aj[1], _mm256_madd_epi16(x1, w));
                }
            }
            for (j, aj) in a.iter().enumerate() {
                let dst = acc.as_mut_ptr().add(j * p + p0);
                _mm256_storeu_si256(dst as *mut __m256i, aj[0]);
                _mm256_storeu_si256(dst.add(8) as *mut __m256i, aj[1]);
            }
        }
        p0 += 16;
    }
    gemm_tail::<NC>(xp, pairs, bias, cin2, p, p0, acc);
}

/// [`gemm_tile`] with AVX-512BW `vpmaddwd` on 32 positions per step (then AVX2 for the rest).
///
/// # Safety
/// The CPU must support AVX-512F/BW and AVX2.
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn gemm_tile_avx512<const NC: usize>(
    xp: &[i16],
    pairs: &[[i32; 4]],
    bias: &[i32],
    cin2: usize,
    p: usize,
    acc: &mut [i32],
) {
    use std::arch::x86_64::{
        __m512i, _mm512_add_epi32, _mm512_loadu_si512, _mm512_madd_epi16, _mm512_set1_epi32,
        _mm512_storeu_si512,
    };
    assert!(
        xp.len() >= cin2 * 2 * p
            && pairs.len() >= NC * cin2
            && bias.len() >= NC
            && acc.len() >= NC * p
    );
    let p32 = p / 32 * 32;
    let mut p0 = 0;
    while p0 < p32 {
        // SAFETY: loads read 32 i16 at `(k * p + p0) * 2 (+ 32)` with `p0 + 32 <= p`,
        // `k < cin2`, inside `xp` (asserted length); stores write 16 i32 at `j * p + p0 (+ 16)`
        // inside `acc`.
        unsafe {
            let mut a: [[__m512i; 2]; NC] = [[_mm512_set1_epi32(0); 2]; NC];
            for (j, aj) in a.iter_mut().enumerate() {
                *aj = [_mm512_set1_epi32(bias[j]); 2];
            }
            for k in 0..cin2 {
                let xb = xp.as_ptr().add((k * p + p0) * 2);
                let x0 = _mm512_loadu_si512(xb as *const __m512i);
                let x1 = _mm512_loadu_si512(xb.add(32) as *const __m512i);
                for (j, aj) in a.iter_mut().enumerate() {
                    let w = _mm512_set1_epi32(pairs.get_unchecked(j * cin2 + k)[0]);
                    aj[0] = _mm512_add_epi32(aj[0], _mm512_madd_epi16(x0, w));
                    aj[1] = _mm512_add_epi32(aj[1], _mm512_madd_epi16(x1, w));
                }
            }
            for (j, aj) in a.iter().enumerate() {
                let dst = acc.as_mut_ptr().add(j * p + p0);
                _mm512_storeu_si512(dst as *mut __m512i, aj[0]);
                _mm512_storeu_si512(dst.add(16) as *mut __m512i, aj[1]);
            }
        }
        p0 += 32;
    }
    // The remaining < 32 positions: AVX2 tiles of 16, then scalar.
    // SAFETY: AVX2 is enabled here.
    unsafe { gemm_tile_avx2::<NC>(xp, pairs, bias, cin2, p, p0, acc) }
}

/// `acc[j][p] = bias[j] + sum_k pmaddwd(xp[k][p], pairs[j][k])` for `NC` output channels.
#[inline(always)]
fn gemm_tile<const NC: usize>(
    xp: &[i16],
    pairs: &[[i32; 4]],
    bias: &[i32],
    cin2: usize,
    p: usize,
    acc: &mut [i32],
) {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi32, _mm_loadu_si128, _mm_madd_epi16, _mm_set1_epi32, _mm_storeu_si128,
    };
    assert!(
        xp.len() >= cin2 * 2 * p
            && pairs.len() >= NC * cin2
            && bias.len() >= NC
            && acc.len() >= NC * p
    );
    let mut p0 = 0;
    while p0 + 8 <= p {
        // SAFETY: SSE2 is part of the x86-64 baseline. Every load reads 8 i16 at
        // `(k * p + p0) * 2 (+ 8)` with `p0 + 8 <= p` and `k < cin2`, inside `xp` (asserted
        // length `cin2 * 2 * p`); weight loads read one `[i32; 4]` of `pairs` (length asserted);
        // stores write 4 i32 at `j * p + p0 (+ 4)` inside `acc` (length `NC * p`).
        unsafe {
            let mut a: [[__m128i; 2]; NC] = [[_mm_set1_epi32(0); 2]; NC];
            for (j, aj) in a.iter_mut().enumerate() {
                *aj = [_mm_set1_epi32(bias[j]); 2];
            }
            for k in 0..cin2 {
                let xb = xp.as_ptr().add((k * p + p0) * 2);
                let x0 = _mm_loadu_si128(xb as *const __m128i);
                let x1 = _mm_loadu_si128(xb.add(8) as *const __m128i);
                for (j, aj) in a.iter_mut().enumerate() {
                    let w = _mm_loadu_si128(pairs.as_ptr().add(j * cin2 + k) as *const __m128i);
                    aj[0] = _mm_add_epi32(aj[0], _mm_madd_epi16(x0, w));
                    aj[1] = _mm_add_epi32(aj[1], _mm_madd_epi16(x1, w));
                }
            }
            for (j, aj) in a.iter().enumerate() {
                let dst = acc.as_mut_ptr().add(j * p + p0);
                _mm_storeu_si128(dst as *mut __m128i, aj[0]);
                _mm_storeu_si128(dst.add(4) as *mut __m128i, aj[1]);
            }
        }
        p0 += 8;
    }
    gemm_tail::<NC>(xp, pairs, bias, cin2, p, p0, acc);
}

impl QConvKernel {
    /// Pointwise layer (groups 1) as a u8 x i8 GEMM with AVX-512 VNNI: the input is packed as
    /// `xq[k][p]` = the 4 codes of channels `4k..4k+3` at position `p` (one i32 lane; missing
    /// channels and positions past `P` are 0), so that one `vpdpbusd` does 4 multiply-adds per
    /// lane against the broadcast weight quad `w4[co][k]`; accumulators start from the
    /// zero-point-folded bias; register tiles of 8 output channels x 32 positions (16 zmm).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
    #[inline]
    pub(super) unsafe fn run_pointwise_vnni(
        &self,
        x: &[u8],
        y: &mut [u8],
        xq: &mut [u32],
        acc: &mut [i32],
    ) {
        let g = &self.geom;
        let (cin, p) = (g.cin, g.h * g.w);
        let cin4 = cin.div_ceil(4);
        let pp = p.next_multiple_of(VNNI_TILE_P);
        let xq = &mut xq[..cin4 * pp];
        for (k, dst) in xq.chunks_exact_mut(pp).enumerate() {
            let row = |j: usize| {
                let c = 4 * k + j;
                if c < cin {
                    &x[c * p..(c + 1) * p]
                } else {
                    &x[..0]
                }
            };
            let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
            if r3.len() == p {
                for (i, d) in dst[..p].iter_mut().enumerate() {
                    *d = u32::from_le_bytes([r0[i], r1[i], r2[i], r3[i]]);
                }
            } else {
                for (i, d) in dst[..p].iter_mut().enumerate() {
                    let at = |r: &[u8]| r.get(i).copied().unwrap_or(0);
                    *d = u32::from_le_bytes([at(r0), at(r1), at(r2), 0]);
                }
            }
            dst[p..].fill(0);
        }
        let mut co = 0;
        while co < g.cout {
            let nc = if co + VNNI_TILE_C <= g.cout {
                VNNI_TILE_C
            } else {
                1
            };
            let acc = &mut acc[..nc * pp];
            let (w4, bias) = (
                &self.w4[co * cin4..(co + nc) * cin4],
                &self.bias_zp[co..co + nc],
            );
            // SAFETY: this function's features include the kernel's.
            unsafe {
                if nc == VNNI_TILE_C {
                    gemm_vnni::<VNNI_TILE_C>(xq, w4, bias, cin4, pp, acc)
                } else {
                    gemm_vnni::<1>(xq, w4, bias, cin4, pp, acc)
                }
            }
            for (j, a) in acc.chunks_exact(pp).enumerate() {
                let (m, yr) = (self.mul[co + j], &mut y[(co + j) * p..(co + j + 1) * p]);
                match qsimd::Requant::new(m, self.zp_out, self.lo, self.hi) {
                    // SAFETY: this function's features include AVX-512 F/BW.
                    Some(rq) => unsafe { qsimd::requantize_row(&rq, &a[..p], yr) },
                    None => requantize(m, self.zp_out, self.lo, self.hi, &a[..p], yr),
                }
            }
            co += nc;
        }
    }
}

/// `acc[j][p] = bias[j] + sum_k dpbusd(xq[k][p], w4[j][k])` for `NC` output channels over
/// `pp` positions (a multiple of [`VNNI_TILE_P`]), 32 positions per step.
///
/// # Safety
/// The CPU must support AVX-512 F and VNNI.
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
unsafe fn gemm_vnni<const NC: usize>(
    xq: &[u32],
    w4: &[i32],
    bias: &[i32],
    cin4: usize,
    pp: usize,
    acc: &mut [i32],
) {
    use std::arch::x86_64::{
        __m512i, _mm512_dpbusd_epi32, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_storeu_si512,
    };
    assert!(
        pp.is_multiple_of(VNNI_TILE_P)
            && xq.len() >= cin4 * pp
            && w4.len() >= NC * cin4
            && bias.len() >= NC
            && acc.len() >= NC * pp
    );
    for p0 in (0..pp).step_by(VNNI_TILE_P) {
        // SAFETY: loads read 16 u32 at `k * pp + p0 (+ 16)` with `p0 + 32 <= pp`, `k < cin4`,
        // inside `xq`; weights at `j * cin4 + k` inside `w4`; stores write 16 i32 at
        // `j * pp + p0 (+ 16)` inside `acc` (lengths asserted).
        unsafe {
            let mut a: [[__m512i; 2]; NC] = [[_mm512_set1_epi32(0); 2]; NC];
            for (j, aj) in a.iter_mut().enumerate() {
                *aj = [_mm512_set1_epi32(bias[j]); 2];
            }
            for k in 0..cin4 {
                let xb = xq.as_ptr().add(k * pp + p0);
                let x0 = _mm512_loadu_si512(xb as *const __m512i);
                let x1 = _mm512_loadu_si512(xb.add(16) as *const __m512i);
                for (j, aj) in a.iter_mut().enumerate() {
                    let w = _mm512_set1_epi32(*w4.get_unchecked(j * cin4 + k));
                    aj[0] = _mm512_dpbusd_epi32(aj[0], x0, w);
                    aj[1] = _mm512_dpbusd_epi32(aj[1], x1, w);
                }
            }
            for (j, aj) in a.iter().enumerate() {
                let dst = acc.as_mut_ptr().add(j * pp + p0);
                _mm512_storeu_si512(dst as *mut __m512i, aj[0]);
                _mm512_storeu_si512(dst.add(16) as *mut __m512i, aj[1]);
            }
        }
    }
}
