//! Matrix products: with a shared weight matrix over many row blocks, `Y_c = X_c M` for each
//! block `c`, and their backward pass, on the `gemm` crate's kernels with rayon over the blocks
//! ([`SharedMatmul`]); single strided products inside a caller's task ([`gemm_strided`]); and
//! the small register-blocked `out = w x` of the inference mixer ([`matmul_rows`],
//! [`matmul_rows_avx512`]).
//!
//! It covers the two layouts the models use without any copy or transpose: the pointwise
//! (1x1) convolution on `[B, C_in, P]` maps (`X_c = x[b]^T`, `M = W^T`) and the linear layer
//! on token-major `[N, d_in]` rows (`X_c` = a block of rows, `M = W`). Strided views carry the
//! transposes into the kernels' packing.
//!
//! Backward: `dX_c = dY_c M^T` per block (parallel), `dM = sum_c X_c^T dY_c` as fixed groups of
//! blocks accumulated in order, then summed in order (deterministic whatever the thread count).

use gemm::{Parallelism, gemm};

use crate::math::madd;
use rayon::prelude::*;

/// Row and column strides of a matrix view, in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// Distance between consecutive rows.
    pub rs: usize,
    /// Distance between consecutive columns.
    pub cs: usize,
}

impl View {
    /// Largest element offset of a `rows x cols` view, plus one.
    fn extent(self, rows: usize, cols: usize) -> usize {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * self.rs + (cols - 1) * self.cs + 1
        }
    }

    /// The transposed view.
    fn t(self) -> View {
        View {
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// Geometry of one call: `blocks` products `[rows, inner] x [inner, outer]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedMatmul {
    /// Number of row blocks.
    pub blocks: usize,
    /// Rows per block.
    pub rows: usize,
    /// Columns of `X_c` = rows of `M`.
    pub inner: usize,
    /// Columns of `M` and `Y_c`.
    pub outer: usize,
    /// View of each `X_c` and the distance between blocks.
    pub x: View,
    /// Distance between consecutive `X_c`.
    pub x_block: usize,
    /// View of `M` (`[inner, outer]`).
    pub m: View,
    /// View of each `Y_c`.
    pub y: View,
    /// Distance between consecutive `Y_c`.
    pub y_block: usize,
}

impl SharedMatmul {
    /// Pointwise convolution `y[b] = W x[b]` for `x: [B, C_in, P]`, `W: [C_out, C_in]`,
    /// `y: [B, C_out, P]` (all contiguous).
    pub fn pointwise(batch: usize, c_in: usize, c_out: usize, p: usize) -> Self {
        SharedMatmul {
            blocks: batch,
            rows: p,
            inner: c_in,
            outer: c_out,
            x: View { rs: 1, cs: p },
            x_block: c_in * p,
            m: View { rs: 1, cs: c_in },
            y: View { rs: 1, cs: p },
            y_block: c_out * p,
        }
    }

    /// Linear map `y = x W` on `x: [N, d_in]`, `W: [d_in, d_out]` (burn's `Linear` layout),
    /// `y: [N, d_out]`, in blocks of `rows` rows (`N` a multiple of `rows`).
    pub fn rows(n: usize, rows: usize, d_in: usize, d_out: usize) -> Self {
        assert!(
            rows > 0 && n.is_multiple_of(rows),
            "shared matmul: {n} rows in blocks of {rows}"
        );
        SharedMatmul {
            blocks: n / rows,
            rows,
            inner: d_in,
            outer: d_out,
            x: View { rs: d_in, cs: 1 },
            x_block: rows * d_in,
            m: View { rs: d_out, cs: 1 },
            y: View { rs: d_out, cs: 1 },
            y_block: rows * d_out,
        }
    }

    fn x_len(&self) -> usize {
        self.blocks * self.x_block
    }

    fn y_len(&self) -> usize {
        self.blocks * self.y_block
    }

    fn m_len(&self) -> usize {
        self.inner * self.outer
    }

    /// Panics unless the buffers hold the views: each block's view inside its own block (so
    /// blocks do not overlap), `M`'s inside `M` (guards the raw-pointer kernel calls).
    fn check(&self, x: usize, m: usize, y: usize) {
        assert_eq!(x, self.x_len(), "shared matmul: input size");
        assert_eq!(m, self.m_len(), "shared matmul: weight size");
        assert_eq!(y, self.y_len(), "shared matmul: output size");
        assert!(
            self.x.extent(self.rows, self.inner) <= self.x_block
                && self.y.extent(self.rows, self.outer) <= self.y_block
                && self.m.extent(self.inner, self.outer) <= m,
            "shared matmul: a view exceeds its block"
        );
    }
}

/// `dst (+)= lhs rhs` for `[m, k] x [k, n]` strided views (`accumulate`: add to `dst`) on the
/// calling thread, for kernels that run their own small products inside a rayon task (the
/// Mamba mixer's `x_proj` backward).
///
/// # Panics
/// When a view does not lie inside its slice.
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    dv: View,
    accumulate: bool,
    lhs: &[f32],
    lv: View,
    rhs: &[f32],
    rv: View,
) {
    assert!(
        dv.extent(m, n) <= dst.len()
            && lv.extent(m, k) <= lhs.len()
            && rv.extent(k, n) <= rhs.len(),
        "gemm: a view exceeds its slice"
    );
    // SAFETY: every view lies inside its slice (asserted above).
    unsafe { gemm_views(m, n, k, dst.as_mut_ptr(), dv, accumulate, lhs, lv, rhs, rv) }
}

/// `dst (+)= lhs rhs` for `[m, k] x [k, n]` views (`accumulate`: add to `dst`), one thread.
///
/// # Safety
/// Each view must lie inside its slice (checked by the callers through [`SharedMatmul::check`]).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_views(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dv: View,
    accumulate: bool,
    lhs: &[f32],
    lv: View,
    rhs: &[f32],
    rv: View,
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the caller guarantees the views fit the slices; `gemm` reads `lhs`/`rhs` and
    // writes `dst` only inside them. `alpha` scales the old `dst` (read only when
    // `accumulate`), `beta` the product.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            dv.cs as isize,
            dv.rs as isize,
            accumulate,
            lhs.as_ptr(),
            lv.cs as isize,
            lv.rs as isize,
            rhs.as_ptr(),
            rv.cs as isize,
            rv.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// A buffer of `n` floats for blocks of `block` elements whose view `v` (`rows x cols`) each
/// covers densely (row- or column-major, no gaps): filled by `fill` without a zero-fill first
/// (gemm with `read_dst = false` writes every element of a view); any other geometry gets
/// zeros first.
fn output(
    n: usize,
    block: usize,
    v: View,
    [rows, cols]: [usize; 2],
    fill: impl FnOnce(*mut f32),
) -> Vec<f32> {
    let dense = block == rows * cols
        && ((v.rs == cols && v.cs == 1) || (v.rs == 1 && v.cs == rows))
        && n.is_multiple_of(block.max(1));
    if !dense || n == 0 {
        let mut y = crate::buffer::zeros_par(n);
        fill(y.as_mut_ptr());
        return y;
    }
    // SAFETY: every block of the buffer is one dense view, which `fill`'s products write
    // completely (`read_dst = false`: written, never read before).
    unsafe { crate::buffer::written_by(n, |y| fill(y.as_mut_ptr() as *mut f32)) }
}

/// Raw output pointer shared by the block tasks (each writes only its own block).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tasks write disjoint blocks of the buffer behind the pointer.
unsafe impl Send for OutPtr {}
// SAFETY: as for Send: shared access only ever writes disjoint blocks.
unsafe impl Sync for OutPtr {}

/// `Out_c = L_c R` for `blocks` blocks in parallel: `L_c` `[rows, k]` (view `lv`, blocks
/// `l_block` apart in `lhs`), `R` `[k, cols]` (view `rv`), `Out_c` in view `ov`, blocks
/// `o_block` apart in a new buffer of `blocks * o_block` floats ([`output`]: no zero-fill on
/// dense views; zeros when `k` is 0). The forward product and `dX` of the backward pass.
#[allow(clippy::too_many_arguments)]
fn block_products(
    blocks: usize,
    [rows, k, cols]: [usize; 3],
    (ov, o_block): (View, usize),
    (lhs, lv, l_block): (&[f32], View, usize),
    (rhs, rv): (&[f32], View),
) -> Vec<f32> {
    let n = blocks * o_block;
    if k == 0 {
        return crate::buffer::zeros_par(n);
    }
    output(n, o_block, ov, [rows, cols], |out| {
        let out = OutPtr(out);
        (0..blocks).into_par_iter().for_each(|c| {
            let (out, lc) = (out, &lhs[c * l_block..]);
            // SAFETY: the callers' `check` verified that each block's views lie inside its
            // block and `M`; block `c` of the output starts at `c * o_block`, inside `n`.
            unsafe {
                gemm_views(
                    rows,
                    cols,
                    k,
                    out.0.add(c * o_block),
                    ov,
                    false,
                    lc,
                    lv,
                    rhs,
                    rv,
                )
            }
        });
    })
}

/// `Y_c = X_c M` for every block, in parallel.
pub fn forward(p: &SharedMatmul, x: &[f32], m: &[f32]) -> Vec<f32> {
    p.check(x.len(), m.len(), p.y_len());
    block_products(
        p.blocks,
        [p.rows, p.inner, p.outer],
        (p.y, p.y_block),
        (x, p.x, p.x_block),
        (m, p.m),
    )
}

/// Number of groups the `dM` reduction is split into (fixed: the sum order does not depend on
/// the number of threads).
const GROUPS: usize = 16;

/// Gradients `(dX, dM)` of `sum(dY ⊙ Y)`; `dM` in `M`'s view.
pub fn backward(p: &SharedMatmul, x: &[f32], m: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    p.check(x.len(), m.len(), dy.len());
    let mut dm = vec![0.0f32; p.m_len()];
    // dX_c = dY_c M^T: [rows, outer] x [outer, inner].
    let dx = block_products(
        p.blocks,
        [p.rows, p.outer, p.inner],
        (p.x, p.x_block),
        (dy, p.y, p.y_block),
        (m, p.m.t()),
    );
    if p.blocks == 0 || p.rows == 0 {
        return (dx, dm);
    }
    // dM = sum_c X_c^T dY_c: [inner, rows] x [rows, outer], per group of blocks.
    let groups = GROUPS.min(p.blocks);
    let per = p.blocks.div_ceil(groups);
    let mut partials = vec![0.0f32; groups * p.m_len()];
    partials
        .par_chunks_mut(p.m_len().max(1))
        .enumerate()
        .for_each(|(g, part)| {
            for c in g * per..((g + 1) * per).min(p.blocks) {
                let xc = &x[c * p.x_block..];
                let dyc = &dy[c * p.y_block..];
                // SAFETY: block `c` is inside `x` and `dy` (`check`); `part` holds `M`'s view.
                unsafe {
                    gemm_views(
                        p.inner,
                        p.outer,
                        p.rows,
                        part.as_mut_ptr(),
                        p.m,
                        c > g * per,
                        xc,
                        p.x.t(),
                        dyc,
                        p.y,
                    )
                }
            }
        });
    for part in partials.chunks_exact(p.m_len().max(1)) {
        for (acc, v) in dm.iter_mut().zip(part) {
            *acc += v;
        }
    }
    (dx, dm)
}

/// `out[o][t] = sum_c w[o][c] x[c][t]` for `w` `[rows, k]`, `x` `[k, L]`, `out` `[rows, L]`,
/// each sum from 0 in the order `c = 0, 1, ...` (as a plain loop), register-blocked: 8 output
/// rows x 16 columns of accumulators per step, rows and columns past the blocks one by one.
#[inline(always)]
pub fn matmul_rows<const FMA: bool>(
    w: &[f32],
    x: &[f32],
    out: &mut [f32],
    rows: usize,
    k: usize,
    l: usize,
) {
    const R: usize = 8;
    const T: usize = 16;
    let (w, x, out) = (&w[..rows * k], &x[..k * l], &mut out[..rows * l]);
    let (l16, rows8) = (l / T * T, rows / R * R);
    for o0 in (0..rows8).step_by(R) {
        for t0 in (0..l16).step_by(T) {
            let mut acc = [[0.0f32; T]; R];
            for c in 0..k {
                let xs: &[f32; T] = x[c * l + t0..c * l + t0 + T].try_into().expect("T");
                for (j, aj) in acc.iter_mut().enumerate() {
                    // SAFETY: `o0 + j < rows8 <= rows` and `c < k`, so the index is inside
                    // `w` (`rows * k`, sliced above). Checked indexing here kept the 8 row
                    // offsets live as bounds operands and spilled them (4x slower).
                    let wv = unsafe { *w.get_unchecked((o0 + j) * k + c) };
                    for (a, &v) in aj.iter_mut().zip(xs) {
                        *a = madd::<FMA>(wv, v, *a);
                    }
                }
            }
            for (j, aj) in acc.iter().enumerate() {
                out[(o0 + j) * l + t0..(o0 + j) * l + t0 + T].copy_from_slice(aj);
            }
        }
    }
    for o in 0..rows {
        let t_start = if o < rows8 { l16 } else { 0 };
        let row = &mut out[o * l + t_start..(o + 1) * l];
        row.fill(0.0);
        for c in 0..k {
            let wv = w[o * k + c];
            for (a, &v) in row.iter_mut().zip(&x[c * l + t_start..(c + 1) * l]) {
                *a = madd::<FMA>(wv, v, *a);
            }
        }
    }
}

/// [`matmul_rows`] with explicit AVX-512: blocks of 8 output rows x 32 columns in
/// 16 zmm accumulators (each weight broadcast once for two FMAs; the auto-vectorized
/// generic loop held 8 x 16), the rows past the blocks one at a time, the last columns
/// masked. Each sum runs from 0 over `c = 0, 1, ...` with fused multiply-adds, as the
/// generic loop with `FMA = true`.
///
/// # Safety
/// The CPU must support AVX-512 F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
pub unsafe fn matmul_rows_avx512(
    w: &[f32],
    x: &[f32],
    out: &mut [f32],
    rows: usize,
    k: usize,
    l: usize,
) {
    assert!(w.len() >= rows * k && x.len() >= k * l && out.len() >= rows * l);
    let mut o0 = 0;
    while o0 + 8 <= rows {
        // SAFETY: rows `o0..o0 + 8 <= rows` (asserted lengths).
        unsafe { matmul_block::<8>(w, x, out, o0, k, l) };
        o0 += 8;
    }
    while o0 < rows {
        // SAFETY: as above, one row.
        unsafe { matmul_block::<1>(w, x, out, o0, k, l) };
        o0 += 1;
    }
}

/// Rows `o0..o0 + R` of [`matmul_rows_avx512`].
///
/// # Safety
/// AVX-512 F and FMA; `o0 + R <= rows` for the lengths asserted by [`matmul_rows_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn matmul_block<const R: usize>(
    w: &[f32],
    x: &[f32],
    out: &mut [f32],
    o0: usize,
    k: usize,
    l: usize,
) {
    use std::arch::x86_64::*;
    let mut t0 = 0;
    while t0 < l {
        let n = (l - t0).min(32);
        let (m0, m1) = (
            crate::simd::mask16(n),
            crate::simd::mask16(n.saturating_sub(16)),
        );
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for c in 0..k {
            // SAFETY: columns `t0..t0 + n <= l` of row `c < k` of `x` (`k * l`) and
            // weight `(o0 + j, c)` inside `w` (`rows * k`); masked-off lanes untouched.
            unsafe {
                let xp = x.as_ptr().add(c * l + t0);
                let (x0, x1) = (
                    _mm512_maskz_loadu_ps(m0, xp),
                    _mm512_maskz_loadu_ps(m1, xp.add(16)),
                );
                for (j, a) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*w.get_unchecked((o0 + j) * k + c));
                    a[0] = _mm512_fmadd_ps(wv, x0, a[0]);
                    a[1] = _mm512_fmadd_ps(wv, x1, a[1]);
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            // SAFETY: columns `t0..t0 + n` of row `o0 + j` of `out` (`rows * l`).
            unsafe {
                let op = out.as_mut_ptr().add((o0 + j) * l + t0);
                _mm512_mask_storeu_ps(op, m0, a[0]);
                _mm512_mask_storeu_ps(op.add(16), m1, a[1]);
            }
        }
        t0 += 32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_matmul_rows_equals_the_generic_fused_loop() {
        if !crate::Isa::Avx512.is_available() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(23);
        // 33 rows: four blocks of 8 and one more; 70 columns: two of 32 and a masked 6.
        for (rows, k, l) in [(33, 24, 70), (8, 5, 32), (3, 7, 9)] {
            let w: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let x: Vec<f32> = (0..k * l).map(|_| rng.random_range(-1.0..1.0)).collect();
            let (mut want, mut got) = (vec![0.0; rows * l], vec![7.0; rows * l]);
            matmul_rows::<true>(&w, &x, &mut want, rows, k, l);
            // SAFETY: AVX-512 F (and FMA, part of the level) checked above.
            unsafe { matmul_rows_avx512(&w, &x, &mut got, rows, k, l) };
            assert_eq!(got, want, "{rows} x {k} x {l}");
        }
    }
}
