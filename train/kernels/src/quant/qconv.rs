//! [`QConvKernel`]: a quantized convolution (or linear layer as a 1x1 convolution), prepared
//! once, run by the widest kernel family that serves its geometry: channel-wise layers over
//! `u8` stride-phase planes ([`super::channelwise`]), pointwise layers as GEMMs over channel
//! pairs or quads ([`super::pointwise`]), anything else direct ([`super::conv`]); every
//! instruction set gives the same codes.

use crate::Isa;

use super::channelwise::DwGeom;
use super::conv::{ConvGeom, conv2d_direct, pad_input};
use super::requant::{FixedMul, requantize};

/// A quantized convolution (or linear layer as a 1x1 convolution over `[Din, 1, L]`), prepared.
#[derive(Debug, Clone)]
pub struct QConvKernel {
    /// Geometry.
    pub geom: ConvGeom,
    /// Weights widened to i16, `[Cout, Cin/groups, kh, kw]`.
    pub weight: Vec<i16>,
    /// i32 bias at scale `s_in * s_w[c]`.
    pub bias: Vec<i32>,
    /// Per-channel requantization `s_in * s_w[c] / s_out`.
    pub mul: Vec<FixedMul>,
    /// Input zero point.
    pub zp_in: i32,
    /// Output zero point.
    pub zp_out: i32,
    /// Output clamp (qmin, or the zero point under ReLU).
    pub lo: i32,
    /// Output clamp (qmax, or `quantize(6)` under ReLU6).
    pub hi: i32,
    /// Pointwise layers on x86-64: weight pairs `(w[co][2k], w[co][2k+1])` packed into one i32
    /// and splatted to 4 lanes, `[Cout][ceil(Cin/2)]`, for the `pmaddwd` GEMM; empty otherwise.
    pub pairs: Vec<[i32; 4]>,
    /// The bias with the input zero point folded in, `bias[c] - zp_in * sum_k w[c][k]`, for the
    /// kernels that multiply raw `u8` codes: `sum w (x - zp) = sum w x - zp sum w` (exact in
    /// i32; padding then holds the code `zp_in`, which contributes 0 as in the definition).
    pub bias_zp: Vec<i32>,
    /// Pointwise layers (groups 1): weights as 4 consecutive input channels' `i8` packed in one
    /// i32 (little-endian), `[Cout][ceil(Cin/4)]`, zero-filled, for the VNNI GEMM.
    pub w4: Vec<i32>,
}

/// Rows of positions one VNNI GEMM tile covers: 2 x 16 positions of i32 lanes.
pub(crate) const VNNI_TILE_P: usize = 32;
/// Output channels one VNNI GEMM tile covers.
pub(crate) const VNNI_TILE_C: usize = 8;
/// Output positions of the depthwise kernel held in registers at once.
pub(crate) const DW_CHUNK: usize = 32;
/// Largest kernel (`kh * kw`) of the channel-wise path; larger ones run the direct path.
pub(crate) const MAX_TAPS: usize = 64;

impl QConvKernel {
    /// A prepared kernel (see [`QConvKernel::prepare`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        geom: ConvGeom,
        weight: Vec<i16>,
        bias: Vec<i32>,
        mul: Vec<FixedMul>,
        zp_in: i32,
        zp_out: i32,
        lo: i32,
        hi: i32,
    ) -> Self {
        let mut k = Self {
            geom,
            weight,
            bias,
            mul,
            zp_in,
            zp_out,
            lo,
            hi,
            pairs: Vec::new(),
            bias_zp: Vec::new(),
            w4: Vec::new(),
        };
        k.prepare();
        k
    }

    /// True when every output channel reads one input channel (depthwise, or a convolution of
    /// a one-channel input) through a spatial kernel: the [`QConvKernel::run`] path over `u8`
    /// stride-phase planes.
    pub fn is_channelwise(&self) -> bool {
        let g = &self.geom;
        g.cin / g.groups == 1 && !g.is_pointwise() && g.kh * g.kw <= MAX_TAPS
    }

    /// Derives the packed forms from `weight`, `bias` and `zp_in`: the zero-point-folded bias,
    /// the VNNI weight quads and (x86-64) the `pmaddwd` weight pairs of a pointwise layer.
    pub fn prepare(&mut self) {
        let g = self.geom;
        let per = g.cin / g.groups * g.kh * g.kw;
        self.bias_zp = self
            .bias
            .iter()
            .enumerate()
            .map(|(co, &b)| {
                let sw: i32 = self.weight[co * per..(co + 1) * per]
                    .iter()
                    .map(|&w| w as i32)
                    .sum();
                b.wrapping_sub(self.zp_in.wrapping_mul(sw))
            })
            .collect();
        self.w4.clear();
        self.pairs.clear();
        if !(g.is_pointwise() && g.groups == 1) {
            return;
        }
        let cin4 = g.cin.div_ceil(4);
        self.w4 = (0..g.cout * cin4)
            .map(|i| {
                let (co, k) = (i / cin4, i % cin4);
                let mut b = [0u8; 4];
                for (j, v) in b.iter_mut().enumerate() {
                    if 4 * k + j < g.cin {
                        *v = self.weight[co * g.cin + 4 * k + j] as i8 as u8;
                    }
                }
                i32::from_le_bytes(b)
            })
            .collect();
        if !cfg!(target_arch = "x86_64") {
            return;
        }
        let cin2 = g.cin.div_ceil(2);
        self.pairs = (0..g.cout)
            .flat_map(|co| (0..cin2).map(move |k| (co, k)))
            .map(|(co, k)| {
                let w0 = self.weight[co * g.cin + 2 * k];
                let w1 = if 2 * k + 1 < g.cin {
                    self.weight[co * g.cin + 2 * k + 1]
                } else {
                    0
                };
                [((w1 as u16 as u32) << 16 | w0 as u16 as u32) as i32; 4]
            })
            .collect();
    }

    /// i16 scratch needed by [`QConvKernel::run`].
    pub fn xp_len(&self) -> usize {
        let g = &self.geom;
        let vnni = 2 * g.cin.div_ceil(4) * g.h * g.w.next_multiple_of(VNNI_TILE_P) + 2;
        let dw = DwGeom::new(g).scratch_len().div_ceil(2);
        g.padded_len()
            .max(g.cin.div_ceil(2) * 2 * g.h * g.w)
            .max(vnni)
            .max(dw)
    }

    /// i32 scratch needed by [`QConvKernel::run`].
    pub fn acc_len(&self) -> usize {
        let g = &self.geom;
        (4 * g.ho() * g.wo()).max(VNNI_TILE_C * g.h * g.w.next_multiple_of(VNNI_TILE_P))
    }

    /// Runs the layer: `y = clamp(zp_out + M_c * (bias_c + sum w * (x - zp_in)), lo, hi)`, with
    /// the widest kernels this CPU supports ([`Isa::detect`]).
    pub fn run(&self, x: &[u8], y: &mut [u8], xp: &mut [i16], acc: &mut [i32]) {
        self.run_isa(Isa::detect(), x, y, xp, acc)
    }

    /// [`QConvKernel::run`] with the kernels of `isa` (or the widest supported level below);
    /// every level gives the same codes.
    pub fn run_isa(&self, isa: Isa, x: &[u8], y: &mut [u8], xp: &mut [i16], acc: &mut [i32]) {
        match isa.or_supported() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `or_supported` checked that the CPU has the features enabled there.
            Isa::Avx512 => unsafe { self.run_avx512(x, y, xp, acc) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx512Vnni => unsafe { self.run_avx512vnni(x, y, xp, acc) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { self.run_avx2(x, y, xp, acc) },
            _ => self.run_body(Isa::Portable, x, y, xp, acc),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, x: &[u8], y: &mut [u8], xp: &mut [i16], acc: &mut [i32]) {
        self.run_body(Isa::Avx2, x, y, xp, acc)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    unsafe fn run_avx512(&self, x: &[u8], y: &mut [u8], xp: &mut [i16], acc: &mut [i32]) {
        self.run_body(Isa::Avx512, x, y, xp, acc)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn run_avx512vnni(&self, x: &[u8], y: &mut [u8], xp: &mut [i16], acc: &mut [i32]) {
        self.run_body(Isa::Avx512Vnni, x, y, xp, acc)
    }

    #[inline(always)]
    fn run_body(&self, isa: Isa, x: &[u8], y: &mut [u8], xp: &mut [i16], acc: &mut [i32]) {
        let zp = self.zp_in as i16;
        if self.is_channelwise() {
            // SAFETY: any bit pattern is a valid u8; the middle part is the whole slice.
            let (_, xb, _) = unsafe { xp.align_to_mut::<u8>() };
            return self.run_channelwise(isa, x, y, xb);
        }
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512Vnni && !self.w4.is_empty() {
            // SAFETY: any bit pattern is a valid u32; `xp_len` leaves room for the alignment.
            let (_, xq, _) = unsafe { xp.align_to_mut::<u32>() };
            // SAFETY: `isa` is the level of the enclosing `target_feature` function.
            return unsafe { self.run_pointwise_vnni(x, y, xq, acc) };
        }
        #[cfg(target_arch = "x86_64")]
        if !self.pairs.is_empty() {
            return self.run_pointwise(isa, x, y, xp, acc);
        }
        let _ = isa;
        pad_input(&self.geom, x, xp, |q: u8| q as i16 - zp);
        let hw = self.geom.ho() * self.geom.wo();
        conv2d_direct(&self.geom, xp, &self.weight, &self.bias, acc, |co, a| {
            requantize(
                self.mul[co],
                self.zp_out,
                self.lo,
                self.hi,
                a,
                &mut y[co * hw..(co + 1) * hw],
            );
        });
    }
}

#[cfg(test)]
mod tests {
    //! The dispatched AVX2 / AVX-512 kernels against the portable path and a naive loop.
    use super::*;
    use crate::test_util::levels;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// `y = clamp(zp_out + M_c (b_c + sum w (x - zp_in)))` by the definition, zero padding.
    fn naive_conv(k: &QConvKernel, x: &[u8]) -> Vec<u8> {
        let g = &k.geom;
        let (ho, wo, cig, cog) = (g.ho(), g.wo(), g.cin / g.groups, g.cout / g.groups);
        let mut y = vec![0u8; g.cout * ho * wo];
        for co in 0..g.cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut s = k.bias[co];
                    for cl in 0..cig {
                        let ci = co / cog * cig + cl;
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.sh + ky) as isize - g.ph as isize;
                                let ix = (ox * g.sw + kx) as isize - g.pw as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let v = x[(ci * g.h + iy as usize) * g.w + ix as usize] as i32;
                                let w = k.weight[((co * cig + cl) * g.kh + ky) * g.kw + kx] as i32;
                                s += w * (v - k.zp_in);
                            }
                        }
                    }
                    y[(co * ho + oy) * wo + ox] =
                        (k.mul[co].apply(s) + k.zp_out).clamp(k.lo, k.hi) as u8;
                }
            }
        }
        y
    }

    #[test]
    fn dispatched_integer_convolutions_equal_the_portable_path_exactly() {
        let mut rng = StdRng::seed_from_u64(11);
        // (cin, cout, groups, h, w, k, stride, pad): pointwise with odd Cin and positions that
        // leave 32/16/8-wide tails, a pointwise layer with Cout % 4 != 0 (and % 8 != 0), fewer
        // positions than one vector, depthwise strided, full; channel-wise layers (one input
        // channel per output: a stem on one channel, depthwise with multiplier 2, 5x5, odd
        // strides and sizes, a map narrower than the kernel's reach).
        let cases = [
            (7, 9, 1, 3, 29, 1, [1, 1], 0),
            (48, 96, 1, 1, 77, 1, [1, 1], 0),
            (12, 8, 1, 16, 8, 1, [1, 1], 0),
            (144, 10, 1, 4, 2, 1, [1, 1], 0),
            (5, 19, 1, 1, 3, 1, [1, 1], 0),
            (16, 16, 16, 13, 11, 3, [2, 1], 1),
            (3, 5, 1, 9, 10, 3, [2, 2], 1),
            (1, 8, 1, 17, 9, 3, [2, 2], 1),
            (4, 8, 4, 7, 12, 3, [1, 2], 1),
            (6, 6, 6, 11, 5, 5, [1, 1], 2),
            (3, 3, 3, 9, 7, 5, [3, 2], 1),
            (2, 2, 2, 1, 2, 3, [1, 1], 1),
            (5, 5, 5, 4, 37, 3, [1, 1], 1),
            (3, 3, 3, 6, 35, 3, [2, 3], 1),
        ];
        for (case, (cin, cout, groups, h, w, ks, stride, pad)) in cases.into_iter().enumerate() {
            // Every other case uses the full code range 0..=255 (input, zero point, output).
            let full = case % 2 == 1;
            let qmax = if full { 255 } else { 127 };
            let geom = ConvGeom {
                cin,
                cout,
                groups,
                h,
                w,
                kh: ks,
                kw: ks,
                sh: stride[0],
                sw: stride[1],
                ph: pad,
                pw: pad,
            };
            let mut k = QConvKernel {
                geom,
                weight: (0..cout * cin / groups * ks * ks)
                    .map(|_| rng.random_range(-128i16..=127))
                    .collect(),
                bias: (0..cout).map(|_| rng.random_range(-3000..3000)).collect(),
                // Every third channel with a multiplier near or above 1/2 (a shift below 32,
                // the other branch of the SIMD requantization).
                mul: (0..cout)
                    .map(|j| {
                        FixedMul::new(if j % 3 == 2 {
                            rng.random_range(0.02..2.0)
                        } else {
                            rng.random_range(1e-4..4e-3)
                        })
                    })
                    .collect(),
                zp_in: rng.random_range(0..if full { 256 } else { 40 }),
                zp_out: rng.random_range(0..20),
                lo: 0,
                hi: qmax,
                pairs: Vec::new(),
                bias_zp: Vec::new(),
                w4: Vec::new(),
            };
            k.prepare();
            let x: Vec<u8> = (0..cin * h * w)
                .map(|_| rng.random_range(0..=qmax as u8))
                .collect();
            let mut xp = vec![0i16; k.xp_len()];
            let mut acc = vec![0i32; k.acc_len()];
            let want = naive_conv(&k, &x);
            let mut y = vec![0u8; want.len()];
            k.run_isa(Isa::Portable, &x, &mut y, &mut xp, &mut acc);
            assert_eq!(y, want, "portable vs naive, {geom:?}");
            for isa in levels() {
                y.fill(0);
                k.run_isa(isa, &x, &mut y, &mut xp, &mut acc);
                assert_eq!(y, want, "{isa:?} vs naive, {geom:?}");
            }
        }
    }
}
