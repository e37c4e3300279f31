//! Fake quantization for quantization-aware training: the float simulation of the int8
//! engine's rounding, with straight-through gradients.
//!
//! - Activations ([`Grid`]): per tensor, affine, `fq(x) = (clamp(round(x / s) + z, qmin, qmax) -
//!   z) s` (round half to even, PyTorch's `fake_quantize_per_tensor_affine`), fused with what
//!   precedes it in the int8 engine ([`Pre`]: the folded conv's bias and its ReLU, so that one
//!   pass reads the conv's raw output and writes the quantized activation): [`min_max`] (the
//!   observer's batch range), [`forward`], [`backward`].
//! - Weights: per output channel, symmetric, `s_c = max(max|w_c| / 127.5, eps)`, codes
//!   `clamp(round(w / s_c), -128, 127)` (PyTorch's `per_channel_symmetric` qint8):
//!   [`weight_scale`], [`weight_code`] (the definitions the int8 builder quantizes with),
//!   [`fake_quant_weight`].
//!
//! Gradients are straight-through (Bengio et al. 2013): the rounding and clamping pass `dy`
//! unchanged; only the fused ReLU masks it and the fused bias sums it.
//!
//! Layout: a tensor is `[outer, channels, inner]` row-major (`[B, C, H W]` for a convolution's
//! output, `[rows, C]` with `inner = 1` for token-major linear layers); element `i` belongs to
//! channel `(i / inner) % channels`.

use rayon::prelude::*;

use crate::buffer::written_by;
use crate::lanes::{self, LANES};
use crate::math::round_even;

/// Elements per rayon task.
const BLOCK: usize = 1 << 14;

/// Divisor of the per-channel weight scale: `s = max|w| / 127.5` (codes `-128..=127`).
pub const WEIGHT_SCALE_DIV: f32 = 127.5;
/// Smallest weight code.
pub const WEIGHT_QMIN: f32 = -128.0;
/// Largest weight code.
pub const WEIGHT_QMAX: f32 = 127.0;

/// Scale of a weight channel whose largest magnitude is `max_abs`: `max(max_abs / 127.5, eps)`.
#[inline]
pub fn weight_scale(max_abs: f32) -> f32 {
    (max_abs / WEIGHT_SCALE_DIV).max(f32::EPSILON)
}

/// Code of weight `w` at scale `s`: `clamp(round_half_even(w / s), -128, 127)`.
#[inline]
pub fn weight_code(w: f32, s: f32) -> f32 {
    round_even((w / s).clamp(WEIGHT_QMIN, WEIGHT_QMAX))
}

/// An affine quantization grid of an activation tensor: codes `qmin..=qmax`, the value of code
/// `q` is `scale (q - zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    /// Step between codes (positive).
    pub scale: f32,
    /// Code of the value 0.
    pub zero_point: i32,
    /// Smallest code.
    pub qmin: i32,
    /// Largest code.
    pub qmax: i32,
}

impl Grid {
    /// Quantize-dequantize one value: `(clamp(round(x / s) + z, qmin, qmax) - z) s`, computed
    /// as `round(clamp(x / s, qmin - z, qmax - z)) s` (the same value: rounding is monotone
    /// and the bounds are integers; clamping first keeps the magic-number rounding in range).
    #[inline(always)]
    pub fn fake_quant(&self, x: f32) -> f32 {
        let (lo, hi) = self.bounds();
        round_even((x / self.scale).clamp(lo, hi)) * self.scale
    }

    /// `(qmin - z, qmax - z)` as floats.
    #[inline(always)]
    fn bounds(&self) -> (f32, f32) {
        (
            (self.qmin - self.zero_point) as f32,
            (self.qmax - self.zero_point) as f32,
        )
    }
}

/// What the int8 engine applies before an activation is quantized: `act(x + bias[channel])`.
#[derive(Debug, Clone, Copy)]
pub struct Pre<'a> {
    /// Per-channel bias (`None`: no bias).
    pub bias: Option<&'a [f32]>,
    /// Elements per channel run (`H W` for `[B, C, H, W]`, 1 for `[rows, C]`).
    pub inner: usize,
    /// ReLU after the bias.
    pub relu: bool,
}

impl Pre<'_> {
    /// No bias, no activation.
    pub const NONE: Pre<'static> = Pre {
        bias: None,
        inner: 1,
        relu: false,
    };

    /// Elements of one `[channels, inner]` plane (the period of the bias), or `None` without
    /// a bias.
    fn plane(&self, len: usize) -> Option<usize> {
        self.bias.map(|b| {
            let p = b.len() * self.inner.max(1);
            assert!(
                p > 0 && len.is_multiple_of(p),
                "fake quant: {len} elements are not whole planes of {} channels x {}",
                b.len(),
                self.inner
            );
            p
        })
    }

    /// Elements per rayon task: whole planes, about [`BLOCK`] elements.
    fn task(&self, len: usize) -> usize {
        match self.plane(len) {
            Some(p) => p * (BLOCK / p).max(1),
            None => BLOCK,
        }
        .max(1)
    }

    /// Calls `f(offset, run, bias)` for every channel run of `x` (a task's whole planes) when
    /// the runs are longer than one element (`inner > 1`), or once for the whole of `x`
    /// without a bias.
    #[inline(always)]
    fn for_runs(&self, x: &[f32], mut f: impl FnMut(usize, &[f32], f32)) {
        match self.bias {
            None => f(0, x, 0.0),
            Some(b) => {
                let inner = self.inner.max(1);
                debug_assert!(inner > 1, "channels-last rows are handled by the callers");
                for (r, run) in x.chunks_exact(inner).enumerate() {
                    f(r * inner, run, b[r % b.len()]);
                }
            }
        }
    }
}

/// Folds `act(v + c)` of a run into the lane-wise minima and maxima.
#[inline(always)]
fn min_max_run(run: &[f32], c: f32, relu: bool, lo: &mut [f32; LANES], hi: &mut [f32; LANES]) {
    let (chunks, rest) = run.as_chunks::<LANES>();
    for ch in chunks {
        for i in 0..LANES {
            let v = act(ch[i] + c, relu);
            lo[i] = if v < lo[i] { v } else { lo[i] };
            hi[i] = if v > hi[i] { v } else { hi[i] };
        }
    }
    for &v in rest {
        let v = act(v + c, relu);
        lo[0] = if v < lo[0] { v } else { lo[0] };
        hi[0] = if v > hi[0] { v } else { hi[0] };
    }
}

/// Folds `act(row + bias)` (elementwise) into the lane-wise minima and maxima.
#[inline(always)]
fn min_max_row(
    row: &[f32],
    bias: &[f32],
    relu: bool,
    lo: &mut [f32; LANES],
    hi: &mut [f32; LANES],
) {
    for (i, (&v, &c)) in row.iter().zip(bias).enumerate() {
        let v = act(v + c, relu);
        let l = i % LANES;
        lo[l] = if v < lo[l] { v } else { lo[l] };
        hi[l] = if v > hi[l] { v } else { hi[l] };
    }
}

#[inline(always)]
fn act(v: f32, relu: bool) -> f32 {
    if relu { v.max(0.0) } else { v }
}

/// `(min, max)` of `act(x + bias)` over the whole tensor (the observer's batch range); NaNs are
/// skipped, an empty tensor gives `(inf, -inf)`.
pub fn min_max(x: &[f32], pre: &Pre) -> (f32, f32) {
    let task = pre.task(x.len());
    let relu = pre.relu;
    x.par_chunks(task)
        .map(|t| {
            let mut lo = [f32::INFINITY; LANES];
            let mut hi = [f32::NEG_INFINITY; LANES];
            match pre.bias {
                Some(b) if pre.inner.max(1) == 1 => {
                    for row in t.chunks_exact(b.len()) {
                        min_max_row(row, b, relu, &mut lo, &mut hi);
                    }
                }
                _ => pre.for_runs(t, |_, run, c| min_max_run(run, c, relu, &mut lo, &mut hi)),
            }
            (
                lo.iter().copied().fold(f32::INFINITY, f32::min),
                hi.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            )
        })
        .reduce(
            || (f32::INFINITY, f32::NEG_INFINITY),
            |a, b| (a.0.min(b.0), a.1.max(b.1)),
        )
}

/// Forward pass: `fq(act(x + bias))` on `grid`.
pub fn forward(x: &[f32], pre: &Pre, grid: Grid) -> Vec<f32> {
    let task = pre.task(x.len());
    let relu = pre.relu;
    let fill = |y: &mut [std::mem::MaybeUninit<f32>]| {
        y.par_chunks_mut(task)
            .zip(x.par_chunks(task))
            .for_each(|(yt, xt)| match pre.bias {
                Some(b) if pre.inner.max(1) == 1 => {
                    for (yr, xr) in yt.chunks_exact_mut(b.len()).zip(xt.chunks_exact(b.len())) {
                        for ((o, &v), &c) in yr.iter_mut().zip(xr).zip(b) {
                            o.write(grid.fake_quant(act(v + c, relu)));
                        }
                    }
                }
                _ => pre.for_runs(xt, |at, run, c| {
                    for (o, &v) in yt[at..at + run.len()].iter_mut().zip(run) {
                        o.write(grid.fake_quant(act(v + c, relu)));
                    }
                }),
            })
    };
    // SAFETY: the tasks of `y` pair with those of `x` (same length); every run of a task is
    // written (the runs tile the task).
    unsafe { written_by(x.len(), fill) }
}

/// Gradients of [`forward`] (straight-through): `dx = dy` where `act` passes (`x + bias > 0`
/// with ReLU, everywhere without), else 0; `dbias[c] = sum of dx over channel c` (`None`
/// without a bias). `dx` is computed when `need_dx` (else `None`).
pub fn backward(
    x: &[f32],
    pre: &Pre,
    dy: &[f32],
    need_dx: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    assert_eq!(x.len(), dy.len(), "fake quant backward: sizes");
    let task = pre.task(x.len());
    let relu = pre.relu;
    let channels = pre.bias.map_or(0, <[f32]>::len);
    let inner = pre.inner.max(1);
    let pass = |v: f32, c: f32| !relu || v + c > 0.0;
    // Per-task partial sums of dbias, added in task order (deterministic).
    let n_tasks = x.len().div_ceil(task);
    let mut partials = vec![vec![0.0f32; channels]; if channels > 0 { n_tasks } else { 0 }];
    let run_task = |dxt: Option<&mut [std::mem::MaybeUninit<f32>]>,
                    xt: &[f32],
                    gt: &[f32],
                    part: Option<&mut Vec<f32>>| {
        let mut dxt = dxt;
        match pre.bias {
            None => {
                if let Some(d) = dxt.as_deref_mut() {
                    for ((o, &v), &g) in d.iter_mut().zip(xt).zip(gt) {
                        o.write(if pass(v, 0.0) { g } else { 0.0 });
                    }
                }
            }
            Some(b) if inner == 1 => {
                let part = part.expect("partials with a bias");
                for (r, (xr, gr)) in xt
                    .chunks_exact(channels)
                    .zip(gt.chunks_exact(channels))
                    .enumerate()
                {
                    for (k, ((&v, &g), &c)) in xr.iter().zip(gr).zip(b).enumerate() {
                        let d = if pass(v, c) { g } else { 0.0 };
                        part[k] += d;
                        if let Some(o) = dxt.as_deref_mut() {
                            o[r * channels + k].write(d);
                        }
                    }
                }
            }
            Some(b) => {
                let part = part.expect("partials with a bias");
                for (r, (xr, gr)) in xt
                    .chunks_exact(inner)
                    .zip(gt.chunks_exact(inner))
                    .enumerate()
                {
                    let c = b[r % channels];
                    let mut acc = [0.0f32; LANES];
                    match dxt.as_deref_mut() {
                        Some(o) => {
                            let o = &mut o[r * inner..(r + 1) * inner];
                            for (i, ((o, &v), &g)) in o.iter_mut().zip(xr).zip(gr).enumerate() {
                                let d = if pass(v, c) { g } else { 0.0 };
                                acc[i % LANES] += d;
                                o.write(d);
                            }
                        }
                        None => {
                            for (i, (&v, &g)) in xr.iter().zip(gr).enumerate() {
                                acc[i % LANES] += if pass(v, c) { g } else { 0.0 };
                            }
                        }
                    }
                    part[r % channels] += lanes::fold(acc);
                }
            }
        }
    };
    let dx = if need_dx {
        let fill = |dx: &mut [std::mem::MaybeUninit<f32>]| {
            if channels > 0 {
                dx.par_chunks_mut(task)
                    .zip(x.par_chunks(task).zip(dy.par_chunks(task)))
                    .zip(partials.par_iter_mut())
                    .for_each(|((d, (xt, gt)), p)| run_task(Some(d), xt, gt, Some(p)));
            } else {
                dx.par_chunks_mut(task)
                    .zip(x.par_chunks(task).zip(dy.par_chunks(task)))
                    .for_each(|(d, (xt, gt))| run_task(Some(d), xt, gt, None));
            }
        };
        // SAFETY: the tasks of `dx` pair with those of `x`; every element of a task is written
        // (the rows / runs tile it).
        Some(unsafe { written_by(x.len(), fill) })
    } else {
        if channels > 0 {
            x.par_chunks(task)
                .zip(dy.par_chunks(task))
                .zip(partials.par_iter_mut())
                .for_each(|((xt, gt), p)| run_task(None, xt, gt, Some(p)));
        }
        None
    };
    let dbias = (channels > 0).then(|| {
        let mut s = vec![0.0f32; channels];
        for p in &partials {
            s.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        s
    });
    (dx, dbias)
}

/// Per-output-channel symmetric fake quantization of a weight whose element `i` belongs to
/// output channel `(i / inner) % channels` (`inner` = the product of the axes after the channel
/// axis: `C_in k_h k_w` for a conv weight `[C_out, C_in, k_h, k_w]`, 1 for burn's Linear weight
/// `[d_in, d_out]`): `weight_code(w, s_c) s_c` with `s_c = weight_scale(max|w_c|)`. Serial (a
/// weight is a few thousand values).
pub fn fake_quant_weight(w: &[f32], channels: usize, inner: usize) -> Vec<f32> {
    let inner = inner.max(1);
    assert!(
        channels > 0 && w.len().is_multiple_of(channels * inner),
        "weight fake quant: {} values are not whole [.., {channels}, {inner}] blocks",
        w.len()
    );
    let mut max_abs = vec![0.0f32; channels];
    for (r, run) in w.chunks_exact(inner).enumerate() {
        let m = &mut max_abs[r % channels];
        *m = run.iter().fold(*m, |a, &v| a.max(v.abs()));
    }
    let scales: Vec<f32> = max_abs.into_iter().map(weight_scale).collect();
    let mut out = Vec::with_capacity(w.len());
    for (r, run) in w.chunks_exact(inner).enumerate() {
        let s = scales[r % channels];
        out.extend(run.iter().map(|&v| weight_code(v, s) * s));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The naive formula: `(clamp(round(x / s) + z, qmin, qmax) - z) s`.
    fn naive_fq(x: f32, g: &Grid) -> f32 {
        let code = ((x / g.scale).round_ties_even() + g.zero_point as f32)
            .clamp(g.qmin as f32, g.qmax as f32);
        (code - g.zero_point as f32) * g.scale
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        // A deterministic spread of values, some far outside any grid, some exact ties.
        (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8;
                let v = (h % 20000) as f32 / 1000.0 - 8.0;
                if i % 97 == 0 {
                    v * 1e3
                } else if i % 89 == 0 {
                    0.05 * (i % 40) as f32
                } else {
                    v
                }
            })
            .collect()
    }

    #[test]
    fn grid_matches_the_naive_formula_including_ties_and_clamping() {
        let g = Grid {
            scale: 0.05,
            zero_point: 37,
            qmin: 0,
            qmax: 127,
        };
        // Exact ties `(k + 1/2) s` (scale a power of two, so `x / s` is exact) and a spread.
        let ties = Grid { scale: 0.0625, ..g };
        for k in -50..150 {
            let x = (k as f32 + 0.5) * ties.scale;
            let want = naive_fq(x, &ties);
            assert_eq!(ties.fake_quant(x).to_bits(), want.to_bits(), "{x}");
            let code = (x / ties.scale).round_ties_even();
            assert_eq!(code as i32 % 2, 0, "ties round to even");
        }
        for x in data(5000, 1) {
            assert_eq!(g.fake_quant(x).to_bits(), naive_fq(x, &g).to_bits(), "{x}");
        }
    }

    #[test]
    fn forward_min_max_and_backward_against_elementwise_loops() {
        let g = Grid {
            scale: 0.07,
            zero_point: 20,
            qmin: 0,
            qmax: 127,
        };
        // [outer 3, channels 5, inner 7] and channels-last [rows 21, channels 5].
        for (outer, channels, inner) in [(3, 5, 7), (21, 5, 1), (2, 3, 6000)] {
            let n = outer * channels * inner;
            let x = data(n, 7);
            let dy = data(n, 11);
            let bias: Vec<f32> = (0..channels).map(|c| 0.3 * c as f32 - 0.5).collect();
            for (with_bias, relu) in [(false, false), (false, true), (true, false), (true, true)] {
                let pre = Pre {
                    bias: with_bias.then_some(&bias[..]),
                    inner,
                    relu,
                };
                let t: Vec<f32> = (0..n)
                    .map(|i| {
                        let c = if with_bias {
                            bias[(i / inner) % channels]
                        } else {
                            0.0
                        };
                        let v = x[i] + c;
                        if relu { v.max(0.0) } else { v }
                    })
                    .collect();
                let y = forward(&x, &pre, g);
                for (a, b) in y.iter().zip(&t) {
                    assert_eq!(a.to_bits(), naive_fq(*b, &g).to_bits());
                }
                let (lo, hi) = min_max(&x, &pre);
                assert_eq!(lo, t.iter().copied().fold(f32::INFINITY, f32::min));
                assert_eq!(hi, t.iter().copied().fold(f32::NEG_INFINITY, f32::max));
                let (dx, db) = backward(&x, &pre, &dy, true);
                let dx = dx.expect("dx");
                let mut want_db = vec![0.0f64; channels];
                for i in 0..n {
                    let c = if with_bias {
                        bias[(i / inner) % channels]
                    } else {
                        0.0
                    };
                    let want = if !relu || x[i] + c > 0.0 { dy[i] } else { 0.0 };
                    assert_eq!(dx[i], want);
                    want_db[(i / inner) % channels] += want as f64;
                }
                let (dx2, db2) = backward(&x, &pre, &dy, false);
                assert!(dx2.is_none());
                match db {
                    None => assert!(!with_bias && db2.is_none()),
                    Some(db) => {
                        assert_eq!(Some(&db), db2.as_ref());
                        for (a, b) in db.iter().zip(&want_db) {
                            assert!((*a as f64 - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} {b}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn weight_fake_quant_is_per_channel_symmetric() {
        // [C_out 4, rest 6] (axis 0) and [d_in 6, d_out 4] (axis 1, inner 1).
        let w: Vec<f32> = data(24, 3).iter().map(|v| v * 0.01).collect();
        let by_rows = fake_quant_weight(&w, 4, 6);
        for (c, (row, got)) in w.chunks(6).zip(by_rows.chunks(6)).enumerate() {
            let m = row.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
            let s = (m / 127.5).max(f32::EPSILON);
            for (v, g) in row.iter().zip(got) {
                let want = (v / s).round_ties_even().clamp(-128.0, 127.0) * s;
                assert_eq!(*g, want, "channel {c}");
            }
        }
        let by_cols = fake_quant_weight(&w, 4, 1);
        for c in 0..4 {
            let col: Vec<f32> = (0..6).map(|i| w[i * 4 + c]).collect();
            let m = col.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
            let s = (m / 127.5).max(f32::EPSILON);
            for i in 0..6 {
                let want = (col[i] / s).round_ties_even().clamp(-128.0, 127.0) * s;
                assert_eq!(by_cols[i * 4 + c], want);
            }
        }
    }
}
