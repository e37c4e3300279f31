//! Direct depthwise-convolution kernels over contiguous `f32` buffers: forward and hand-written
//! backward (no im2col).
//!
//! Layouts (row-major, as burn hands them over): `x`: `[batch, C, H, W]`; `weight`:
//! `[C, kh, kw]` (burn's `[C, 1, kh, kw]` with the unit axis dropped); `bias`: `[C]`;
//! `y`: `[batch, C, OH, OW]`.
//!
//! Geometry:
//! `y[b, c, oh, ow] = bias[c] + sum_{i, j} w[c, i, j] x[b, c, oh sh + i - pt, ow sw + j - pl]`
//! with zero padding; only the top/left paddings `pt`, `pl` and the output size are needed, so
//! the same kernel serves symmetric 2-D padding and the causal 1-D convolution (`H = 1`,
//! `pl = k - 1`, `OW = L`).
//!
//! Work is split over the `batch * C` planes with rayon. Each task first copies its input plane
//! into a zero-padded per-thread scratch plane, so the inner loops run branch-free over
//! contiguous rows and vectorise: the forward pass applies all taps of one kernel row in a
//! single pass over the output row (3- and 4-tap rows specialised); `dx` is the transposed
//! stencil accumulated in a padded scratch plane (axpy per tap), `dw` a dot product per tap.
//! `dw` and `db` are reductions over batch and space: each plane task writes its own partial
//! sums (`kh * kw + 1` floats), which are summed per channel afterwards (no data races, fixed
//! summation order).
//!
//! On AVX-512 CPUs the 3x3 convolutions with a horizontal stride of 1 or 2 (all those of the
//! models) run the plane kernels of `avx512.rs` instead: masked loads straight from
//! the input rows, no scratch plane, weights and `dw` sums in registers (4-5x faster at the
//! `s1` shapes).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::Isa;
use crate::buffer::zeros_par;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Sizes and geometry of one depthwise-convolution call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DwDims {
    /// Batch size.
    pub batch: usize,
    /// Output channels, one filter each.
    pub channels: usize,
    /// Input channels: `channels` (depthwise) or a divisor of it; output channel `c` reads
    /// input channel `c / (channels / in_channels)` (a channel multiplier, as a 1-channel
    /// spectrogram into the stem's first conv).
    pub in_channels: usize,
    /// Input height and width `[H, W]`.
    pub input: [usize; 2],
    /// Kernel size `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]` (>= 1).
    pub stride: [usize; 2],
    /// Top and left zero padding `[pt, pl]` (bottom/right padding follows from `output`).
    pub pad: [usize; 2],
    /// Output height and width `[OH, OW]`.
    pub output: [usize; 2],
}

impl DwDims {
    /// Elements of `x`.
    pub fn x_len(&self) -> usize {
        self.batch * self.in_channels * self.input[0] * self.input[1]
    }

    /// Output channels per input channel.
    fn multiplier(&self) -> usize {
        self.channels / self.in_channels
    }

    /// Input plane read by output plane `p` (`b * channels + c`).
    fn x_plane(&self, p: usize) -> usize {
        (p / self.channels) * self.in_channels + (p % self.channels) / self.multiplier()
    }

    /// Output plane `p`'s channel, input plane (in `x`) and filter (in `w`).
    #[inline(always)]
    fn plane<'a>(&self, p: usize, x: &'a [f32], w: &'a [f32]) -> (usize, &'a [f32], &'a [f32]) {
        let (in_plane, taps) = (
            self.input[0] * self.input[1],
            self.kernel[0] * self.kernel[1],
        );
        let (c, q) = (p % self.channels, self.x_plane(p));
        (
            c,
            &x[q * in_plane..(q + 1) * in_plane],
            &w[c * taps..(c + 1) * taps],
        )
    }

    /// Elements of `y`.
    pub fn y_len(&self) -> usize {
        self.batch * self.channels * self.output[0] * self.output[1]
    }

    /// Elements of the weight (`C * kh * kw`).
    pub fn w_len(&self) -> usize {
        self.channels * self.kernel[0] * self.kernel[1]
    }
}

/// Gradients of a scalar loss with respect to the inputs of a depthwise convolution.
#[derive(Clone, Debug, Default)]
pub struct DwGrads {
    /// `dL/dx`: `[batch, C, H, W]` (empty when not requested).
    pub dx: Vec<f32>,
    /// `dL/dw`: `[C, kh, kw]`.
    pub dw: Vec<f32>,
    /// `dL/dbias`: `[C]`.
    pub db: Vec<f32>,
}

/// Size `[Hp, Wp]` of the zero-padded plane that covers every input index the outputs read.
fn padded_size(d: &DwDims) -> [usize; 2] {
    std::array::from_fn(|a| {
        let reach = (d.output[a] - 1) * d.stride[a] + d.kernel[a];
        reach.max(d.input[a] + d.pad[a])
    })
}

/// Copies one `[H, W]` input plane into the interior of the zero-padded `[Hp, Wp]` scratch.
/// With a horizontal stride of 2, each padded row is stored split into its even then its odd
/// columns ([`s2_tap`]), so that every tap reads a contiguous run.
#[inline(always)]
fn pad_plane(d: &DwDims, wp: usize, x_p: &[f32], xp: &mut [f32]) {
    let [h, w] = d.input;
    let [pt, pl] = d.pad;
    xp.fill(0.0);
    if d.stride[1] == 2 {
        for r in 0..h {
            let row = &mut xp[(r + pt) * wp..(r + pt + 1) * wp];
            let (first, second) = s2_halves(row, pl);
            // Indexed, not zipped: with an odd width the last pair has no second value, and
            // `second` may hold one slot fewer than `first`.
            for (m, pair) in x_p[r * w..(r + 1) * w].chunks(2).enumerate() {
                first[m] = pair[0];
                if let Some(&v) = pair.get(1) {
                    second[m] = v;
                }
            }
        }
        return;
    }
    for r in 0..h {
        xp[(r + pt) * wp + pl..(r + pt) * wp + pl + w].copy_from_slice(&x_p[r * w..(r + 1) * w]);
    }
}

/// The runs of a row stored as even then odd columns ([`pad_plane`]) that hold its columns
/// `pl + 2 m` and `pl + 2 m + 1`, `m = 0, 1, ...`.
#[inline(always)]
fn s2_halves(row: &mut [f32], pl: usize) -> (&mut [f32], &mut [f32]) {
    let ne = row.len().div_ceil(2);
    let (even, odd) = row.split_at_mut(ne);
    if pl.is_multiple_of(2) {
        (&mut even[pl / 2..], &mut odd[pl / 2..])
    } else {
        (&mut odd[pl / 2..], &mut even[pl / 2 + 1..])
    }
}

/// Columns `2 o + j` (`o < n`) of a padded row stored as even then odd columns
/// ([`pad_plane`] for horizontal stride 2): one contiguous run.
#[inline(always)]
fn s2_tap(xr: &[f32], j: usize, n: usize) -> &[f32] {
    let start = (j % 2) * xr.len().div_ceil(2) + j / 2;
    &xr[start..start + n]
}

/// `y[o] += sum_j w[j] x[o + j]` for a stride-1 row with `K` taps: one pass over the output
/// row, vectorised over `o`.
#[inline(always)]
fn row_taps<const K: usize>(y: &mut [f32], xr: &[f32], w: &[f32]) {
    const B: usize = 16;
    let n = y.len();
    let ws: [f32; K] = std::array::from_fn(|j| w[j]);
    let xr = &xr[..n + K - 1];
    // Fixed blocks of 16 outputs in a local array (vectorised whatever the row length; the
    // loop over a whole row of 16 ran scalar), then the tail.
    let mut yc = y.chunks_exact_mut(B);
    for (b, yb) in (&mut yc).enumerate() {
        let mut s: [f32; B] = (&*yb).try_into().expect("block of 16");
        for j in 0..K {
            let xj: &[f32; B] = (&xr[b * B + j..b * B + j + B]).try_into().expect("window");
            for l in 0..B {
                s[l] += ws[j] * xj[l];
            }
        }
        yb.copy_from_slice(&s);
    }
    let done = n - n % B;
    for (o, yv) in yc.into_remainder().iter_mut().enumerate() {
        let mut s = *yv;
        for j in 0..K {
            s += ws[j] * xr[done + o + j];
        }
        *yv = s;
    }
}

/// `acc[o] += a[o] b[o]` in fixed blocks of 16 (vectorised for rows of 16, where the plain
/// loop fell to its scalar remainder).
#[inline(always)]
fn axpy_mul(acc: &mut [f32], a: &[f32], b: &[f32]) {
    const B: usize = 16;
    let (b, a) = (&b[..acc.len()], &a[..acc.len()]);
    let done = acc.len() - acc.len() % B;
    let mut ac = acc.chunks_exact_mut(B);
    for ((o, x), y) in (&mut ac).zip(a.chunks_exact(B)).zip(b.chunks_exact(B)) {
        let (x, y): (&[f32; B], &[f32; B]) = (x.try_into().expect("16"), y.try_into().expect("16"));
        // In a local copy: summed in place, the stores may alias the loads for LLVM, which
        // then keeps the block scalar.
        let mut t: [f32; B] = (&*o).try_into().expect("16");
        for l in 0..B {
            t[l] += x[l] * y[l];
        }
        o.copy_from_slice(&t);
    }
    for (i, o) in ac.into_remainder().iter_mut().enumerate() {
        *o += a[done + i] * b[done + i];
    }
}

/// One output row: `y[o] += sum_j w[j] x[o s + j]` over a padded input row (for `s = 2`,
/// split into even and odd columns by [`pad_plane`]).
#[inline(always)]
fn row_forward(y: &mut [f32], xr: &[f32], w: &[f32], sw: usize) {
    let n = y.len();
    match (sw, w.len()) {
        (1, 3) => row_taps::<3>(y, xr, w),
        (1, 4) => row_taps::<4>(y, xr, w),
        (1, _) => {
            for (j, &wv) in w.iter().enumerate() {
                for (yv, &xv) in y.iter_mut().zip(&xr[j..j + n]) {
                    *yv += wv * xv;
                }
            }
        }
        (2, _) => {
            for (j, &wv) in w.iter().enumerate() {
                for (yv, &xv) in y.iter_mut().zip(s2_tap(xr, j, n)) {
                    *yv += wv * xv;
                }
            }
        }
        _ => {
            for (j, &wv) in w.iter().enumerate() {
                for (o, yv) in y.iter_mut().enumerate() {
                    *yv += wv * xr[o * sw + j];
                }
            }
        }
    }
}

fn check(d: &DwDims, x: &[f32], w: &[f32], bias: &[f32]) {
    assert!(
        d.stride[0] >= 1 && d.stride[1] >= 1,
        "depthwise conv: zero stride"
    );
    assert!(
        d.in_channels > 0 && d.channels.is_multiple_of(d.in_channels),
        "depthwise conv: {} output channels from {} input channels",
        d.channels,
        d.in_channels
    );
    assert_eq!(x.len(), d.x_len(), "depthwise conv: x size");
    assert_eq!(w.len(), d.w_len(), "depthwise conv: weight size");
    assert_eq!(bias.len(), d.channels, "depthwise conv: bias size");
}

/// Forward pass of plane `p` (batch element and channel) into `y_p`, through the padded
/// scratch plane `xp`.
#[inline(always)]
fn fwd_plane(d: &DwDims, [x, w, bias]: [&[f32]; 3], p: usize, xp: &mut [f32], y_p: &mut [f32]) {
    let [kh, kw] = d.kernel;
    let [_, wp] = padded_size(d);
    let [sh, sw] = d.stride;
    let (c, x_p, w_c) = d.plane(p, x, w);
    pad_plane(d, wp, x_p, xp);
    y_p.fill(bias[c]);
    for (oh, y_row) in y_p.chunks_exact_mut(d.output[1]).enumerate() {
        for i in 0..kh {
            let r = oh * sh + i;
            let xr = &xp[r * wp..(r + 1) * wp];
            row_forward(y_row, xr, &w_c[i * kw..(i + 1) * kw], sw);
        }
    }
}

/// [`fwd_plane`] compiled for AVX-512 (the baseline instance runs four lanes per op).
///
/// # Safety
/// The CPU must support AVX-512F and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn fwd_plane_avx512(
    d: &DwDims,
    inputs: [&[f32]; 3],
    p: usize,
    xp: &mut [f32],
    y_p: &mut [f32],
) {
    fwd_plane(d, inputs, p, xp, y_p)
}

/// Forward pass: writes `y` (`[batch, C, OH, OW]`).
pub fn forward(d: DwDims, x: &[f32], w: &[f32], bias: &[f32], y: &mut [f32]) {
    forward_with(Isa::detect(), d, x, w, bias, y)
}

/// [`forward`] with the kernels of instruction set `isa` (the portable ones where it is not
/// available, or for [`Isa::Avx2`]); the tests compare the instances.
pub fn forward_with(isa: Isa, d: DwDims, x: &[f32], w: &[f32], bias: &[f32], y: &mut [f32]) {
    check(&d, x, w, bias);
    assert_eq!(y.len(), d.y_len(), "depthwise conv: output size");
    let out_plane = d.output[0] * d.output[1];
    if y.is_empty() {
        return;
    }
    let avx512 = isa.or_supported() >= Isa::Avx512;
    #[cfg(target_arch = "x86_64")]
    if avx512 && avx512::serves(&d) {
        y.par_chunks_mut(out_plane)
            .enumerate()
            .for_each(|(p, y_p)| {
                let (c, x_p, w_c) = d.plane(p, x, w);
                // SAFETY: AVX-512F and FMA are available (`Isa::Avx512`), `serves(&d)`, and the
                // slices are plane `p`'s input, weights and output.
                unsafe {
                    if d.stride[1] == 1 {
                        avx512::fwd_plane::<1>(&d, x_p, w_c, bias[c], y_p)
                    } else {
                        avx512::fwd_plane::<2>(&d, x_p, w_c, bias[c], y_p)
                    }
                }
            });
        return;
    }
    let [hp, wp] = padded_size(&d);
    y.par_chunks_mut(out_plane).enumerate().for_each_init(
        || vec![0.0f32; hp * wp],
        |xp, (p, y_p)| {
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                // SAFETY: `Isa::Avx512` (AVX-512F, AVX2, FMA) is available on this CPU.
                return unsafe { fwd_plane_avx512(&d, [x, w, bias], p, xp, y_p) };
            }
            let _ = avx512;
            fwd_plane(&d, [x, w, bias], p, xp, y_p)
        },
    );
}

/// Per-thread scratch of the backward pass: the padded input plane, the `dw` partial sums of
/// one plane (`[taps, output width]`); for `dx`, the padded input-gradient plane (scattered,
/// horizontal stride > 1) or the horizontally padded dy rows, the reversed kernel and one dx
/// row (gathered, stride 1).
struct BwdScratch {
    xp: Vec<f32>,
    acc: Vec<f32>,
    dxp: Vec<f32>,
    gp: Vec<f32>,
    wrev: Vec<f32>,
    row: Vec<f32>,
}

/// Read-only inputs of the backward pass's plane tasks.
struct BwdPlanes<'a> {
    d: DwDims,
    x: &'a [f32],
    w: &'a [f32],
    dy: &'a [f32],
    /// Width of the padded plane.
    wp: usize,
}

/// Backward pass of plane `p` (batch element and channel): `dw`, `db` partials into `part_p`
/// (`[taps + 1]`), and the plane's `dx` (every element written) when `dx_p` is given.
#[inline(always)]
fn bwd_plane(
    cx: &BwdPlanes,
    s: &mut BwdScratch,
    p: usize,
    dx_p: Option<&mut [MaybeUninit<f32>]>,
    part_p: &mut [f32],
) {
    let BwdPlanes { d, x, w, dy, wp } = *cx;
    let [h, wd] = d.input;
    let [kh, kw] = d.kernel;
    let [oh_n, ow_n] = d.output;
    let (out_plane, taps) = (oh_n * ow_n, kh * kw);
    let [sh, sw] = d.stride;
    let [pt, pl] = d.pad;
    let (_, x_p, w_c) = d.plane(p, x, w);
    pad_plane(&d, wp, x_p, &mut s.xp);
    let dy_p = &dy[p * out_plane..(p + 1) * out_plane];
    let (dw_p, db_p) = part_p.split_at_mut(taps);
    db_p[0] = crate::lanes::sum(dy_p);
    // dx: with a horizontal stride of 1 gathered per dx row at the end; otherwise scattered
    // into the padded plane `dxp` here, row by row of dy.
    let scatter = dx_p.is_some() && sw != 1;
    if scatter {
        s.dxp.fill(0.0);
    }
    // dw: one partial sum per tap and output column (independent lanes, no serial
    // chain), summed over the columns once per plane.
    s.acc.fill(0.0);
    for (oh, g_row) in dy_p.chunks_exact(ow_n).enumerate() {
        for i in 0..kh {
            let r = oh * sh + i;
            let xr = &s.xp[r * wp..(r + 1) * wp];
            for j in 0..kw {
                let acc = &mut s.acc[(i * kw + j) * ow_n..(i * kw + j + 1) * ow_n];
                if sw == 1 {
                    axpy_mul(acc, g_row, &xr[j..j + ow_n]);
                } else if sw == 2 {
                    axpy_mul(acc, g_row, s2_tap(xr, j, ow_n));
                } else {
                    for (o, (a, &gv)) in acc.iter_mut().zip(g_row).enumerate() {
                        *a += gv * xr[o * sw + j];
                    }
                }
            }
            if scatter {
                let dxr = &mut s.dxp[r * wp..(r + 1) * wp];
                for j in 0..kw {
                    let wv = w_c[i * kw + j];
                    if sw == 1 {
                        for (dxv, &gv) in dxr[j..j + ow_n].iter_mut().zip(g_row) {
                            *dxv += wv * gv;
                        }
                    } else if sw == 2 {
                        // `dxp` rows as even then odd columns, as `xp` (see `pad_plane`).
                        let start = (j % 2) * wp.div_ceil(2) + j / 2;
                        for (dxv, &gv) in dxr[start..start + ow_n].iter_mut().zip(g_row) {
                            *dxv += wv * gv;
                        }
                    } else {
                        for (o, &gv) in g_row.iter().enumerate() {
                            dxr[o * sw + j] += wv * gv;
                        }
                    }
                }
            }
        }
    }
    for (dw, acc) in dw_p.iter_mut().zip(s.acc.chunks_exact(ow_n)) {
        *dw = crate::lanes::sum(acc);
    }
    let Some(dx_p) = dx_p else {
        return;
    };
    if scatter {
        for r in 0..h {
            if sw == 2 {
                let (first, second) = s2_halves(&mut s.dxp[(r + pt) * wp..(r + pt + 1) * wp], pl);
                let out = &mut dx_p[r * wd..(r + 1) * wd];
                for (m, pair) in out.chunks_mut(2).enumerate() {
                    pair[0].write(first[m]);
                    if let Some(o) = pair.get_mut(1) {
                        o.write(second[m]);
                    }
                }
                continue;
            }
            let src = &s.dxp[(r + pt) * wp + pl..(r + pt) * wp + pl + wd];
            for (o, &v) in dx_p[r * wd..(r + 1) * wd].iter_mut().zip(src) {
                o.write(v);
            }
        }
        return;
    }
    // Stride 1 across: dx[r, c] = sum_{i, j} w[i, j] dy[(r + pt - i) / sh, c + pl - j] (rows
    // where sh divides r + pt - i), i.e. per kernel row a correlation of the dy row, padded
    // by kw - 1 zeros on both sides, with the reversed kernel row: each dx row is summed in
    // registers and written once (scattering wrote overlapping, shifted ranges of a dx row
    // kh * kw times per dy row, each store partly overlapping the last: forwarding stalls).
    let gw = gather_width(&d);
    for (oh, g_row) in dy_p.chunks_exact(ow_n).enumerate() {
        s.gp[oh * gw + kw - 1..oh * gw + kw - 1 + ow_n].copy_from_slice(g_row);
    }
    for (rev, row) in s.wrev.chunks_exact_mut(kw).zip(w_c.chunks_exact(kw)) {
        for (o, &v) in rev.iter_mut().zip(row.iter().rev()) {
            *o = v;
        }
    }
    for r in 0..h {
        let row = &mut s.row[..wd];
        row.fill(0.0);
        for i in 0..kh {
            let Some(q) = (r + pt).checked_sub(i) else {
                continue;
            };
            if !q.is_multiple_of(sh) || q / sh >= oh_n {
                continue;
            }
            let oh = q / sh;
            row_forward(
                row,
                &s.gp[oh * gw + pl..(oh + 1) * gw],
                &s.wrev[i * kw..(i + 1) * kw],
                1,
            );
        }
        for (o, &v) in dx_p[r * wd..(r + 1) * wd].iter_mut().zip(row.iter()) {
            o.write(v);
        }
    }
}

/// Width of a dy row padded for the gathered `dx` of [`bwd_plane`]: `kw - 1` zeros before
/// the row, and after it at least `kw - 1` and enough for the correlation windows of all `wd`
/// dx columns from `pl` on (a trimmed output, as the causal conv1d's, ends early).
fn gather_width(d: &DwDims) -> usize {
    let kw = d.kernel[1];
    (d.output[1] + kw - 1).max(d.pad[1] + d.input[1]) + kw - 1
}

/// [`bwd_plane`] compiled for AVX-512 (the crate's baseline is SSE2: four lanes per op).
///
/// # Safety
/// The CPU must support AVX-512F and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn bwd_plane_avx512(
    cx: &BwdPlanes,
    s: &mut BwdScratch,
    p: usize,
    dx_p: Option<&mut [MaybeUninit<f32>]>,
    part_p: &mut [f32],
) {
    bwd_plane(cx, s, p, dx_p, part_p)
}

/// [`bwd_plane`] in its AVX-512 instance where `avx512` (checked by the caller), else at the
/// baseline.
fn bwd_plane_isa(
    avx512: bool,
    cx: &BwdPlanes,
    s: &mut BwdScratch,
    p: usize,
    dx_p: Option<&mut [MaybeUninit<f32>]>,
    part_p: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        let d = &cx.d;
        if avx512::serves(d) {
            let out_plane = d.output[0] * d.output[1];
            let (_, x_p, w_c) = d.plane(p, cx.x, cx.w);
            let dy_p = &cx.dy[p * out_plane..(p + 1) * out_plane];
            // SAFETY: the caller detected AVX-512F and FMA (`Isa::Avx512`), `serves(d)`, and
            // the slices are plane `p`'s.
            return unsafe {
                if d.stride[1] == 1 {
                    avx512::bwd_plane::<1>(d, x_p, w_c, dy_p, dx_p, part_p)
                } else {
                    avx512::bwd_plane::<2>(d, x_p, w_c, dy_p, dx_p, part_p)
                }
            };
        }
        // SAFETY: the caller detected AVX-512F and AVX2 (`Isa::Avx512`).
        return unsafe { bwd_plane_avx512(cx, s, p, dx_p, part_p) };
    }
    let _ = avx512;
    bwd_plane(cx, s, p, dx_p, part_p)
}

/// Backward pass: gradients of `sum(dy ⊙ y)`.
///
/// `dx[b, c, ih, iw] = sum_{i, j} w[c, i, j] dy[b, c, oh, ow]` over the outputs that read
/// `(ih, iw)` (the transposed stencil, accumulated in a padded plane whose interior is `dx`);
/// `dw[c, i, j] = sum_{b, oh, ow} dy[b, c, oh, ow] x[b, c, oh sh + i - pt, ow sw + j - pl]`;
/// `db[c] = sum_{b, oh, ow} dy[b, c, oh, ow]`. `dx` is left empty when `want_dx` is false
/// (input not tracked).
pub fn backward(
    d: DwDims,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    dy: &[f32],
    want_dx: bool,
) -> DwGrads {
    backward_with(Isa::detect(), d, x, w, bias, dy, want_dx)
}

/// [`backward`] with the kernels of instruction set `isa` (as [`forward_with`]).
pub fn backward_with(
    isa: Isa,
    d: DwDims,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    dy: &[f32],
    want_dx: bool,
) -> DwGrads {
    check(&d, x, w, bias);
    assert_eq!(dy.len(), d.y_len(), "depthwise conv: output gradient size");
    let [h, wd] = d.input;
    let [kh, kw] = d.kernel;
    let [oh_n, ow_n] = d.output;
    let (in_plane, out_plane, taps) = (h * wd, oh_n * ow_n, kh * kw);
    let planes = d.batch * d.channels;
    let part = taps + 1;
    let mut g = DwGrads {
        dx: Vec::new(),
        dw: vec![0.0; d.w_len()],
        db: vec![0.0; d.channels],
    };
    if planes == 0 || out_plane == 0 || in_plane == 0 {
        if want_dx {
            g.dx = zeros_par(d.x_len());
        }
        return g;
    }
    let [hp, wp] = padded_size(&d);
    let mut partials = vec![0.0f32; planes * part];
    let cx = BwdPlanes { d, x, w, dy, wp };
    let avx512 = isa.or_supported() >= Isa::Avx512;
    let gather = want_dx && d.stride[1] == 1;
    let init = || BwdScratch {
        xp: vec![0.0; hp * wp],
        acc: vec![0.0; taps * ow_n],
        dxp: if want_dx && !gather {
            vec![0.0; hp * wp]
        } else {
            Vec::new()
        },
        // Zero borders stay zero: only the interior columns are written.
        gp: if gather {
            vec![0.0; oh_n * gather_width(&d)]
        } else {
            Vec::new()
        },
        wrev: vec![0.0; taps],
        row: vec![0.0; if gather { wd } else { 0 }],
    };
    if want_dx {
        // Per output plane (`planes * in_plane`); with a channel multiplier, summed per input
        // plane below.
        let n = planes * in_plane;
        let mut dx = Vec::with_capacity(n);
        dx.spare_capacity_mut()[..n]
            .par_chunks_mut(in_plane)
            .zip(partials.par_chunks_mut(part))
            .enumerate()
            .for_each_init(init, |s, (p, (dx_p, part_p))| {
                bwd_plane_isa(avx512, &cx, s, p, Some(dx_p), part_p)
            });
        // SAFETY: `n = planes * in_plane`: every plane task wrote its whole plane of `dx`.
        unsafe { dx.set_len(n) };
        g.dx = if d.multiplier() == 1 {
            dx
        } else {
            // dx[b, ci] = sum of the planes of its output channels c = ci m .. (ci + 1) m.
            let mut sum = vec![0.0f32; d.x_len()];
            for (p, plane) in dx.chunks_exact(in_plane).enumerate() {
                let q = d.x_plane(p);
                for (o, &v) in sum[q * in_plane..(q + 1) * in_plane].iter_mut().zip(plane) {
                    *o += v;
                }
            }
            sum
        };
    } else {
        partials
            .par_chunks_mut(part)
            .enumerate()
            .for_each_init(init, |s, (p, part_p)| {
                bwd_plane_isa(avx512, &cx, s, p, None, part_p)
            });
    }
    for (p, part_p) in partials.chunks_exact(part).enumerate() {
        let c = p % d.channels;
        for (acc, v) in g.dw[c * taps..(c + 1) * taps]
            .iter_mut()
            .zip(&part_p[..taps])
        {
            *acc += v;
        }
        g.db[c] += part_p[taps];
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{rand_vec, rel_err};
    use rand::{SeedableRng, rngs::StdRng};

    /// The AVX-512 3x3 plane kernels (where this CPU has them) against the portable ones, forward
    /// and backward (`dx`, `dw`, `db`): widths around and past one register (masked chunks,
    /// stride-2 windows straddling two registers), paddings 0 to 2, vertical strides 1 to 3,
    /// horizontal strides 1 and 2, and a channel multiplier.
    #[test]
    fn depthwise_kernels_agree_across_instruction_sets() {
        let mut rng = StdRng::seed_from_u64(13);
        let geometries = [
            // [H, W], stride, pad, in_channels
            ([6, 16], [1, 1], [1, 1], 3),
            ([7, 17], [1, 1], [1, 1], 3),
            ([5, 40], [2, 1], [1, 1], 3),
            ([9, 33], [2, 2], [1, 1], 3),
            ([8, 64], [2, 2], [1, 1], 1),
            ([10, 31], [3, 2], [2, 0], 3),
            ([4, 20], [1, 2], [0, 2], 1),
            ([3, 5], [1, 1], [0, 0], 3),
        ];
        for (input, stride, pad, in_channels) in geometries {
            let output = std::array::from_fn(|a| (input[a] + 2 * pad[a] - 3) / stride[a] + 1);
            let d = DwDims {
                batch: 2,
                channels: 3,
                in_channels,
                input,
                kernel: [3, 3],
                stride,
                pad,
                output,
            };
            let x = rand_vec(&mut rng, d.x_len());
            let w = rand_vec(&mut rng, d.w_len());
            let bias = rand_vec(&mut rng, d.channels);
            let dy = rand_vec(&mut rng, d.y_len());
            let run = |isa| {
                let mut y = vec![0.0f32; d.y_len()];
                forward_with(isa, d, &x, &w, &bias, &mut y);
                let g = backward_with(isa, d, &x, &w, &bias, &dy, true);
                [y, g.dx, g.dw, g.db]
            };
            let (base, wide) = (run(Isa::Portable), run(Isa::Avx512));
            for (i, (a, b)) in base.iter().zip(&wide).enumerate() {
                let e = rel_err(a, b);
                assert!(e < 1e-5, "{d:?}: output {i} rel err {e}");
            }
        }
    }
}
