//! The backward pass of the selective scan with `d_state` 16 on AVX-512, time-major: channels
//! in the vector lanes, the 16 states in 16 registers, as the forward scan of the int8 engine
//! (`crate::int8::kernels::scan16_time_major`), which the training mixer runs forward.
//!
//! Against the channel-major kernel of [`super::cpu`] (states in the lanes, two horizontal sums
//! per channel and step for `<dh_t, B_t>` and `<dh_t ⊙ h_{t-1} ⊙ e_t, A>`), those two sums
//! over states become vector accumulations over the 16 states, and the sums over channels that
//! the channel-major kernel accumulated lane-wise (`dB`, `dC`) become one transpose-reduction
//! of 16 vectors per quantity and step (45 shuffles and adds for 16 sums, [`reduce16`]).
//!
//! Recurrence (per channel `c`, state `n`; `e_t = exp(delta_t A)`, `g_t = dy_t`):
//! `dh_t = g_t C_t + e_{t+1} ⊙ dh_{t+1}`;
//! `du_t = D g_t + delta_t <dh_t, B_t>`;
//! `ddelta_t = u_t <dh_t, B_t> + <dh_t ⊙ h_{t-1} ⊙ e_t, A>`;
//! `dA += delta_t dh_t ⊙ h_{t-1} ⊙ e_t`; `dD += g_t u_t`;
//! `dB_t = sum_c delta_t u_t dh_t`; `dC_t = sum_c g_t h_t`.
//! The states `h_t` and decays `e_t` of one block of 16 channels are recomputed forward into
//! the scratch (`2 (L + 1) 16` vectors, 1 MiB at L = 512: L2-resident), then read in reverse.

use std::arch::x86_64::*;

use crate::int8::kernels::exp2_16;

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

/// States per channel this kernel handles.
pub(crate) const N: usize = 16;

/// Scratch of [`backward16`] for sequences of up to `len` steps.
pub(crate) struct TimeMajorBwd {
    /// Row 0: `h_0 = 0`; row `t + 1`: `h_t`, 16 state vectors per row.
    hs: Vec<__m512>,
    /// Row `t`: `e_t = exp(delta_t A)`, 16 state vectors per row.
    es: Vec<__m512>,
}

impl TimeMajorBwd {
    /// Scratch for `len` steps.
    pub(crate) fn new(len: usize) -> Self {
        // SAFETY: an all-zero `__m512` is a valid value (sixteen 0.0f32).
        let zero = unsafe { std::mem::zeroed::<__m512>() };
        TimeMajorBwd {
            hs: vec![zero; (len + 1) * N],
            es: vec![zero; len * N],
        }
    }
}

/// Inputs of [`backward16`], time-major `[L, di]` where marked.
pub(crate) struct Bwd16In<'a> {
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
pub(crate) struct Bwd16Out<'a> {
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
pub(crate) unsafe fn backward16(
    di: usize,
    l: usize,
    x: &Bwd16In,
    s: &mut TimeMajorBwd,
    o: &mut Bwd16Out,
) {
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
    // SAFETY (all masked loads and stores below): lanes `j < nl` touch channel `c0 + j < di`
    // of rows `t < L` of `[L, di]` buffers (or of `[16, di]`, `[di]`), inside the asserted
    // lengths; masked-off lanes are not accessed.
    let (a, dsk) = unsafe {
        let mut a = [_mm512_setzero_ps(); N];
        for (n, av) in a.iter_mut().enumerate() {
            *av = _mm512_maskz_loadu_ps(mask, x.a_t.as_ptr().add(n * di + c0));
        }
        (a, _mm512_maskz_loadu_ps(mask, x.d.as_ptr().add(c0)))
    };
    let a2: [__m512; N] = a.map(|v| _mm512_mul_ps(v, log2e));
    macro_rules! ld {
        ($p:expr, $t:expr) => {
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
