//! The selective scan with `d_state` 16 on AVX-512, time-major: channels in the vector lanes,
//! the 16 states in 16 registers. [`forward16`] is the forward scan of the int8 engine's mixer
//! and of the training mixer's time-major path; [`backward16`] its backward pass.
//!
//! Against the channel-major kernel of [`super::channel_major`] (states in the lanes, two
//! horizontal sums per channel and step for `<dh_t, B_t>` and `<dh_t ⊙ h_{t-1} ⊙ e_t, A>`),
//! those two sums over states become vector accumulations over the 16 states, and the sums
//! over channels that the channel-major kernel accumulated lane-wise (`dB`, `dC`) become one
//! transpose-reduction of 16 vectors per quantity and step (45 shuffles and adds for 16 sums,
//! `reduce16`).
//!
//! Backward recurrence (per channel `c`, state `n`; `e_t = exp(delta_t A)`, `g_t = dy_t`):
//! `dh_t = g_t C_t + e_{t+1} ⊙ dh_{t+1}`;
//! `du_t = D g_t + delta_t <dh_t, B_t>`;
//! `ddelta_t = u_t <dh_t, B_t> + <dh_t ⊙ h_{t-1} ⊙ e_t, A>`;
//! `dA += delta_t dh_t ⊙ h_{t-1} ⊙ e_t`; `dD += g_t u_t`;
//! `dB_t = sum_c delta_t u_t dh_t`; `dC_t = sum_c g_t h_t`.
//! The states `h_t` and decays `e_t` of one block of 16 channels are recomputed forward into
//! the scratch (`2 (L + 1) 16` vectors, 1 MiB at L = 512: L2-resident), then read in reverse.

use std::arch::x86_64::*;

use crate::math::{exp2_8, exp2_16};

/// `$body` sixteen times with `$n` a constant `0..16`: the per-state arrays then index with
/// constants, which keeps them in registers (a loop over `n` kept them on the stack, with a
/// store and a reload per state and step).
macro_rules! unroll16 {
    ($n:ident => $body:block) => {
        unroll16!(@ $n $body; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
    };
    (@ $n:ident $body:block; $($i:literal)*) => {
        $({
            #[allow(non_upper_case_globals)]
            const $n: usize = $i;
            $body
        })*
    };
}

/// The whole selective scan with d_state 16 on AVX-512, channel block outer and time inner:
/// the 16 states of a block of channels stay in 16 registers over all `L` steps, blocks of
/// 16 channels in zmm and the last block of at most 8 in ymm (masked; a ymm op costs half
/// a zmm op where 512-bit FMAs issue on one port), `exp(delta a)` as
/// [`crate::math::exp2`]`(delta (a log2 e))` (11 vector ops per state and step instead of 19
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
pub unsafe fn forward16(
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
     $fmadd:ident, $exp2:ident, $mask_storeu:ident) => {
        /// One channel block (`nl <= W` channels from `c0`) of [`forward16`].
        ///
        /// # Safety
        /// The CPU must support AVX-512 F/DQ/VL and FMA; `c0 + nl <= di` and the lengths
        /// asserted by [`forward16`].
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
            // SAFETY: (masked loads and stores) lanes `j < nl` touch channel
            // `c0 + j < di` at `t < L`, inside the lengths asserted by the caller;
            // masked-off lanes are not accessed.
            let dsk = unsafe { $maskz_loadu(mask, d_skip.as_ptr().add(c0)) };
            // SAFETY: the offsets `c0 < di` are inside the three buffers.
            let (dp, up, yp) = unsafe {
                (
                    delta.as_ptr().add(c0),
                    u.as_ptr().add(c0),
                    y.as_mut_ptr().add(c0),
                )
            };
            let mut h = [$setzero(); N];
            for t in 0..l {
                // SAFETY: masked loads of row `t < L` (see above).
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
                        // a < 0), by `exp2` (far below -126 it gives 0).
                        let e = $exp2($mul(d, a));
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
                // SAFETY: masked store to row `t < L` of `y` (see above).
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
    exp2_16,
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
    exp2_8,
    _mm256_mask_storeu_ps
);

/// States per channel this kernel handles.
pub const N: usize = 16;

/// Scratch of [`backward16`] for sequences of up to `len` steps.
pub struct TimeMajorBwd {
    /// Row 0: `h_0 = 0`; row `t + 1`: `h_t`, 16 state vectors per row.
    hs: Vec<__m512>,
    /// Row `t`: `e_t = exp(delta_t A)`, 16 state vectors per row.
    es: Vec<__m512>,
}

impl TimeMajorBwd {
    /// Scratch for `len` steps.
    pub fn new(len: usize) -> Self {
        // SAFETY: an all-zero `__m512` is a valid value (sixteen 0.0f32).
        let zero = unsafe { std::mem::zeroed::<__m512>() };
        TimeMajorBwd {
            hs: vec![zero; (len + 1) * N],
            es: vec![zero; len * N],
        }
    }
}

/// Inputs of [`backward16`], time-major `[L, di]` where marked.
pub struct Bwd16In<'a> {
    /// `delta` `[L, di]`.
    pub delta: &'a [f32],
    /// `u` `[L, di]`.
    pub u: &'a [f32],
    /// `dy` `[L, di]`.
    pub dy: &'a [f32],
    /// `B` then `C`: row `j < 32` at step `t` is `bc[j * bc_strides[0] + t * bc_strides[1]]`
    /// (the mixer's time-major `x_proj` output `[L, R + 32]` from column `R` on: strides
    /// `[1, R + 32]`).
    pub bc: &'a [f32],
    /// Strides of `bc`'s rows and steps.
    pub bc_strides: [usize; 2],
    /// `A^T` `[16, di]`.
    pub a_t: &'a [f32],
    /// `D` `[di]`.
    pub d: &'a [f32],
}

/// Outputs of [`backward16`].
pub struct Bwd16Out<'a> {
    /// `du` `[L, di]` (written).
    pub du: &'a mut [f32],
    /// `ddelta` `[L, di]` (written).
    pub ddelta: &'a mut [f32],
    /// `dB_t` then `dC_t` (32 values) at `dbc[t * dbc_ld..]` for each step `t` (written; the
    /// rest of each row untouched).
    pub dbc: &'a mut [f32],
    /// Distance between the steps' rows of `dbc` (>= 32).
    pub dbc_ld: usize,
    /// `dA` `[di, 16]` (added to).
    pub da: &'a mut [f32],
    /// `dD` `[di]` (added to).
    pub dd: &'a mut [f32],
}

/// Backward pass of one sequence of `l` steps and `di` channels (see the module docs).
///
/// # Safety
/// The CPU must support AVX-512 F/DQ/VL and FMA.
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
pub unsafe fn backward16(di: usize, l: usize, x: &Bwd16In, s: &mut TimeMajorBwd, o: &mut Bwd16Out) {
    let tm = di * l;
    assert!(
        x.delta.len() >= tm
            && x.u.len() >= tm
            && x.dy.len() >= tm
            && x.bc.len() > (2 * N - 1) * x.bc_strides[0] + (l.max(1) - 1) * x.bc_strides[1]
            && x.a_t.len() >= N * di
            && x.d.len() >= di
            && o.du.len() >= tm
            && o.ddelta.len() >= tm
            && o.dbc_ld >= 2 * N
            && o.dbc.len() >= (l.max(1) - 1) * o.dbc_ld + 2 * N
            && o.da.len() >= di * N
            && o.dd.len() >= di
            && s.hs.len() > l * N
            && s.es.len() >= l * N,
        "time-major scan backward: buffer sizes"
    );
    for t in 0..l {
        o.dbc[t * o.dbc_ld..t * o.dbc_ld + 2 * N].fill(0.0);
    }
    let mut c0 = 0;
    while c0 < di {
        let nl = (di - c0).min(16);
        // SAFETY: channels `c0..c0 + nl <= di`, lengths asserted above.
        unsafe { block(c0, nl, di, l, x, s, o) };
        c0 += nl;
    }
}

/// The lanes of `v_0 .. v_15` summed: lane `n` of the result is `sum_j v_n[j]`. A tree of
/// `vshuff32x4` / `vshufps` pairs and adds halves the vector count and the partial sums per
/// state at each level (8 + 4 + 2 + 1 levels' triples: 45 ops), then one permutation puts
/// the states in order (the tree leaves state `4 i + j` in lane `4 j + i`).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
unsafe fn reduce16(v: &[__m512; N]) -> __m512 {
    let mut w = [_mm512_setzero_ps(); 8];
    for k in 0..8 {
        let (a, b) = (v[2 * k], v[2 * k + 1]);
        // [a.q0 a.q1 b.q0 b.q1] + [a.q2 a.q3 b.q2 b.q3]: 8 partials of a, then of b.
        w[k] = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        );
    }
    let mut x = [_mm512_setzero_ps(); 4];
    for m in 0..4 {
        let (a, b) = (w[2 * m], w[2 * m + 1]);
        // 4 partials of states 4m .. 4m + 3, one state per 128-bit lane.
        x[m] = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        );
    }
    let mut y = [_mm512_setzero_ps(); 2];
    for n in 0..2 {
        let (a, b) = (x[2 * n], x[2 * n + 1]);
        // 128-bit lane j: 2 partials of state 8n + j, then of state 8n + 4 + j.
        y[n] = _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xEE>(a, b),
        );
    }
    // 128-bit lane j: states j, 4 + j, 8 + j, 12 + j.
    let z = _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(y[0], y[1]),
        _mm512_shuffle_ps::<0xDD>(y[0], y[1]),
    );
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_permutexvar_ps(order, z)
}

/// One block of `nl <= 16` channels from `c0` (masked lanes read zeros: `delta = u = dy = 0`
/// there, so `h = dh = 0` and they add nothing to the sums over channels).
///
/// # Safety
/// As [`backward16`], with `c0 + nl <= di` and the lengths it asserts.
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
unsafe fn block(
    c0: usize,
    nl: usize,
    di: usize,
    l: usize,
    x: &Bwd16In,
    s: &mut TimeMajorBwd,
    o: &mut Bwd16Out,
) {
    let mask: __mmask16 = if nl == 16 { !0 } else { (1u16 << nl) - 1 };
    let log2e = _mm512_set1_ps(std::f32::consts::LOG2_E);
    // SAFETY: (all masked loads and stores below) lanes `j < nl` touch channel `c0 + j < di`
    // of rows `t < L` of `[L, di]` buffers (or of `[16, di]`, `[di]`), inside the asserted
    // lengths; masked-off lanes are not accessed.
    let (a, dsk) = unsafe {
        let mut a = [_mm512_setzero_ps(); N];
        for (n, av) in a.iter_mut().enumerate() {
            *av = _mm512_maskz_loadu_ps(mask, x.a_t.as_ptr().add(n * di + c0));
        }
        (a, _mm512_maskz_loadu_ps(mask, x.d.as_ptr().add(c0)))
    };
    let mut a2 = [_mm512_setzero_ps(); N];
    for (o, &v) in a2.iter_mut().zip(&a) {
        *o = _mm512_mul_ps(v, log2e);
    }
    macro_rules! ld {
        ($p:expr, $t:expr) => {
            // SAFETY: masked load of row `$t < L` (see above).
            unsafe { _mm512_maskz_loadu_ps(mask, $p.as_ptr().add($t * di + c0)) }
        };
    }
    let (bc, [bs, bt]) = (x.bc, x.bc_strides);
    let (hs, es) = (&mut s.hs, &mut s.es);

    // Forward: h_t and e_t of the block.
    let mut h = [_mm512_setzero_ps(); N];
    hs[..N].copy_from_slice(&h);
    for t in 0..l {
        let (d, uv) = (ld!(x.delta, t), ld!(x.u, t));
        let dtu = _mm512_mul_ps(d, uv);
        unroll16!(n => {
            // exp(d a) = 2^(d a log2 e), the engine's exponential (d >= 0 from softplus, a < 0).
            let e = exp2_16(_mm512_mul_ps(d, a2[n]));
            // SAFETY: row n of B at t < L.
            let b = _mm512_set1_ps(unsafe { *bc.get_unchecked(n * bs + t * bt) });
            h[n] = _mm512_fmadd_ps(e, h[n], _mm512_mul_ps(dtu, b));
            es[t * N + n] = e;
            hs[(t + 1) * N + n] = h[n];
        });
    }

    // Reverse.
    let mut dh = [_mm512_setzero_ps(); N];
    let mut da = [_mm512_setzero_ps(); N];
    let mut dd = _mm512_setzero_ps();
    let mut vb = [_mm512_setzero_ps(); N];
    let mut vc = [_mm512_setzero_ps(); N];
    for t in (0..l).rev() {
        let (d, uv, g) = (ld!(x.delta, t), ld!(x.u, t), ld!(x.dy, t));
        let dtu = _mm512_mul_ps(d, uv);
        dd = _mm512_fmadd_ps(g, uv, dd);
        let (mut dhb0, mut dhb1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let (mut pa0, mut pa1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        unroll16!(n => {
            // SAFETY: rows n and 16 + n of `bc` at t < L.
            let (b, c) = unsafe {
                (
                    _mm512_set1_ps(*bc.get_unchecked(n * bs + t * bt)),
                    _mm512_set1_ps(*bc.get_unchecked((N + n) * bs + t * bt)),
                )
            };
            let (e, h_prev, h_t) = (es[t * N + n], hs[t * N + n], hs[(t + 1) * N + n]);
            let dhn = _mm512_fmadd_ps(g, c, dh[n]);
            let p = _mm512_mul_ps(_mm512_mul_ps(dhn, h_prev), e);
            da[n] = _mm512_fmadd_ps(d, p, da[n]);
            if n.is_multiple_of(2) {
                dhb0 = _mm512_fmadd_ps(dhn, b, dhb0);
                pa0 = _mm512_fmadd_ps(p, a[n], pa0);
            } else {
                dhb1 = _mm512_fmadd_ps(dhn, b, dhb1);
                pa1 = _mm512_fmadd_ps(p, a[n], pa1);
            }
            vb[n] = _mm512_mul_ps(dtu, dhn);
            vc[n] = _mm512_mul_ps(g, h_t);
            dh[n] = _mm512_mul_ps(dhn, e);
        });
        let dhb = _mm512_add_ps(dhb0, dhb1);
        let du = _mm512_fmadd_ps(d, dhb, _mm512_mul_ps(dsk, g));
        let ddl = _mm512_fmadd_ps(uv, dhb, _mm512_add_ps(pa0, pa1));
        // SAFETY: rows t < L of the [L, di] outputs and the first 32 values of row t of
        // `dbc` (asserted).
        unsafe {
            _mm512_mask_storeu_ps(o.du.as_mut_ptr().add(t * di + c0), mask, du);
            _mm512_mask_storeu_ps(o.ddelta.as_mut_ptr().add(t * di + c0), mask, ddl);
            let row = o.dbc.as_mut_ptr().add(t * o.dbc_ld);
            _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), reduce16(&vb)));
            let row = row.add(N);
            _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), reduce16(&vc)));
        }
    }

    // dA [di, 16] += the block's accumulators (lane j of da[n] is channel c0 + j, state n).
    let mut cols = [[0.0f32; 16]; N];
    for (col, v) in cols.iter_mut().zip(&da) {
        // SAFETY: 16 floats into a [f32; 16].
        unsafe { _mm512_storeu_ps(col.as_mut_ptr(), *v) };
    }
    for (j, row) in o.da[c0 * N..(c0 + nl) * N].chunks_exact_mut(N).enumerate() {
        for (r, col) in row.iter_mut().zip(&cols) {
            *r += col[j];
        }
    }
    let mut ddv = [0.0f32; 16];
    // SAFETY: 16 floats into a [f32; 16].
    unsafe { _mm512_storeu_ps(ddv.as_mut_ptr(), dd) };
    for (r, v) in o.dd[c0..c0 + nl].iter_mut().zip(ddv) {
        *r += v;
    }
}
