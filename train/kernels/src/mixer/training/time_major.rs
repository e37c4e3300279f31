//! The time-major path of the training mixer (AVX-512, `d_state` 16): `xz` is read in place,
//! every step works on the channels of one token in the vector lanes (the causal conv, SiLU,
//! softplus, the gate), `x_proj` runs on gemm, and the register scans
//! ([`crate::scan::time_major`], forward and backward) read `B`, `C` from the `[L, R + 2N]`
//! projection: no transposes.

use crate::gemm::{View, gemm_strided};
use crate::lanes;
use crate::math::{madd, sigmoid, silu_grad};

use super::{MixerDims, MixerWeights, Scratch, gate_grads, part_grads};

/// The scan inputs of one sequence, time-major (`[L, d_inner]`, `proj` `[L, R + 2N]`), from
/// its token-major `xz`: the formulas of
/// [`super::channel_major::scan_inputs`], vectorised over the channels of a
/// step (the conv taps and the rows of `dt_proj` summed in the same order; `x_proj` on gemm).
#[inline(always)]
fn scan_inputs_tm(dims: MixerDims, w: &MixerWeights, xz: &[f32], s: &mut Scratch) {
    let MixerDims {
        len,
        d_inner: di,
        dt_rank: r,
        d_conv: k,
        ..
    } = dims;
    let pw = dims.proj_width();
    // Causal conv: xc[t] = conv_b + sum_j conv_w[:, j] x[t - (K - 1 - j)].
    for (t, xc) in s.xc.chunks_exact_mut(di).enumerate() {
        xc.copy_from_slice(w.conv_b);
        for (j, wj) in s.conv_w_t.chunks_exact(di).enumerate() {
            let Some(src) = t.checked_sub(k - 1 - j) else {
                continue;
            };
            let x = &xz[src * 2 * di..src * 2 * di + di];
            for ((o, &xv), &wv) in xc.iter_mut().zip(x).zip(wj) {
                *o = madd::<true>(wv, xv, *o);
            }
        }
    }
    s.u.copy_from_slice(&s.xc);
    // SAFETY: the time-major path runs only at the `Isa::Avx512` level and above.
    unsafe { crate::math::silu_avx512(&mut s.u) };
    // proj = u x_proj ([L, d_inner] x [d_inner, R + 2N], on gemm's register-blocked kernels);
    // dtp[t] = dt_b + sum_q proj[t, q] dt_proj[q, :].
    let row = |ld| View { rs: ld, cs: 1 };
    gemm_strided(
        [len, pw, di],
        &mut s.proj,
        row(pw),
        false,
        &s.u,
        row(di),
        w.x_proj,
        row(pw),
    );
    for (p, dtp) in s.proj.chunks_exact(pw).zip(s.dtp.chunks_exact_mut(di)) {
        dtp.copy_from_slice(w.dt_b);
        for (&pv, wq) in p[..r].iter().zip(w.dt_proj.chunks_exact(di)) {
            for (o, &wv) in dtp.iter_mut().zip(wq) {
                *o = madd::<true>(wv, pv, *o);
            }
        }
    }
    s.delta.copy_from_slice(&s.dtp);
    // SAFETY: as above.
    unsafe { crate::math::softplus_avx512(&mut s.delta) };
}

/// Forward pass of one sequence, time-major throughout (AVX-512, `d_state` 16): `xz`
/// `[L, 2 d_inner]` is read in place, the register scan
/// ([`crate::scan::time_major::forward16`]) writes `y` `[L, d_inner]` and reads `B`, `C`
/// from the `[L, R + 2N]` projection, and the gate writes `out` `[L, d_inner]` row by row: no
/// transposes.
#[inline(always)]
pub(super) fn fwd_seq_tm(
    dims: MixerDims,
    w: &MixerWeights,
    xz: &[f32],
    s: &mut Scratch,
    y: &mut [f32],
    out: &mut [f32],
) {
    let MixerDims {
        len,
        d_inner: di,
        dt_rank: r,
        ..
    } = dims;
    let pw = dims.proj_width();
    scan_inputs_tm(dims, w, xz, s);
    let bc = &s.proj[r..];
    // SAFETY: the time-major path runs only at the AVX-512 level (F/BW/DQ/VL, FMA), with
    // `d_state` 16; `forward16` asserts the lengths.
    unsafe {
        crate::scan::time_major::forward16(di, len, &s.delta, &s.u, bc, [1, pw], &s.a_t, w.d, y)
    };
    // out = y * SiLU(z), z the second half of each xz row.
    for ((o, yr), xr) in out
        .chunks_exact_mut(di)
        .zip(y.chunks_exact(di))
        .zip(xz.chunks_exact(2 * di))
    {
        o.copy_from_slice(yr);
        // SAFETY: as in `scan_inputs_tm`.
        unsafe { crate::math::gate_avx512(o, &xr[di..]) };
    }
}

/// Backward pass of one sequence, time-major throughout (the formulas of
/// [`super::channel_major::bwd_seq`]): `dz`
/// and `dx` are written straight into the token-major `dxz`, the scan backward
/// ([`crate::scan::time_major::backward16`]) reads and writes the `[L, R + 2N]` projection
/// rows, and the `x_proj` products run on gemm with transposed views.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn bwd_seq_tm(
    dims: MixerDims,
    w: &MixerWeights,
    xz: &[f32],
    y: &[f32],
    dout: &[f32],
    s: &mut Scratch,
    dxz: &mut [f32],
    part: &mut [f32],
) {
    use crate::scan::time_major::{self, Bwd16In, Bwd16Out, TimeMajorBwd};
    let MixerDims {
        len,
        d_inner: di,
        d_state: n,
        dt_rank: r,
        d_conv: k,
        ..
    } = dims;
    let pw = dims.proj_width();
    scan_inputs_tm(dims, w, xz, s);
    let [g_conv_w, g_conv_b, g_x_proj, g_dt_proj, g_dt_b, g_scan] = part_grads(dims, part);

    // Gate ([`gate_grads`]): dy into `s.dy`, dz into the z half of dxz.
    for ((((dy, dxr), xr), yr), gr) in
        s.dy.chunks_exact_mut(di)
            .zip(dxz.chunks_exact_mut(2 * di))
            .zip(xz.chunks_exact(2 * di))
            .zip(y.chunks_exact(di))
            .zip(dout.chunks_exact(di))
    {
        for ((((dyv, dz), &zv), &yv), &gv) in dy
            .iter_mut()
            .zip(&mut dxr[di..])
            .zip(&xr[di..])
            .zip(yr)
            .zip(gr)
        {
            (*dyv, *dz) = gate_grads::<true>(gv, yv, zv);
        }
    }

    // Scan: du, ddelta, dB, dC (into the B / C columns of dproj), dA, dD.
    let scratch = s
        .time_major_bwd
        .get_or_insert_with(|| TimeMajorBwd::new(len));
    let (da, dd) = g_scan.split_at_mut(di * n);
    let input = Bwd16In {
        delta: &s.delta,
        u: &s.u,
        dy: &s.dy,
        bc: &s.proj[r..],
        bc_strides: [1, pw],
        a_t: &s.a_t,
        d: w.d,
    };
    let mut out = Bwd16Out {
        du: &mut s.du,
        ddelta: &mut s.ddelta,
        dbc: &mut s.dproj[r..],
        dbc_ld: pw,
        da,
        dd,
    };
    // SAFETY: the time-major path runs only at the `Isa::Avx512` level and above (F/BW/DQ/VL,
    // FMA; available: `or_supported`), with `d_state` 16; `backward16` asserts the lengths.
    unsafe { time_major::backward16(di, len, &input, scratch, &mut out) };

    // Softplus and dt_proj: ddtp = ddelta sigma(dtp) (into ddelta); d dt_b += ddtp;
    // d dt_proj[q] += dt[q] ddtp; d dt[q] = <dt_proj[q], ddtp>.
    for ((ddtp, dtp), (p, dp)) in s
        .ddelta
        .chunks_exact_mut(di)
        .zip(s.dtp.chunks_exact(di))
        .zip(s.proj.chunks_exact(pw).zip(s.dproj.chunks_exact_mut(pw)))
    {
        for (g, &v) in ddtp.iter_mut().zip(dtp) {
            *g *= sigmoid::<true>(v);
        }
        for (a, &g) in g_dt_b.iter_mut().zip(ddtp.iter()) {
            *a += g;
        }
        for (q, (gq, wq)) in g_dt_proj
            .chunks_exact_mut(di)
            .zip(w.dt_proj.chunks_exact(di))
            .enumerate()
        {
            for (a, &g) in gq.iter_mut().zip(ddtp.iter()) {
                *a = madd::<true>(p[q], g, *a);
            }
            dp[q] = lanes::dot::<true>(wq, ddtp);
        }
    }

    // x_proj: d x_proj[c, j] += sum_t u[t, c] dproj[t, j] (u^T dproj); du[t, c] += sum_j
    // dproj[t, j] x_proj[c, j] (dproj x_proj^T).
    let row = |ld| View { rs: ld, cs: 1 };
    let col = |ld| View { rs: 1, cs: ld };
    gemm_strided(
        [di, pw, len],
        g_x_proj,
        row(pw),
        true,
        &s.u,
        col(di),
        &s.dproj,
        row(pw),
    );
    gemm_strided(
        [len, di, pw],
        &mut s.du,
        row(di),
        true,
        &s.dproj,
        row(pw),
        w.x_proj,
        col(pw),
    );

    // SiLU then the causal conv: dxc = du SiLU'(xc) (into du); d conv_b += dxc;
    // d conv_w[:, j] += dxc[t] x[t - (K - 1 - j)]; dx[t] = sum_j conv_w[:, j] dxc[t + K - 1 - j].
    for (g, &v) in s.du.iter_mut().zip(&s.xc) {
        *g *= silu_grad::<true>(v);
    }
    s.conv_acc.fill(0.0);
    for (t, dxc) in s.du.chunks_exact(di).enumerate() {
        for (a, &g) in g_conv_b.iter_mut().zip(dxc) {
            *a += g;
        }
        for (j, acc) in s.conv_acc.chunks_exact_mut(di).enumerate() {
            let Some(src) = t.checked_sub(k - 1 - j) else {
                continue;
            };
            let x = &xz[src * 2 * di..src * 2 * di + di];
            for ((a, &g), &xv) in acc.iter_mut().zip(dxc).zip(x) {
                *a = madd::<true>(g, xv, *a);
            }
        }
    }
    for (c, gw) in g_conv_w.chunks_exact_mut(k).enumerate() {
        for (j, g) in gw.iter_mut().enumerate() {
            *g += s.conv_acc[j * di + c];
        }
    }
    for (t, dxr) in dxz.chunks_exact_mut(2 * di).enumerate() {
        let dx = &mut dxr[..di];
        dx.fill(0.0);
        for (j, wj) in s.conv_w_t.chunks_exact(di).enumerate() {
            let src = t + k - 1 - j;
            if src >= len {
                continue;
            }
            let dxc = &s.du[src * di..(src + 1) * di];
            for ((o, &g), &wv) in dx.iter_mut().zip(dxc).zip(wj) {
                *o = madd::<true>(wv, g, *o);
            }
        }
    }
}
