//! `y = a + s r` for same-shaped `a`, `r` and a scalar `s` (the parallel Mamba block's skip
//! connection, `mamba(g) + skip_scale g`) as one pass on the rayon pool, and its backward
//! pass: `dy` goes on to `a` unchanged, `dr = s dy` and `ds = sum(dy r)` in one parallel pass
//! (per-block partial sums added in block order: deterministic).

use rayon::prelude::*;

use crate::buffer::written_by;
use crate::lanes;

/// Elements per rayon task (and per partial sum of `ds`).
const BLOCK: usize = 1 << 14;

/// Forward pass: `a + s r`.
pub fn forward(a: &[f32], r: &[f32], s: f32) -> Vec<f32> {
    assert_eq!(a.len(), r.len(), "scaled add: sizes");
    let fill = |y: &mut [std::mem::MaybeUninit<f32>]| {
        y.par_chunks_mut(BLOCK)
            .zip(a.par_chunks(BLOCK).zip(r.par_chunks(BLOCK)))
            .for_each(|(yb, (ab, rb))| {
                for ((o, &av), &rv) in yb.iter_mut().zip(ab).zip(rb) {
                    o.write(av + s * rv);
                }
            })
    };
    // SAFETY: the blocks of `y` pair with those of `a` (same length), each element written.
    unsafe { written_by(a.len(), fill) }
}

/// Backward pass for `r` and `s`: `(s dy, sum(dy r))`.
pub fn backward(r: &[f32], s: f32, dy: &[f32]) -> (Vec<f32>, f32) {
    assert_eq!(r.len(), dy.len(), "scaled add: sizes");
    let blocks = r.len().div_ceil(BLOCK);
    let mut partials = vec![0.0f32; blocks];
    let fill = |dr: &mut [std::mem::MaybeUninit<f32>]| {
        dr.par_chunks_mut(BLOCK)
            .zip(r.par_chunks(BLOCK).zip(dy.par_chunks(BLOCK)))
            .zip(partials.par_iter_mut())
            .for_each(|((db, (rb, gb)), part)| {
                let mut acc = [0.0f32; lanes::LANES];
                for (i, ((o, &rv), &g)) in db.iter_mut().zip(rb).zip(gb).enumerate() {
                    o.write(s * g);
                    acc[i % lanes::LANES] += g * rv;
                }
                *part = lanes::fold(acc);
            })
    };
    // SAFETY: the blocks of `dr` pair with those of `r` (same length), each element written.
    let dr = unsafe { written_by(r.len(), fill) };
    (dr, partials.iter().sum())
}
