//! Output buffers of the kernels, written on the rayon pool.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A zero-filled buffer of `n` floats, written on the rayon pool.
///
/// The fused ops' outputs and gradients are activation-sized (up to 32 MB at batch 64); a
/// serial `vec![0.0; n]` over reused heap memory is a `memset` on the calling thread while the
/// pool waits (6 % of a training step in `perf`).
pub fn zeros_par(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()
        .par_chunks_mut(1 << 15)
        .for_each(|c| c.fill(MaybeUninit::new(0.0f32)));
    // SAFETY: the loop above initialised all `n` elements of the capacity.
    unsafe { v.set_len(n) };
    v
}

/// A buffer of `n` floats that `fill` writes on the vector's spare capacity: no zero-fill
/// first (which was 7 % of a training step in `perf`, one more pass over every output).
///
/// # Safety
/// `fill` must initialise every element of the slice it is given.
pub unsafe fn written_by(n: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: the caller guarantees that `fill` initialised all `n` elements.
    unsafe { v.set_len(n) };
    v
}
