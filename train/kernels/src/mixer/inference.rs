//! The inference mixer: the float Mamba mixer of the int8 engine (everything between
//! `in_proj` and `out_proj`, forward only), one sequence channel-major:
//! `u = SiLU(causal depthwise conv1d(x))`, `[dt; B; C] = x_proj u`,
//! `delta = softplus(dt_proj dt + b)`, the selective scan with the `D` skip, and the gate
//! `y * SiLU(z)` (Gu & Dao 2023, `mamba_simple.Mamba.forward` without the projections).
//!
//! [`MambaKernel::run_isa`] runs one instance per level ([`Isa`]): the portable body with
//! separate multiply and add, AVX2 and AVX-512 with fused multiply-adds (results differ by
//! rounding only; the tests bound the output difference by `1e-5` relative to its largest
//! magnitude). With `d_state` 16 on AVX-512 the scan is the register scan of
//! [`crate::scan::time_major::forward16`]; otherwise [`crate::scan::step`] blocks.

use crate::Isa;
use crate::math::{madd, silu, softplus};
use crate::scan::step;
use crate::transpose::{transpose, transpose_isa};

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

/// The float Mamba mixer of the int8 engine, prepared (its `MambaMixer` op): layouts
/// channel-major, `xz` `[2 d_inner, L]`, `y` `[d_inner, L]`.
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
            _ => self.run_body::<false, 4>(Isa::Portable, xz, y, scratch),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, xz: MixerInput, y: &mut [f32], scratch: &mut [f32]) {
        self.run_body::<true, 8>(Isa::Avx2, xz, y, scratch)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    unsafe fn run_avx512(&self, xz: MixerInput, y: &mut [f32], scratch: &mut [f32]) {
        self.run_body::<true, 16>(Isa::Avx512, xz, y, scratch)
    }

    /// The mixer, generic over fused multiply-adds and the channel block `W` of the scan (one
    /// vector register of f32 lanes). `isa` must be the level of the enclosing
    /// `target_feature` function (it selects the explicit-SIMD scan blocks).
    #[inline(always)]
    fn run_body<const FMA: bool, const W: usize>(
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
                    *o = madd::<FMA>(wv, v, *o);
                }
            }
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 {
                // SAFETY: `isa` is the level of the enclosing `target_feature` function.
                unsafe { crate::math::silu_avx512(ur) };
                continue;
            }
            ur.iter_mut().for_each(|v| *v = silu::<FMA>(*v));
        }
        // x_dbl = x_proj u: [r + 2n, L].
        #[cfg(target_arch = "x86_64")]
        let done = isa == Isa::Avx512 && {
            // SAFETY: `isa` is the level of the enclosing `target_feature` function.
            unsafe { crate::gemm::matmul_rows_avx512(&self.x_proj, u, xdbl, r + 2 * n, di, l) };
            true
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = false;
        if !done {
            crate::gemm::matmul_rows::<FMA>(&self.x_proj, u, xdbl, r + 2 * n, di, l);
        }
        // delta = softplus(dt_proj dt + b): [di, L].
        for c in 0..di {
            let row = &mut delta[c * l..(c + 1) * l];
            row.fill(self.dt_b[c]);
            for j in 0..r {
                let wv = self.dt_w[c * r + j];
                for (a, &v) in row.iter_mut().zip(&xdbl[j * l..(j + 1) * l]) {
                    *a = madd::<FMA>(wv, v, *a);
                }
            }
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 {
                // SAFETY: as above.
                unsafe { crate::math::softplus_avx512(row) };
                continue;
            }
            row.iter_mut().for_each(|v| *v = softplus::<FMA>(*v));
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
                crate::scan::time_major::forward16(
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
            self.scan_steps::<FMA, W>(isa, delta_tm, u_tm, bt, ct, a_t, h, du, acc, y);
        }
        // Gate: y *= silu(z).
        for (c, yr) in y.chunks_exact_mut(l).enumerate() {
            let z = xz.row(di + c, l, row);
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 {
                // SAFETY: as above.
                unsafe { crate::math::gate_avx512(yr, z) };
                continue;
            }
            for (o, &zz) in yr.iter_mut().zip(z) {
                *o *= silu::<FMA>(zz);
            }
        }
    }

    /// The selective scan time step by time step, channel blocks of `W` (then 8, then 1)
    /// inside, states `h` `[n, di]` in memory; writes `y` `[di, L]`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn scan_steps<const FMA: bool, const W: usize>(
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
                        // SAFETY: see above (AVX-512 level, blocks inside the slices).
                        unsafe { step::block16_avx512(c0, di, h, a_t, dt, du, acc, bs, cs) };
                        c0 += 16;
                    }
                }
                if isa >= Isa::Avx2 {
                    while c0 + 8 <= di {
                        // SAFETY: see above (AVX2 level, blocks inside the slices).
                        unsafe { step::block8_avx2(c0, di, h, a_t, dt, du, acc, bs, cs) };
                        c0 += 8;
                    }
                }
            }
            let _ = isa;
            while c0 + W <= di {
                step::block::<FMA, W>(c0, di, h, a_t, dt, du, acc, bs, cs);
                c0 += W;
            }
            while c0 < di {
                step::block::<FMA, 1>(c0, di, h, a_t, dt, du, acc, bs, cs);
                c0 += 1;
            }
            for (c, &v) in acc.iter().enumerate() {
                y[c * l + t] = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{levels, randv};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

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

    /// Mamba's reference `selective_scan_ref` on PyTorch's token-major layout, in f64 with std exp.
    #[test]
    fn mamba_mixer_matches_a_token_major_f64_reference() {
        // d_state 16 takes the AVX-512 register scan (channel blocks of 16 and a masked 8).
        for (di, n) in [(6, 5), (24, 16), (5, 16), (40, 16)] {
            for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
                check_mixer(di, n, isa);
            }
        }
    }

    #[allow(clippy::needless_range_loop)]
    fn check_mixer(di: usize, n: usize, isa: Isa) {
        let mut rng = StdRng::seed_from_u64(4 + di as u64);
        let (r, k, l) = (2, 4, 13);
        let mk = MambaKernel {
            di,
            n,
            r,
            k,
            l,
            conv_w: randv(&mut rng, di * k, 0.7),
            conv_b: randv(&mut rng, di, 0.2),
            x_proj: randv(&mut rng, (r + 2 * n) * di, 0.6),
            dt_w: randv(&mut rng, di * r, 0.6),
            dt_b: randv(&mut rng, di, 1.0),
            a: (0..di * n)
                .map(|i| -((i % n + 1) as f32) * rng.random_range(0.5f32..1.5))
                .collect(),
            d: randv(&mut rng, di, 1.0),
        };
        let xz = randv(&mut rng, 2 * di * l, 1.5);
        let mut y = vec![0.0; di * l];
        let mut scratch = vec![0.0; mk.scratch_len()];
        mk.run_isa(isa, &xz, &mut y, &mut scratch);
        // Token-major reference.
        let x = |t: usize, c: usize| xz[c * l + t] as f64;
        let z = |t: usize, c: usize| xz[(di + c) * l + t] as f64;
        let silu64 = |v: f64| v / (1.0 + (-v).exp());
        let mut u = vec![vec![0.0f64; di]; l];
        for t in 0..l {
            for c in 0..di {
                let mut s = mk.conv_b[c] as f64;
                for j in 0..k {
                    let src = t as isize + j as isize - (k as isize - 1);
                    if src >= 0 {
                        s += mk.conv_w[c * k + j] as f64 * x(src as usize, c);
                    }
                }
                u[t][c] = silu64(s);
            }
        }
        let mut h = vec![vec![0.0f64; n]; di];
        for t in 0..l {
            let dbl: Vec<f64> = (0..r + 2 * n)
                .map(|o| {
                    (0..di)
                        .map(|c| mk.x_proj[o * di + c] as f64 * u[t][c])
                        .sum()
                })
                .collect();
            for c in 0..di {
                let dt: f64 = (0..r)
                    .map(|j| mk.dt_w[c * r + j] as f64 * dbl[j])
                    .sum::<f64>()
                    + mk.dt_b[c] as f64;
                let delta = dt.exp().ln_1p();
                let mut yt = 0.0;
                for s in 0..n {
                    h[c][s] = (delta * mk.a[c * n + s] as f64).exp() * h[c][s]
                        + delta * dbl[r + s] * u[t][c];
                    yt += h[c][s] * dbl[r + n + s];
                }
                let want = (yt + mk.d[c] as f64 * u[t][c]) * silu64(z(t, c));
                let got = y[c * l + t] as f64;
                assert!(
                    (got - want).abs() < 1e-4 * want.abs().max(1.0),
                    "{isa:?} di {di} n {n} t {t} c {c}: {got} vs {want}"
                );
            }
        }
    }
}
