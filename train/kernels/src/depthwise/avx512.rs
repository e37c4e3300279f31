//! AVX-512 plane kernels of the 3x3 depthwise convolution for horizontal strides 1 and 2: every
//! depthwise convolution of the CNN parts of the models (the stem's two stride-2 convs, the
//! inverted residual blocks' 3x3 convs).
//!
//! No padded scratch plane: each tap reads the 16 output lanes of a chunk straight from its input
//! row with a masked load. Lanes that fall in the zero padding are masked off (read as zero,
//! never touched in memory), and with a horizontal stride of 2 two loads of 32 consecutive
//! columns are compacted to their even lanes by one permute. The nine weights, the output
//! accumulator and, in the backward pass, the nine `dw` partial sums stay in registers for a
//! whole plane. The formulas are those of [`super`]; the portable kernels there serve every
//! other geometry and CPU, and the tests check both against each other.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::DwDims;

/// Lanes per register.
const L: usize = 16;
/// Kernel height and width.
const K: usize = 3;

/// Whether these kernels serve the geometry `d` (3x3 kernel, horizontal stride 1 or 2).
pub(super) fn serves(d: &DwDims) -> bool {
    d.kernel == [K, K] && matches!(d.stride[1], 1 | 2)
}

/// Lanes `e` of a 32-lane window with `lo <= e < hi`.
fn window(lo: isize, hi: isize) -> u32 {
    let upto = |n: isize| match n.clamp(0, 32) {
        32 => u32::MAX,
        n => (1u32 << n) - 1,
    };
    if hi <= lo { 0 } else { upto(hi) & !upto(lo) }
}

/// Mask of the first `n <= 16` lanes.
fn head(n: usize) -> __mmask16 {
    window(0, n as isize) as __mmask16
}

/// How one kernel column reads a chunk of outputs from an input row (forward, `dw`): the first
/// column of its window (negative in the left padding) and the masks of the window's first
/// and (stride 2) second 16 columns.
#[derive(Clone, Copy)]
struct Tap {
    col: isize,
    lo: __mmask16,
    hi: __mmask16,
}

/// The taps of kernel columns `j = 0..3` for the `n` outputs from column `ow0` on: output lane
/// `l` reads input column `(ow0 + l) SW + j - pl`.
fn taps<const SW: usize>(d: &DwDims, ow0: usize, n: usize) -> [Tap; K] {
    let width = d.input[1] as isize;
    let used = ((n - 1) * SW + 1) as isize;
    std::array::from_fn(|j| {
        let col = (ow0 * SW + j) as isize - d.pad[1] as isize;
        let m = window(-col, (width - col).min(used));
        Tap {
            col,
            lo: m as __mmask16,
            hi: (m >> 16) as __mmask16,
        }
    })
}

/// The 16 lanes a tap feeds: a masked load (stride 1), or the even lanes of 32 columns.
///
/// # Safety
/// AVX-512F; `row` points at an input row and the tap's masks select columns inside it (masked
/// lanes are not accessed, so the window may start or end outside the row).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_tap<const SW: usize>(row: *const f32, t: Tap, even: __m512i) -> __m512 {
    let p = row.wrapping_offset(t.col);
    // SAFETY: only the lanes in the masks are read, and those lie inside the row.
    unsafe {
        let a = _mm512_maskz_loadu_ps(t.lo, p);
        if SW == 1 {
            return a;
        }
        let b = _mm512_maskz_loadu_ps(t.hi, p.wrapping_add(L));
        _mm512_permutex2var_ps(a, even, b)
    }
}

/// Indices of the even lanes of a 32-lane pair of registers.
#[target_feature(enable = "avx512f")]
#[inline]
fn even_lanes() -> __m512i {
    _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
}

/// Input row `oh sh + i - pt` of output row `oh`, if inside the plane.
#[inline(always)]
fn input_row(d: &DwDims, oh: usize, i: usize) -> Option<usize> {
    (oh * d.stride[0] + i)
        .checked_sub(d.pad[0])
        .filter(|&r| r < d.input[0])
}

/// Forward pass of one plane: `y_p = bias + sum_{i, j} w[i, j] x_p[oh sh + i - pt, ow sw + j - pl]`.
///
/// # Safety
/// AVX-512F and FMA; `serves(d)`, `SW == d.stride[1]`, `x_p` one input plane, `y_p` one output
/// plane, `w_c` the plane's 9 weights.
#[target_feature(enable = "avx512f,fma")]
pub(super) unsafe fn fwd_plane<const SW: usize>(
    d: &DwDims,
    x_p: &[f32],
    w_c: &[f32],
    bias: f32,
    y_p: &mut [f32],
) {
    let [oh_n, ow_n] = d.output;
    let wd = d.input[1];
    debug_assert!(x_p.len() == d.input[0] * wd && y_p.len() == oh_n * ow_n && w_c.len() == K * K);
    let even = even_lanes();
    let wv: [[__m512; K]; K] =
        std::array::from_fn(|i| std::array::from_fn(|j| _mm512_set1_ps(w_c[i * K + j])));
    for ow0 in (0..ow_n).step_by(L) {
        let n = (ow_n - ow0).min(L);
        let t = taps::<SW>(d, ow0, n);
        for oh in 0..oh_n {
            let mut acc = _mm512_set1_ps(bias);
            for (i, wi) in wv.iter().enumerate() {
                let Some(r) = input_row(d, oh, i) else {
                    continue;
                };
                let row = x_p[r * wd..].as_ptr();
                for (tj, wij) in t.iter().zip(wi) {
                    // SAFETY: `row` is input row `r`; the tap masks keep to its columns.
                    acc = _mm512_fmadd_ps(*wij, unsafe { load_tap::<SW>(row, *tj, even) }, acc);
                }
            }
            // SAFETY: lanes `0..n` are outputs `ow0..ow0 + n` of row `oh`, inside `y_p`.
            unsafe { _mm512_mask_storeu_ps(y_p[oh * ow_n + ow0..].as_mut_ptr(), head(n), acc) };
        }
    }
}

/// Backward pass of one plane: the `dw` (9) and `db` (1) partial sums into `part_p`, and the
/// plane's `dx` (every element written) when `dx_p` is given.
///
/// `dw[i, j] = sum dy[oh, ow] x[oh sh + i - pt, ow sw + j - pl]`, `db = sum dy`;
/// `dx[r, c] = sum w[i, j] dy[oh, ow]` over `oh sh + i - pt = r`, `ow sw + j - pl = c`.
///
/// # Safety
/// AVX-512F and FMA; `serves(d)`, `SW == d.stride[1]`, `x_p` one input plane, `dy_p` one output
/// plane, `dx_p` one input plane, `w_c` the plane's 9 weights, `part_p` 10 floats.
#[target_feature(enable = "avx512f,fma")]
pub(super) unsafe fn bwd_plane<const SW: usize>(
    d: &DwDims,
    x_p: &[f32],
    w_c: &[f32],
    dy_p: &[f32],
    dx_p: Option<&mut [MaybeUninit<f32>]>,
    part_p: &mut [f32],
) {
    let [oh_n, ow_n] = d.output;
    let wd = d.input[1];
    debug_assert!(
        x_p.len() == d.input[0] * wd && dy_p.len() == oh_n * ow_n && part_p.len() == K * K + 1
    );
    let even = even_lanes();
    let mut acc = [[_mm512_setzero_ps(); K]; K];
    let mut db = _mm512_setzero_ps();
    for ow0 in (0..ow_n).step_by(L) {
        let n = (ow_n - ow0).min(L);
        let t = taps::<SW>(d, ow0, n);
        for oh in 0..oh_n {
            // SAFETY: lanes `0..n` are outputs `ow0..ow0 + n` of row `oh`, inside `dy_p`.
            let g = unsafe { _mm512_maskz_loadu_ps(head(n), dy_p[oh * ow_n + ow0..].as_ptr()) };
            db = _mm512_add_ps(db, g);
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let Some(r) = input_row(d, oh, i) else {
                    continue;
                };
                let row = x_p[r * wd..].as_ptr();
                for (tj, a) in t.iter().zip(acc_i.iter_mut()) {
                    // SAFETY: `row` is input row `r`; the tap masks keep to its columns.
                    *a = _mm512_fmadd_ps(g, unsafe { load_tap::<SW>(row, *tj, even) }, *a);
                }
            }
        }
    }
    for (p, a) in part_p.iter_mut().zip(acc.iter().flatten()) {
        *p = _mm512_reduce_add_ps(*a);
    }
    part_p[K * K] = _mm512_reduce_add_ps(db);
    if let Some(dx_p) = dx_p {
        // SAFETY: forwarded from the caller.
        unsafe { dx_plane::<SW>(d, w_c, dy_p, dx_p) }
    }
}

/// How one kernel column `j` feeds a chunk of `dx` lanes from a `dy` row: lane `l` (input
/// column `c0 + l`) takes `dy[ow]` with `ow sw = c0 + l + pl - j` when that is a multiple of
/// `sw` inside the row, else nothing. For stride 1 a masked load from column `col`; for stride
/// 2 a masked load of the 9 `dy` values from `col` on, spread to the lanes by `idx` and zeroed
/// outside `lanes`.
#[derive(Clone, Copy)]
struct DxTap {
    col: isize,
    load: __mmask16,
    idx: __m512i,
    lanes: __mmask16,
}

/// The `dx` taps of kernel columns `j = 0..3` for the `n` input columns from `c0` on.
#[target_feature(enable = "avx512f")]
fn dx_taps<const SW: usize>(d: &DwDims, c0: usize, n: usize) -> [DxTap; K] {
    let ow_n = d.output[1] as isize;
    std::array::from_fn(|j| {
        let first = (c0 + d.pad[1]) as isize - j as isize; // ow sw of lane 0
        if SW == 1 {
            return DxTap {
                col: first,
                load: window(-first, (ow_n - first).min(n as isize)) as __mmask16,
                idx: _mm512_setzero_si512(),
                lanes: head(n),
            };
        }
        let col = first.div_euclid(SW as isize);
        let mut idx = [0i32; L];
        let mut lanes: u32 = 0;
        for (l, slot) in idx.iter_mut().enumerate().take(n) {
            let at = first + l as isize;
            if at.rem_euclid(SW as isize) == 0 {
                *slot = (at.div_euclid(SW as isize) - col) as i32;
                lanes |= 1 << l;
            }
        }
        DxTap {
            col,
            load: window(-col, (ow_n - col).min(L as isize)) as __mmask16,
            // SAFETY: 16 `i32` are one 512-bit register.
            idx: unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) },
            lanes: lanes as __mmask16,
        }
    })
}

/// `dx` of one plane, row by row in registers (see [`bwd_plane`]).
///
/// # Safety
/// As [`bwd_plane`].
#[target_feature(enable = "avx512f,fma")]
unsafe fn dx_plane<const SW: usize>(
    d: &DwDims,
    w_c: &[f32],
    dy_p: &[f32],
    dx_p: &mut [MaybeUninit<f32>],
) {
    let [h, wd] = d.input;
    let [oh_n, ow_n] = d.output;
    let [sh, pt] = [d.stride[0], d.pad[0]];
    let wv: [[__m512; K]; K] =
        std::array::from_fn(|i| std::array::from_fn(|j| _mm512_set1_ps(w_c[i * K + j])));
    for c0 in (0..wd).step_by(L) {
        let n = (wd - c0).min(L);
        let t = dx_taps::<SW>(d, c0, n);
        for r in 0..h {
            let mut acc = _mm512_setzero_ps();
            for (i, wi) in wv.iter().enumerate() {
                // Output row `oh` with `oh sh + i - pt = r`.
                let Some(q) = (r + pt).checked_sub(i) else {
                    continue;
                };
                if !q.is_multiple_of(sh) || q / sh >= oh_n {
                    continue;
                }
                let row = dy_p[q / sh * ow_n..].as_ptr();
                for (tj, wij) in t.iter().zip(wi) {
                    let p = row.wrapping_offset(tj.col);
                    // SAFETY: the load mask keeps to the columns of dy row `q / sh`.
                    let v = unsafe { _mm512_maskz_loadu_ps(tj.load, p) };
                    let v = if SW == 1 {
                        v
                    } else {
                        _mm512_maskz_permutexvar_ps(tj.lanes, tj.idx, v)
                    };
                    acc = _mm512_fmadd_ps(*wij, v, acc);
                }
            }
            // SAFETY: lanes `0..n` are columns `c0..c0 + n` of dx row `r`, inside `dx_p`.
            unsafe { _mm512_mask_storeu_ps(dx_p[r * wd + c0..].as_mut_ptr().cast(), head(n), acc) };
        }
    }
}
