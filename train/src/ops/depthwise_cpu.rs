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
//! Work is split over the `batch * C` planes with rayon. For every tap `(i, j)` the range of
//! output columns whose input column is inside the image is computed once, so the inner loops
//! run branch-free over contiguous rows (stride 1) and vectorise: an axpy for the forward pass
//! and for `dx` (the transposed stencil, scattered within the plane), a dot product for `dw`.
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

/// Output positions `o` in `[lo, hi)` whose input index `o s + k - p` lies in `[0, n_in)`.
fn valid_range(k: usize, p: usize, s: usize, n_in: usize, n_out: usize) -> (usize, usize) {
    let lo = if p > k { (p - k).div_ceil(s) } else { 0 };
    let top = n_in + p; // need o s + k < n_in + p
    let hi = if top > k { (top - k - 1) / s + 1 } else { 0 };
    let (lo, hi) = (lo.min(n_out), hi.min(n_out));
    (lo, hi.max(lo))
}

/// Input row of output row `oh` under tap `i`, if inside the image.
#[inline(always)]
fn input_row(oh: usize, i: usize, d: &DwDims) -> Option<usize> {
    let r = oh * d.stride[0] + i;
    (r >= d.pad[0] && r - d.pad[0] < d.input[0]).then(|| r - d.pad[0])
}

/// Dot product with eight independent accumulators (vectorisable; fixed summation order).
#[inline(always)]
fn dot(x: &[f32], y: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0.0f32; LANES];
    let xc = x.chunks_exact(LANES);
    let yc = y.chunks_exact(LANES);
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (xs, ys) in xc.zip(yc) {
        for i in 0..LANES {
            acc[i] += xs[i] * ys[i];
        }
    }
    let mut tail = 0.0;
    for (xv, yv) in xr.iter().zip(yr) {
        tail += xv * yv;
    }
    acc.iter().sum::<f32>() + tail
}

/// Column ranges `(lo, hi, first input column)` of every kernel column `j`.
fn column_taps(d: &DwDims) -> Vec<(usize, usize, usize)> {
    (0..d.kernel[1])
        .map(|j| {
            let (lo, hi) = valid_range(j, d.pad[1], d.stride[1], d.input[1], d.output[1]);
            // For o >= lo, o sw + j >= pl holds, so the subtraction cannot underflow.
            let first = if hi > lo {
                lo * d.stride[1] + j - d.pad[1]
            } else {
                0
            };
            (lo, hi, first)
        })
        .collect()
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
    let cols = column_taps(&d);
    let sw = d.stride[1];
    y.par_chunks_mut(out_plane)
        .enumerate()
        .for_each(|(p, y_p)| {
            let c = p % d.channels;
            let x_p = &x[p * in_plane..(p + 1) * in_plane];
            let w_c = &w[c * taps..(c + 1) * taps];
            y_p.fill(bias[c]);
            for (oh, y_row) in y_p.chunks_exact_mut(ow_n).enumerate() {
                for i in 0..kh {
                    let Some(ih) = input_row(oh, i, &d) else {
                        continue;
                    };
                    let x_row = &x_p[ih * wd..(ih + 1) * wd];
                    for (j, &(lo, hi, first)) in cols.iter().enumerate() {
                        let wv = w_c[i * kw + j];
                        let n = hi - lo;
                        if sw == 1 {
                            for (yv, &xv) in y_row[lo..hi].iter_mut().zip(&x_row[first..first + n])
                            {
                                *yv += wv * xv;
                            }
                        } else {
                            for (k, yv) in y_row[lo..hi].iter_mut().enumerate() {
                                *yv += wv * x_row[first + k * sw];
                            }
                        }
                    }
                }
            }
        });
}

/// Backward pass: gradients of `sum(dy ⊙ y)`.
///
/// `dx[b, c, ih, iw] = sum_{i, j} w[c, i, j] dy[b, c, oh, ow]` over the outputs that read
/// `(ih, iw)` (the transposed stencil); `dw[c, i, j] = sum_{b, oh, ow} dy[b, c, oh, ow]
/// x[b, c, oh sh + i - pt, ow sw + j - pl]`; `db[c] = sum_{b, oh, ow} dy[b, c, oh, ow]`.
/// `dx` is left empty when `want_dx` is false (input not tracked).
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
            vec![0.0; d.x_len()]
        } else {
            Vec::new()
        },
        dw: vec![0.0; d.w_len()],
        db: vec![0.0; d.channels],
    };
    if planes == 0 || out_plane == 0 || in_plane == 0 {
        return g;
    }
    let cols = column_taps(&d);
    let sw = d.stride[1];
    let mut partials = vec![0.0f32; planes * part];
    let plane_task = |p: usize, dx_p: Option<&mut [f32]>, part_p: &mut [f32]| {
        let c = p % d.channels;
        let x_p = &x[p * in_plane..(p + 1) * in_plane];
        let dy_p = &dy[p * out_plane..(p + 1) * out_plane];
        let w_c = &w[c * taps..(c + 1) * taps];
        let (dw_p, db_p) = part_p.split_at_mut(taps);
        db_p[0] = dy_p.iter().sum();
        let mut dx_p = dx_p;
        for (oh, dy_row) in dy_p.chunks_exact(ow_n).enumerate() {
            for i in 0..kh {
                let Some(ih) = input_row(oh, i, &d) else {
                    continue;
                };
                let x_row = &x_p[ih * wd..(ih + 1) * wd];
                for (j, &(lo, hi, first)) in cols.iter().enumerate() {
                    let t = i * kw + j;
                    let n = hi - lo;
                    let g_row = &dy_row[lo..hi];
                    if sw == 1 {
                        dw_p[t] += dot(g_row, &x_row[first..first + n]);
                        if let Some(dx_p) = dx_p.as_deref_mut() {
                            let wv = w_c[t];
                            let dx_row = &mut dx_p[ih * wd + first..ih * wd + first + n];
                            for (dxv, &gv) in dx_row.iter_mut().zip(g_row) {
                                *dxv += wv * gv;
                            }
                        }
                    } else {
                        let mut acc = 0.0f32;
                        for (k, &gv) in g_row.iter().enumerate() {
                            acc += gv * x_row[first + k * sw];
                        }
                        dw_p[t] += acc;
                        if let Some(dx_p) = dx_p.as_deref_mut() {
                            let wv = w_c[t];
                            let dx_row = &mut dx_p[ih * wd..(ih + 1) * wd];
                            for (k, &gv) in g_row.iter().enumerate() {
                                dx_row[first + k * sw] += wv * gv;
                            }
                        }
                    }
                }
            }
        }
    };
    if want_dx {
        g.dx.par_chunks_mut(in_plane)
            .zip(partials.par_chunks_mut(part))
            .enumerate()
            .for_each(|(p, (dx_p, part_p))| plane_task(p, Some(dx_p), part_p));
    } else {
        partials
            .par_chunks_mut(part)
            .enumerate()
            .for_each(|(p, part_p)| plane_task(p, None, part_p));
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
