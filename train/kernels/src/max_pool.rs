//! Max pooling kernels: non-overlapping windows (kernel = stride, no padding, floor mode:
//! IRMamba's pooling between the parallel Mamba blocks) over `[planes, H, W]` float buffers,
//! forward and backward on the rayon pool (the training op); and windows of any kernel and
//! stride over one `[C, H, W]` map of any ordered element type (the int8 engine's op, exact
//! on codes of one scale).
//!
//! Training: `y[p, i, j] = max_{q < kh, r < kw} x[p, i kh + q, j kw + r]`; the forward pass
//! writes the maxima only, and the backward pass finds each window's maximum again in the saved
//! input and writes every `dx` value once: `dx = dy[p, i, j]` at the first maximum of its
//! window (row-major order, as burn and PyTorch), zero elsewhere, including the rows and
//! columns the windows leave out (burn's generic pooling keeps an `i64` index per output and
//! scatters through it).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::buffer::{written_by, zeros_par};

/// Planes per rayon task.
const PLANES: usize = 64;

/// Sizes of one pooling call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolDims {
    /// `B * C` planes.
    pub planes: usize,
    /// Input height and width.
    pub input: [usize; 2],
    /// Kernel (= stride) height and width.
    pub size: [usize; 2],
}

impl PoolDims {
    /// Output height and width, `floor(input / size)`.
    pub fn output(&self) -> [usize; 2] {
        [self.input[0] / self.size[0], self.input[1] / self.size[1]]
    }

    fn in_plane(&self) -> usize {
        self.input[0] * self.input[1]
    }

    fn out_plane(&self) -> usize {
        let [oh, ow] = self.output();
        oh * ow
    }
}

/// Flat index in the plane and value of the first maximum of output `(i, j)`'s window.
#[inline(always)]
fn window_max(d: &PoolDims, x_p: &[f32], i: usize, j: usize) -> (usize, f32) {
    let ([kh, kw], w) = (d.size, d.input[1]);
    let first = i * kh * w + j * kw;
    let mut best = (first, x_p[first]);
    for p in 0..kh {
        let row = first + p * w;
        for (q, &v) in x_p[row..row + kw].iter().enumerate() {
            if v > best.1 {
                best = (row + q, v);
            }
        }
    }
    best
}

/// Forward pass: `y` `[planes, OH, OW]` from `x` `[planes, H, W]`.
pub fn forward(d: PoolDims, x: &[f32]) -> Vec<f32> {
    assert!(d.size[0] > 0 && d.size[1] > 0, "max pool: zero kernel");
    assert_eq!(x.len(), d.planes * d.in_plane(), "max pool: input size");
    let (in_plane, out_plane) = (d.in_plane(), d.out_plane());
    let ow = d.output()[1];
    let fill = |y: &mut [MaybeUninit<f32>]| {
        if out_plane == 0 {
            return;
        }
        y.par_chunks_mut(PLANES * out_plane)
            .zip(x.par_chunks(PLANES * in_plane))
            .for_each(|(yb, xb)| {
                for (y_p, x_p) in yb
                    .chunks_exact_mut(out_plane)
                    .zip(xb.chunks_exact(in_plane))
                {
                    for (o, slot) in y_p.iter_mut().enumerate() {
                        slot.write(window_max(&d, x_p, o / ow, o % ow).1);
                    }
                }
            });
    };
    // SAFETY: every plane task writes each of its `out_plane` outputs.
    unsafe { written_by(d.planes * out_plane, fill) }
}

/// Backward pass: `dx` `[planes, H, W]` of `sum(dy ⊙ y)`.
pub fn backward(d: PoolDims, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), d.planes * d.in_plane(), "max pool: input size");
    assert_eq!(
        dy.len(),
        d.planes * d.out_plane(),
        "max pool: output gradient size"
    );
    let (in_plane, out_plane) = (d.in_plane(), d.out_plane());
    let ow = d.output()[1];
    let mut dx = zeros_par(x.len());
    if in_plane == 0 || out_plane == 0 {
        return dx;
    }
    dx.par_chunks_mut(PLANES * in_plane)
        .zip(x.par_chunks(PLANES * in_plane))
        .zip(dy.par_chunks(PLANES * out_plane))
        .for_each(|((dxb, xb), dyb)| {
            for ((dx_p, x_p), dy_p) in dxb
                .chunks_exact_mut(in_plane)
                .zip(xb.chunks_exact(in_plane))
                .zip(dyb.chunks_exact(out_plane))
            {
                for (o, &g) in dy_p.iter().enumerate() {
                    dx_p[window_max(&d, x_p, o / ow, o % ow).0] = g;
                }
            }
        });
    dx
}

/// Max pooling on `[C, H, W]` without padding (exact on codes of one scale).
#[inline]
pub fn max_pool2d<T: Copy + PartialOrd>(
    x: &[T],
    y: &mut [T],
    c: usize,
    h: usize,
    w: usize,
    k: [usize; 2],
    s: [usize; 2],
) {
    let (ho, wo) = ((h - k[0]) / s[0] + 1, (w - k[1]) / s[1] + 1);
    if k == [2, 2] && s == [2, 2] {
        // The same comparisons in the same order as the general loop, on contiguous rows.
        for (ch, yc) in y.chunks_exact_mut(ho * wo).take(c).enumerate() {
            for (oy, yr) in yc.chunks_exact_mut(wo).enumerate() {
                let r0 = &x[(ch * h + 2 * oy) * w..][..2 * wo];
                let r1 = &x[(ch * h + 2 * oy + 1) * w..][..2 * wo];
                // Blocks of 8 outputs as fixed-size arrays (the rows are short: a loop over
                // the whole row ran element by element), then the rest one by one.
                let blocks = wo / 8 * 8;
                for ((o, a), b) in yr[..blocks]
                    .chunks_exact_mut(8)
                    .zip(r0.chunks_exact(16))
                    .zip(r1.chunks_exact(16))
                {
                    let o: &mut [T; 8] = o.try_into().expect("8 outputs");
                    let (a, b): (&[T; 16], &[T; 16]) =
                        (a.try_into().expect("16"), b.try_into().expect("16"));
                    for (i, o) in o.iter_mut().enumerate() {
                        let mut m = a[2 * i];
                        for v in [a[2 * i + 1], b[2 * i], b[2 * i + 1]] {
                            if v > m {
                                m = v;
                            }
                        }
                        *o = m;
                    }
                }
                for ((o, a), b) in yr[blocks..]
                    .iter_mut()
                    .zip(r0[2 * blocks..].chunks_exact(2))
                    .zip(r1[2 * blocks..].chunks_exact(2))
                {
                    let mut m = a[0];
                    for v in [a[1], b[0], b[1]] {
                        if v > m {
                            m = v;
                        }
                    }
                    *o = m;
                }
            }
        }
        return;
    }
    for ch in 0..c {
        let xc = &x[ch * h * w..(ch + 1) * h * w];
        for oy in 0..ho {
            for ox in 0..wo {
                let mut m = xc[oy * s[0] * w + ox * s[1]];
                for ky in 0..k[0] {
                    for kx in 0..k[1] {
                        let v = xc[(oy * s[0] + ky) * w + ox * s[1] + kx];
                        if v > m {
                            m = v;
                        }
                    }
                }
                y[(ch * ho + oy) * wo + ox] = m;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn max_pool_2x2_fast_path_equals_the_definition() {
        let mut rng = StdRng::seed_from_u64(13);
        for (c, h, w) in [(3, 4, 6), (2, 5, 7), (1, 2, 2), (4, 9, 33), (2, 6, 21)] {
            let x: Vec<u8> = (0..c * h * w).map(|_| rng.random_range(0..=255)).collect();
            let (ho, wo) = (h / 2, w / 2);
            let mut want = vec![0u8; c * ho * wo];
            for ch in 0..c {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let at = |dy: usize, dx: usize| x[(ch * h + 2 * oy + dy) * w + 2 * ox + dx];
                        want[(ch * ho + oy) * wo + ox] =
                            at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
                    }
                }
            }
            let mut y = vec![0u8; want.len()];
            max_pool2d(&x, &mut y, c, h, w, [2, 2], [2, 2]);
            assert_eq!(y, want, "{c}x{h}x{w}");
        }
    }
}
