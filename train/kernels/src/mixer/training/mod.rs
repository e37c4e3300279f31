//! The training mixer: the fused Mamba mixer over contiguous `f32` buffers, forward and
//! hand-written backward, one sequence per rayon task.
//!
//! Layouts (row-major, as burn hands them over): `xz`: `[S, L, 2 d_inner]` (the `x` half then
//! the gate `z`); `conv_w`: `[d_inner, 1, K]`; `conv_b`, `dt_b`, `d`: `[d_inner]`; `x_proj`:
//! `[d_inner, R + 2N]` (burn's `Linear` weight, `[d_in, d_out]`); `dt_proj`: `[R, d_inner]`;
//! `a`: `[d_inner, N]`; output `[S, L, d_inner]`.
//!
//! With AVX-512 and `d_state` 16 (the models' setting) a task runs time-major throughout
//! (`fwd_seq_tm`, `bwd_seq_tm`): `xz` is read in place, every step works on the channels of one
//! token in the vector lanes (the causal conv, SiLU, softplus, the gate), `x_proj` runs on gemm,
//! and the register scans ([`crate::scan::time_major`], forward and backward) read `B`, `C` from
//! the `[L, R + 2N]` projection: no transposes (the channel-major path spent a sixth of a parallel
//! Mamba block's time transposing). Otherwise a task runs channel-major (`[rows, L]`, rows of one
//! sequence stay in L1/L2): the `x` half is transposed once, the causal conv, SiLU, the projections
//! (row `axpy`s over `L`), softplus and the scan ([`crate::scan::channel_major::SeqScan`]) follow,
//! and the gate writes the token-major output. The forward pass keeps only the scan's output `y`
//! (before the gate, `[S, L, d_inner]` on both paths); the backward pass recomputes the cheap parts
//! (conv, SiLU, projections, softplus) from `xz` instead of storing six more activations.
//!
//! `channel_major` and `time_major` hold the two paths' per-sequence bodies; this module the
//! sizes, the per-thread scratch cache, the instruction-set instances and the entry points.
//!
//! Instruction sets ([`Isa`]): generic `#[inline(always)]` bodies instanced for AVX-512 and
//! AVX2 (with FMA) and for the baseline target. The AVX-512 instance also runs the explicit
//! AVX-512 kernels: SiLU, softplus, the forward gate ([`crate::math`]), and on the
//! channel-major path the register-blocked `x_proj` ([`crate::gemm::matmul_rows_avx512`]).

// Row loops index several buffers in lockstep; clearer than multi-way zips.
#![allow(clippy::needless_range_loop)]

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::Isa;
use crate::buffer::zeros_par;
use crate::math::sigmoid;
use crate::scan::channel_major::SeqScan;
use crate::transpose::transpose_strided_fast;

use channel_major::{bwd_seq, fwd_seq};

mod channel_major;
#[cfg(target_arch = "x86_64")]
mod time_major;

/// Sizes of one mixer call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MixerDims {
    /// Number of sequences `S` (batch times parallel groups).
    pub seqs: usize,
    /// Sequence length `L`.
    pub len: usize,
    /// Inner width `d_inner`.
    pub d_inner: usize,
    /// SSM state size `N`.
    pub d_state: usize,
    /// Rank `R` of the dt projection.
    pub dt_rank: usize,
    /// Causal conv width `K`.
    pub d_conv: usize,
}

/// Names of `xz` and the seven parameters, in the order of [`MixerDims::shapes`] (the order of
/// [`MixerGrads`]' parameter fields too).
pub const INPUTS: [&str; 8] = [
    "xz", "conv_w", "conv_b", "x_proj", "dt_proj", "dt_b", "a", "d",
];

impl MixerDims {
    /// Width of `x_proj`'s output, `R + 2N`.
    pub fn proj_width(&self) -> usize {
        self.dt_rank + 2 * self.d_state
    }

    /// Shapes of `xz` and the seven parameters ([`INPUTS`]), layouts in the module docs.
    pub fn shapes(&self) -> [Vec<usize>; 8] {
        let (di, n, r, k) = (self.d_inner, self.d_state, self.dt_rank, self.d_conv);
        [
            vec![self.seqs, self.len, 2 * di],
            vec![di, 1, k],
            vec![di],
            vec![di, self.proj_width()],
            vec![r, di],
            vec![di],
            vec![di, n],
            vec![di],
        ]
    }

    /// Sizes of the seven parameters, in the order of [`MixerGrads`].
    fn param_lens(&self) -> [usize; 7] {
        let [_, params @ ..] = self.shapes();
        params.map(|s| s.iter().product())
    }

    /// Length of one sequence's partial weight gradients (see [`MixerGrads`] for the order).
    fn part_len(&self) -> usize {
        self.param_lens().iter().sum()
    }
}

/// The mixer's parameters (layouts in the module docs).
#[derive(Clone, Copy, Debug)]
pub struct MixerWeights<'a> {
    /// Causal depthwise conv weight `[d_inner, 1, K]`.
    pub conv_w: &'a [f32],
    /// Conv bias `[d_inner]`.
    pub conv_b: &'a [f32],
    /// `x_proj` weight `[d_inner, R + 2N]`.
    pub x_proj: &'a [f32],
    /// `dt_proj` weight `[R, d_inner]`.
    pub dt_proj: &'a [f32],
    /// `dt_proj` bias `[d_inner]`.
    pub dt_b: &'a [f32],
    /// `A = -exp(A_log)`, `[d_inner, N]`.
    pub a: &'a [f32],
    /// Skip `D`, `[d_inner]`.
    pub d: &'a [f32],
}

/// Gradients of a scalar loss with respect to the mixer's input and parameters.
#[derive(Clone, Debug, Default)]
pub struct MixerGrads {
    /// `dL/dxz`: `[S, L, 2 d_inner]`.
    pub dxz: Vec<f32>,
    /// `[d_inner, 1, K]`.
    pub conv_w: Vec<f32>,
    /// `[d_inner]`.
    pub conv_b: Vec<f32>,
    /// `[d_inner, R + 2N]`.
    pub x_proj: Vec<f32>,
    /// `[R, d_inner]`.
    pub dt_proj: Vec<f32>,
    /// `[d_inner]`.
    pub dt_b: Vec<f32>,
    /// `[d_inner, N]`.
    pub a: Vec<f32>,
    /// `[d_inner]`.
    pub d: Vec<f32>,
}

/// Per-thread buffers of one sequence (channel-major or time-major, see `tm`).
struct Scratch {
    /// What the buffers were made for: the sizes (`seqs` set to 0), backward or forward, the
    /// instruction set.
    key: (MixerDims, bool, Isa),
    /// The mixer call whose weights `scan`, `x_proj_t`, `a_t` and `conv_w_t` hold ([`CALLS`]).
    call: u64,
    /// The channel-major scan (`None` on the time-major path).
    scan: Option<SeqScan>,
    /// The `x` half, `[d_inner, L]`.
    x: Vec<f32>,
    /// Conv output before SiLU, `[d_inner, L]`.
    xc: Vec<f32>,
    /// `u = SiLU(xc)`, `[d_inner, L]`.
    u: Vec<f32>,
    /// `x_proj(u)`: dt, B, C rows, `[R + 2N, L]`.
    proj: Vec<f32>,
    /// `dt_proj(dt)` before softplus, `[d_inner, L]`.
    dtp: Vec<f32>,
    /// `delta = softplus(dtp)`, `[d_inner, L]`.
    delta: Vec<f32>,
    /// The gate `z`, `[d_inner, L]`.
    z: Vec<f32>,
    /// The gated output (forward) or `dz` (backward), `[d_inner, L]`.
    g: Vec<f32>,
    /// The scan output `y`, `[d_inner, L]` (saved token-major, as by the time-major path).
    ys: Vec<f32>,
    /// Whether the time-major path runs ([`time_major::fwd_seq_tm`], [`time_major::bwd_seq_tm`]:
    /// `avx512` and `d_state` 16); its buffers are then `[L, d_inner]` (`proj`, `dproj`: `[L, R +
    /// 2N]`) and `x`, `z`, `g`, `ys` stay empty.
    tm: bool,
    /// `A^T`, `[N, d_inner]`, and `conv_w^T`, `[K, d_inner]`, for the time-major path.
    a_t: Vec<f32>,
    conv_w_t: Vec<f32>,
    /// Backward, time-major: the `conv_w` gradient sums, `[K, d_inner]`.
    conv_acc: Vec<f32>,
    /// Backward only: states and decays of the time-major scan backward (made on first use).
    #[cfg(target_arch = "x86_64")]
    time_major_bwd: Option<crate::scan::time_major::TimeMajorBwd>,
    /// Whether the explicit AVX-512 SiLU, softplus, gate and `x_proj` kernels run (the
    /// [`Isa::Avx512`] level and above).
    avx512: bool,
    /// `x_proj^T`, `[R + 2N, d_inner]`, for the channel-major path's AVX-512 `x_proj` (empty
    /// otherwise).
    x_proj_t: Vec<f32>,
    /// Backward only: `dy` (gated), `du`, `ddelta`, `[d_inner, L]` each; `d proj`, `[R + 2N, L]`.
    dy: Vec<f32>,
    du: Vec<f32>,
    ddelta: Vec<f32>,
    dproj: Vec<f32>,
}

impl Scratch {
    fn new(dims: MixerDims, w: &MixerWeights, backward: bool, isa: Isa) -> Self {
        let plane = dims.d_inner * dims.len;
        let avx512 = cfg!(target_arch = "x86_64") && isa >= Isa::Avx512;
        let back = if backward { plane } else { 0 };
        let tm = avx512 && dims.d_state == 16;
        let cm = if tm { 0 } else { plane };
        let (di, k, n) = (dims.d_inner, dims.d_conv, dims.d_state);
        let mut s = Scratch {
            key: Self::key(dims, backward, isa),
            call: 0,
            scan: (!tm).then(|| SeqScan::new(dims.d_inner, dims.d_state, dims.len, w.a)),
            x: vec![0.0; cm],
            xc: vec![0.0; plane],
            u: vec![0.0; plane],
            proj: vec![0.0; dims.proj_width() * dims.len],
            dtp: vec![0.0; plane],
            delta: vec![0.0; plane],
            z: vec![0.0; cm],
            g: vec![0.0; cm],
            ys: vec![0.0; cm],
            tm,
            a_t: vec![0.0; if tm { n * di } else { 0 }],
            conv_w_t: vec![0.0; if tm { k * di } else { 0 }],
            conv_acc: vec![0.0; if tm && backward { k * di } else { 0 }],
            #[cfg(target_arch = "x86_64")]
            time_major_bwd: None,
            avx512,
            // Written by `set_weights` below.
            x_proj_t: vec![
                0.0;
                if avx512 && !tm {
                    dims.proj_width() * dims.d_inner
                } else {
                    0
                }
            ],
            dy: vec![0.0; back],
            du: vec![0.0; back],
            ddelta: vec![0.0; back],
            dproj: vec![
                0.0;
                if backward {
                    dims.proj_width() * dims.len
                } else {
                    0
                }
            ],
        };
        s.set_weights(0, dims, w);
        s
    }

    /// What a scratch for these arguments is made for ([`Scratch::key`]'s field).
    fn key(dims: MixerDims, backward: bool, isa: Isa) -> (MixerDims, bool, Isa) {
        (MixerDims { seqs: 0, ..dims }, backward, isa)
    }

    /// Takes the weights of mixer call `call` in the layouts of this scratch's path: `A^T` and
    /// `conv_w^T` (time-major), or `A` for the scan and `x_proj^T` (channel-major).
    fn set_weights(&mut self, call: u64, dims: MixerDims, w: &MixerWeights) {
        self.call = call;
        let di = dims.d_inner;
        if self.tm {
            let (n, k) = (dims.d_state, dims.d_conv);
            transpose_strided_fast(w.a, n, &mut self.a_t, di, di, n);
            transpose_strided_fast(w.conv_w, k, &mut self.conv_w_t, di, di, k);
            return;
        }
        if let Some(scan) = self.scan.as_mut() {
            scan.set_a(w.a);
        }
        if self.avx512 {
            let pw = dims.proj_width();
            transpose_strided_fast(w.x_proj, pw, &mut self.x_proj_t, di, di, pw);
        }
    }
}

/// Message of the channel-major bodies finding a time-major scratch (the dispatch never lets
/// them).
const CHANNEL_MAJOR: &str = "mixer: a channel-major body on a time-major scratch";

/// Numbers the mixer calls, so that a thread's cached [`Scratch`] takes each call's weights
/// once.
static CALLS: AtomicU64 = AtomicU64::new(1);

/// Scratch buffers per thread, one per geometry and direction (a training step alternates
/// between the stages' forward and backward calls): each rayon task of a call used to make
/// its own, about 20 times per call (a megabyte each, zero-filled).
const CACHED_SCRATCH: usize = 8;

thread_local! {
    static SCRATCH: RefCell<Vec<Scratch>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's [`Scratch`] for `dims` / `backward` / `isa`, holding the
/// weights of call `call` (made on first use, then kept).
fn with_scratch<R>(
    call: u64,
    (dims, w, backward, isa): (MixerDims, &MixerWeights, bool, Isa),
    f: impl FnOnce(&mut Scratch) -> R,
) -> R {
    SCRATCH.with(|cell| {
        // A task body never re-enters the pool, so the cache is never borrowed twice; if it
        // were, a fresh scratch would do.
        let Ok(mut cache) = cell.try_borrow_mut() else {
            let mut s = Scratch::new(dims, w, backward, isa);
            return f(&mut s);
        };
        let key = Scratch::key(dims, backward, isa);
        let i = match cache.iter().position(|s| s.key == key) {
            Some(i) => i,
            None => {
                if cache.len() == CACHED_SCRATCH {
                    cache.remove(0);
                }
                let mut s = Scratch::new(dims, w, backward, isa);
                s.call = call;
                cache.push(s);
                cache.len() - 1
            }
        };
        let s = &mut cache[i];
        if s.call != call {
            s.set_weights(call, dims, w);
        }
        f(s)
    })
}

/// The gate's backward for one value: `out = y SiLU(z)` gives `(dy, dz) = (g SiLU(z),
/// g y SiLU'(z))` for the output gradient `g`, with `SiLU'(z) = sigma(z) (1 + z (1 - sigma(z)))`.
#[inline(always)]
fn gate_grads<const FMA: bool>(g: f32, y: f32, z: f32) -> (f32, f32) {
    let sg = sigmoid::<FMA>(z);
    (g * z * sg, g * y * sg * (1.0 + z * (1.0 - sg)))
}

/// One sequence's partial parameter gradients carved from its `part` slice, in the order of
/// [`MixerGrads`]: `conv_w`, `conv_b`, `x_proj`, `dt_proj`, `dt_b`, then the scan's `dA` and
/// `dD` together.
#[inline(always)]
fn part_grads(dims: MixerDims, part: &mut [f32]) -> [&mut [f32]; 6] {
    let (di, k, r) = (dims.d_inner, dims.d_conv, dims.dt_rank);
    let (conv_w, rest) = part.split_at_mut(di * k);
    let (conv_b, rest) = rest.split_at_mut(di);
    let (x_proj, rest) = rest.split_at_mut(di * dims.proj_width());
    let (dt_proj, rest) = rest.split_at_mut(r * di);
    let (dt_b, scan) = rest.split_at_mut(di);
    [conv_w, conv_b, x_proj, dt_proj, dt_b, scan]
}

/// Instances of the per-sequence bodies for each instruction set.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::channel_major::{bwd_seq, fwd_seq};
    use super::time_major::{bwd_seq_tm, fwd_seq_tm};
    use super::{MixerDims, MixerWeights, Scratch};

    /// # Safety
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn fwd_avx512(
        dims: MixerDims,
        w: &MixerWeights,
        xz: &[f32],
        s: &mut Scratch,
        y: &mut [f32],
        out: &mut [f32],
    ) {
        if s.tm {
            fwd_seq_tm(dims, w, xz, s, y, out)
        } else {
            fwd_seq::<true>(dims, w, xz, s, y, out)
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fwd_avx2(
        dims: MixerDims,
        w: &MixerWeights,
        xz: &[f32],
        s: &mut Scratch,
        y: &mut [f32],
        out: &mut [f32],
    ) {
        fwd_seq::<true>(dims, w, xz, s, y, out)
    }

    /// # Safety
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn bwd_avx512(
        dims: MixerDims,
        w: &MixerWeights,
        xz: &[f32],
        y: &[f32],
        dout: &[f32],
        s: &mut Scratch,
        dxz: &mut [f32],
        part: &mut [f32],
    ) {
        if s.tm {
            bwd_seq_tm(dims, w, xz, y, dout, s, dxz, part)
        } else {
            bwd_seq::<true>(dims, w, xz, y, dout, s, dxz, part)
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn bwd_avx2(
        dims: MixerDims,
        w: &MixerWeights,
        xz: &[f32],
        y: &[f32],
        dout: &[f32],
        s: &mut Scratch,
        dxz: &mut [f32],
        part: &mut [f32],
    ) {
        bwd_seq::<true>(dims, w, xz, y, dout, s, dxz, part)
    }
}

/// Panics with a clear message when a buffer does not match `dims` (the public API checks
/// shapes with typed errors first; this guards the kernel's own contract).
fn check_lengths(dims: MixerDims, w: &MixerWeights, xz: &[f32]) {
    let got = [
        xz.len(),
        w.conv_w.len(),
        w.conv_b.len(),
        w.x_proj.len(),
        w.dt_proj.len(),
        w.dt_b.len(),
        w.a.len(),
        w.d.len(),
    ];
    for ((name, shape), got) in INPUTS.iter().zip(dims.shapes()).zip(got) {
        let want: usize = shape.iter().product();
        assert_eq!(
            got, want,
            "Mamba mixer: {name} has {got} values, expected {want}"
        );
    }
}

/// Forward pass with instruction set `isa` (the widest level below it where it is not
/// available): returns the output `[S, L, d_inner]` and, when `keep_scan`, the scan output
/// before the gate, `[S, L, d_inner]` (the backward pass's saved state; without it each task
/// writes the scan output to its own scratch).
pub fn forward_with(
    isa: Isa,
    dims: MixerDims,
    w: &MixerWeights,
    xz: &[f32],
    keep_scan: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    check_lengths(dims, w, xz);
    let isa = isa.or_supported();
    let plane = dims.len * dims.d_inner;
    let mut out = zeros_par(dims.seqs * plane);
    let mut y = keep_scan.then(|| zeros_par(dims.seqs * plane));
    if plane == 0 || dims.seqs == 0 {
        return (out, y);
    }
    let run = |s: &mut Scratch, xz: &[f32], y: &mut [f32], out: &mut [f32]| match isa {
        // SAFETY: `isa` is available on this CPU (`or_supported` above).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni => unsafe { x86::fwd_avx512(dims, w, xz, s, y, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::fwd_avx2(dims, w, xz, s, y, out) },
        _ => fwd_seq::<false>(dims, w, xz, s, y, out),
    };
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let scratch = |f: &mut dyn FnMut(&mut Scratch)| with_scratch(call, (dims, w, false, isa), f);
    match y.as_mut() {
        Some(y) => out
            .par_chunks_mut(plane)
            .zip(y.par_chunks_mut(plane))
            .zip(xz.par_chunks(2 * plane))
            .for_each(|((out, y), xz)| scratch(&mut |s| run(s, xz, y, out))),
        None => out
            .par_chunks_mut(plane)
            .zip(xz.par_chunks(2 * plane))
            .for_each_init(
                || vec![0.0f32; plane],
                |y, (out, xz)| scratch(&mut |s| run(s, xz, y, out)),
            ),
    }
    (out, y)
}

/// [`forward_with`] on the widest instruction set of this CPU.
pub fn forward(
    dims: MixerDims,
    w: &MixerWeights,
    xz: &[f32],
    keep_scan: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    forward_with(Isa::detect(), dims, w, xz, keep_scan)
}

/// Backward pass with instruction set `isa`: gradients of `sum(dout ⊙ out)` from the forward
/// inputs, the saved scan output `y` (`[S, L, d_inner]`) and `dout` (`[S, L, d_inner]`).
pub fn backward_with(
    isa: Isa,
    dims: MixerDims,
    w: &MixerWeights,
    xz: &[f32],
    y: &[f32],
    dout: &[f32],
) -> MixerGrads {
    check_lengths(dims, w, xz);
    let plane = dims.len * dims.d_inner;
    assert_eq!(
        y.len(),
        dims.seqs * plane,
        "Mamba mixer: saved scan output size"
    );
    assert_eq!(
        dout.len(),
        dims.seqs * plane,
        "Mamba mixer: output gradient size"
    );
    let isa = isa.or_supported();
    let part = dims.part_len();
    let mut dxz = zeros_par(dims.seqs * 2 * plane);
    let mut partials = vec![0.0f32; dims.seqs * part];
    if plane > 0 {
        let call = CALLS.fetch_add(1, Ordering::Relaxed);
        dxz.par_chunks_mut(2 * plane)
            .zip(partials.par_chunks_mut(part))
            .zip(xz.par_chunks(2 * plane))
            .zip(y.par_chunks(plane).zip(dout.par_chunks(plane)))
            .for_each(|(((dxz, part), xz), (y, dout))| {
                with_scratch(call, (dims, w, true, isa), |s| match isa {
                    // SAFETY: `isa` is available on this CPU (`or_supported` above).
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 | Isa::Avx512Vnni => unsafe {
                        x86::bwd_avx512(dims, w, xz, y, dout, s, dxz, part)
                    },
                    // SAFETY: as above.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => unsafe { x86::bwd_avx2(dims, w, xz, y, dout, s, dxz, part) },
                    _ => bwd_seq::<false>(dims, w, xz, y, dout, s, dxz, part),
                })
            });
    }
    // Sum the per-sequence partials (fixed order: deterministic).
    let mut total = vec![0.0f32; part];
    for p in partials.chunks_exact(part) {
        for (acc, v) in total.iter_mut().zip(p) {
            *acc += v;
        }
    }
    let mut rest = total.as_slice();
    let [conv_w, conv_b, x_proj, dt_proj, dt_b, a, d] = dims.param_lens().map(|len| {
        let (head, tail) = rest.split_at(len);
        rest = tail;
        head.to_vec()
    });
    MixerGrads {
        conv_w,
        conv_b,
        x_proj,
        dt_proj,
        dt_b,
        a,
        d,
        dxz,
    }
}

/// [`backward_with`] on the widest instruction set of this CPU.
pub fn backward(
    dims: MixerDims,
    w: &MixerWeights,
    xz: &[f32],
    y: &[f32],
    dout: &[f32],
) -> MixerGrads {
    backward_with(Isa::detect(), dims, w, xz, y, dout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::rel_err;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Host values of one call: `xz` then the seven parameters, in the API's layouts.
    struct Case {
        dims: MixerDims,
        v: [Vec<f32>; 8],
    }

    /// Realistic ranges: the dt bias puts softplus(dt) near Mamba's initial time steps, `A` =
    /// -(1..N) jittered, weights of unit-variance-preserving scale.
    fn random_case(seed: u64, seqs: usize, len: usize, di: usize, n: usize, r: usize) -> Case {
        let k = 4;
        let dims = MixerDims {
            seqs,
            len,
            d_inner: di,
            d_state: n,
            dt_rank: r,
            d_conv: k,
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let mut uni = |count: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..count).map(|_| rng.random_range(lo..hi)).collect()
        };
        let xz = uni(seqs * len * 2 * di, -2.0, 2.0);
        let conv_w = uni(di * k, -0.5, 0.5);
        let conv_b = uni(di, -0.3, 0.3);
        let sx = (di as f32).powf(-0.5);
        let x_proj = uni(di * (r + 2 * n), -sx, sx);
        let sr = (r as f32).powf(-0.5);
        let dt_proj = uni(r * di, -sr, sr);
        let dt_b = uni(di, -4.6, -2.3); // softplus^-1 of dt in about [0.01, 0.1]
        let a = (0..di * n)
            .map(|i| -((i % n) as f32 + 1.0) * (0.8 + 0.4 * ((i * 7 % 5) as f32) / 5.0))
            .collect();
        let d = uni(di, 0.5, 1.5);
        Case {
            dims,
            v: [xz, conv_w, conv_b, x_proj, dt_proj, dt_b, a, d],
        }
    }

    const NAMES: [&str; 8] = [
        "xz", "conv_w", "conv_b", "x_proj", "dt_proj", "dt_b", "A", "D",
    ];

    fn out_weights(case: &Case, seed: u64) -> Vec<f32> {
        let MixerDims {
            seqs, len, d_inner, ..
        } = case.dims;
        let mut rng = StdRng::seed_from_u64(seed);
        (0..seqs * len * d_inner)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect()
    }

    /// Every available instruction-set instance agrees with the portable one (FMA changes
    /// rounding only), forward and backward.
    #[test]
    fn every_instruction_set_gives_the_same_mixer() {
        let case = random_case(7, 3, 40, 24, 16, 2);
        let [xz, conv_w, conv_b, x_proj, dt_proj, dt_b, a, d] = &case.v;
        let w = MixerWeights {
            conv_w,
            conv_b,
            x_proj,
            dt_proj,
            dt_b,
            a,
            d,
        };
        let dout = out_weights(&case, 8);
        let (out_p, y_p) = forward_with(Isa::Portable, case.dims, &w, xz, true);
        let y_p = y_p.expect("kept scan output");
        let g_p = backward_with(Isa::Portable, case.dims, &w, xz, &y_p, &dout);
        for isa in [Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.is_available())
        {
            let (out, y) = forward_with(isa, case.dims, &w, xz, true);
            let y = y.expect("kept scan output");
            let (out_only, none) = forward_with(isa, case.dims, &w, xz, false);
            assert!(
                none.is_none() && out_only == out,
                "{isa:?}: output without the saved state"
            );
            assert!(rel_err(&out, &out_p) <= 1e-6, "{isa:?}: output");
            assert!(rel_err(&y, &y_p) <= 1e-6, "{isa:?}: scan output");
            let g = backward_with(isa, case.dims, &w, xz, &y, &dout);
            let pairs = [
                (&g.dxz, &g_p.dxz),
                (&g.conv_w, &g_p.conv_w),
                (&g.conv_b, &g_p.conv_b),
                (&g.x_proj, &g_p.x_proj),
                (&g.dt_proj, &g_p.dt_proj),
                (&g.dt_b, &g_p.dt_b),
                (&g.a, &g_p.a),
                (&g.d, &g_p.d),
            ];
            for (k, (x, y)) in pairs.into_iter().enumerate() {
                let e = rel_err(x, y);
                assert!(e <= 1e-5, "{isa:?}: d{} relative error {e:e}", NAMES[k]);
            }
        }
    }
}
