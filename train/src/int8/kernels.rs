//! Kernels: integer convolution / linear / add / pooling with fixed-point requantization,
//! float LayerNorm and the Mamba mixer, float convolution for the reference path, and
//! branch-free `exp`/`ln` that the compiler vectorizes.
//!
//! Hot loops run over contiguous slices (a row of output positions, or the channel lanes of
//! the scan) with no bounds checks inside, so they auto-vectorize at the baseline target
//! (x86-64 SSE2) without `-C target-cpu`.
//!
//! ## Run-time dispatch ([`Isa`])
//! The crate is compiled for the baseline target, so the hot kernels (the Mamba mixer, the
//! integer convolutions and the pointwise GEMM) are written once as `#[inline(always)]` generic
//! bodies and instantiated a second (and third) time inside `#[target_feature(enable =
//! "avx2,fma")]` / `"avx512f,avx512bw,..."` wrappers, where LLVM vectorizes them with 256/512-bit
//! registers. The AVX-512 levels add explicit kernels (fused requantization, the
//! register-resident d_state-16 scan with a `2^x` polynomial); [`Isa::Avx512Vnni`] adds the
//! `vpdpbusd` GEMM and channel-wise row kernel. [`Isa::detect`] picks the widest supported set once per process
//! (`is_x86_feature_detected!`); other CPUs and other architectures run the portable path.
//! Integer kernels give bit-identical results on every path. The float mixer uses fused
//! multiply-adds ([`Fused`]) on the AVX paths and separate multiply and add ([`Plain`]) on the
//! portable path: results differ by rounding only (a few ulp per operation; the tests bound the
//! mixer output difference by `1e-5` relative to the output's largest magnitude).

/// Instruction-set level of the hot kernels, chosen at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// The compile target's baseline (SSE2 on x86-64), on every CPU.
    Portable,
    /// x86-64 AVX2 + FMA (Haswell and later).
    Avx2,
    /// x86-64 AVX-512 F/BW/DQ/VL (+ AVX2, FMA): Skylake-SP, Ice Lake, Zen 4 and later.
    Avx512,
    /// [`Isa::Avx512`] plus AVX-512 VNNI (`vpdpbusd`, u8 x i8 dot products of 4 into i32):
    /// Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4 and later. Pointwise convolutions and
    /// linear layers run as a VNNI GEMM; everything else as at [`Isa::Avx512`].
    Avx512Vnni,
}

impl Isa {
    /// The widest level this CPU supports (detected once, then cached). The environment
    /// variable `ASC_INT8_ISA` (`portable`, `avx2`, `avx512`, `avx512vnni`) caps it, for
    /// benchmarks and debugging; other values are ignored.
    pub fn detect() -> Self {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let cap = match std::env::var("ASC_INT8_ISA").as_deref() {
                Ok("portable") => Isa::Portable,
                Ok("avx2") => Isa::Avx2,
                Ok("avx512") => Isa::Avx512,
                _ => Isa::Avx512Vnni,
            };
            [Isa::Avx512Vnni, Isa::Avx512, Isa::Avx2]
                .into_iter()
                .find(|i| *i <= cap && i.available())
                .unwrap_or(Isa::Portable)
        })
    }

    /// Short name (`portable`, `avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }

    /// True when this CPU can run kernels compiled for `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => Isa::Avx512.available() && is_x86_feature_detected!("avx512vnni"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// `self` if this CPU supports it, else the widest supported level below it.
    pub fn or_supported(self) -> Self {
        self.min(Isa::detect())
    }
}

/// How `a * b + c` is evaluated in the float kernels.
pub trait MulAdd {
    /// `a * b + c`.
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// `a * b + c` with two roundings (the portable path: a fused multiply-add without the FMA
/// instruction would be a slow libm call).
#[derive(Debug, Clone, Copy)]
pub struct Plain;

impl MulAdd for Plain {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `a * b + c` with one rounding (`vfmadd`); only instantiated inside `fma` functions.
#[derive(Debug, Clone, Copy)]
pub struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Rounds to the nearest integer, ties to even, for `|x| < 2^22` (the 1.5 * 2^23 trick), the
/// rounding of PyTorch's `nearbyint`. Larger magnitudes must be clamped by the caller.
#[inline(always)]
pub fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// `exp(x)` with a relative error below 2e-7 (Cephes `expf`: `x = n ln2 + r`, degree-6
/// polynomial in `r`, `2^n` built in the exponent bits); inputs clamped to `[-87, 88]`.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    fast_exp_with::<Plain>(x)
}

/// [`fast_exp`] with the multiply-adds evaluated by `M` (branch-free, vectorizes).
#[inline(always)]
pub fn fast_exp_with<M: MulAdd>(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    // n = round(x / ln 2), read from the mantissa bits of `t` (no float->int cast, which would
    // be a saturating scalar conversion and stop vectorization).
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let ni = t.to_bits() as i32 - MAGIC.to_bits() as i32;
    let n = t - MAGIC;
    // r = x - n ln2 with ln2 split in two (Cody-Waite).
    let r = M::mul_add(n, -0.693_359_4, x);
    let r = M::mul_add(n, 2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    p = M::mul_add(p, r, 1.398_199_9e-3);
    p = M::mul_add(p, r, 8.333_452e-3);
    p = M::mul_add(p, r, 4.166_579_6e-2);
    p = M::mul_add(p, r, 1.666_666_5e-1);
    p = M::mul_add(p, r, 5.000_000_1e-1_f64 as f32);
    let y = M::mul_add(p * r, r, r) + 1.0;
    y * f32::from_bits(((ni + 127) as u32) << 23)
}

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

/// `2^x` for `x >= -126` (clamped there): `2^floor(x) * p(x - floor(x))` with [`EXP2_POLY`]
/// (the scalar form of the AVX-512 scan's exponential, which evaluates `exp(d a)` as
/// `2^(d (a log2 e))` with `vreduceps` for `x - floor(x)` and `vscalefps`, which floors its
/// exponent itself; below -126 that form goes on into subnormals and zero).
#[inline(always)]
pub fn fast_exp2(x: f32) -> f32 {
    let x = x.clamp(-126.0, 127.0);
    let n = x.floor();
    let f = x - n;
    let mut p = EXP2_POLY[5];
    for &c in EXP2_POLY[..5].iter().rev() {
        p = p.mul_add(f, c);
    }
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `round_even(x)` as an integer for `|x| < 2^22`, from the mantissa bits (vectorizable).
#[inline(always)]
pub fn round_even_i32(x: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

/// Coefficients of the degree-8 polynomial `q(e) ~ ln(1 + e) / e` on `[0, 1]` (`c0 + c1 e +
/// ...`), fitted for the least maximal relative error (Lawson-weighted least squares on
/// Chebyshev nodes; the ratio is analytic on the interval, its nearest singularity at -1).
pub const LN_1P_POLY: [f32; 9] = [
    0.999_999_94,
    -0.499_994_93,
    0.333_191_04,
    -0.248_430_31,
    0.191_061_97,
    -0.136_636_5,
    0.078_230_69,
    -0.029_508_136,
    0.005_233_414_5,
];

/// `ln(1 + e)` for `e` in `[0, 1]` as `e q(e)` ([`LN_1P_POLY`]): relative error below 2e-7 in
/// f32 down to the smallest `e` (where `ln(1 + e) ~ e`), nine multiply-adds and no division,
/// exponent split or branch (softplus' logarithm: `e = exp(-|x|)`).
#[inline(always)]
pub fn ln_1p_unit_with<M: MulAdd>(e: f32) -> f32 {
    let mut p = LN_1P_POLY[8];
    for &c in LN_1P_POLY[..8].iter().rev() {
        p = M::mul_add(p, e, c);
    }
    e * p
}

/// `softplus(x) = ln(1 + e^x) = max(x, 0) + ln(1 + e^{-|x|})` (PyTorch returns `x` above 20;
/// this form is accurate there too).
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    softplus_with::<Plain>(x)
}

/// [`softplus`] with the multiply-adds evaluated by `M`.
#[inline(always)]
pub fn softplus_with<M: MulAdd>(x: f32) -> f32 {
    x.max(0.0) + ln_1p_unit_with::<M>(fast_exp_with::<M>(-x.abs()))
}

/// `silu(x) = x * sigmoid(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    silu_with::<Plain>(x)
}

/// [`silu`] with the multiply-adds evaluated by `M`.
#[inline(always)]
pub fn silu_with<M: MulAdd>(x: f32) -> f32 {
    x / (1.0 + fast_exp_with::<M>(-x))
}

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

/// Geometry of a 2-D convolution on `[Cin, H, W] -> [Cout, Ho, Wo]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Groups.
    pub groups: usize,
    /// Input height, width.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Strides.
    pub sh: usize,
    /// Horizontal stride.
    pub sw: usize,
    /// Zero padding.
    pub ph: usize,
    /// Horizontal padding.
    pub pw: usize,
}

impl ConvGeom {
    /// Output height.
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.ph - self.kh) / self.sh + 1
    }
    /// Output width.
    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pw - self.kw) / self.sw + 1
    }
    /// Columns of a padded row in one stride phase: `ceil((W + 2pw) / sw)`.
    pub fn phase_len(&self) -> usize {
        (self.w + 2 * self.pw).div_ceil(self.sw)
    }
    /// Length of one padded input row: `sw` phases of [`ConvGeom::phase_len`] columns. Padded
    /// column `c` is stored at `(c % sw) * phase_len + c / sw`, so that the taps of a strided
    /// convolution read contiguous columns.
    pub fn row_len(&self) -> usize {
        self.sw * self.phase_len()
    }
    /// Size of the padded input `Cin * (H + 2ph) * row_len`.
    pub fn padded_len(&self) -> usize {
        self.cin * (self.h + 2 * self.ph) * self.row_len()
    }
    /// A pointwise layer (1x1, stride 1, no padding): one contiguous plane per channel.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }
}

/// Element type of the direct convolution: `i16` codes (input minus zero point, so that padding
/// is 0) times `i16` weights accumulated in `i32`, or `f32` throughout.
pub trait ConvElem: Copy + Default + Send + Sync {
    /// Accumulator type.
    type Acc: Copy + Default;
    /// `acc += w * x` over a row.
    fn axpy(acc: &mut [Self::Acc], w: Self, x: &[Self]);
    /// True for a zero weight (its taps are skipped).
    fn is_zero(self) -> bool;
}

impl ConvElem for i16 {
    type Acc = i32;
    #[inline(always)]
    fn axpy(acc: &mut [i32], w: i16, x: &[i16]) {
        // |w| <= 128 and |x| <= 255, so the product fits in i16.
        for (a, &v) in acc.iter_mut().zip(x) {
            *a += w.wrapping_mul(v) as i32;
        }
    }
    fn is_zero(self) -> bool {
        self == 0
    }
}

impl ConvElem for f32 {
    type Acc = f32;
    #[inline(always)]
    fn axpy(acc: &mut [f32], w: f32, x: &[f32]) {
        for (a, &v) in acc.iter_mut().zip(x) {
            *a += w * v;
        }
    }
    fn is_zero(self) -> bool {
        self == 0.0
    }
}

/// Direct convolution over an already padded input `xp` `[Cin, H+2ph, W+2pw]`; for every
/// output channel `co` the accumulator plane `acc` `[Ho*Wo]` is initialised to `bias[co]`,
/// filled, and handed to `emit(co, acc)`. Weights `[Cout, Cin/groups, kh, kw]`.
#[inline(always)]
pub fn conv2d_direct<T: ConvElem>(
    g: &ConvGeom,
    xp: &[T],
    weight: &[T],
    bias: &[T::Acc],
    acc: &mut [T::Acc],
    mut emit: impl FnMut(usize, &[T::Acc]),
) {
    let (hp, rl, pl) = (g.h + 2 * g.ph, g.row_len(), g.phase_len());
    let (ho, wo) = (g.ho(), g.wo());
    let (cig, cog) = (g.cin / g.groups, g.cout / g.groups);
    let plane = hp * rl;
    let acc = &mut acc[..ho * wo];
    let pointwise = g.is_pointwise();
    for (co, &b) in bias.iter().enumerate().take(g.cout) {
        let gi = co / cog;
        acc.fill(b);
        for cl in 0..cig {
            let ci = gi * cig + cl;
            let xc = &xp[ci * plane..(ci + 1) * plane];
            let wbase = (co * cig + cl) * g.kh * g.kw;
            if pointwise {
                T::axpy(acc, weight[wbase], xc);
                continue;
            }
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let wv = weight[wbase + ky * g.kw + kx];
                    if wv.is_zero() {
                        continue;
                    }
                    let col = (kx % g.sw) * pl + kx / g.sw;
                    for oy in 0..ho {
                        let row = &xc[(oy * g.sh + ky) * rl + col..][..wo];
                        T::axpy(&mut acc[oy * wo..(oy + 1) * wo], wv, row);
                    }
                }
            }
        }
        emit(co, acc);
    }
}

/// Copies `x` `[C, H, W]` into the padded `xp` `[C, H+2ph, W+2pw]` through `f`, zero borders.
#[inline(always)]
pub fn pad_input<S: Copy, T: Copy + Default>(
    g: &ConvGeom,
    x: &[S],
    xp: &mut [T],
    f: impl Fn(S) -> T,
) {
    let (hp, rl) = (g.h + 2 * g.ph, g.row_len());
    let xp = &mut xp[..g.padded_len()];
    if g.sw > 1 {
        xp.fill(T::default());
        let pl = g.phase_len();
        for c in 0..g.cin {
            for y in 0..g.h {
                let src = &x[(c * g.h + y) * g.w..][..g.w];
                let dst = &mut xp[(c * hp + y + g.ph) * rl..][..rl];
                for (i, &s) in src.iter().enumerate() {
                    let pc = i + g.pw;
                    dst[(pc % g.sw) * pl + pc / g.sw] = f(s);
                }
            }
        }
        return;
    }
    if g.ph == 0 && g.pw == 0 {
        for (d, &s) in xp.iter_mut().zip(x) {
            *d = f(s);
        }
        return;
    }
    xp.fill(T::default());
    for c in 0..g.cin {
        for y in 0..g.h {
            let src = &x[(c * g.h + y) * g.w..][..g.w];
            let dst = &mut xp[(c * hp + y + g.ph) * rl + g.pw..][..g.w];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = f(s);
            }
        }
    }
}

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
const VNNI_TILE_P: usize = 32;
/// Output channels one VNNI GEMM tile covers.
const VNNI_TILE_C: usize = 8;
/// Output positions of the depthwise kernel held in registers at once.
const DW_CHUNK: usize = 32;
/// Largest kernel (`kh * kw`) of the channel-wise path; larger ones run the direct path.
const MAX_TAPS: usize = 64;

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

/// `y = clamp(zp_out + round(acc * M), lo, hi)` over a row (vectorizes: i32 x i32 -> i64
/// products with `pmuldq`).
#[inline(always)]
fn requantize(m: FixedMul, zo: i32, lo: i32, hi: i32, acc: &[i32], y: &mut [u8]) {
    for (o, &v) in y.iter_mut().zip(acc) {
        *o = (m.apply(v) + zo).clamp(lo, hi) as u8;
    }
}

#[cfg(target_arch = "x86_64")]
impl QConvKernel {
    /// Pointwise layer as a GEMM over channel pairs: the input is packed as
    /// `xp[k][p] = (x[2k][p] - zp, x[2k+1][p] - zp)` so that one `pmaddwd` does 2 multiply-adds
    /// per i32 lane (positions x 2 channels); register tiles of 4 output channels x 8 (SSE2),
    /// 16 (AVX2) or 32 (AVX-512) positions.
    #[inline(always)]
    fn run_pointwise(&self, isa: Isa, x: &[u8], y: &mut [u8], xp: &mut [i16], acc: &mut [i32]) {
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
            // SAFETY (both AVX arms): `run_pointwise` is only reached with `isa` equal to the
            // level of the enclosing `target_feature` function, which `run_isa` checked.
            match (isa, nc) {
                (Isa::Avx512 | Isa::Avx512Vnni, 4) => unsafe {
                    gemm_tile_avx512::<4>(xp, pairs, bias, cin2, p, acc)
                },
                (Isa::Avx512 | Isa::Avx512Vnni, _) => unsafe {
                    gemm_tile_avx512::<1>(xp, pairs, bias, cin2, p, acc)
                },
                (Isa::Avx2, 4) => unsafe { gemm_tile_avx2::<4>(xp, pairs, bias, cin2, p, 0, acc) },
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
#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
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
struct DwGeom {
    wph: usize,
    plane: usize,
    chan: usize,
    wide: usize,
}

impl DwGeom {
    fn new(g: &ConvGeom) -> Self {
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
    fn scratch_len(&self) -> usize {
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
    fn run_channelwise(&self, isa: Isa, x: &[u8], y: &mut [u8], scratch: &mut [u8]) {
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
                    if let Some(rq) =
                        unsafe { qsimd::Requant::new(m, self.zp_out, self.lo, self.hi) }
                    {
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
                            // SAFETY: as above (VNNI level); every row's 64-byte loads stay inside
                            // `chan` (`DwGeom` slack: positions below `ho * wph <= d.wide`).
                            let yc = &mut y[co * ho * wo..(co + 1) * ho * wo];
                            let rows = &rows[..g.kh];
                            unsafe {
                                qsimd::channelwise_rows_vnni(chan, rows, b, &rq, d.wph, wo, yc)
                            };
                            continue;
                        }
                        // SAFETY: as above; `DwGeom` leaves every tap's reach inside `chan`.
                        unsafe { qsimd::channelwise(chan, offs, w, b, &rq, wide) };
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

#[cfg(target_arch = "x86_64")]
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
    unsafe fn run_pointwise_vnni(&self, x: &[u8], y: &mut [u8], xq: &mut [u32], acc: &mut [i32]) {
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

/// The mask of the first `min(k, 16)` of 16 lanes (the tail of a row in masked AVX-512 loads
/// and stores).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lanes16(k: usize) -> u16 {
    if k >= 16 { !0 } else { (1u16 << k) - 1 }
}

/// Explicit AVX-512 integer kernels: the fused fixed-point requantization of 16 i32 lanes and
/// the channel-wise convolution of one output channel.
#[cfg(target_arch = "x86_64")]
mod qsimd {
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
    pub unsafe fn requantize_row(rq: &Requant, acc: &[i32], y: &mut [u8]) {
        let n = acc.len().min(y.len());
        let mut i = 0;
        while i < n {
            let k = (n - i).min(16);
            let mask: __mmask16 = super::lanes16(k);
            // SAFETY: lanes `i..i + k <= n` of both slices; masked-off lanes are not accessed.
            unsafe {
                let a = _mm512_maskz_loadu_epi32(mask, acc.as_ptr().add(i));
                let v = _mm512_castsi128_si512(rq.apply(a));
                _mm512_mask_storeu_epi8(y.as_mut_ptr().add(i) as *mut i8, mask as u64, v);
            }
            i += 16;
        }
    }

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
        let mut wq = [_mm512_setzero_si512(); super::MAX_TAPS];
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
                let mask: __mmask16 = super::lanes16(k);
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
        let mut wv = [_mm512_setzero_si512(); super::MAX_TAPS];
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

/// `acc[j][p] = bias[j] + sum_k dpbusd(xq[k][p], w4[j][k])` for `NC` output channels over
/// `pp` positions (a multiple of [`VNNI_TILE_P`]), 32 positions per step.
///
/// # Safety
/// The CPU must support AVX-512 F and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
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

/// Quantized add of two tensors with their own scales:
/// `y = zp_o + round(((a - za) * Ma + (b - zb) * Mb) / 2^shift)`, `Ma = s_a / s_o * 2^shift`.
#[derive(Debug, Clone, Copy)]
pub struct QAddKernel {
    /// Zero points of a, b, output.
    pub za: i32,
    /// Zero point of b.
    pub zb: i32,
    /// Zero point of the output.
    pub zo: i32,
    /// Fixed-point multiplier of a.
    pub ma: i64,
    /// Fixed-point multiplier of b.
    pub mb: i64,
    /// Common shift.
    pub shift: u32,
    /// Output clamp.
    pub lo: i32,
    /// Output clamp.
    pub hi: i32,
}

impl QAddKernel {
    /// Prepares the multipliers for scales `sa`, `sb` -> `so`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(sa: f32, sb: f32, so: f32, za: i32, zb: i32, zo: i32, lo: i32, hi: i32) -> Self {
        let (ra, rb) = (sa as f64 / so as f64, sb as f64 / so as f64);
        let e = ra.max(rb).log2().ceil() as i32;
        let shift = (30 - e).clamp(1, 40) as u32;
        let s = 2f64.powi(shift as i32);
        Self {
            za,
            zb,
            zo,
            ma: (ra * s).round() as i64,
            mb: (rb * s).round() as i64,
            shift,
            lo,
            hi,
        }
    }

    /// Runs the add.
    pub fn run(&self, a: &[u8], b: &[u8], y: &mut [u8]) {
        let round = 1i64 << (self.shift - 1);
        for ((o, &qa), &qb) in y.iter_mut().zip(a).zip(b) {
            let v = ((qa as i64 - self.za as i64) * self.ma
                + (qb as i64 - self.zb as i64) * self.mb
                + round)
                >> self.shift;
            *o = (v as i32 + self.zo).clamp(self.lo, self.hi) as u8;
        }
    }
}

/// Max pooling on `[C, H, W]` without padding (exact on codes of one scale).
#[inline]
pub fn max_pool2d<T: Copy + PartialOrd>(
    x: &[T],
    y: &mut [T],
    c: usize,
    h: usize,
    w: usize,
    k: [usize; 2],
    s: [usize; 2],
) {
    let (ho, wo) = ((h - k[0]) / s[0] + 1, (w - k[1]) / s[1] + 1);
    if k == [2, 2] && s == [2, 2] {
        // The same comparisons in the same order as the general loop, on contiguous rows.
        for (ch, yc) in y.chunks_exact_mut(ho * wo).take(c).enumerate() {
            for (oy, yr) in yc.chunks_exact_mut(wo).enumerate() {
                let r0 = &x[(ch * h + 2 * oy) * w..][..2 * wo];
                let r1 = &x[(ch * h + 2 * oy + 1) * w..][..2 * wo];
                // Blocks of 8 outputs as fixed-size arrays (the rows are short: a loop over
                // the whole row ran element by element), then the rest one by one.
                let blocks = wo / 8 * 8;
                for ((o, a), b) in yr[..blocks]
                    .chunks_exact_mut(8)
                    .zip(r0.chunks_exact(16))
                    .zip(r1.chunks_exact(16))
                {
                    let o: &mut [T; 8] = o.try_into().expect("8 outputs");
                    let (a, b): (&[T; 16], &[T; 16]) =
                        (a.try_into().expect("16"), b.try_into().expect("16"));
                    for (i, o) in o.iter_mut().enumerate() {
                        let mut m = a[2 * i];
                        for v in [a[2 * i + 1], b[2 * i], b[2 * i + 1]] {
                            if v > m {
                                m = v;
                            }
                        }
                        *o = m;
                    }
                }
                for ((o, a), b) in yr[blocks..]
                    .iter_mut()
                    .zip(r0[2 * blocks..].chunks_exact(2))
                    .zip(r1[2 * blocks..].chunks_exact(2))
                {
                    let mut m = a[0];
                    for v in [a[1], b[0], b[1]] {
                        if v > m {
                            m = v;
                        }
                    }
                    *o = m;
                }
            }
        }
        return;
    }
    for ch in 0..c {
        let xc = &x[ch * h * w..(ch + 1) * h * w];
        for oy in 0..ho {
            for ox in 0..wo {
                let mut m = xc[oy * s[0] * w + ox * s[1]];
                for ky in 0..k[0] {
                    for kx in 0..k[1] {
                        let v = xc[(oy * s[0] + ky) * w + ox * s[1] + kx];
                        if v > m {
                            m = v;
                        }
                    }
                }
                y[(ch * ho + oy) * wo + ox] = m;
            }
        }
    }
}

/// Float LayerNorm over the rows (channels) of `x` `[C, L]` at every column, vectorized over
/// the columns: `y = (x - mean) / sqrt(var + eps) * gamma + beta`, biased variance.
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_cols(
    x: &[f32],
    y: &mut [f32],
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    let l = x.len() / c;
    let (mean, rstd) = (&mut mean[..l], &mut rstd[..l]);
    mean.fill(0.0);
    for row in x.chunks_exact(l) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    let inv_c = 1.0 / c as f32;
    mean.iter_mut().for_each(|m| *m *= inv_c);
    rstd.fill(0.0);
    for row in x.chunks_exact(l) {
        for ((s, &v), &m) in rstd.iter_mut().zip(row).zip(mean.iter()) {
            let d = v - m;
            *s += d * d;
        }
    }
    rstd.iter_mut()
        .for_each(|s| *s = 1.0 / (*s * inv_c + eps).sqrt());
    for (ch, (yr, xr)) in y.chunks_exact_mut(l).zip(x.chunks_exact(l)).enumerate() {
        let (g, b) = (gamma[ch], beta[ch]);
        for (((o, &v), &m), &r) in yr.iter_mut().zip(xr).zip(mean.iter()).zip(rstd.iter()) {
            *o = (v - m) * r * g + b;
        }
    }
}

/// The input `xz` (`[2 d_inner, L]`) of [`MambaKernel`]: floats, or the int8 codes of the
/// `in_proj` output, dequantized row by row inside the mixer (`scale (q - zp)`, exactly as the
/// engine's `Dequantize` op) instead of by a separate pass over an `[2 d_inner, L]` float
/// buffer.
#[derive(Debug, Clone, Copy)]
pub enum MixerInput<'a> {
    /// Float values.
    F32(&'a [f32]),
    /// Affine int8 codes.
    Codes {
        /// The codes, `[2 d_inner, L]`.
        q: &'a [u8],
        /// Scale.
        scale: f32,
        /// Zero point.
        zp: i32,
    },
}

impl MixerInput<'_> {
    /// Values in the input.
    pub fn len(&self) -> usize {
        match self {
            MixerInput::F32(x) => x.len(),
            MixerInput::Codes { q, .. } => q.len(),
        }
    }

    /// True when the input holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `r` (`l` values): the float row itself, or its codes dequantized into `buf`.
    #[inline(always)]
    fn row<'b>(&'b self, r: usize, l: usize, buf: &'b mut [f32]) -> &'b [f32] {
        match *self {
            MixerInput::F32(x) => &x[r * l..(r + 1) * l],
            MixerInput::Codes { q, scale, zp } => {
                let buf = &mut buf[..l];
                for (o, &v) in buf.iter_mut().zip(&q[r * l..(r + 1) * l]) {
                    *o = scale * (v as i32 - zp) as f32;
                }
                buf
            }
        }
    }
}

/// The float Mamba mixer, prepared (see [`super::graph::Op::MambaMixer`]).
#[derive(Debug, Clone)]
pub struct MambaKernel {
    /// `d_inner`.
    pub di: usize,
    /// `d_state`.
    pub n: usize,
    /// `dt_rank`.
    pub r: usize,
    /// `d_conv`.
    pub k: usize,
    /// Sequence length.
    pub l: usize,
    /// Conv1d weight `[di, k]`.
    pub conv_w: Vec<f32>,
    /// Conv1d bias `[di]`.
    pub conv_b: Vec<f32>,
    /// `x_proj` `[r + 2n, di]`.
    pub x_proj: Vec<f32>,
    /// `dt_proj` weight `[di, r]`.
    pub dt_w: Vec<f32>,
    /// `dt_proj` bias `[di]`.
    pub dt_b: Vec<f32>,
    /// `A = -exp(A_log)` `[di, n]`.
    pub a: Vec<f32>,
    /// `D` `[di]`.
    pub d: Vec<f32>,
}

impl MambaKernel {
    /// Scratch floats needed by [`MambaKernel::run`].
    pub fn scratch_len(&self) -> usize {
        let (di, n, r, l) = (self.di, self.n, self.r, self.l);
        5 * di * l + (r + 2 * n) * l + 2 * l * n + 2 * di * n + 2 * di + l
    }

    /// Runs the mixer on `xz` `[2*di, L]` into `y` `[di, L]` with the widest kernels this CPU
    /// supports ([`Isa::detect`]).
    pub fn run(&self, xz: &[f32], y: &mut [f32], scratch: &mut [f32]) {
        self.run_isa(Isa::detect(), xz, y, scratch)
    }

    /// [`MambaKernel::run`] with the kernels of `isa` (or the widest supported level below).
    pub fn run_isa(&self, isa: Isa, xz: &[f32], y: &mut [f32], scratch: &mut [f32]) {
        self.run_input(isa, MixerInput::F32(xz), y, scratch)
    }

    /// [`MambaKernel::run_isa`] on either kind of [`MixerInput`].
    pub fn run_input(&self, isa: Isa, xz: MixerInput, y: &mut [f32], scratch: &mut [f32]) {
        assert!(
            xz.len() >= 2 * self.di * self.l,
            "mixer input: {} values for [{}, {}]",
            xz.len(),
            2 * self.di,
            self.l
        );
        match isa.or_supported() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `or_supported` checked that the CPU has the features enabled there.
            Isa::Avx512 | Isa::Avx512Vnni => unsafe { self.run_avx512(xz, y, scratch) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { self.run_avx2(xz, y, scratch) },
            _ => self.run_body::<Plain, 4>(Isa::Portable, xz, y, scratch),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, xz: MixerInput, y: &mut [f32], scratch: &mut [f32]) {
        self.run_body::<Fused, 8>(Isa::Avx2, xz, y, scratch)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    unsafe fn run_avx512(&self, xz: MixerInput, y: &mut [f32], scratch: &mut [f32]) {
        self.run_body::<Fused, 16>(Isa::Avx512, xz, y, scratch)
    }

    /// The mixer, generic over the multiply-add and the channel block `W` of the scan (one
    /// vector register of f32 lanes). `isa` must be the level of the enclosing
    /// `target_feature` function (it selects the explicit-SIMD scan blocks).
    #[inline(always)]
    fn run_body<M: MulAdd, const W: usize>(
        &self,
        isa: Isa,
        xz: MixerInput,
        y: &mut [f32],
        scratch: &mut [f32],
    ) {
        let (di, n, r, k, l) = (self.di, self.n, self.r, self.k, self.l);
        let (u, rest) = scratch.split_at_mut(di * l);
        let (xdbl, rest) = rest.split_at_mut((r + 2 * n) * l);
        let (delta, rest) = rest.split_at_mut(di * l);
        let (u_tm, rest) = rest.split_at_mut(l * di);
        let (delta_tm, rest) = rest.split_at_mut(l * di);
        let (y_tm, rest) = rest.split_at_mut(l * di);
        let (bt, rest) = rest.split_at_mut(l * n);
        let (ct, rest) = rest.split_at_mut(l * n);
        let (h, rest) = rest.split_at_mut(n * di);
        let (a_t, rest) = rest.split_at_mut(n * di);
        let (du, rest) = rest.split_at_mut(di);
        let (acc, rest) = rest.split_at_mut(di);
        let row = &mut rest[..l];
        let y = &mut y[..di * l];
        // Causal depthwise conv1d (PyTorch Conv1d, padding k-1, first L outputs) + SiLU:
        // u[c, t] = silu(b[c] + sum_j w[c, j] x[c, t + j - (k - 1)]).
        for c in 0..di {
            let (xr, ur) = (xz.row(c, l, row), &mut u[c * l..(c + 1) * l]);
            ur.fill(self.conv_b[c]);
            for j in 0..k {
                let wv = self.conv_w[c * k + j];
                let sh = k - 1 - j; // u[t] += w * x[t - sh]
                if sh >= l {
                    continue;
                }
                for (o, &v) in ur[sh..].iter_mut().zip(&xr[..l - sh]) {
                    *o = M::mul_add(wv, v, *o);
                }
            }
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 {
                // SAFETY: `isa` is the level of the enclosing `target_feature` function.
                unsafe { simd::silu_inplace(ur) };
                continue;
            }
            ur.iter_mut().for_each(|v| *v = silu_with::<M>(*v));
        }
        // x_dbl = x_proj u: [r + 2n, L].
        #[cfg(target_arch = "x86_64")]
        let done = isa == Isa::Avx512 && {
            // SAFETY: `isa` is the level of the enclosing `target_feature` function.
            unsafe { simd::matmul_rows(&self.x_proj, u, xdbl, r + 2 * n, di, l) };
            true
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = false;
        if !done {
            matmul_rows::<M>(&self.x_proj, u, xdbl, r + 2 * n, di, l);
        }
        // delta = softplus(dt_proj dt + b): [di, L].
        for c in 0..di {
            let row = &mut delta[c * l..(c + 1) * l];
            row.fill(self.dt_b[c]);
            for j in 0..r {
                let wv = self.dt_w[c * r + j];
                for (a, &v) in row.iter_mut().zip(&xdbl[j * l..(j + 1) * l]) {
                    *a = M::mul_add(wv, v, *a);
                }
            }
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 {
                // SAFETY: as above.
                unsafe { simd::softplus_inplace(row) };
                continue;
            }
            row.iter_mut().for_each(|v| *v = softplus_with::<M>(*v));
        }
        transpose(&self.a, a_t, di, n);
        // Selective scan (ZOH for A, Euler for B as in Mamba's reference):
        // h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t; y_t = <h_t, C_t> + D u_t.
        #[cfg(target_arch = "x86_64")]
        let done = if isa == Isa::Avx512 && n == 16 {
            // Time-major inputs and output: each step loads and stores contiguous channels.
            transpose_isa(isa, u, u_tm, di, l);
            transpose_isa(isa, delta, delta_tm, di, l);
            // SAFETY: `isa` is the level of the enclosing `target_feature` function.
            unsafe {
                simd::scan16_avx512(
                    di,
                    l,
                    delta_tm,
                    u_tm,
                    &xdbl[r * l..],
                    [l, 1],
                    a_t,
                    &self.d,
                    y_tm,
                )
            };
            transpose_isa(isa, y_tm, y, l, di);
            true
        } else {
            false
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = false;
        if !done {
            // Time-major copies so that each scan step runs over contiguous channels, in
            // blocks of W (then 8, then 1) whose outputs stay in registers across the d_state
            // lanes.
            transpose_isa(isa, u, u_tm, di, l);
            transpose_isa(isa, delta, delta_tm, di, l);
            transpose_isa(isa, &xdbl[r * l..(r + n) * l], bt, n, l);
            transpose_isa(isa, &xdbl[(r + n) * l..(r + 2 * n) * l], ct, n, l);
            self.scan_steps::<M, W>(isa, delta_tm, u_tm, bt, ct, a_t, h, du, acc, y);
        }
        // Gate: y *= silu(z).
        for (c, yr) in y.chunks_exact_mut(l).enumerate() {
            let z = xz.row(di + c, l, row);
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 {
                // SAFETY: as above.
                unsafe { simd::gate(yr, z) };
                continue;
            }
            for (o, &zz) in yr.iter_mut().zip(z) {
                *o *= silu_with::<M>(zz);
            }
        }
    }

    /// The selective scan time step by time step, channel blocks of `W` (then 8, then 1)
    /// inside, states `h` `[n, di]` in memory; writes `y` `[di, L]`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn scan_steps<M: MulAdd, const W: usize>(
        &self,
        isa: Isa,
        delta_tm: &[f32],
        u_tm: &[f32],
        bt: &[f32],
        ct: &[f32],
        a_t: &[f32],
        h: &mut [f32],
        du: &mut [f32],
        acc: &mut [f32],
        y: &mut [f32],
    ) {
        let (di, n, l) = (self.di, self.n, self.l);
        h.fill(0.0);
        for t in 0..l {
            let (dt, ut) = (&delta_tm[t * di..(t + 1) * di], &u_tm[t * di..(t + 1) * di]);
            for ((d, &a), &b) in du.iter_mut().zip(dt).zip(ut) {
                *d = a * b;
            }
            for ((o, &dd), &uu) in acc.iter_mut().zip(&self.d).zip(ut) {
                *o = dd * uu;
            }
            let (bs, cs) = (&bt[t * n..(t + 1) * n], &ct[t * n..(t + 1) * n]);
            let mut c0 = 0;
            #[cfg(target_arch = "x86_64")]
            {
                // SAFETY: `isa` is the level of the enclosing `target_feature` function
                // (checked by `run_isa`); the blocks index inside `h`, `a_t` (`n * di`),
                // `dt`, `du`, `acc` (`di`) and `bs`, `cs` (`n`) as asserted there.
                if isa == Isa::Avx512 {
                    while c0 + 16 <= di {
                        unsafe { simd::scan_block16(c0, di, h, a_t, dt, du, acc, bs, cs) };
                        c0 += 16;
                    }
                }
                if isa >= Isa::Avx2 {
                    while c0 + 8 <= di {
                        unsafe { simd::scan_block8(c0, di, h, a_t, dt, du, acc, bs, cs) };
                        c0 += 8;
                    }
                }
            }
            let _ = isa;
            while c0 + W <= di {
                scan_block::<M, W>(c0, di, h, a_t, dt, du, acc, bs, cs);
                c0 += W;
            }
            while c0 < di {
                scan_block::<M, 1>(c0, di, h, a_t, dt, du, acc, bs, cs);
                c0 += 1;
            }
            for (c, &v) in acc.iter().enumerate() {
                y[c * l + t] = v;
            }
        }
    }
}

/// `out[o][t] = sum_c w[o][c] x[c][t]` for `w` `[rows, k]`, `x` `[k, L]`, `out` `[rows, L]`,
/// each sum from 0 in the order `c = 0, 1, ...` (as a plain loop), register-blocked: 8 output
/// rows x 16 columns of accumulators per step, rows and columns past the blocks one by one.
#[inline(always)]
fn matmul_rows<M: MulAdd>(w: &[f32], x: &[f32], out: &mut [f32], rows: usize, k: usize, l: usize) {
    const R: usize = 8;
    const T: usize = 16;
    let (w, x, out) = (&w[..rows * k], &x[..k * l], &mut out[..rows * l]);
    let (l16, rows8) = (l / T * T, rows / R * R);
    for o0 in (0..rows8).step_by(R) {
        for t0 in (0..l16).step_by(T) {
            let mut acc = [[0.0f32; T]; R];
            for c in 0..k {
                let xs: &[f32; T] = x[c * l + t0..c * l + t0 + T].try_into().expect("T");
                for (j, aj) in acc.iter_mut().enumerate() {
                    // SAFETY: `o0 + j < rows8 <= rows` and `c < k`, so the index is inside
                    // `w` (`rows * k`, sliced above). Checked indexing here kept the 8 row
                    // offsets live as bounds operands and spilled them (4x slower).
                    let wv = unsafe { *w.get_unchecked((o0 + j) * k + c) };
                    for (a, &v) in aj.iter_mut().zip(xs) {
                        *a = M::mul_add(wv, v, *a);
                    }
                }
            }
            for (j, aj) in acc.iter().enumerate() {
                out[(o0 + j) * l + t0..(o0 + j) * l + t0 + T].copy_from_slice(aj);
            }
        }
    }
    for o in 0..rows {
        let t_start = if o < rows8 { l16 } else { 0 };
        let row = &mut out[o * l + t_start..(o + 1) * l];
        row.fill(0.0);
        for c in 0..k {
            let wv = w[o * k + c];
            for (a, &v) in row.iter_mut().zip(&x[c * l + t_start..(c + 1) * l]) {
                *a = M::mul_add(wv, v, *a);
            }
        }
    }
}

/// One scan step for the `W` channels `c0..c0 + W`, all `d_state` lanes `s`:
/// `h[s][c] = exp(delta[c] a[s][c]) h[s][c] + du[c] b[s]`, `acc[c] += h[s][c] c[s]`, with
/// `acc` held in registers (the same summation order as a plain loop over `s`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn scan_block<M: MulAdd, const W: usize>(
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
            let e = fast_exp_with::<M>(d[j] * a[j]);
            hs[j] = M::mul_add(e, hs[j], u[j] * b);
            y[j] = M::mul_add(hs[j], c, y[j]);
        }
    }
    acc[c0..c0 + W].copy_from_slice(&y);
}

/// Explicit-SIMD scan blocks: the same arithmetic as [`scan_block`] with [`Fused`] (and as
/// `fast_exp_with::<Fused>`), so their results equal the auto-vectorized generic block's.
#[cfg(target_arch = "x86_64")]
mod simd {
    #[allow(clippy::wildcard_imports)]
    use std::arch::x86_64::*;

    const MAGIC: f32 = 12_582_912.0;

    /// [`super::transpose_strided`] with each 8 x 8 tile transposed in eight ymm registers (unpack,
    /// shuffle, then 128-bit lane permutes: the classic 24-instruction sequence), the edges
    /// element by element.
    ///
    /// # Safety
    /// The CPU must support AVX.
    #[target_feature(enable = "avx")]
    pub unsafe fn transpose_avx(
        src: &[f32],
        src_ld: usize,
        dst: &mut [f32],
        dst_ld: usize,
        rows: usize,
        cols: usize,
    ) {
        if rows == 0 || cols == 0 {
            return;
        }
        // Every element read or written below lies inside these bounds (checked once).
        assert!(
            cols <= src_ld && rows <= dst_ld,
            "transpose: views overlap their rows"
        );
        let (src, dst) = (
            &src[..(rows - 1) * src_ld + cols],
            &mut dst[..(cols - 1) * dst_ld + rows],
        );
        let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
        for i0 in (0..r8).step_by(8) {
            for j0 in (0..c8).step_by(8) {
                // SAFETY: rows i0..i0 + 8 <= rows and columns j0..j0 + 8 <= cols of `src`
                // (`[rows, cols]` view, rows `src_ld` apart); rows j0..j0 + 8 and columns
                // i0..i0 + 8 of `dst` (`[cols, rows]`, rows `dst_ld` apart): inside the slices.
                unsafe {
                    let ld = |i: usize| _mm256_loadu_ps(src.as_ptr().add((i0 + i) * src_ld + j0));
                    let (r0, r1, r2, r3) = (ld(0), ld(1), ld(2), ld(3));
                    let (r4, r5, r6, r7) = (ld(4), ld(5), ld(6), ld(7));
                    let t0 = _mm256_unpacklo_ps(r0, r1);
                    let t1 = _mm256_unpackhi_ps(r0, r1);
                    let t2 = _mm256_unpacklo_ps(r2, r3);
                    let t3 = _mm256_unpackhi_ps(r2, r3);
                    let t4 = _mm256_unpacklo_ps(r4, r5);
                    let t5 = _mm256_unpackhi_ps(r4, r5);
                    let t6 = _mm256_unpacklo_ps(r6, r7);
                    let t7 = _mm256_unpackhi_ps(r6, r7);
                    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                    let out = [
                        _mm256_permute2f128_ps::<0x20>(s0, s4),
                        _mm256_permute2f128_ps::<0x20>(s1, s5),
                        _mm256_permute2f128_ps::<0x20>(s2, s6),
                        _mm256_permute2f128_ps::<0x20>(s3, s7),
                        _mm256_permute2f128_ps::<0x31>(s0, s4),
                        _mm256_permute2f128_ps::<0x31>(s1, s5),
                        _mm256_permute2f128_ps::<0x31>(s2, s6),
                        _mm256_permute2f128_ps::<0x31>(s3, s7),
                    ];
                    for (j, v) in out.into_iter().enumerate() {
                        _mm256_storeu_ps(dst.as_mut_ptr().add((j0 + j) * dst_ld + i0), v);
                    }
                }
            }
        }
        super::transpose_edges(src, src_ld, dst, dst_ld, rows, cols);
    }

    macro_rules! scan_block_impl {
        ($name:ident, $feat:literal, $w:literal, $v:ty, $vi:ty, $set1:ident, $loadu:ident,
         $storeu:ident, $mul:ident, $add:ident, $sub:ident, $fmadd:ident, $min:ident,
         $max:ident, $castps:ident, $castsi:ident, $subi:ident, $addi:ident, $slli:ident,
         $set1i:ident) => {
            /// One scan step for the channels `c0..c0 + W` (see [`super::scan_block`]).
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
                    let (lo, hi) = ($set1(-87.0), $set1(88.0));
                    let (log2e, magic) = ($set1(std::f32::consts::LOG2_E), $set1(MAGIC));
                    let magic_bits = $set1i(MAGIC.to_bits() as i32);
                    let (c1, c2) = ($set1(-0.693_359_4), $set1(2.121_944_4e-4));
                    let p0 = $set1(1.987_569_1e-4);
                    let p1 = $set1(1.398_199_9e-3);
                    let p2 = $set1(8.333_452e-3);
                    let p3 = $set1(4.166_579_6e-2);
                    let p4 = $set1(1.666_666_5e-1);
                    let p5 = $set1(5.000_000_1e-1_f64 as f32);
                    let one = $set1(1.0);
                    let bias = $set1i(127);
                    for s in 0..n {
                        let hp = h.as_mut_ptr().add(s * di + c0);
                        let a = $loadu(a_t.as_ptr().add(s * di + c0));
                        // e = exp(d * a), as `fast_exp_with::<Fused>`.
                        let x = $min($max($mul(d, a), lo), hi);
                        let t = $add($mul(x, log2e), magic);
                        let ni = $subi($castps(t), magic_bits);
                        let nf = $sub(t, magic);
                        let r = $fmadd(nf, c1, x);
                        let r = $fmadd(nf, c2, r);
                        let mut p = $fmadd(p0, r, p1);
                        p = $fmadd(p, r, p2);
                        p = $fmadd(p, r, p3);
                        p = $fmadd(p, r, p4);
                        p = $fmadd(p, r, p5);
                        let e = $add($fmadd($mul(p, r), r, r), one);
                        let e = $mul(e, $castsi($slli::<23>($addi(ni, bias))));
                        let hv = $fmadd(e, $loadu(hp), $mul(u, $set1(*bs.get_unchecked(s))));
                        $storeu(hp, hv);
                        y = $fmadd(hv, $set1(*cs.get_unchecked(s)), y);
                    }
                    $storeu(acc.as_mut_ptr().add(c0), y);
                }
            }
        };
    }

    /// [`super::matmul_rows`] with explicit AVX-512: blocks of 8 output rows x 32 columns in
    /// 16 zmm accumulators (each weight broadcast once for two FMAs; the auto-vectorized
    /// generic loop held 8 x 16), the rows past the blocks one at a time, the last columns
    /// masked. Each sum runs from 0 over `c = 0, 1, ...` with fused multiply-adds, as the
    /// generic loop with [`super::Fused`].
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and FMA.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn matmul_rows(
        w: &[f32],
        x: &[f32],
        out: &mut [f32],
        rows: usize,
        k: usize,
        l: usize,
    ) {
        assert!(w.len() >= rows * k && x.len() >= k * l && out.len() >= rows * l);
        let mut o0 = 0;
        while o0 + 8 <= rows {
            // SAFETY: rows `o0..o0 + 8 <= rows` (asserted lengths).
            unsafe { matmul_block::<8>(w, x, out, o0, k, l) };
            o0 += 8;
        }
        while o0 < rows {
            // SAFETY: as above, one row.
            unsafe { matmul_block::<1>(w, x, out, o0, k, l) };
            o0 += 1;
        }
    }

    /// Rows `o0..o0 + R` of [`matmul_rows`].
    ///
    /// # Safety
    /// AVX-512 F and FMA; `o0 + R <= rows` for the lengths asserted by [`matmul_rows`].
    #[target_feature(enable = "avx512f,fma")]
    #[inline]
    unsafe fn matmul_block<const R: usize>(
        w: &[f32],
        x: &[f32],
        out: &mut [f32],
        o0: usize,
        k: usize,
        l: usize,
    ) {
        let mut t0 = 0;
        while t0 < l {
            let n = (l - t0).min(32);
            let (m0, m1) = (super::lanes16(n), super::lanes16(n.saturating_sub(16)));
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for c in 0..k {
                // SAFETY: columns `t0..t0 + n <= l` of row `c < k` of `x` (`k * l`) and
                // weight `(o0 + j, c)` inside `w` (`rows * k`); masked-off lanes untouched.
                unsafe {
                    let xp = x.as_ptr().add(c * l + t0);
                    let (x0, x1) = (
                        _mm512_maskz_loadu_ps(m0, xp),
                        _mm512_maskz_loadu_ps(m1, xp.add(16)),
                    );
                    for (j, a) in acc.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(*w.get_unchecked((o0 + j) * k + c));
                        a[0] = _mm512_fmadd_ps(wv, x0, a[0]);
                        a[1] = _mm512_fmadd_ps(wv, x1, a[1]);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                // SAFETY: columns `t0..t0 + n` of row `o0 + j` of `out` (`rows * l`).
                unsafe {
                    let op = out.as_mut_ptr().add((o0 + j) * l + t0);
                    _mm512_mask_storeu_ps(op, m0, a[0]);
                    _mm512_mask_storeu_ps(op.add(16), m1, a[1]);
                }
            }
            t0 += 32;
        }
    }

    /// `2^x` on 16 lanes as the scan's exponential: `2^floor(x) p(x - floor(x))` with
    /// [`super::EXP2_POLY`] (`vreduceps` for the fraction, `vscalefps`, which floors its
    /// exponent itself: far below -126 the result is 0, above 128 infinity).
    #[target_feature(enable = "avx512f,avx512dq,fma")]
    #[inline]
    pub fn exp2_16(x: __m512) -> __m512 {
        let [q0, q1, q2, q3, q4, q5] = super::EXP2_POLY.map(|c| _mm512_set1_ps(c));
        let f = _mm512_reduce_ps::<0x09>(x);
        let mut p = _mm512_fmadd_ps(q5, f, q4);
        p = _mm512_fmadd_ps(p, f, q3);
        p = _mm512_fmadd_ps(p, f, q2);
        p = _mm512_fmadd_ps(p, f, q1);
        p = _mm512_fmadd_ps(p, f, q0);
        _mm512_scalef_ps(p, x)
    }

    /// `x sigma(x) = x / (1 + e^-x)` on 16 lanes: `e^-x` by [`exp2_16`] (`x` raised to -86
    /// first, where `|silu| < 1e-35`, so that `1 + e` and its reciprocal stay normal), the
    /// reciprocal by `vrcp14ps` and one Newton step (error about 1e-8, below f32 rounding;
    /// a division occupies the divider for about 10 cycles per vector).
    #[target_feature(enable = "avx512f,avx512dq,fma")]
    #[inline]
    fn silu_16(x: __m512) -> __m512 {
        let one = _mm512_set1_ps(1.0);
        let x = _mm512_max_ps(x, _mm512_set1_ps(-86.0));
        let t = _mm512_mul_ps(x, _mm512_set1_ps(-std::f32::consts::LOG2_E));
        let d = _mm512_add_ps(exp2_16(t), one);
        let r = _mm512_rcp14_ps(d);
        let r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, one), r);
        _mm512_mul_ps(x, r)
    }

    /// `ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|)` on 16 lanes: [`exp2_16`] and
    /// [`super::LN_1P_POLY`] (`ln(1 + e) = e q(e)`).
    #[target_feature(enable = "avx512f,avx512dq,fma")]
    #[inline]
    fn softplus_16(x: __m512) -> __m512 {
        let a = _mm512_abs_ps(x);
        let e = exp2_16(_mm512_mul_ps(a, _mm512_set1_ps(-std::f32::consts::LOG2_E)));
        let c = super::LN_1P_POLY.map(|c| _mm512_set1_ps(c));
        let mut q = c[8];
        for &ck in c[..8].iter().rev() {
            q = _mm512_fmadd_ps(q, e, ck);
        }
        _mm512_fmadd_ps(e, q, _mm512_max_ps(x, _mm512_setzero_ps()))
    }

    /// `y[i] = f(y[i], z[i])` over a row (`z` as long as `y`, or empty: then zeros), 16 lanes
    /// per step, the tail masked.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn map_row(y: &mut [f32], z: &[f32], f: impl Fn(__m512, __m512) -> __m512) {
        let n = y.len();
        assert!(z.is_empty() || z.len() == n);
        let mut i = 0;
        while i < n {
            let k = (n - i).min(16);
            let mask: __mmask16 = super::lanes16(k);
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

    /// `x = silu(x)` in place ([`silu_16`]).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/DQ and FMA.
    #[target_feature(enable = "avx512f,avx512dq,fma")]
    pub unsafe fn silu_inplace(x: &mut [f32]) {
        map_row(x, &[], |v, _| silu_16(v));
    }

    /// `x = softplus(x)` in place ([`softplus_16`]).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/DQ and FMA.
    #[target_feature(enable = "avx512f,avx512dq,fma")]
    pub unsafe fn softplus_inplace(x: &mut [f32]) {
        map_row(x, &[], |v, _| softplus_16(v));
    }

    /// The gate `y *= silu(z)` ([`silu_16`]).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/DQ and FMA.
    #[target_feature(enable = "avx512f,avx512dq,fma")]
    pub unsafe fn gate(y: &mut [f32], z: &[f32]) {
        map_row(y, z, |yv, zv| _mm512_mul_ps(yv, silu_16(zv)));
    }

    /// The whole selective scan with d_state 16 on AVX-512, channel block outer and time inner:
    /// the 16 states of a block of channels stay in 16 registers over all `L` steps, blocks of
    /// 16 channels in zmm and the last block of at most 8 in ymm (masked; a ymm op costs half
    /// a zmm op where 512-bit FMAs issue on one port), `exp(delta a)` as
    /// [`super::fast_exp2`]`(delta (a log2 e))` (11 vector ops per state and step instead of 19
    /// for the Cephes form; the results differ from the other paths by rounding only),
    /// `y_t = D u_t + <h_t, C_t>` summed in two interleaved partial sums. Reads the
    /// time-major `delta`, `u` `[L, di]` by (masked) vector loads and `B`, `C` (`bc`: row
    /// `j < 32` (`B` then `C`) at step `t` is `bc[j * bc_strides[0] + t * bc_strides[1]]`: the
    /// rows of `x_dbl` after `dt`, `[2 * 16, L]`, for strides `[L, 1]`) by broadcast loads,
    /// `a_t` `[16, di]`;
    /// writes the time-major `y` `[L, di]` by masked stores (measured: gathers and scatters
    /// on the channel-major layout cost more than transposing in and out).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/DQ/VL and FMA.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn scan16_avx512(
        di: usize,
        l: usize,
        delta: &[f32],
        u: &[f32],
        bc: &[f32],
        bc_strides: [usize; 2],
        a_t: &[f32],
        d_skip: &[f32],
        y: &mut [f32],
    ) {
        assert!(
            delta.len() >= di * l
                && u.len() >= di * l
                && (l == 0 || bc.len() > 31 * bc_strides[0] + (l - 1) * bc_strides[1])
                && a_t.len() >= 16 * di
                && d_skip.len() >= di
                && y.len() >= di * l
                && di * l < i32::MAX as usize
        );
        let mut c0 = 0;
        while c0 < di {
            let nl = (di - c0).min(16);
            // SAFETY: channels `c0..c0 + nl <= di` inside the asserted lengths.
            unsafe {
                if nl > 8 {
                    scan_block_w16(c0, nl, di, l, delta, u, bc, bc_strides, a_t, d_skip, y);
                } else {
                    scan_block_w8(c0, nl, di, l, delta, u, bc, bc_strides, a_t, d_skip, y);
                }
            }
            c0 += nl;
        }
    }

    macro_rules! scan16_block_impl {
        ($name:ident, $w:literal, $v:ty, $m:ty, $setzero:ident, $set1:ident,
         $loadu:ident, $maskz_loadu:ident, $mul:ident, $add:ident,
         $fmadd:ident, $reduce:ident, $scalef:ident, $mask_storeu:ident) => {
            /// One channel block (`nl <= W` channels from `c0`) of [`scan16_avx512`].
            ///
            /// # Safety
            /// The CPU must support AVX-512 F/DQ/VL and FMA; `c0 + nl <= di` and the lengths
            /// asserted by [`scan16_avx512`].
            #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn $name(
                c0: usize,
                nl: usize,
                di: usize,
                l: usize,
                delta: &[f32],
                u: &[f32],
                bc: &[f32],
                [bs, bt]: [usize; 2],
                a_t: &[f32],
                d_skip: &[f32],
                y: &mut [f32],
            ) {
                const N: usize = 16;
                let [q0, q1, q2, q3, q4, q5] = super::EXP2_POLY.map(|c| $set1(c));
                let mask: $m = if nl == $w {
                    !0
                } else {
                    ((1u32 << nl) - 1) as $m
                };
                // A log2(e) of the block in a local table read by memory operands (h takes 16
                // registers).
                let mut ab = [[0.0f32; $w]; N];
                for (s, av) in ab.iter_mut().enumerate() {
                    for (o, &v) in av.iter_mut().zip(&a_t[s * di + c0..s * di + c0 + nl]) {
                        *o = v * std::f32::consts::LOG2_E;
                    }
                }
                let abp = ab.as_ptr() as *const f32;
                // SAFETY (masked loads and stores): lanes `j < nl` touch channel
                // `c0 + j < di` at `t < L`, inside the lengths asserted by the caller;
                // masked-off lanes are not accessed.
                let dsk = unsafe { $maskz_loadu(mask, d_skip.as_ptr().add(c0)) };
                let (dp, up, yp) = unsafe {
                    (
                        delta.as_ptr().add(c0),
                        u.as_ptr().add(c0),
                        y.as_mut_ptr().add(c0),
                    )
                };
                let mut h = [$setzero(); N];
                for t in 0..l {
                    let (d, uv) = unsafe {
                        (
                            $maskz_loadu(mask, dp.add(t * di)),
                            $maskz_loadu(mask, up.add(t * di)),
                        )
                    };
                    let du = $mul(d, uv);
                    let mut y0 = $mul(dsk, uv);
                    let mut y1 = $setzero();
                    macro_rules! state {
                        ($s:literal, $y:ident) => {{
                            // SAFETY: rows `s` and `16 + s` of `bc` at `t < L`; row `s` of
                            // the table `ab`.
                            let (b, c, a) = unsafe {
                                (
                                    $set1(*bc.get_unchecked($s * bs + t * bt)),
                                    $set1(*bc.get_unchecked((N + $s) * bs + t * bt)),
                                    $loadu(abp.add($s * $w)),
                                )
                            };
                            // exp(d a) = 2^x, x = d (a log2 e) <= 0 (d >= 0 from softplus,
                            // a < 0), as `fast_exp2`: f = x - floor(x) (vreduceps, round
                            // down, precision exception suppressed), 2^floor(x) p(f)
                            // (vscalefps floors x itself; far below -126 it gives 0).
                            let x = $mul(d, a);
                            let f = $reduce::<0x09>(x);
                            let mut p = $fmadd(q5, f, q4);
                            p = $fmadd(p, f, q3);
                            p = $fmadd(p, f, q2);
                            p = $fmadd(p, f, q1);
                            p = $fmadd(p, f, q0);
                            let e = $scalef(p, x);
                            h[$s] = $fmadd(e, h[$s], $mul(du, b));
                            $y = $fmadd(h[$s], c, $y);
                        }};
                    }
                    state!(0, y0);
                    state!(1, y1);
                    state!(2, y0);
                    state!(3, y1);
                    state!(4, y0);
                    state!(5, y1);
                    state!(6, y0);
                    state!(7, y1);
                    state!(8, y0);
                    state!(9, y1);
                    state!(10, y0);
                    state!(11, y1);
                    state!(12, y0);
                    state!(13, y1);
                    state!(14, y0);
                    state!(15, y1);
                    unsafe { $mask_storeu(yp.add(t * di), mask, $add(y0, y1)) };
                }
            }
        };
    }

    scan16_block_impl!(
        scan_block_w16,
        16,
        __m512,
        __mmask16,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_maskz_loadu_ps,
        _mm512_mul_ps,
        _mm512_add_ps,
        _mm512_fmadd_ps,
        _mm512_reduce_ps,
        _mm512_scalef_ps,
        _mm512_mask_storeu_ps
    );

    scan16_block_impl!(
        scan_block_w8,
        8,
        __m256,
        __mmask8,
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_maskz_loadu_ps,
        _mm256_mul_ps,
        _mm256_add_ps,
        _mm256_fmadd_ps,
        _mm256_reduce_ps,
        _mm256_scalef_ps,
        _mm256_mask_storeu_ps
    );

    scan_block_impl!(
        scan_block16,
        "avx512f,avx2,fma",
        16,
        __m512,
        __m512i,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
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
        _mm512_slli_epi32,
        _mm512_set1_epi32
    );

    scan_block_impl!(
        scan_block8,
        "avx2,fma",
        8,
        __m256,
        __m256i,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
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
        _mm256_slli_epi32,
        _mm256_set1_epi32
    );
}

/// The engine's AVX-512 mixer pieces for float callers outside the engine (the training
/// mixer, [`crate::mixer`]): `silu_inplace`, `softplus_inplace`, `gate` (`y *= silu(z)`) and
/// `matmul_rows` (`out = w x`, `w` `[rows, k]`, `x` `[k, L]`). Unsafe: callers check
/// `Isa::detect() >= Isa::Avx512` (AVX-512 F/BW/DQ/VL and FMA) first.
#[cfg(target_arch = "x86_64")]
pub(crate) use simd::{
    exp2_16, gate, matmul_rows as matmul_rows_avx512, silu_inplace, softplus_inplace,
};

/// The engine's AVX-512 register scan with `d_state` 16 (`simd::scan16_avx512`) for float
/// callers outside the engine (the training mixer's forward pass, [`crate::mixer`]): time-major
/// `delta`, `u`, `y` `[L, di]`, `bc` the `B` then `C` rows (row `j`, step `t` at
/// `j * bc_strides[0] + t * bc_strides[1]`), `a_t` = `A^T`
/// `[16, di]`, `d` `[di]`. Returns `false`, leaving `y` untouched, where this CPU has no
/// AVX-512 (or `ASC_INT8_ISA` caps it below).
#[allow(clippy::too_many_arguments)]
pub fn scan16_time_major(
    di: usize,
    l: usize,
    delta: &[f32],
    u: &[f32],
    bc: &[f32],
    bc_strides: [usize; 2],
    a_t: &[f32],
    d: &[f32],
    y: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() >= Isa::Avx512 {
        // SAFETY: `detect` checked AVX-512 F/DQ/VL and FMA; `scan16_avx512` asserts the lengths.
        unsafe { simd::scan16_avx512(di, l, delta, u, bc, bc_strides, a_t, d, y) };
        return true;
    }
    let _ = (di, l, delta, u, bc, bc_strides, a_t, d, y);
    false
}

/// [`transpose`] with the 8 x 8 register tiles of `simd::transpose_avx` when `isa` has AVX2.
#[inline(always)]
fn transpose_isa(isa: Isa, src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    #[cfg(target_arch = "x86_64")]
    if isa.or_supported() >= Isa::Avx2 {
        let (src, dst) = (&src[..rows * cols], &mut dst[..rows * cols]);
        // SAFETY: `or_supported` checked that the CPU has AVX2 (hence AVX).
        unsafe { simd::transpose_avx(src, cols, dst, rows, rows, cols) };
        return;
    }
    let _ = isa;
    transpose(src, dst, rows, cols);
}

/// [`transpose_strided`] with the 8 x 8 register tiles of `simd::transpose_avx` where the CPU
/// has AVX (the standard library caches the CPUID query): 16 loads, 24 shuffles and 8 stores
/// per tile instead of 64 element moves through a stack array, which LLVM leaves scalar.
#[inline(always)]
pub fn transpose_strided_fast(
    src: &[f32],
    src_ld: usize,
    dst: &mut [f32],
    dst_ld: usize,
    rows: usize,
    cols: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked above).
        unsafe { simd::transpose_avx(src, src_ld, dst, dst_ld, rows, cols) };
        return;
    }
    transpose_strided(src, src_ld, dst, dst_ld, rows, cols);
}

/// `dst[j, i] = src[i, j]` for `src` `[rows, cols]` ([`transpose_strided`] on contiguous
/// views; measured on `[24, 512]`: 8 us against 11 us for the element loop, which a profile of
/// the AVX-512 mixer showed as a sixth of its time).
#[inline(always)]
pub fn transpose(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    let (src, dst) = (&src[..rows * cols], &mut dst[..rows * cols]);
    transpose_strided(src, cols, dst, rows, rows, cols);
}

/// `dst[j * dst_ld + i] = src[i * src_ld + j]` for `i < rows`, `j < cols`: a transpose between
/// strided row-major views (the training mixer moves column ranges of token-major rows), in
/// 8 x 8 tiles held in a local array, which the compiler turns into register shuffles
/// (element by element, the column writes of a `[48, 512]` plane collide in two L1 sets),
/// then the edges one by one.
#[inline(always)]
pub fn transpose_strided(
    src: &[f32],
    src_ld: usize,
    dst: &mut [f32],
    dst_ld: usize,
    rows: usize,
    cols: usize,
) {
    const T: usize = 8;
    let (r8, c8) = (rows / T * T, cols / T * T);
    for i0 in (0..r8).step_by(T) {
        for j0 in (0..c8).step_by(T) {
            let mut tile = [[0f32; T]; T];
            for (i, t) in tile.iter_mut().enumerate() {
                t.copy_from_slice(&src[(i0 + i) * src_ld + j0..][..T]);
            }
            for j in 0..T {
                let out = &mut dst[(j0 + j) * dst_ld + i0..][..T];
                for (i, o) in out.iter_mut().enumerate() {
                    *o = tile[i][j];
                }
            }
        }
    }
    transpose_edges(src, src_ld, dst, dst_ld, rows, cols);
}

/// The elements of [`transpose_strided`] outside the 8 x 8 tiles (columns past the last whole
/// tile of the tiled rows, and the rows past the last whole tile), one by one.
#[inline(always)]
fn transpose_edges(
    src: &[f32],
    src_ld: usize,
    dst: &mut [f32],
    dst_ld: usize,
    rows: usize,
    cols: usize,
) {
    let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
    for i in 0..rows {
        let first = if i < r8 { c8 } else { 0 };
        for j in first..cols {
            dst[j * dst_ld + i] = src[i * src_ld + j];
        }
    }
}

#[cfg(test)]
mod dispatch_tests {
    //! The dispatched AVX2 / AVX-512 kernels against the portable path (and a naive loop).
    use super::*;
    use crate::int8::tests::randv;

    #[test]
    fn tiled_transpose_matches_the_definition() {
        for (rows, cols) in [
            (1, 1),
            (3, 5),
            (8, 8),
            (24, 512),
            (13, 17),
            (16, 9),
            (9, 16),
        ] {
            let src: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            for isa in [Isa::Portable, Isa::Avx2] {
                let mut dst = vec![-1.0; rows * cols];
                transpose_isa(isa, &src, &mut dst, rows, cols);
                for i in 0..rows {
                    for j in 0..cols {
                        assert_eq!(
                            dst[j * rows + i],
                            src[i * cols + j],
                            "{isa:?} {rows}x{cols} ({i}, {j})"
                        );
                    }
                }
            }
            // Strided views: columns 3..3 + cols of rows of width cols + 5 into rows of
            // width rows + 2 (the padding of dst stays untouched).
            let (sld, dld) = (cols + 5, rows + 2);
            let wide: Vec<f32> = (0..rows * sld).map(|v| v as f32).collect();
            let mut dst = vec![-1.0; cols * dld];
            transpose_strided(&wide[3..], sld, &mut dst, dld, rows, cols);
            for j in 0..cols {
                for i in 0..dld {
                    let want = if i < rows {
                        wide[i * sld + 3 + j]
                    } else {
                        -1.0
                    };
                    assert_eq!(dst[j * dld + i], want, "strided {rows}x{cols} ({i}, {j})");
                }
            }
        }
    }
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn levels() -> Vec<Isa> {
        [Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni]
            .into_iter()
            .filter(|i| i.available())
            .collect()
    }

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

    #[test]
    fn max_pool_2x2_fast_path_equals_the_definition() {
        let mut rng = StdRng::seed_from_u64(13);
        for (c, h, w) in [(3, 4, 6), (2, 5, 7), (1, 2, 2), (4, 9, 33), (2, 6, 21)] {
            let x: Vec<u8> = (0..c * h * w).map(|_| rng.random_range(0..=255)).collect();
            let (ho, wo) = (h / 2, w / 2);
            let mut want = vec![0u8; c * ho * wo];
            for ch in 0..c {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let at = |dy: usize, dx: usize| x[(ch * h + 2 * oy + dy) * w + 2 * ox + dx];
                        want[(ch * ho + oy) * wo + ox] =
                            at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
                    }
                }
            }
            let mut y = vec![0u8; want.len()];
            max_pool2d(&x, &mut y, c, h, w, [2, 2], [2, 2]);
            assert_eq!(y, want, "{c}x{h}x{w}");
        }
    }

    /// A mixer with random weights (conv width 4) and `A = -(1..n)` jittered per channel.
    fn random_mixer(rng: &mut StdRng, di: usize, n: usize, r: usize, l: usize) -> MambaKernel {
        MambaKernel {
            di,
            n,
            r,
            k: 4,
            l,
            conv_w: randv(rng, di * 4, 0.8),
            conv_b: randv(rng, di, 0.2),
            x_proj: randv(rng, (r + 2 * n) * di, 0.5),
            dt_w: randv(rng, di * r, 0.7),
            dt_b: randv(rng, di, 2.0),
            a: (0..di * n)
                .map(|i| -((i % n + 1) as f32) * (1.0 + 0.3 * ((i * 7) % 5) as f32 / 5.0))
                .collect(),
            d: randv(rng, di, 1.0),
        }
    }

    #[test]
    fn dispatched_mamba_mixer_matches_the_portable_path() {
        let mut rng = StdRng::seed_from_u64(12);
        // d_inner 24 = one 16-block + one 8-block; 37 = two 16-blocks + 5 scalar lanes.
        for (di, n, r, l) in [(24, 16, 1, 70), (37, 16, 3, 33), (8, 5, 2, 9)] {
            let mk = random_mixer(&mut rng, di, n, r, l);
            let xz = randv(&mut rng, 2 * di * l, 2.0);
            let mut scratch = vec![0.0; mk.scratch_len()];
            let mut want = vec![0.0; di * l];
            mk.run_isa(Isa::Portable, &xz, &mut want, &mut scratch);
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.1, "non-trivial output");
            for isa in levels() {
                let mut y = vec![0.0; di * l];
                mk.run_isa(isa, &xz, &mut y, &mut scratch);
                for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * scale,
                        "{isa:?} di {di}: y[{i}] = {a}, portable {b}"
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_matmul_rows_equals_the_generic_fused_loop() {
        if !Isa::Avx512.available() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(23);
        // 33 rows: four blocks of 8 and one more; 70 columns: two of 32 and a masked 6.
        for (rows, k, l) in [(33, 24, 70), (8, 5, 32), (3, 7, 9)] {
            let w: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let x: Vec<f32> = (0..k * l).map(|_| rng.random_range(-1.0..1.0)).collect();
            let (mut want, mut got) = (vec![0.0; rows * l], vec![7.0; rows * l]);
            matmul_rows::<Fused>(&w, &x, &mut want, rows, k, l);
            // SAFETY: AVX-512 F (and FMA, part of the level) checked above.
            unsafe { simd::matmul_rows(&w, &x, &mut got, rows, k, l) };
            assert_eq!(got, want, "{rows} x {k} x {l}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_silu_softplus_and_gate_match_f64() {
        if !Isa::Avx512.available() {
            return;
        }
        let xs: Vec<f32> = (0..=16_001)
            .map(|i| -80.0 + 160.0 * i as f32 / 16_001.0)
            .collect();
        let (mut si, mut sp, mut g) = (xs.clone(), xs.clone(), vec![3.0f32; xs.len()]);
        // SAFETY: AVX-512 F/DQ (and FMA, part of the level) checked above.
        unsafe {
            simd::silu_inplace(&mut si);
            simd::softplus_inplace(&mut sp);
            simd::gate(&mut g, &xs);
        }
        for (i, &x) in xs.iter().enumerate() {
            let v = x as f64;
            let silu = v / (1.0 + (-v).exp());
            let softplus = v.max(0.0) + (-v.abs()).exp().ln_1p();
            // 2^(x log2 e) rounds its argument: relative error about 6e-8 |x| on top.
            let close = |got: f32, want: f64| {
                (got as f64 - want).abs() <= (1e-6 + 1e-7 * v.abs()) * want.abs() + 1e-30
            };
            assert!(close(si[i], silu), "silu({x}) = {}, f64 {silu}", si[i]);
            assert!(close(g[i], 3.0 * silu), "3 silu({x}) = {}", g[i]);
            assert!(
                close(sp[i], softplus),
                "softplus({x}) = {}, f64 {softplus}",
                sp[i]
            );
        }
        // Far out: finite, with the right limits.
        let mut far = [-1e30f32, -1000.0, -100.0, 100.0, 1000.0, 1e30];
        let mut far_sp = far;
        // SAFETY: as above.
        unsafe {
            simd::silu_inplace(&mut far);
            simd::softplus_inplace(&mut far_sp);
        }
        for (v, want) in far.iter().zip([0.0, 0.0, 0.0, 100.0, 1000.0, 1e30]) {
            assert!((v - want).abs() <= 1e-20 + 1e-6 * want, "{far:?}");
        }
        for (v, want) in far_sp.iter().zip([0.0, 0.0, 0.0, 100.0, 1000.0, 1e30]) {
            assert!((v - want).abs() <= 1e-20 + 1e-6 * want, "{far_sp:?}");
        }
    }

    #[test]
    fn mixer_on_codes_equals_mixer_on_their_dequantized_values() {
        let mut rng = StdRng::seed_from_u64(21);
        let (di, n, r, l) = (24, 16, 1, 40);
        let mk = random_mixer(&mut rng, di, n, r, l);
        let q: Vec<u8> = (0..2 * di * l).map(|i| (i * 37 % 256) as u8).collect();
        let (scale, zp) = (0.021f32, 131);
        let xz: Vec<f32> = q.iter().map(|&v| scale * (v as i32 - zp) as f32).collect();
        let mut scratch = vec![0.0; mk.scratch_len()];
        for isa in std::iter::once(Isa::Portable).chain(levels()) {
            let (mut want, mut got) = (vec![0.0; di * l], vec![1.0; di * l]);
            mk.run_isa(isa, &xz, &mut want, &mut scratch);
            let codes = MixerInput::Codes { q: &q, scale, zp };
            mk.run_input(isa, codes, &mut got, &mut scratch);
            assert_eq!(got, want, "{isa:?}");
            assert!(want.iter().any(|v| v.abs() > 1e-3), "non-trivial output");
        }
    }

    #[test]
    fn fast_exp2_matches_std_within_a_few_ulp() {
        for i in 0..=40_000 {
            let x = -126.0 + 140.0 * i as f32 / 40_000.0;
            let (e, e_ref) = (fast_exp2(x), (x as f64).exp2());
            assert!(
                ((e as f64 - e_ref) / e_ref).abs() < 2.5e-7,
                "2^{x} = {e}, ref {e_ref}"
            );
        }
        assert_eq!(fast_exp2(-1000.0), fast_exp2(-126.0));
    }

    #[test]
    fn fused_exp_and_softplus_match_std_within_a_few_ulp() {
        for i in 0..20_000 {
            let x = -87.0 + 175.0 * i as f32 / 20_000.0;
            let (e, e_ref) = (fast_exp_with::<Fused>(x), (x as f64).exp());
            assert!(
                ((e as f64 - e_ref) / e_ref).abs() < 3e-7,
                "exp({x}) = {e}, ref {e_ref}"
            );
            // Relative, also far left where softplus(x) ~ e^x is tiny.
            let (sp, sp_ref) = (softplus_with::<Fused>(x), (x as f64).exp().ln_1p());
            assert!(
                ((sp as f64 - sp_ref) / sp_ref).abs() < 1e-6,
                "softplus({x}) = {sp}, ref {sp_ref}"
            );
        }
    }
}
