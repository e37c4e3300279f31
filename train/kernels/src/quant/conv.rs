//! Direct 2-D convolution over a zero-padded input, generic over the element type: `i16`
//! codes (input minus zero point) times `i16` weights into `i32`, or `f32` throughout (the
//! int8 engine's float reference path). Padded rows are stored by column phase
//! ([`ConvGeom::row_len`]) so that the taps of a strided convolution read contiguous columns.

/// Geometry of a 2-D convolution on `[Cin, H, W] -> [Cout, Ho, Wo]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Groups.
    pub groups: usize,
    /// Input height, width.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Strides.
    pub sh: usize,
    /// Horizontal stride.
    pub sw: usize,
    /// Zero padding.
    pub ph: usize,
    /// Horizontal padding.
    pub pw: usize,
}

impl ConvGeom {
    /// Output height.
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.ph - self.kh) / self.sh + 1
    }
    /// Output width.
    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pw - self.kw) / self.sw + 1
    }
    /// Columns of a padded row in one stride phase: `ceil((W + 2pw) / sw)`.
    pub fn phase_len(&self) -> usize {
        (self.w + 2 * self.pw).div_ceil(self.sw)
    }
    /// Length of one padded input row: `sw` phases of [`ConvGeom::phase_len`] columns. Padded
    /// column `c` is stored at `(c % sw) * phase_len + c / sw`, so that the taps of a strided
    /// convolution read contiguous columns.
    pub fn row_len(&self) -> usize {
        self.sw * self.phase_len()
    }
    /// Size of the padded input `Cin * (H + 2ph) * row_len`.
    pub fn padded_len(&self) -> usize {
        self.cin * (self.h + 2 * self.ph) * self.row_len()
    }
    /// A pointwise layer (1x1, stride 1, no padding): one contiguous plane per channel.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }
}

/// Element type of the direct convolution: `i16` codes (input minus zero point, so that padding
/// is 0) times `i16` weights accumulated in `i32`, or `f32` throughout.
pub trait ConvElem: Copy + Default + Send + Sync {
    /// Accumulator type.
    type Acc: Copy + Default;
    /// `acc += w * x` over a row.
    fn axpy(acc: &mut [Self::Acc], w: Self, x: &[Self]);
    /// True for a zero weight (its taps are skipped).
    fn is_zero(self) -> bool;
}

impl ConvElem for i16 {
    type Acc = i32;
    #[inline(always)]
    fn axpy(acc: &mut [i32], w: i16, x: &[i16]) {
        // |w| <= 128 and |x| <= 255, so the product fits in i16.
        for (a, &v) in acc.iter_mut().zip(x) {
            *a += w.wrapping_mul(v) as i32;
        }
    }
    fn is_zero(self) -> bool {
        self == 0
    }
}

impl ConvElem for f32 {
    type Acc = f32;
    #[inline(always)]
    fn axpy(acc: &mut [f32], w: f32, x: &[f32]) {
        for (a, &v) in acc.iter_mut().zip(x) {
            *a += w * v;
        }
    }
    fn is_zero(self) -> bool {
        self == 0.0
    }
}

/// Direct convolution over an already padded input `xp` `[Cin, H+2ph, W+2pw]`; for every
/// output channel `co` the accumulator plane `acc` `[Ho*Wo]` is initialised to `bias[co]`,
/// filled, and handed to `emit(co, acc)`. Weights `[Cout, Cin/groups, kh, kw]`.
#[inline(always)]
pub fn conv2d_direct<T: ConvElem>(
    g: &ConvGeom,
    xp: &[T],
    weight: &[T],
    bias: &[T::Acc],
    acc: &mut [T::Acc],
    mut emit: impl FnMut(usize, &[T::Acc]),
) {
    let (hp, rl, pl) = (g.h + 2 * g.ph, g.row_len(), g.phase_len());
    let (ho, wo) = (g.ho(), g.wo());
    let (cig, cog) = (g.cin / g.groups, g.cout / g.groups);
    let plane = hp * rl;
    let acc = &mut acc[..ho * wo];
    let pointwise = g.is_pointwise();
    for (co, &b) in bias.iter().enumerate().take(g.cout) {
        let gi = co / cog;
        acc.fill(b);
        for cl in 0..cig {
            let ci = gi * cig + cl;
            let xc = &xp[ci * plane..(ci + 1) * plane];
            let wbase = (co * cig + cl) * g.kh * g.kw;
            if pointwise {
                T::axpy(acc, weight[wbase], xc);
                continue;
            }
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let wv = weight[wbase + ky * g.kw + kx];
                    if wv.is_zero() {
                        continue;
                    }
                    let col = (kx % g.sw) * pl + kx / g.sw;
                    for oy in 0..ho {
                        let row = &xc[(oy * g.sh + ky) * rl + col..][..wo];
                        T::axpy(&mut acc[oy * wo..(oy + 1) * wo], wv, row);
                    }
                }
            }
        }
        emit(co, acc);
    }
}

/// Copies `x` `[C, H, W]` into the padded `xp` `[C, H+2ph, W+2pw]` through `f`, zero borders.
#[inline(always)]
pub fn pad_input<S: Copy, T: Copy + Default>(
    g: &ConvGeom,
    x: &[S],
    xp: &mut [T],
    f: impl Fn(S) -> T,
) {
    let (hp, rl) = (g.h + 2 * g.ph, g.row_len());
    let xp = &mut xp[..g.padded_len()];
    if g.sw > 1 {
        xp.fill(T::default());
        let pl = g.phase_len();
        for c in 0..g.cin {
            for y in 0..g.h {
                let src = &x[(c * g.h + y) * g.w..][..g.w];
                let dst = &mut xp[(c * hp + y + g.ph) * rl..][..rl];
                for (i, &s) in src.iter().enumerate() {
                    let pc = i + g.pw;
                    dst[(pc % g.sw) * pl + pc / g.sw] = f(s);
                }
            }
        }
        return;
    }
    if g.ph == 0 && g.pw == 0 {
        for (d, &s) in xp.iter_mut().zip(x) {
            *d = f(s);
        }
        return;
    }
    xp.fill(T::default());
    for c in 0..g.cin {
        for y in 0..g.h {
            let src = &x[(c * g.h + y) * g.w..][..g.w];
            let dst = &mut xp[(c * hp + y + g.ph) * rl + g.pw..][..g.w];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = f(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::randv;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn naive_conv(x: &[f32], w: &[f32], b: &[f32], g: &ConvGeom) -> Vec<f32> {
        let (ho, wo) = (g.ho(), g.wo());
        let (cig, cog) = (g.cin / g.groups, g.cout / g.groups);
        let mut y = vec![0.0; g.cout * ho * wo];
        for co in 0..g.cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut s = b[co];
                    for cl in 0..cig {
                        let ci = co / cog * cig + cl;
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.sh + ky) as isize - g.ph as isize;
                                let ix = (ox * g.sw + kx) as isize - g.pw as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w
                                {
                                    s += w[((co * cig + cl) * g.kh + ky) * g.kw + kx]
                                        * x[(ci * g.h + iy as usize) * g.w + ix as usize];
                                }
                            }
                        }
                    }
                    y[(co * ho + oy) * wo + ox] = s;
                }
            }
        }
        y
    }

    #[test]
    fn direct_convolution_matches_naive_loops() {
        let mut rng = StdRng::seed_from_u64(2);
        let geoms = [
            ConvGeom {
                cin: 3,
                cout: 5,
                groups: 1,
                h: 9,
                w: 7,
                kh: 3,
                kw: 3,
                sh: 1,
                sw: 1,
                ph: 1,
                pw: 1,
            },
            ConvGeom {
                cin: 6,
                cout: 6,
                groups: 6,
                h: 10,
                w: 8,
                kh: 3,
                kw: 3,
                sh: 2,
                sw: 2,
                ph: 1,
                pw: 1,
            },
            ConvGeom {
                cin: 4,
                cout: 8,
                groups: 2,
                h: 8,
                w: 6,
                kh: 3,
                kw: 2,
                sh: 2,
                sw: 1,
                ph: 0,
                pw: 1,
            },
            ConvGeom {
                cin: 5,
                cout: 7,
                groups: 1,
                h: 4,
                w: 6,
                kh: 1,
                kw: 1,
                sh: 1,
                sw: 1,
                ph: 0,
                pw: 0,
            },
        ];
        for g in geoms {
            let x = randv(&mut rng, g.cin * g.h * g.w, 1.0);
            let w = randv(&mut rng, g.cout * g.cin / g.groups * g.kh * g.kw, 1.0);
            let b = randv(&mut rng, g.cout, 1.0);
            let mut xp = vec![0.0; g.padded_len()];
            pad_input(&g, &x, &mut xp, |v| v);
            let hw = g.ho() * g.wo();
            let mut acc = vec![0.0; hw];
            let mut y = vec![0.0; g.cout * hw];
            conv2d_direct(&g, &xp, &w, &b, &mut acc, |co, a| {
                y[co * hw..(co + 1) * hw].copy_from_slice(a)
            });
            let want = naive_conv(&x, &w, &b, &g);
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{g:?}: {a} vs {b}");
            }
        }
    }
}
