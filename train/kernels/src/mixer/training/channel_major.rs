//! The channel-major path of the training mixer (any instruction set, any `d_state`): a
//! sequence's rows `[rows, L]` stay in L1/L2; the `x` half is transposed once, the causal conv,
//! SiLU, the projections (row `axpy`s over `L`), softplus and the scan
//! ([`crate::scan::channel_major::SeqScan`]) follow, and the gate writes the token-major
//! output.

use crate::gemm::{View, gemm_strided};
use crate::lanes;
use crate::math::{madd, sigmoid, silu, silu_grad, softplus};
use crate::transpose::transpose_strided_fast;

use super::{CHANNEL_MAJOR, MixerDims, MixerWeights, Scratch, gate_grads, part_grads};

/// Columns `off..off + width` of the token-major `src` (`[len, ld]`) into the channel-major
/// `dst` (`[width, len]`).
#[inline(always)]
fn to_channel_major(src: &[f32], ld: usize, off: usize, width: usize, len: usize, dst: &mut [f32]) {
    transpose_strided_fast(&src[off..], ld, dst, len, len, width);
}

/// The channel-major `src` (`[width, len]`) into columns `off..off + width` of the token-major
/// `dst` (`[len, ld]`).
#[inline(always)]
fn to_token_major(src: &[f32], width: usize, len: usize, dst: &mut [f32], ld: usize, off: usize) {
    transpose_strided_fast(src, len, &mut dst[off..], ld, width, len);
}

/// Recomputes the scan inputs of one sequence from its `xz` (`[L, 2 d_inner]`): `x`, `xc`, `u`,
/// `proj`, `dtp`, `delta` in `s`.
///
/// `xc[c, t] = conv_b[c] + sum_j conv_w[c, j] x[c, t + j - (K - 1)]` (zeros before `t = 0`);
/// `u = SiLU(xc)`; `proj[k, t] = sum_c x_proj[c, k] u[c, t]`;
/// `dtp[c, t] = dt_b[c] + sum_r dt_proj[r, c] proj[r, t]`; `delta = softplus(dtp)`.
#[inline(always)]
fn scan_inputs<const FMA: bool>(dims: MixerDims, w: &MixerWeights, xz: &[f32], s: &mut Scratch) {
    let MixerDims {
        len,
        d_inner: di,
        dt_rank: r,
        d_conv: k,
        ..
    } = dims;
    let pw = dims.proj_width();
    to_channel_major(xz, 2 * di, 0, di, len, &mut s.x);
    to_channel_major(xz, 2 * di, di, di, len, &mut s.z);
    for c in 0..di {
        let x = &s.x[c * len..(c + 1) * len];
        let xc = &mut s.xc[c * len..(c + 1) * len];
        let wc = &w.conv_w[c * k..(c + 1) * k];
        xc.fill(w.conv_b[c]);
        for j in 0..k {
            // Tap j reads x[t - (K - 1 - j)].
            let shift = k - 1 - j;
            if shift >= len {
                continue;
            }
            for (o, &v) in xc[shift..].iter_mut().zip(&x[..len - shift]) {
                *o = madd::<FMA>(wc[j], v, *o);
            }
        }
        let u = &mut s.u[c * len..(c + 1) * len];
        #[cfg(target_arch = "x86_64")]
        if s.avx512 {
            u.copy_from_slice(xc);
            // SAFETY: `s.avx512` holds only at the `Isa::Avx512` level and above (available:
            // `or_supported`).
            unsafe { crate::math::silu_avx512(u) };
            continue;
        }
        for (o, &v) in u.iter_mut().zip(xc.iter()) {
            *o = silu::<FMA>(v);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if s.avx512 {
        // Register-blocked: proj = x_proj^T u, the same sums in the same order as below.
        // SAFETY: as above.
        unsafe { crate::gemm::matmul_rows_avx512(&s.x_proj_t, &s.u, &mut s.proj, pw, di, len) };
    }
    if !s.avx512 {
        s.proj.fill(0.0);
        for c in 0..di {
            let u = &s.u[c * len..(c + 1) * len];
            for j in 0..pw {
                let wv = w.x_proj[c * pw + j];
                for (o, &v) in s.proj[j * len..(j + 1) * len].iter_mut().zip(u) {
                    *o = madd::<FMA>(wv, v, *o);
                }
            }
        }
    }
    for c in 0..di {
        let dtp = &mut s.dtp[c * len..(c + 1) * len];
        dtp.fill(w.dt_b[c]);
        for q in 0..r {
            let wv = w.dt_proj[q * di + c];
            for (o, &v) in dtp.iter_mut().zip(&s.proj[q * len..(q + 1) * len]) {
                *o = madd::<FMA>(wv, v, *o);
            }
        }
        let delta = &mut s.delta[c * len..(c + 1) * len];
        #[cfg(target_arch = "x86_64")]
        if s.avx512 {
            delta.copy_from_slice(dtp);
            // SAFETY: as above.
            unsafe { crate::math::softplus_avx512(delta) };
            continue;
        }
        for (o, &v) in delta.iter_mut().zip(dtp.iter()) {
            *o = softplus::<FMA>(v);
        }
    }
}

/// Forward pass of one sequence, channel-major: `xz` `[L, 2 d_inner]` -> `out`
/// `[L, d_inner]`; the scan output (before the gate) goes to `y` `[L, d_inner]`.
#[inline(always)]
pub(super) fn fwd_seq<const FMA: bool>(
    dims: MixerDims,
    w: &MixerWeights,
    xz: &[f32],
    s: &mut Scratch,
    y: &mut [f32],
    out: &mut [f32],
) {
    let MixerDims {
        len, d_inner: di, ..
    } = dims;
    let r = dims.dt_rank;
    let n = dims.d_state;
    scan_inputs::<FMA>(dims, w, xz, s);
    let (b, c) = (
        &s.proj[r * len..(r + n) * len],
        &s.proj[(r + n) * len..(r + 2 * n) * len],
    );
    let scan = s.scan.as_mut().expect(CHANNEL_MAJOR);
    scan.forward::<FMA>([&s.u, &s.delta, b, c, w.d], &mut s.ys);
    // out = y * SiLU(z), channel-major, then into the token-major output.
    #[cfg(target_arch = "x86_64")]
    if s.avx512 {
        s.g.copy_from_slice(&s.ys);
        // SAFETY: `s.avx512` holds only at the `Isa::Avx512` level and above (available:
        // `or_supported`).
        unsafe { crate::math::gate_avx512(&mut s.g, &s.z) };
    }
    if !s.avx512 {
        for ((g, &yv), &zv) in s.g.iter_mut().zip(&s.ys).zip(&s.z) {
            *g = yv * silu::<FMA>(zv);
        }
    }
    to_token_major(&s.g, di, len, out, di, 0);
    to_token_major(&s.ys, di, len, y, di, 0);
}

/// Backward pass of one sequence, channel-major: from `dout` `[L, d_inner]` and the saved
/// scan output `y` (`[L, d_inner]`), writes `dxz` `[L, 2 d_inner]` and adds the parameter
/// gradients to `part` (order of [`MixerGrads`], `conv_w` to `d`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn bwd_seq<const FMA: bool>(
    dims: MixerDims,
    w: &MixerWeights,
    xz: &[f32],
    y: &[f32],
    dout: &[f32],
    s: &mut Scratch,
    dxz: &mut [f32],
    part: &mut [f32],
) {
    let MixerDims {
        len,
        d_inner: di,
        d_state: n,
        dt_rank: r,
        d_conv: k,
        ..
    } = dims;
    let pw = dims.proj_width();
    scan_inputs::<FMA>(dims, w, xz, s);
    let [g_conv_w, g_conv_b, g_x_proj, g_dt_proj, g_dt_b, g_scan] = part_grads(dims, part);

    // Gate ([`gate_grads`]): dy into `s.dy`, dz into `s.g`.
    to_channel_major(dout, di, 0, di, len, &mut s.dy);
    to_channel_major(y, di, 0, di, len, &mut s.ys);
    for (((dy, dz), &yv), &zv) in s.dy.iter_mut().zip(s.g.iter_mut()).zip(&s.ys).zip(&s.z) {
        (*dy, *dz) = gate_grads::<FMA>(*dy, yv, zv);
    }
    to_token_major(&s.g, di, len, dxz, 2 * di, di);

    // Scan: du, ddelta, dB, dC (straight into the B / C rows of dproj), dA and dD.
    let (b, c) = (
        &s.proj[r * len..(r + n) * len],
        &s.proj[(r + n) * len..(r + 2 * n) * len],
    );
    let (_, dbc) = s.dproj.split_at_mut(r * len);
    let (db, dc) = dbc.split_at_mut(n * len);
    s.scan.as_mut().expect(CHANNEL_MAJOR).backward::<FMA>(
        [&s.u, &s.delta, b, c, w.d],
        &s.dy,
        [&mut s.du, &mut s.ddelta, db, dc, g_scan],
    );

    // Softplus' = sigma; dt_proj: d dt_b[c] = sum_t ddtp, d dt_proj[q, c] = sum_t ddtp dt[q],
    // d dt[q, t] = sum_c dt_proj[q, c] ddtp[c, t]. ddtp overwrites ddelta.
    s.dproj[..r * len].fill(0.0);
    for c in 0..di {
        let ddtp = &mut s.ddelta[c * len..(c + 1) * len];
        let dtp = &s.dtp[c * len..(c + 1) * len];
        for (g, &v) in ddtp.iter_mut().zip(dtp) {
            *g *= sigmoid::<FMA>(v);
        }
        g_dt_b[c] += lanes::sum(ddtp);
        for q in 0..r {
            let dt = &s.proj[q * len..(q + 1) * len];
            g_dt_proj[q * di + c] += lanes::dot::<FMA>(ddtp, dt);
            let wv = w.dt_proj[q * di + c];
            for (o, &g) in s.dproj[q * len..(q + 1) * len].iter_mut().zip(ddtp.iter()) {
                *o = madd::<FMA>(wv, g, *o);
            }
        }
    }

    // x_proj: d x_proj[c, j] += sum_t u[c, t] dproj[j, t] (u dproj^T), du[c, t] += sum_j
    // x_proj[c, j] dproj[j, t] (x_proj dproj): two products on gemm's register-blocked
    // kernels (as dots and axpys over rows, one serial FMA chain per dot on AVX-512).
    let row = |ld| View { rs: ld, cs: 1 };
    gemm_strided(
        [di, pw, len],
        g_x_proj,
        row(pw),
        true,
        &s.u,
        row(len),
        &s.dproj,
        View { rs: 1, cs: len },
    );
    gemm_strided(
        [di, len, pw],
        &mut s.du,
        row(len),
        true,
        w.x_proj,
        row(pw),
        &s.dproj,
        row(len),
    );

    // SiLU then the causal conv: dxc = du * SiLU'(xc) (into du); d conv_b[c] = sum_t dxc;
    // d conv_w[c, j] = sum_t dxc[t] x[t - (K - 1 - j)];
    // dx[t'] = sum_j conv_w[c, j] dxc[t' + K - 1 - j].
    for c in 0..di {
        let xc = &s.xc[c * len..(c + 1) * len];
        let dxc = &mut s.du[c * len..(c + 1) * len];
        for (g, &v) in dxc.iter_mut().zip(xc) {
            *g *= silu_grad::<FMA>(v);
        }
        g_conv_b[c] += lanes::sum(dxc);
        let x = &s.x[c * len..(c + 1) * len];
        // dx (channel-major) reuses the dy row of this channel, no longer needed.
        let dx = &mut s.dy[c * len..(c + 1) * len];
        dx.fill(0.0);
        for j in 0..k {
            let shift = k - 1 - j;
            if shift >= len {
                continue;
            }
            g_conv_w[c * k + j] += lanes::dot::<FMA>(&dxc[shift..], &x[..len - shift]);
            let wv = w.conv_w[c * k + j];
            for (o, &g) in dx[..len - shift].iter_mut().zip(&dxc[shift..]) {
                *o = madd::<FMA>(wv, g, *o);
            }
        }
    }
    to_token_major(&s.dy, di, len, dxz, 2 * di, 0);
}
