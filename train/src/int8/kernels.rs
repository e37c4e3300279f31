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
//! registers. [`Isa::detect`] picks the widest supported set once per process
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
}

impl Isa {
    /// The widest level this CPU supports (detected once, then cached). The environment
    /// variable `ASC_INT8_ISA` (`portable`, `avx2`, `avx512`) caps it, for benchmarks and
    /// debugging; other values are ignored.
    pub fn detect() -> Self {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let cap = match std::env::var("ASC_INT8_ISA").as_deref() {
                Ok("portable") => Isa::Portable,
                Ok("avx2") => Isa::Avx2,
                _ => Isa::Avx512,
            };
            [Isa::Avx512, Isa::Avx2]
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

/// `round_even(x)` as an integer for `|x| < 2^22`, from the mantissa bits (vectorizable).
#[inline(always)]
pub fn round_even_i32(x: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

/// Natural logarithm for normal positive `x` (Cephes `logf`: mantissa in `[sqrt(1/2), sqrt 2)`,
/// degree-8 polynomial), relative error below 3e-7.
#[inline(always)]
pub fn fast_ln(x: f32) -> f32 {
    fast_ln_with::<Plain>(x)
}

/// [`fast_ln`] with the multiply-adds evaluated by `M`.
#[inline(always)]
pub fn fast_ln_with<M: MulAdd>(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    let m0 = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000); // [0.5, 1)
    let small = m0 < std::f32::consts::FRAC_1_SQRT_2;
    e -= small as i32;
    let m = if small { m0 + m0 - 1.0 } else { m0 - 1.0 };
    let ef = e as f32;
    let z = m * m;
    let mut p = 7.037_683_6e-2f32;
    p = M::mul_add(p, m, -1.151_461e-1);
    p = M::mul_add(p, m, 1.167_699_9e-1);
    p = M::mul_add(p, m, -1.242_014_1e-1);
    p = M::mul_add(p, m, 1.424_932_3e-1);
    p = M::mul_add(p, m, -1.666_805_8e-1);
    p = M::mul_add(p, m, 2.000_071_4e-1);
    p = M::mul_add(p, m, -2.499_999_4e-1);
    p = M::mul_add(p, m, 3.333_333_1e-1_f64 as f32);
    let mut y = p * m * z;
    y = M::mul_add(-2.121_944_4e-4, ef, y);
    y = M::mul_add(-0.5, z, y);
    m + y + 0.693_359_4 * ef
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
    x.max(0.0) + fast_ln_with::<M>(1.0 + fast_exp_with::<M>(-x.abs()))
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
}

impl QConvKernel {
    /// Packs the weight pairs of a pointwise layer (groups 1) for the SSE2 GEMM; a no-op for
    /// other layers and other targets.
    pub fn prepare(&mut self) {
        let g = &self.geom;
        if !(cfg!(target_arch = "x86_64") && g.is_pointwise() && g.groups == 1) {
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
        g.padded_len().max(g.cin.div_ceil(2) * 2 * g.h * g.w)
    }

    /// i32 scratch needed by [`QConvKernel::run`].
    pub fn acc_len(&self) -> usize {
        4 * self.geom.ho() * self.geom.wo()
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

    #[inline(always)]
    fn run_body(&self, isa: Isa, x: &[u8], y: &mut [u8], xp: &mut [i16], acc: &mut [i32]) {
        let zp = self.zp_in as i16;
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
                (Isa::Avx512, 4) => unsafe { gemm_tile_avx512::<4>(xp, pairs, bias, cin2, p, acc) },
                (Isa::Avx512, _) => unsafe { gemm_tile_avx512::<1>(xp, pairs, bias, cin2, p, acc) },
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
        4 * di * l + (r + 2 * n) * l + 2 * l * n + 2 * di * n + 2 * di
    }

    /// Runs the mixer on `xz` `[2*di, L]` into `y` `[di, L]` with the widest kernels this CPU
    /// supports ([`Isa::detect`]).
    pub fn run(&self, xz: &[f32], y: &mut [f32], scratch: &mut [f32]) {
        self.run_isa(Isa::detect(), xz, y, scratch)
    }

    /// [`MambaKernel::run`] with the kernels of `isa` (or the widest supported level below).
    pub fn run_isa(&self, isa: Isa, xz: &[f32], y: &mut [f32], scratch: &mut [f32]) {
        match isa.or_supported() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `or_supported` checked that the CPU has the features enabled there.
            Isa::Avx512 => unsafe { self.run_avx512(xz, y, scratch) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { self.run_avx2(xz, y, scratch) },
            _ => self.run_body::<Plain, 4>(Isa::Portable, xz, y, scratch),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, xz: &[f32], y: &mut [f32], scratch: &mut [f32]) {
        self.run_body::<Fused, 8>(Isa::Avx2, xz, y, scratch)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    unsafe fn run_avx512(&self, xz: &[f32], y: &mut [f32], scratch: &mut [f32]) {
        self.run_body::<Fused, 16>(Isa::Avx512, xz, y, scratch)
    }

    /// The mixer, generic over the multiply-add and the channel block `W` of the scan (one
    /// vector register of f32 lanes). `isa` must be the level of the enclosing
    /// `target_feature` function (it selects the explicit-SIMD scan blocks).
    #[inline(always)]
    fn run_body<M: MulAdd, const W: usize>(
        &self,
        isa: Isa,
        xz: &[f32],
        y: &mut [f32],
        scratch: &mut [f32],
    ) {
        let (di, n, r, k, l) = (self.di, self.n, self.r, self.k, self.l);
        let (u, rest) = scratch.split_at_mut(di * l);
        let (xdbl, rest) = rest.split_at_mut((r + 2 * n) * l);
        let (delta, rest) = rest.split_at_mut(di * l);
        let (u_tm, rest) = rest.split_at_mut(l * di);
        let (delta_tm, rest) = rest.split_at_mut(l * di);
        let (bt, rest) = rest.split_at_mut(l * n);
        let (ct, rest) = rest.split_at_mut(l * n);
        let (h, rest) = rest.split_at_mut(n * di);
        let (a_t, rest) = rest.split_at_mut(n * di);
        let (du, rest) = rest.split_at_mut(di);
        let acc = &mut rest[..di];
        let (x, z) = xz.split_at(di * l);
        let y = &mut y[..di * l];
        // Causal depthwise conv1d (PyTorch Conv1d, padding k-1, first L outputs) + SiLU:
        // u[c, t] = silu(b[c] + sum_j w[c, j] x[c, t + j - (k - 1)]).
        for c in 0..di {
            let (xr, ur) = (&x[c * l..(c + 1) * l], &mut u[c * l..(c + 1) * l]);
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
            ur.iter_mut().for_each(|v| *v = silu_with::<M>(*v));
        }
        // x_dbl = x_proj u: [r + 2n, L].
        for o in 0..r + 2 * n {
            let row = &mut xdbl[o * l..(o + 1) * l];
            row.fill(0.0);
            for c in 0..di {
                let wv = self.x_proj[o * di + c];
                for (a, &v) in row.iter_mut().zip(&u[c * l..(c + 1) * l]) {
                    *a = M::mul_add(wv, v, *a);
                }
            }
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
            row.iter_mut().for_each(|v| *v = softplus_with::<M>(*v));
        }
        // Time-major copies so that each scan step runs over contiguous channels.
        transpose(u, u_tm, di, l);
        transpose(delta, delta_tm, di, l);
        transpose(&xdbl[r * l..(r + n) * l], bt, n, l);
        transpose(&xdbl[(r + n) * l..(r + 2 * n) * l], ct, n, l);
        transpose(&self.a, a_t, di, n);
        // Selective scan (ZOH for A, Euler for B as in Mamba's reference), vectorized over the
        // channels in blocks of W (then 8, then 1) whose outputs stay in registers across the
        // d_state lanes: h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t; y_t = <h_t, C_t> + D u_t.
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
        // Gate: y *= silu(z).
        for (o, &zz) in y.iter_mut().zip(z) {
            *o *= silu_with::<M>(zz);
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

/// `dst[j, i] = src[i, j]` for `src` `[rows, cols]`.
pub fn transpose(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    for (i, row) in src.chunks_exact(cols).take(rows).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            dst[j * rows + i] = v;
        }
    }
}

#[cfg(test)]
mod dispatch_tests {
    //! The dispatched AVX2 / AVX-512 kernels against the portable path (and a naive loop).
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn levels() -> Vec<Isa> {
        [Isa::Avx2, Isa::Avx512]
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
        // leave 32/16/8-wide tails, a pointwise layer with Cout % 4 != 0, depthwise strided, full.
        let cases = [
            (7, 9, 1, 3, 29, 1, [1, 1], 0),
            (48, 96, 1, 1, 77, 1, [1, 1], 0),
            (12, 8, 1, 16, 8, 1, [1, 1], 0),
            (16, 16, 16, 13, 11, 3, [2, 1], 1),
            (3, 5, 1, 9, 10, 3, [2, 2], 1),
        ];
        for (cin, cout, groups, h, w, ks, stride, pad) in cases {
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
                mul: (0..cout)
                    .map(|_| FixedMul::new(rng.random_range(1e-4..4e-3)))
                    .collect(),
                zp_in: rng.random_range(0..40),
                zp_out: rng.random_range(0..20),
                lo: 0,
                hi: 127,
                pairs: Vec::new(),
            };
            k.prepare();
            let x: Vec<u8> = (0..cin * h * w)
                .map(|_| rng.random_range(0..=127))
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
    fn dispatched_mamba_mixer_matches_the_portable_path() {
        let mut rng = StdRng::seed_from_u64(12);
        let mut randv =
            |n: usize, a: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-a..=a)).collect() };
        // d_inner 24 = one 16-block + one 8-block; 37 = two 16-blocks + 5 scalar lanes.
        for (di, n, r, l) in [(24, 16, 1, 70), (37, 16, 3, 33), (8, 5, 2, 9)] {
            let mk = MambaKernel {
                di,
                n,
                r,
                k: 4,
                l,
                conv_w: randv(di * 4, 0.8),
                conv_b: randv(di, 0.2),
                x_proj: randv((r + 2 * n) * di, 0.5),
                dt_w: randv(di * r, 0.7),
                dt_b: randv(di, 2.0),
                a: (0..di * n)
                    .map(|i| -((i % n + 1) as f32) * (1.0 + 0.3 * ((i * 7) % 5) as f32 / 5.0))
                    .collect(),
                d: randv(di, 1.0),
            };
            let xz = randv(2 * di * l, 2.0);
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

    #[test]
    fn fused_exp_and_ln_match_std_within_a_few_ulp() {
        for i in 0..20_000 {
            let x = -87.0 + 175.0 * i as f32 / 20_000.0;
            let (e, e_ref) = (fast_exp_with::<Fused>(x), (x as f64).exp());
            assert!(
                ((e as f64 - e_ref) / e_ref).abs() < 3e-7,
                "exp({x}) = {e}, ref {e_ref}"
            );
            let v = (x / 4.0).exp();
            let (g, g_ref) = (fast_ln_with::<Fused>(v), (v as f64).ln());
            assert!((g as f64 - g_ref).abs() < 1e-6 * g_ref.abs().max(1.0));
        }
    }
}
