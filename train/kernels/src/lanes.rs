//! Reductions in [`LANES`] independent partial sums.
//!
//! A scalar accumulator (`iter().sum()`, `acc += x * y`) is one serial chain of dependent
//! adds, which LLVM may not reorder for floats: one element per add latency (4 cycles) instead
//! of a vector per cycle. Sixteen partial sums make the loop vectorise at every instruction
//! set (four SSE registers, two AVX, one AVX-512); the summation order is fixed, so results do
//! not depend on the CPU.

use crate::math::madd;

/// Number of partial sums.
pub const LANES: usize = 16;

/// Pairwise sum of the partial sums (fixed order).
#[inline(always)]
pub fn fold(acc: [f32; LANES]) -> f32 {
    let mut s8 = [0.0f32; 8];
    for i in 0..8 {
        s8[i] = acc[i] + acc[i + 8];
    }
    let mut s4 = [0.0f32; 4];
    for i in 0..4 {
        s4[i] = s8[i] + s8[i + 4];
    }
    (s4[0] + s4[2]) + (s4[1] + s4[3])
}

/// `sum_i x_i`.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    // Fixed-size chunks (`[f32; 16]`): no per-element bounds checks in the way of the vector
    // loads.
    let (chunks, rest) = x.as_chunks::<LANES>();
    let tail: f32 = rest.iter().sum();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    fold(acc) + tail
}

/// `sum_i x_i y_i` over the common length (fused multiply-adds where `FMA`).
#[inline(always)]
pub fn dot<const FMA: bool>(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let n = x.len().min(y.len());
    let ((xc, xr), (yc, yr)) = (x[..n].as_chunks::<LANES>(), y[..n].as_chunks::<LANES>());
    for (a, b) in xc.iter().zip(yc) {
        for i in 0..LANES {
            acc[i] = madd::<FMA>(a[i], b[i], acc[i]);
        }
    }
    let mut tail = 0.0f32;
    for (&a, &b) in xr.iter().zip(yr) {
        tail = madd::<FMA>(a, b, tail);
    }
    fold(acc) + tail
}

/// `sum_i (x_i - m)^2`.
#[inline(always)]
pub fn sum_sq_dev(x: &[f32], m: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (chunks, rest) = x.as_chunks::<LANES>();
    let tail: f32 = rest.iter().map(|&v| (v - m) * (v - m)).sum();
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - m;
            acc[i] += d * d;
        }
    }
    fold(acc) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2000) as f32 / 1000.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn partial_sums_equal_the_f64_sums() {
        // Lengths around the chunk size (tails of 0, 1, 15 elements) and a long row.
        for n in [0, 1, 15, 16, 17, 33, 1000] {
            let (x, y) = (data(n, 1), data(n, 7));
            let m = 0.1f32;
            let s: f64 = x.iter().map(|&v| v as f64).sum();
            let d: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
            let q: f64 = x.iter().map(|&v| (v as f64 - m as f64).powi(2)).sum();
            let tol = 1e-5 * (n as f64).max(1.0);
            assert!((sum(&x) as f64 - s).abs() <= tol, "sum, n {n}");
            assert!((dot::<false>(&x, &y) as f64 - d).abs() <= tol, "dot, n {n}");
            assert!(
                (dot::<true>(&x, &y) as f64 - d).abs() <= tol,
                "fused dot, n {n}"
            );
            assert!(
                (sum_sq_dev(&x, m) as f64 - q).abs() <= tol,
                "sum_sq_dev, n {n}"
            );
        }
    }
}
