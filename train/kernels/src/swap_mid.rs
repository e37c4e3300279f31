//! Exchanging the two middle axes of a `[B, X, Y, Z]` buffer into a contiguous `[B, Y, X, Z]`
//! one on the rayon pool: over the batch with register tiles for `Z = 1`
//! ([`transpose_strided_fast`]), over the output blocks `[b, y]` with row copies of `Z` values
//! otherwise. The layout changes around the parallel Mamba blocks (feature map `[B, C, H*W]`
//! to tokens `[B, H*W, C]` and back, the tokens' channel groups `[B, L, P, d]` to sequences
//! `[B, P, L, d]` and back); its backward pass is the swap of the gradient the other way.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::buffer::{written_by, zeros_par};
use crate::transpose::transpose_strided_fast;

/// `dst[b, y, x, :] = src[b, x, y, :]` for `src` `[B, X, Y, Z]` (`shape`), on the rayon pool
/// (over `B` for `Z = 1`, over the output blocks `[b, y]` otherwise, written without a
/// zero-fill).
pub fn swap_mid(src: &[f32], [b, xn, yn, z]: [usize; 4]) -> Vec<f32> {
    let block = xn * yn * z;
    assert_eq!(src.len(), b * block, "swap_mid: input size");
    if z == 1 {
        let mut dst = zeros_par(src.len());
        if block > 0 {
            dst.par_chunks_mut(block)
                .zip(src.par_chunks(block))
                .for_each(|(d, s)| transpose_strided_fast(s, yn, d, xn, xn, yn));
        }
        return dst;
    }
    // Rows of `Z` values: one task per output block `[b, y]` (`[X, Z]`, contiguous), which
    // gathers its rows from `src[b, :, y]`; parallel even for `B = 1`.
    let out_block = xn * z;
    let fill = |dst: &mut [MaybeUninit<f32>]| {
        if out_block == 0 {
            return;
        }
        dst.par_chunks_mut(out_block)
            .enumerate()
            .for_each(|(by, d)| {
                let (b, y) = (by / yn, by % yn);
                let s = &src[b * block..(b + 1) * block];
                for (x, o) in d.chunks_exact_mut(z).enumerate() {
                    let row = &s[(x * yn + y) * z..(x * yn + y + 1) * z];
                    for (o, &v) in o.iter_mut().zip(row) {
                        o.write(v);
                    }
                }
            });
    };
    // SAFETY: the `B * Y` output blocks of `X * Z` values cover the buffer, each value written.
    unsafe { written_by(src.len(), fill) }
}
