//! Direct depthwise-convolution kernels over contiguous `f32` buffers: forward and hand-written
//! backward (no im2col).
//!
//! Layouts (row-major, as burn hands them over): `x`: `[batch, C, H, W]`; `weight`:
//! `[C, kh, kw]` (burn's `[C, 1, kh, kw]` with the unit axis dropped); `bias`: `[C]`;
//! `y`: `[batch, C, OH, OW]`.
//!
//! Geometry: `y[b, c, oh, ow] = bias[c] + sum_{i, j} w[c, i, j] x[b, c, oh sh + i - pt, ow sw + j - pl]`
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

use rayon::prelude::*;

/// Sizes and geometry of one depthwise-convolution call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DwDims {
    /// Batch size.
    pub batch: usize,
    /// Channels (input = output, one filter per channel).
    pub channels: usize,
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
        self.batch * self.channels * self.input[0] * self.input[1]
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
fn pad_plane(d: &DwDims, wp: usize, x_p: &[f32], xp: &mut [f32]) {
    let [h, w] = d.input;
    let [pt, pl] = d.pad;
    xp.fill(0.0);
    for r in 0..h {
        xp[(r + pt) * wp + pl..(r + pt) * wp + pl + w].copy_from_slice(&x_p[r * w..(r + 1) * w]);
    }
}

/// `y[o] += sum_j w[j] x[o + j]` for a stride-1 row with `K` taps: one pass over the output
/// row, vectorised over `o`.
#[inline(always)]
fn row_taps<const K: usize>(y: &mut [f32], xr: &[f32], w: &[f32]) {
    let n = y.len();
    let xs: [&[f32]; K] = std::array::from_fn(|j| &xr[j..j + n]);
    let ws: [f32; K] = std::array::from_fn(|j| w[j]);
    for (o, yv) in y.iter_mut().enumerate() {
        let mut s = *yv;
        for j in 0..K {
            s += ws[j] * xs[j][o];
        }
        *yv = s;
    }
}

/// One output row: `y[o] += sum_j w[j] x[o s + j]` over a padded input row.
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
    assert_eq!(x.len(), d.x_len(), "depthwise conv: x size");
    assert_eq!(w.len(), d.w_len(), "depthwise conv: weight size");
    assert_eq!(bias.len(), d.channels, "depthwise conv: bias size");
}

/// Forward pass: writes `y` (`[batch, C, OH, OW]`).
pub fn forward(d: DwDims, x: &[f32], w: &[f32], bias: &[f32], y: &mut [f32]) {
    check(&d, x, w, bias);
    assert_eq!(y.len(), d.y_len(), "depthwise conv: output size");
    let [h, wd] = d.input;
    let [kh, kw] = d.kernel;
    let [oh_n, ow_n] = d.output;
    let (in_plane, out_plane, taps) = (h * wd, oh_n * ow_n, kh * kw);
    if y.is_empty() {
        return;
    }
    let [hp, wp] = padded_size(&d);
    let [sh, sw] = d.stride;
    y.par_chunks_mut(out_plane).enumerate().for_each_init(
        || vec![0.0f32; hp * wp],
        |xp, (p, y_p)| {
            let c = p % d.channels;
            pad_plane(&d, wp, &x[p * in_plane..(p + 1) * in_plane], xp);
            let w_c = &w[c * taps..(c + 1) * taps];
            y_p.fill(bias[c]);
            for (oh, y_row) in y_p.chunks_exact_mut(ow_n).enumerate() {
                for i in 0..kh {
                    let r = oh * sh + i;
                    let xr = &xp[r * wp..(r + 1) * wp];
                    row_forward(y_row, xr, &w_c[i * kw..(i + 1) * kw], sw);
                }
            }
        },
    );
}

/// Per-thread scratch of the backward pass: the padded input and input-gradient planes, and
/// the `dw` partial sums of one plane (`[taps, output width]`).
struct BwdScratch {
    xp: Vec<f32>,
    dxp: Vec<f32>,
    acc: Vec<f32>,
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
    check(&d, x, w, bias);
    assert_eq!(dy.len(), d.y_len(), "depthwise conv: output gradient size");
    let [h, wd] = d.input;
    let [kh, kw] = d.kernel;
    let [oh_n, ow_n] = d.output;
    let (in_plane, out_plane, taps) = (h * wd, oh_n * ow_n, kh * kw);
    let planes = d.batch * d.channels;
    let part = taps + 1;
    let mut g = DwGrads {
        dx: if want_dx {
            super::zeros_par(d.x_len())
        } else {
            Vec::new()
        },
        dw: vec![0.0; d.w_len()],
        db: vec![0.0; d.channels],
    };
    if planes == 0 || out_plane == 0 || in_plane == 0 {
        return g;
    }
    let [hp, wp] = padded_size(&d);
    let [sh, sw] = d.stride;
    let [pt, pl] = d.pad;
    let mut partials = vec![0.0f32; planes * part];
    let plane_task =
        |s: &mut BwdScratch, p: usize, dx_p: Option<&mut [f32]>, part_p: &mut [f32]| {
            let c = p % d.channels;
            pad_plane(&d, wp, &x[p * in_plane..(p + 1) * in_plane], &mut s.xp);
            let dy_p = &dy[p * out_plane..(p + 1) * out_plane];
            let w_c = &w[c * taps..(c + 1) * taps];
            let (dw_p, db_p) = part_p.split_at_mut(taps);
            db_p[0] = super::lanes::sum(dy_p);
            let with_dx = dx_p.is_some();
            if with_dx {
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
                            for ((a, &gv), &xv) in acc.iter_mut().zip(g_row).zip(&xr[j..j + ow_n]) {
                                *a += gv * xv;
                            }
                        } else {
                            for (o, (a, &gv)) in acc.iter_mut().zip(g_row).enumerate() {
                                *a += gv * xr[o * sw + j];
                            }
                        }
                    }
                    if with_dx {
                        let dxr = &mut s.dxp[r * wp..(r + 1) * wp];
                        for j in 0..kw {
                            let wv = w_c[i * kw + j];
                            if sw == 1 {
                                for (dxv, &gv) in dxr[j..j + ow_n].iter_mut().zip(g_row) {
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
                *dw = super::lanes::sum(acc);
            }
            if let Some(dx_p) = dx_p {
                for r in 0..h {
                    dx_p[r * wd..(r + 1) * wd]
                        .copy_from_slice(&s.dxp[(r + pt) * wp + pl..(r + pt) * wp + pl + wd]);
                }
            }
        };
    let init = || BwdScratch {
        xp: vec![0.0; hp * wp],
        acc: vec![0.0; taps * ow_n],
        dxp: if want_dx {
            vec![0.0; hp * wp]
        } else {
            Vec::new()
        },
    };
    if want_dx {
        g.dx.par_chunks_mut(in_plane)
            .zip(partials.par_chunks_mut(part))
            .enumerate()
            .for_each_init(init, |s, (p, (dx_p, part_p))| {
                plane_task(s, p, Some(dx_p), part_p)
            });
    } else {
        partials
            .par_chunks_mut(part)
            .enumerate()
            .for_each_init(init, |s, (p, part_p)| plane_task(s, p, None, part_p));
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
