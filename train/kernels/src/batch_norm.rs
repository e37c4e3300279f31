//! Training-mode BatchNorm (+ optional ReLU) kernels over contiguous `f32` buffers: forward with
//! the batch statistics and the hand-written backward pass.
//!
//! Layout: `x`, `y`, `dy`, `dx`: `[batch, C, S]` row-major (`S = H * W`, burn's NCHW flattened);
//! `gamma`, `beta`, `mean`, `var`: `[C]`.
//!
//! Forward (Ioffe & Szegedy 2015, eq. of Algorithm 1), with `N = batch * S` values per channel:
//! `mean_c = (1/N) sum x`, `var_c = (1/N) sum (x - mean_c)^2` (biased, as burn's
//! `batch_norm_train` returns it), `xhat = (x - mean_c) / sqrt(var_c + eps)`,
//! `z = gamma_c xhat + beta_c`, `y = z` or `max(z, 0)`.
//!
//! Backward, with `dz = dy * [z > 0]` when the ReLU is fused (else `dz = dy`):
//! `dbeta_c = sum dz`, `dgamma_c = sum dz xhat`,
//! `dx = gamma_c / (N sqrt(var_c + eps)) * (N dz - dbeta_c - xhat dgamma_c)`.
//!
//! Work is split over channels (sums) and rows (element-wise passes) with rayon; each channel
//! reads its `batch` contiguous rows of length `S`. One read of `x` gives the statistics: per
//! row the sum and the centred sum of squares about the row's own mean (a second pass over a
//! row still in L1, no `E[x^2] - E[x]^2` cancellation), combined across rows in `f64` by Chan,
//! Golub & LeVeque's pairwise update: `M2 = sum_b [M2_b + S (mean_b - mean)^2]`. Sums
//! accumulate per row in `f32` partial sums ([`crate::lanes`], or four AVX-512 registers).
//! `z` is recomputed in the backward pass from `x` and the statistics, so nothing but the
//! forward inputs is kept.
//!
//! Each row kernel has a portable body and an AVX-512 one (explicit 16-lane registers, masked
//! tails), picked once per call ([`Isa`]).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::Isa;

/// Sizes of one BatchNorm call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnDims {
    /// Batch size.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Values per channel and sample (`H * W`, or 1).
    pub spatial: usize,
}

impl BnDims {
    /// Elements of `x`.
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.spatial
    }

    /// Whether `x` is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values per channel `N = batch * S`.
    pub fn per_channel(&self) -> usize {
        self.batch * self.spatial
    }

    /// Row `b` of channel `c` (start offset of `S` contiguous values).
    fn row(&self, b: usize, c: usize) -> usize {
        (b * self.channels + c) * self.spatial
    }
}

/// Gradients of a scalar loss with respect to the inputs of the BatchNorm.
#[derive(Clone, Debug, PartialEq)]
pub struct BnGrads {
    /// `dL/dx`, `[batch, C, S]`.
    pub dx: Vec<f32>,
    /// `dL/dgamma`, `[C]`.
    pub dgamma: Vec<f32>,
    /// `dL/dbeta`, `[C]`.
    pub dbeta: Vec<f32>,
}

fn check(d: &BnDims, x: &[f32], gamma: &[f32], beta: &[f32]) {
    assert_eq!(x.len(), d.len(), "batch norm: x has the wrong length");
    assert_eq!(
        gamma.len(),
        d.channels,
        "batch norm: gamma has the wrong length"
    );
    assert_eq!(
        beta.len(),
        d.channels,
        "batch norm: beta has the wrong length"
    );
    assert!(d.per_channel() > 0, "batch norm: no values per channel");
}

/// Per-channel `(mean, is, gamma, beta)`: the affine map `z = gamma (x - mean) is + beta` of
/// one channel (`is = 1 / sqrt(var + eps)`).
#[derive(Clone, Copy)]
struct Affine {
    mean: f32,
    is: f32,
    gamma: f32,
    beta: f32,
}

/// Row kernels at the baseline target (sums in [`lanes`]' 16 partial sums).
mod portable {
    use std::mem::MaybeUninit;

    use super::{Affine, relu_grad};
    use crate::lanes::{self, LANES};

    /// `(sum x, sum (x - mean_row)^2)` of one row.
    pub fn row_sum_m2(x: &[f32]) -> (f32, f32) {
        let s = lanes::sum(x);
        (s, lanes::sum_sq_dev(x, s / x.len() as f32))
    }

    /// `y = a x + b`, then `max(., 0)` where `relu`.
    pub fn row_affine(x: &[f32], a: f32, b: f32, relu: bool, y: &mut [MaybeUninit<f32>]) {
        if relu {
            for (o, &v) in y.iter_mut().zip(x) {
                o.write((a * v + b).max(0.0));
            }
        } else {
            for (o, &v) in y.iter_mut().zip(x) {
                o.write(a * v + b);
            }
        }
    }

    /// `(sum dz, sum dz xhat)` of one row.
    pub fn row_grad_sums(x: &[f32], dy: &[f32], p: Affine, relu: bool) -> (f32, f32) {
        // Sixteen partial sums each (see `lanes`); the tail in one more.
        let (mut rb, mut rg) = ([0f32; LANES], [0f32; LANES]);
        let ((xc, xt), (dyc, dyt)) = (x.as_chunks::<LANES>(), dy.as_chunks::<LANES>());
        let (mut tb, mut tg) = (0f32, 0f32);
        for (&v, &gy) in xt.iter().zip(dyt) {
            let xh = (v - p.mean) * p.is;
            let dz = relu_grad(relu, p.gamma * xh + p.beta, gy);
            tb += dz;
            tg += dz * xh;
        }
        for (xv, gv) in xc.iter().zip(dyc) {
            for i in 0..LANES {
                let xh = (xv[i] - p.mean) * p.is;
                let dz = relu_grad(relu, p.gamma * xh + p.beta, gv[i]);
                rb[i] += dz;
                rg[i] += dz * xh;
            }
        }
        (lanes::fold(rb) + tb, lanes::fold(rg) + tg)
    }

    /// `dx = k (dz - mb - xhat mg)`.
    pub fn row_dx(
        x: &[f32],
        dy: &[f32],
        p: Affine,
        relu: bool,
        [k, mb, mg]: [f32; 3],
        dx: &mut [MaybeUninit<f32>],
    ) {
        for ((o, &v), &gy) in dx.iter_mut().zip(x).zip(dy) {
            let xh = (v - p.mean) * p.is;
            let dz = relu_grad(relu, p.gamma * xh + p.beta, gy);
            o.write(k * (dz - mb - xh * mg));
        }
    }
}

/// The row kernels with explicit AVX-512 registers: the loops of [`portable`] vectorise only
/// to SSE at the baseline target, and LLVM splits 16-lane arrays into four `xmm` registers
/// even in AVX-512 instances. Tails are masked loads / stores.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::Affine;

    /// Lanes per register.
    const W: usize = 16;

    /// Mask of the first `n < 16` lanes.
    #[inline(always)]
    fn head(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// `K` sums over `n` elements of the 16-lane terms `f(i, mask)` (`mask` selects the valid
    /// lanes from `i`; `f` returns zeros outside it), in four independent sets of registers.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    fn sums<const K: usize>(n: usize, f: impl Fn(usize, __mmask16) -> [__m512; K]) -> [f32; K] {
        let mut acc = [[_mm512_setzero_ps(); K]; 4];
        let mut i = 0;
        while i + 4 * W <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                let t = f(i + j * W, 0xFFFF);
                for k in 0..K {
                    a[k] = _mm512_add_ps(a[k], t[k]);
                }
            }
            i += 4 * W;
        }
        let mut j = 0;
        while i < n {
            let t = f(i, if n - i >= W { 0xFFFF } else { head(n - i) });
            for k in 0..K {
                acc[j][k] = _mm512_add_ps(acc[j][k], t[k]);
            }
            (i, j) = (i + W, j + 1);
        }
        std::array::from_fn(|k| {
            let s = _mm512_add_ps(
                _mm512_add_ps(acc[0][k], acc[1][k]),
                _mm512_add_ps(acc[2][k], acc[3][k]),
            );
            _mm512_reduce_add_ps(s)
        })
    }

    /// Applies `f(i, mask)` to every 16-lane block of `n` elements.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    fn each(n: usize, mut f: impl FnMut(usize, __mmask16)) {
        let mut i = 0;
        while i + W <= n {
            f(i, 0xFFFF);
            i += W;
        }
        if i < n {
            f(i, head(n - i));
        }
    }

    /// The lanes `m` of `x[i..i + 16]` (zeros elsewhere).
    ///
    /// # Safety
    /// The lanes in `m` must lie inside `x`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn load(x: &[f32], i: usize, m: __mmask16) -> __m512 {
        // SAFETY: the caller keeps the masked lanes inside `x`.
        unsafe { _mm512_maskz_loadu_ps(m, x.as_ptr().add(i)) }
    }

    /// Writes the lanes `m` of `v` to `y[i..i + 16]`.
    ///
    /// # Safety
    /// The lanes in `m` must lie inside `y`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn store(y: &mut [MaybeUninit<f32>], i: usize, m: __mmask16, v: __m512) {
        // SAFETY: the caller keeps the masked lanes inside `y`.
        unsafe { _mm512_mask_storeu_ps(y.as_mut_ptr().add(i).cast(), m, v) }
    }

    /// `xhat` and `dz` of a block (zeros outside `m`): `dz = dy [z > 0]` (or `!(z <= 0)`, as
    /// the portable select, where `relu`).
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    fn xhat_dz(x: __m512, dy: __m512, p: Affine, relu: bool, m: __mmask16) -> [__m512; 2] {
        let xh = _mm512_maskz_mul_ps(
            m,
            _mm512_sub_ps(x, _mm512_set1_ps(p.mean)),
            _mm512_set1_ps(p.is),
        );
        let dz = if relu {
            let z = _mm512_fmadd_ps(_mm512_set1_ps(p.gamma), xh, _mm512_set1_ps(p.beta));
            let pos = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(z, _mm512_setzero_ps());
            _mm512_maskz_mov_ps(pos & m, dy)
        } else {
            _mm512_maskz_mov_ps(m, dy)
        };
        [xh, dz]
    }

    /// As [`super::portable::row_sum_m2`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn row_sum_m2(x: &[f32]) -> (f32, f32) {
        let n = x.len();
        // SAFETY: `sums` passes blocks whose masked lanes lie below `n`, within both slices.
        let [s] = sums(n, |i, m| [unsafe { load(x, i, m) }]);
        let mean = _mm512_set1_ps(s / n as f32);
        let [m2] = sums(n, |i, m| {
            // SAFETY: as above.
            let d = _mm512_maskz_sub_ps(m, unsafe { load(x, i, m) }, mean);
            [_mm512_mul_ps(d, d)]
        });
        (s, m2)
    }

    /// As [`super::portable::row_affine`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn row_affine(x: &[f32], a: f32, b: f32, relu: bool, y: &mut [MaybeUninit<f32>]) {
        let (a, b) = (_mm512_set1_ps(a), _mm512_set1_ps(b));
        each(x.len().min(y.len()), |i, m| {
            // SAFETY: `each` passes blocks whose masked lanes lie below `n`, within both slices.
            let z = _mm512_fmadd_ps(a, unsafe { load(x, i, m) }, b);
            let z = if relu {
                _mm512_max_ps(z, _mm512_setzero_ps())
            } else {
                z
            };
            // SAFETY: as above.
            unsafe { store(y, i, m, z) }
        });
    }

    /// As [`super::portable::row_grad_sums`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn row_grad_sums(x: &[f32], dy: &[f32], p: Affine, relu: bool) -> (f32, f32) {
        let [sb, sg] = sums(x.len().min(dy.len()), |i, m| {
            // SAFETY: `sums` passes blocks whose masked lanes lie below `n`, within both slices.
            let [xh, dz] = unsafe { xhat_dz(load(x, i, m), load(dy, i, m), p, relu, m) };
            [dz, _mm512_mul_ps(dz, xh)]
        });
        (sb, sg)
    }

    /// As [`super::portable::row_dx`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn row_dx(
        x: &[f32],
        dy: &[f32],
        p: Affine,
        relu: bool,
        [k, mb, mg]: [f32; 3],
        dx: &mut [MaybeUninit<f32>],
    ) {
        let (k, mb, mg) = (_mm512_set1_ps(k), _mm512_set1_ps(mb), _mm512_set1_ps(mg));
        each(x.len().min(dy.len()).min(dx.len()), |i, m| {
            // SAFETY: `each` passes blocks whose masked lanes lie below `n`, within every slice.
            let [xh, dz] = unsafe { xhat_dz(load(x, i, m), load(dy, i, m), p, relu, m) };
            // k (dz - mb - xh mg)
            let v = _mm512_mul_ps(
                k,
                _mm512_sub_ps(_mm512_sub_ps(dz, mb), _mm512_mul_ps(xh, mg)),
            );
            // SAFETY: as above.
            unsafe { store(dx, i, m, v) }
        });
    }
}

/// The row kernels of one instruction set: AVX-512 where `avx512` (the caller checked the
/// CPU), else [`portable`].
#[derive(Clone, Copy)]
struct Rows {
    avx512: bool,
}

impl Rows {
    /// The widest instance this CPU runs (`Portable` forces the baseline one).
    fn new(isa: Isa) -> Self {
        Rows {
            avx512: cfg!(target_arch = "x86_64") && isa.or_supported() >= Isa::Avx512,
        }
    }

    fn sum_m2(self, x: &[f32]) -> (f32, f32) {
        #[cfg(target_arch = "x86_64")]
        if self.avx512 {
            // SAFETY: `avx512` only where the CPU has AVX-512F, AVX2 and FMA (`Rows::new`).
            return unsafe { avx512::row_sum_m2(x) };
        }
        portable::row_sum_m2(x)
    }

    fn affine(self, x: &[f32], a: f32, b: f32, relu: bool, y: &mut [MaybeUninit<f32>]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx512 {
            // SAFETY: as in `sum_m2`.
            return unsafe { avx512::row_affine(x, a, b, relu, y) };
        }
        portable::row_affine(x, a, b, relu, y)
    }

    fn grad_sums(self, x: &[f32], dy: &[f32], p: Affine, relu: bool) -> (f32, f32) {
        #[cfg(target_arch = "x86_64")]
        if self.avx512 {
            // SAFETY: as in `sum_m2`.
            return unsafe { avx512::row_grad_sums(x, dy, p, relu) };
        }
        portable::row_grad_sums(x, dy, p, relu)
    }

    fn dx(
        self,
        x: &[f32],
        dy: &[f32],
        p: Affine,
        relu: bool,
        coef: [f32; 3],
        dx: &mut [MaybeUninit<f32>],
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.avx512 {
            // SAFETY: as in `sum_m2`.
            return unsafe { avx512::row_dx(x, dy, p, relu, coef, dx) };
        }
        portable::row_dx(x, dy, p, relu, coef, dx)
    }
}

/// Per-channel batch mean and biased variance of `x`.
pub fn batch_stats(d: BnDims, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    batch_stats_with(Rows::new(Isa::detect()), d, x)
}

fn batch_stats_with(k: Rows, d: BnDims, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (n, s) = (d.per_channel() as f64, d.spatial as f64);
    let stats: Vec<(f32, f32)> = (0..d.channels)
        .into_par_iter()
        .map(|c| {
            let rows: Vec<(f32, f32)> = (0..d.batch)
                .map(|b| k.sum_m2(&x[d.row(b, c)..d.row(b, c) + d.spatial]))
                .collect();
            let mean = rows.iter().map(|r| r.0 as f64).sum::<f64>() / n;
            // Chan et al.: M2 = sum_b [M2_b + S (mean_b - mean)^2].
            let m2: f64 = rows
                .iter()
                .map(|&(sb, m2b)| m2b as f64 + s * (sb as f64 / s - mean).powi(2))
                .sum();
            (mean as f32, (m2 / n) as f32)
        })
        .collect();
    stats.into_iter().unzip()
}

/// Normalizes `x` with the batch statistics into `y` (ReLU applied when `relu`); returns the
/// batch mean and biased variance per channel.
pub fn forward(
    d: BnDims,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    relu: bool,
    y: &mut [MaybeUninit<f32>],
) -> (Vec<f32>, Vec<f32>) {
    forward_with(Isa::detect(), d, x, gamma, beta, eps, relu, y)
}

/// [`forward`] on the row kernels of `isa` (or the baseline ones where the CPU lacks it).
#[allow(clippy::too_many_arguments)]
pub fn forward_with(
    isa: Isa,
    d: BnDims,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    relu: bool,
    y: &mut [MaybeUninit<f32>],
) -> (Vec<f32>, Vec<f32>) {
    check(&d, x, gamma, beta);
    assert_eq!(y.len(), d.len(), "batch norm: y has the wrong length");
    let k = Rows::new(isa);
    let (mean, var) = batch_stats_with(k, d, x);
    // Per-channel affine map z = scale x + shift.
    let scale: Vec<f32> = (0..d.channels)
        .map(|c| gamma[c] / (var[c] + eps).sqrt())
        .collect();
    let shift: Vec<f32> = (0..d.channels)
        .map(|c| beta[c] - mean[c] * scale[c])
        .collect();
    let s = d.spatial;
    y.par_chunks_mut(s)
        .zip(x.par_chunks(s))
        .enumerate()
        .for_each(|(row, (yr, xr))| {
            let c = row % d.channels;
            k.affine(xr, scale[c], shift[c], relu, yr)
        });
    (mean, var)
}

/// `dz = dy [z > 0]` where the ReLU is fused, else `dy`: a select on values already loaded
/// (no branch, no conditional load), so the loops around it vectorise.
#[inline(always)]
fn relu_grad(relu: bool, z: f32, dy: f32) -> f32 {
    if relu & (z <= 0.0) { 0.0 } else { dy }
}

/// Backward pass: gradients for `x`, `gamma` and `beta` from the forward inputs, the batch
/// statistics the forward returned, and `dy`. `dx` is only computed when `need_dx`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    d: BnDims,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
    relu: bool,
    dy: &[f32],
    need_dx: bool,
) -> BnGrads {
    backward_with(
        Isa::detect(),
        d,
        x,
        [gamma, beta, mean, var],
        eps,
        relu,
        dy,
        need_dx,
    )
}

/// [`backward`] on the row kernels of `isa` (or the baseline ones where the CPU lacks it);
/// `params`: `gamma`, `beta`, `mean`, `var`.
#[allow(clippy::too_many_arguments)]
pub fn backward_with(
    isa: Isa,
    d: BnDims,
    x: &[f32],
    [gamma, beta, mean, var]: [&[f32]; 4],
    eps: f32,
    relu: bool,
    dy: &[f32],
    need_dx: bool,
) -> BnGrads {
    check(&d, x, gamma, beta);
    assert_eq!(dy.len(), d.len(), "batch norm: dy has the wrong length");
    let k = Rows::new(isa);
    let s = d.spatial;
    // Once per channel (both passes read them).
    let affine: Vec<Affine> = (0..d.channels)
        .map(|c| Affine {
            mean: mean[c],
            is: 1.0 / (var[c] + eps).sqrt(),
            gamma: gamma[c],
            beta: beta[c],
        })
        .collect();
    // Pass 1 per channel: dbeta = sum dz, dgamma = sum dz xhat.
    let sums: Vec<(f32, f32)> = (0..d.channels)
        .into_par_iter()
        .map(|c| {
            let p = affine[c];
            let (mut sb, mut sg) = (0f64, 0f64);
            for b in 0..d.batch {
                let o = d.row(b, c);
                let (rb, rg) = k.grad_sums(&x[o..o + s], &dy[o..o + s], p, relu);
                sb += rb as f64;
                sg += rg as f64;
            }
            (sg as f32, sb as f32)
        })
        .collect();
    let (dgamma, dbeta): (Vec<f32>, Vec<f32>) = sums.into_iter().unzip();
    let mut dx = Vec::new();
    if need_dx {
        let n = d.per_channel() as f32;
        // Pass 2: dx = gamma inv_std / N (N dz - dbeta - xhat dgamma).
        let pass2 = |dx: &mut [MaybeUninit<f32>]| {
            dx.par_chunks_mut(s)
                .zip(x.par_chunks(s).zip(dy.par_chunks(s)))
                .enumerate()
                .for_each(|(row, (dxr, (xr, dyr)))| {
                    let c = row % d.channels;
                    let p = affine[c];
                    let coef = [p.gamma * p.is, dbeta[c] / n, dgamma[c] / n];
                    k.dx(xr, dyr, p, relu, coef, dxr)
                });
        };
        // SAFETY: the rows of `S` values cover `dx` (`len = batch * C * S`), each written.
        dx = unsafe { crate::buffer::written_by(d.len(), pass2) };
    }
    BnGrads { dx, dgamma, dbeta }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{rand_vec, rel_err};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// The AVX-512 row kernels (where this CPU has them) against the baseline ones: rows of 1, 15,
    /// 16, 17, 63 and 100 values (masked tails, one to four register sets).
    #[test]
    fn batch_norm_row_kernels_agree_across_instruction_sets() {
        use std::mem::MaybeUninit;
        let mut rng = StdRng::seed_from_u64(9);
        for spatial in [1, 15, 16, 17, 63, 100] {
            let d = BnDims {
                batch: 3,
                channels: 2,
                spatial,
            };
            let x: Vec<f32> = (0..d.len())
                .map(|_| 2.0 + rng.random_range(-1.0f32..1.0))
                .collect();
            let dy = rand_vec(&mut rng, d.len());
            let (gamma, beta) = (vec![1.5f32, -0.7], vec![0.2f32, 0.1]);
            for relu in [false, true] {
                let run = |isa| {
                    let mut y = vec![MaybeUninit::uninit(); d.len()];
                    let (mean, var) = forward_with(isa, d, &x, &gamma, &beta, 1e-5, relu, &mut y);
                    // SAFETY: `forward_with` wrote every element.
                    let y: Vec<f32> = y.into_iter().map(|v| unsafe { v.assume_init() }).collect();
                    let g = backward_with(
                        isa,
                        d,
                        &x,
                        [&gamma, &beta, &mean, &var],
                        1e-5,
                        relu,
                        &dy,
                        true,
                    );
                    [y, mean, var, g.dx, g.dgamma, g.dbeta]
                };
                let (base, wide) = (run(Isa::Portable), run(Isa::Avx512));
                for (i, (a, b)) in base.iter().zip(&wide).enumerate() {
                    let e = rel_err(a, b);
                    assert!(
                        e < 1e-5,
                        "spatial {spatial} relu {relu}: output {i} rel err {e}"
                    );
                }
            }
        }
    }
}
