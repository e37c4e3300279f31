//! Channel-wise layers of [`QConvKernel`] (every output channel reads one input channel:
//! depthwise, or a convolution of a one-channel input such as the stem): each input channel is
//! copied into `u8` stride-phase planes padded with the zero-point code (`DwGeom`), the
//! accumulators of a chunk of outputs stay in registers over all taps, and the requantization
//! is fused (AVX-512), 4 taps per `vpdpbusd` for unit column stride (VNNI).

use crate::Isa;

use super::conv::ConvGeom;

use super::qconv::{DW_CHUNK, MAX_TAPS, QConvKernel};
#[cfg(target_arch = "x86_64")]
use super::requant::avx512 as qsimd;
use super::requant::requantize;

/// `dst.copy_from_slice(src)` for the short rows of the channel-wise kernel, in 16-byte moves
/// (a `memcpy` call per 16-byte row costs more than the row).
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    let mut i = 0;
    while i + 16 <= n {
        let c: [u8; 16] = src[i..i + 16].try_into().expect("16 bytes");
        dst[i..i + 16].copy_from_slice(&c);
        i += 16;
    }
    for (d, &v) in dst[i..n].iter_mut().zip(&src[i..n]) {
        *d = v;
    }
}

/// Layout of the `u8` stride-phase planes of the channel-wise kernel: the zero-padded input
/// `[H + 2ph, W + 2pw]` of a channel split into `sh * sw` planes by row and column phase, plane
/// `(py, px)` holding padded rows `py, py + sh, ...` and columns `px, px + sw, ...` as
/// `[hph, wph]`. Tap `(ky, kx)` of output `(oy, ox)` then reads plane `(ky % sh, kx % sw)` at
/// `(oy + ky / sh) * wph + ox + kx / sw`: one constant offset per tap over the "wide" output
/// `[Ho, wph]` (columns `wo..wph` are computed and dropped).
#[derive(Debug, Clone, Copy)]
pub(super) struct DwGeom {
    wph: usize,
    plane: usize,
    chan: usize,
    wide: usize,
}

impl DwGeom {
    pub(super) fn new(g: &ConvGeom) -> Self {
        let (hph, wph) = (
            (g.h + 2 * g.ph).div_ceil(g.sh),
            (g.w + 2 * g.pw).div_ceil(g.sw),
        );
        let plane = hph * wph;
        // Slack: the last chunk of the wide output reads up to DW_CHUNK - 1 past its end.
        // (64 more for the 64-byte loads of the VNNI row kernel.)
        let chan = g.sh * g.sw * plane + wph + DW_CHUNK + 64;
        let wide = (g.ho() * wph).next_multiple_of(DW_CHUNK);
        Self {
            wph,
            plane,
            chan,
            wide,
        }
    }

    /// Bytes of scratch: the planes of one input channel, then one wide output plane.
    pub(super) fn scratch_len(&self) -> usize {
        self.chan + self.wide
    }
}

impl QConvKernel {
    /// Channel-wise layers ([`QConvKernel::is_channelwise`]: depthwise, or a one-channel input):
    /// each input channel in turn is copied into `u8` stride-phase planes ([`DwGeom`]) padded
    /// with the code `zp_in`; then for each output channel reading it and each chunk of
    /// [`DW_CHUNK`] wide outputs the
    /// i32 accumulators stay in registers over all taps (`u8 x i16` products fit in i16:
    /// `255 * 128 < 2^15`), start from the zero-point-folded bias and are requantized at once.
    #[inline(always)]
    pub(super) fn run_channelwise(&self, isa: Isa, x: &[u8], y: &mut [u8], scratch: &mut [u8]) {
        let _ = isa;
        let g = &self.geom;
        let d = DwGeom::new(g);
        let (ho, wo) = (g.ho(), g.wo());
        let (chan, rest) = scratch.split_at_mut(d.chan);
        let wide = &mut rest[..d.wide];
        let zp = self.zp_in.clamp(0, 255) as u8;
        let taps = g.kh * g.kw;
        let mut offs = [0usize; MAX_TAPS];
        for (t, o) in offs.iter_mut().enumerate().take(taps) {
            let (ky, kx) = (t / g.kw, t % g.kw);
            *o = ((ky % g.sh) * g.sw + kx % g.sw) * d.plane + (ky / g.sh) * d.wph + kx / g.sw;
        }
        let offs = &offs[..taps];
        let cog = g.cout / g.groups;
        // One input channel at a time: its plane, then the output channels that read it (all
        // of them for a one-channel input), while the plane is in L1.
        for c in 0..g.cin {
            chan.fill(zp);
            // Padded row py = iy + ph lies in row phase py % sh at plane row py / sh, both
            // stepped along (a division per row cost a third of a 64 x 16 depthwise layer).
            let (mut phase, mut prow) = (g.ph % g.sh, g.ph / g.sh);
            for iy in 0..g.h {
                let src = &x[(c * g.h + iy) * g.w..][..g.w];
                let row0 = phase * g.sw * d.plane + prow * d.wph;
                phase += 1;
                if phase == g.sh {
                    phase = 0;
                    prow += 1;
                }
                if g.sw == 1 {
                    copy_short(&mut chan[row0 + g.pw..][..g.w], src);
                    continue;
                }
                // Column phase q holds padded columns q, q + sw, ...: input columns
                // ix = q + j sw - pw for j from ceil((pw - q) / sw).
                for q in 0..g.sw {
                    let j0 = g.pw.saturating_sub(q).div_ceil(g.sw);
                    let ix0 = q + j0 * g.sw - g.pw;
                    if ix0 >= g.w {
                        continue;
                    }
                    let n = (g.w - ix0).div_ceil(g.sw);
                    let dst = &mut chan[row0 + q * d.plane + j0..][..n];
                    if g.sw == 2 {
                        // Every other byte, as pairs (an interleaved load that vectorizes;
                        // indexing `src[ix0 + 2 j]` ran a byte per iteration, most of the
                        // stride-2 stem layers' time).
                        let pairs = &src[ix0..];
                        for (o, pair) in dst.iter_mut().zip(pairs.chunks_exact(2)) {
                            *o = pair[0];
                        }
                        if pairs.len() % 2 == 1 {
                            dst[n - 1] = pairs[pairs.len() - 1];
                        }
                    } else {
                        for (j, o) in dst.iter_mut().enumerate() {
                            *o = src[ix0 + g.sw * j];
                        }
                    }
                }
            }
            let chan = &*chan;
            for co in c * cog..(c + 1) * cog {
                let w = &self.weight[co * taps..(co + 1) * taps];
                let (b, m) = (self.bias_zp[co], self.mul[co]);
                #[cfg(target_arch = "x86_64")]
                if isa >= Isa::Avx512 {
                    // SAFETY: `isa` is the level of the enclosing `target_feature` function.
                    let rq = unsafe { qsimd::Requant::new(m, self.zp_out, self.lo, self.hi) };
                    if let Some(rq) = rq {
                        if isa == Isa::Avx512Vnni && g.sw == 1 && g.kw <= 4 {
                            // Kernel rows: the plane of row phase ky % sh, row ky / sh, and the
                            // row's weights as one i8 quad (zero-filled past kw).
                            let mut rows = [(0usize, 0i32); MAX_TAPS];
                            for (ky, r) in rows.iter_mut().enumerate().take(g.kh) {
                                let mut q = [0u8; 4];
                                for (kx, v) in q.iter_mut().enumerate().take(g.kw) {
                                    *v = w[ky * g.kw + kx] as i8 as u8;
                                }
                                *r = (offs[ky * g.kw], i32::from_le_bytes(q));
                            }
                            let yc = &mut y[co * ho * wo..(co + 1) * ho * wo];
                            let rows = &rows[..g.kh];
                            // SAFETY: as above (VNNI level); every row's 64-byte loads stay inside
                            // `chan` (`DwGeom` slack: positions below `ho * wph <= d.wide`).
                            unsafe {
                                avx512::channelwise_rows_vnni(chan, rows, b, &rq, d.wph, wo, yc)
                            };
                            continue;
                        }
                        // SAFETY: as above; `DwGeom` leaves every tap's reach inside `chan`.
                        unsafe { avx512::channelwise(chan, offs, w, b, &rq, wide) };
                        for oy in 0..ho {
                            copy_short(
                                &mut y[(co * ho + oy) * wo..][..wo],
                                &wide[oy * d.wph..][..wo],
                            );
                        }
                        continue;
                    }
                }
                for (s, out) in wide.chunks_exact_mut(DW_CHUNK).enumerate() {
                    let s = s * DW_CHUNK;
                    let mut a = [b; DW_CHUNK];
                    for (&o, &wv) in offs.iter().zip(w) {
                        let xs: &[u8; DW_CHUNK] =
                            chan[o + s..o + s + DW_CHUNK].try_into().expect("chunk");
                        for (aj, &v) in a.iter_mut().zip(xs) {
                            *aj = aj.wrapping_add((v as i16).wrapping_mul(wv) as i32);
                        }
                    }
                    requantize(m, self.zp_out, self.lo, self.hi, &a, out);
                }
                for oy in 0..ho {
                    copy_short(
                        &mut y[(co * ho + oy) * wo..][..wo],
                        &wide[oy * d.wph..][..wo],
                    );
                }
            }
        }
    }
}

/// Explicit AVX-512 channel-wise kernels of one output channel.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    #[allow(clippy::wildcard_imports)]
    use std::arch::x86_64::*;

    use super::MAX_TAPS;
    use crate::quant::requant::avx512::Requant;

    /// One output channel of a channel-wise convolution with unit column stride and at most 4
    /// columns per kernel row, with VNNI, written straight into its `[Ho, wo]` output `y`
    /// (rows of up to 16 outputs per vector, the last one masked; the padded planes have rows
    /// of `wph` bytes): for kernel row `(offset, quad)` the 4 bytes
    /// `chan[offset + p .. offset + p + 4]` of wide position `p = oy wph + ox` are gathered into
    /// its i32 lane (a dword permute then an in-lane byte shuffle of one 64-byte load) and
    /// `vpdpbusd` adds their products with the row's weight quad (exact: u8 x i8 products summed
    /// in i32).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL and VNNI; `wo <= wph` and
    /// `offset + Ho wph + 64 <= chan.len()` for every row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    pub unsafe fn channelwise_rows_vnni(
        chan: &[u8],
        rows: &[(usize, i32)],
        b: i32,
        rq: &Requant,
        wph: usize,
        wo: usize,
        y: &mut [u8],
    ) {
        let ho = y.len() / wo.max(1);
        assert!(
            wo <= wph
                && y.len() == ho * wo
                && rows.iter().all(|&(o, _)| o + ho * wph + 64 <= chan.len())
        );
        // 128-bit lane k of the permuted vector holds source bytes 4k .. 4k + 16; the byte
        // shuffle then puts bytes 4j + i .. of lane k at i32 lane 4k + j.
        let dw = _mm512_setr_epi32(0, 1, 2, 3, 1, 2, 3, 4, 2, 3, 4, 5, 3, 4, 5, 6);
        let sh = _mm512_broadcast_i32x4(_mm_setr_epi8(
            0, 1, 2, 3, 1, 2, 3, 4, 2, 3, 4, 5, 3, 4, 5, 6,
        ));
        let mut wq = [_mm512_setzero_si512(); MAX_TAPS];
        for (d, &(_, q)) in wq.iter_mut().zip(rows) {
            *d = _mm512_set1_epi32(q);
        }
        for oy in 0..ho {
            for ox in (0..wo).step_by(16) {
                let s = oy * wph + ox;
                let mut acc = _mm512_set1_epi32(b);
                for (&(o, _), &q) in rows.iter().zip(&wq) {
                    // SAFETY: `o + s + 64 <= o + ho wph + 64 <= chan.len()` (asserted).
                    let v =
                        unsafe { _mm512_loadu_si512(chan.as_ptr().add(o + s) as *const __m512i) };
                    let x4 = _mm512_shuffle_epi8(_mm512_permutexvar_epi32(dw, v), sh);
                    acc = _mm512_dpbusd_epi32(acc, x4, q);
                }
                let k = (wo - ox).min(16);
                let mask: __mmask16 = crate::simd::mask16(k);
                // SAFETY: bytes `oy wo + ox .. + k <= ho wo = y.len()`; masked-off lanes are
                // not written.
                unsafe {
                    _mm_mask_storeu_epi8(
                        y.as_mut_ptr().add(oy * wo + ox) as *mut i8,
                        mask,
                        rq.apply(acc),
                    )
                };
            }
        }
    }

    /// One output channel of the channel-wise convolution over the wide output `wide`
    /// (`wide.len()` a multiple of 32): `acc = b + sum_t w[t] chan[offs[t] + i]`, 32 outputs
    /// per step in two zmm accumulators (`u8` widened to i16, `vpmullw`, sign-extended adds).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    pub unsafe fn channelwise(
        chan: &[u8],
        offs: &[usize],
        w: &[i16],
        b: i32,
        rq: &Requant,
        wide: &mut [u8],
    ) {
        let n = wide.len();
        assert!(
            n.is_multiple_of(32)
                && offs.len() == w.len()
                && offs.iter().all(|&o| o + n <= chan.len())
        );
        let mut wv = [_mm512_setzero_si512(); MAX_TAPS];
        for (d, &v) in wv.iter_mut().zip(w) {
            *d = _mm512_set1_epi16(v);
        }
        let wv = &wv[..w.len()];
        for s in (0..n).step_by(32) {
            let (mut a0, mut a1) = (_mm512_set1_epi32(b), _mm512_set1_epi32(b));
            for (&o, &wt) in offs.iter().zip(wv) {
                // SAFETY: `o + s + 32 <= o + n <= chan.len()` (asserted).
                let x = unsafe { _mm256_loadu_si256(chan.as_ptr().add(o + s) as *const __m256i) };
                let p = _mm512_mullo_epi16(_mm512_cvtepu8_epi16(x), wt);
                a0 = _mm512_add_epi32(a0, _mm512_cvtepi16_epi32(_mm512_castsi512_si256(p)));
                a1 = _mm512_add_epi32(a1, _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<1>(p)));
            }
            // SAFETY: `s + 32 <= n = wide.len()`.
            unsafe {
                let dst = wide.as_mut_ptr().add(s);
                _mm_storeu_si128(dst as *mut __m128i, rq.apply(a0));
                _mm_storeu_si128(dst.add(16) as *mut __m128i, rq.apply(a1));
            }
        }
    }
}
