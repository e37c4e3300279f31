//! Log-mel front end: STFT (realfft) -> power spectrum -> mel filterbank -> log.
//!
//! Implements [`data_specs::FrontEndConfig`] exactly:
//!
//! 1. optional pre-emphasis `y[n] = x[n] - c x[n-1]` with `y[0] = x[0]` (length preserved;
//!    CP-JKU's `conv1d` with kernel `[-c, 1]` computes the same values but drops `y[0]`, so its
//!    clip is one sample shorter and gives 64 frames; the shard spec asks for 65 frames);
//! 2. with `center`, reflect padding by `n_fft / 2` on both sides (`torch.stft(center=True,
//!    pad_mode="reflect")`, `librosa.stft(pad_mode="reflect")`);
//! 3. frames of `n_fft` samples every `hop_length`, multiplied by the `win_length` window
//!    zero-padded and centred in `n_fft` (offset `(n_fft - win_length) / 2`, as `torch.stft`);
//! 4. power spectrum `|X[k]|^2`, `k = 0 ..= n_fft / 2`;
//! 5. mel filterbank (HTK triangles on the linear grid, torchaudio `melscale_fbanks(norm=None,
//!    mel_scale="htk")`, or Kaldi triangles in the mel domain, `torchaudio.compliance.kaldi.
//!    get_mel_banks` with a zero Nyquist column);
//! 6. `ln(mel + log_offset)`, then optionally `(x + shift) / scale`.
//!
//! The output is mel-major: `out[m * n_frames + t]`.
//!
//! Precision: the filterbank and the window are built in f64 and the FFT runs in f64 (its
//! round-off in f32 would reach ~1e-3 in the log domain for quiet bins next to loud ones, the
//! tolerance the golden test allows). The power spectrum is then rounded to f32: the mel sums
//! add positive values only (no cancellation, relative error ~1e-6) and the logarithm of an f32
//! is exact to an ulp, far below the 1e-3 the reference test allows.
//!
//! Speed: frames are processed in blocks of [`BLOCK`]; a block's power spectra are stored
//! bin-major (`power[k][frame]`), so each mel filter is a short sum of rows of `BLOCK` values
//! (vectorized across the frames) and its results land in the mel-major output directly.

use std::cell::RefCell;
use std::sync::Arc;

use data_specs::{FrontEndConfig, MelScale, WindowKind};
use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// Floating-point type of the STFT.
type Real = f64;

/// Frames per block of the mel stage (see the module documentation).
const BLOCK: usize = 16;

/// One triangular mel filter, stored sparsely: its weights over the STFT bins
/// `start .. start + weights.len()` (all other weights are zero).
#[derive(Debug, Clone)]
struct MelFilter {
    start: usize,
    weights: Vec<f32>,
}

/// A log-mel extractor built once from a [`FrontEndConfig`] (window, sparse mel filterbank,
/// FFT plan) and shared by reference across threads (`Send + Sync`); per-call buffers live in
/// thread-local scratch space.
pub struct LogMel {
    cfg: FrontEndConfig,
    /// `n_fft` window values (the `win_length` window zero-padded and centred).
    window: Vec<Real>,
    /// Index of the first and one-past-the-last nonzero window sample.
    win_range: (usize, usize),
    filters: Vec<MelFilter>,
    fft: Arc<dyn RealToComplex<Real>>,
}

impl std::fmt::Debug for LogMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogMel").field("cfg", &self.cfg).finish()
    }
}

/// Per-thread buffers of [`LogMel::compute_into`].
#[derive(Default)]
struct Scratch {
    signal: Vec<Real>,
    frame: Vec<Real>,
    spectrum: Vec<Complex<Real>>,
    fft_scratch: Vec<Complex<Real>>,
    /// Power spectra of a block of frames, bin-major: `power[k * BLOCK + j]`.
    power: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// HTK mel scale: `2595 log10(1 + f / 700)`.
pub fn hz_to_mel_htk(f: f64) -> f64 {
    2595.0 * (1.0 + f / 700.0).log10()
}

/// Inverse of [`hz_to_mel_htk`]: `700 (10^(m / 2595) - 1)`.
pub fn mel_to_hz_htk(m: f64) -> f64 {
    700.0 * (10f64.powf(m / 2595.0) - 1.0)
}

/// Kaldi mel scale: `1127 ln(1 + f / 700)`.
pub fn hz_to_mel_kaldi(f: f64) -> f64 {
    1127.0 * (1.0 + f / 700.0).ln()
}

/// Dense mel filterbank `[n_mels][n_fft / 2 + 1]` of a configuration, in f64 (also used by
/// tests and tools that want to inspect the filters).
///
/// * HTK (torchaudio `melscale_fbanks(n_freqs, f_min, f_max, n_mels, sr, norm=None,
///   mel_scale="htk")`, librosa `filters.mel(htk=True, norm=None)`): STFT bin frequencies
///   `f_k = k (sr / 2) / (n_freqs - 1)`; `n_mels + 2` points equally spaced in HTK mel between
///   `f_min` and `f_max`, mapped back to Hz (`f_0 .. f_{M+1}`); filter `m` is
///   `max(0, min((f_k - f_m) / (f_{m+1} - f_m), (f_{m+2} - f_k) / (f_{m+2} - f_{m+1})))`.
/// * Kaldi (`torchaudio.compliance.kaldi.get_mel_banks(n_mels, n_fft, sr, f_min, f_max,
///   vtln_low, vtln_high, vtln_warp_factor=1)`): bins `k = 0 .. n_fft / 2` at
///   `f_k = k sr / n_fft`, `mel_k = 1127 ln(1 + f_k / 700)`; `delta = (mel(f_max) - mel(f_min)) /
///   (n_mels + 1)`, `left_m = mel(f_min) + m delta`, `centre_m = left_m + delta`, `right_m =
///   left_m + 2 delta`; weight `max(0, min((mel_k - left) / (centre - left), (right - mel_k) /
///   (right - centre)))`; the Nyquist bin `n_fft / 2` gets weight 0 (CP-JKU's zero padding).
///   A non-positive `f_max` counts from Nyquist (`f_max += sr / 2`), as in Kaldi.
pub fn mel_filterbank(cfg: &FrontEndConfig) -> Vec<Vec<f64>> {
    let n_freqs = cfg.n_fft / 2 + 1;
    let sr = cfg.sample_rate as f64;
    let n_mels = cfg.n_mels;
    let mut fb = vec![vec![0.0f64; n_freqs]; n_mels];
    match cfg.mel_scale {
        MelScale::Htk => {
            // torchaudio: all_freqs = linspace(0, sample_rate // 2, n_freqs).
            let nyq = (cfg.sample_rate / 2) as f64;
            let denom = (n_freqs - 1).max(1) as f64;
            let all_freqs: Vec<f64> = (0..n_freqs).map(|k| nyq * k as f64 / denom).collect();
            let m_min = hz_to_mel_htk(cfg.f_min as f64);
            let m_max = hz_to_mel_htk(cfg.f_max as f64);
            let n_pts = n_mels + 2;
            let f_pts: Vec<f64> = (0..n_pts)
                .map(|i| mel_to_hz_htk(m_min + (m_max - m_min) * i as f64 / (n_pts - 1) as f64))
                .collect();
            for (m, row) in fb.iter_mut().enumerate() {
                let (lo, c, hi) = (f_pts[m], f_pts[m + 1], f_pts[m + 2]);
                for (k, w) in row.iter_mut().enumerate() {
                    let f = all_freqs[k];
                    let down = (f - lo) / (c - lo);
                    let up = (hi - f) / (hi - c);
                    *w = down.min(up).max(0.0);
                }
            }
        }
        MelScale::Kaldi => {
            let num_fft_bins = cfg.n_fft / 2;
            let nyquist = 0.5 * sr;
            let mut high = cfg.f_max as f64;
            if high <= 0.0 {
                high += nyquist;
            }
            let bin_width = sr / cfg.n_fft as f64;
            let mel_low = hz_to_mel_kaldi(cfg.f_min as f64);
            let mel_high = hz_to_mel_kaldi(high);
            let delta = (mel_high - mel_low) / (n_mels + 1) as f64;
            for (m, row) in fb.iter_mut().enumerate() {
                let left = mel_low + m as f64 * delta;
                let centre = left + delta;
                let right = left + 2.0 * delta;
                for (k, w) in row.iter_mut().enumerate().take(num_fft_bins) {
                    let mel = hz_to_mel_kaldi(bin_width * k as f64);
                    let up = (mel - left) / (centre - left);
                    let down = (right - mel) / (right - centre);
                    *w = up.min(down).max(0.0);
                }
            }
        }
    }
    fb
}

/// Analysis window of `n_fft` samples: the `win_length` window zero-padded and centred.
pub fn stft_window(cfg: &FrontEndConfig) -> Vec<f64> {
    let n_fft = cfg.n_fft;
    let wl = cfg.win_length.min(n_fft);
    let offset = (n_fft - wl) / 2;
    let mut w = vec![0.0f64; n_fft];
    let denom = match cfg.window {
        WindowKind::HannPeriodic => wl as f64,
        WindowKind::HannSymmetric => (wl.max(2) - 1) as f64,
    };
    for i in 0..wl {
        w[offset + i] = if wl == 1 {
            1.0
        } else {
            0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / denom).cos()
        };
    }
    w
}

/// Reflect index (numpy `pad(mode="reflect")`, edge sample not repeated) of `i` into `0..n`.
fn reflect(mut i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let n = n as isize;
    let period = 2 * (n - 1);
    i = i.rem_euclid(period);
    if i >= n {
        i = period - i;
    }
    i as usize
}

impl LogMel {
    /// Builds the extractor: window, sparse mel filterbank (nonzero range of each filter) and
    /// the forward real FFT plan of `n_fft` points.
    pub fn new(cfg: &FrontEndConfig) -> LogMel {
        let dense = mel_filterbank(cfg);
        let filters = dense
            .into_iter()
            .map(|row| {
                let first = row.iter().position(|&w| w > 0.0);
                match first {
                    None => MelFilter {
                        start: 0,
                        weights: Vec::new(),
                    },
                    Some(s) => {
                        let e = row.iter().rposition(|&w| w > 0.0).unwrap_or(s) + 1;
                        MelFilter {
                            start: s,
                            weights: row[s..e].iter().map(|&w| w as f32).collect(),
                        }
                    }
                }
            })
            .collect();
        let window: Vec<Real> = stft_window(cfg).into_iter().map(|w| w as Real).collect();
        let first = window.iter().position(|&w| w != 0.0).unwrap_or(0);
        let last = window.iter().rposition(|&w| w != 0.0).map_or(0, |i| i + 1);
        let fft = RealFftPlanner::<Real>::new().plan_fft_forward(cfg.n_fft);
        LogMel {
            cfg: cfg.clone(),
            window,
            win_range: (first, last.max(first)),
            filters,
            fft,
        }
    }

    /// The configuration this extractor implements.
    pub fn config(&self) -> &FrontEndConfig {
        &self.cfg
    }

    /// Number of values of one output (`n_mels * n_frames`).
    pub fn output_len(&self) -> usize {
        self.cfg.logmel_len()
    }

    /// Log-mel of one clip, `n_mels * n_frames` values, mel-major.
    ///
    /// The clip should be `cfg.clip_samples` long at `cfg.sample_rate`; a shorter clip is
    /// padded with zeros and a longer one truncated (never a panic).
    pub fn compute(&self, clip: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; self.output_len()];
        self.compute_into(clip, &mut out);
        out
    }

    /// Log-mel of one clip into `out` (`n_mels * n_frames` values, mel-major), with no heap
    /// allocation beyond the thread-local scratch buffers (allocated on a thread's first call).
    /// Clip length handling as in [`LogMel::compute`].
    ///
    /// # Panics
    /// If `out.len() != n_mels * n_frames` (a caller bug, like `copy_from_slice`).
    pub fn compute_into(&self, clip: &[f32], out: &mut [f32]) {
        let cfg = &self.cfg;
        let n_frames = cfg.n_frames();
        assert_eq!(
            out.len(),
            cfg.n_mels * n_frames,
            "LogMel::compute_into: output buffer has {} values, expected n_mels * n_frames = {}",
            out.len(),
            cfg.n_mels * n_frames
        );
        let n_fft = cfg.n_fft;
        let n = cfg.clip_samples;
        SCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            let s = &mut *guard;
            // 1. The clip (padded / truncated to clip_samples), pre-emphasised, then 2. padded
            // once: `n_fft / 2` reflected samples on both sides when centred (numpy "reflect",
            // as torch.stft), zeros after the clip otherwise, so that every frame is a plain
            // slice of `signal`.
            let pad = if cfg.center { n_fft / 2 } else { 0 };
            let hop = cfg.hop_length;
            let total = (pad + n + pad).max(n_frames.saturating_sub(1) * hop + n_fft);
            s.signal.clear();
            s.signal.resize(pad, 0.0);
            s.signal.extend(
                clip.iter()
                    .take(n)
                    .map(|&v| v as Real)
                    .chain(std::iter::repeat_n(0.0, n.saturating_sub(clip.len()))),
            );
            if let Some(c) = cfg.preemphasis {
                let c = c as Real;
                for i in (pad + 1..pad + n).rev() {
                    s.signal[i] -= c * s.signal[i - 1];
                }
            }
            s.signal.resize(total, 0.0);
            if pad > 0 && n > 0 {
                // Padded index i < pad is signal index i - pad, padded index pad + n + j is
                // signal index n + j: both reflected (`reflect`; without its division when the
                // clip is longer than the padding, the usual case).
                let (head, rest) = s.signal.split_at_mut(pad);
                let (x, tail) = rest.split_at_mut(n);
                if n > pad {
                    for (i, h) in head.iter_mut().enumerate() {
                        *h = x[pad - i];
                    }
                    for (j, t) in tail[..pad].iter_mut().enumerate() {
                        *t = x[n - 2 - j];
                    }
                } else {
                    for (i, h) in head.iter_mut().enumerate() {
                        *h = x[reflect(i as isize - pad as isize, n)];
                    }
                    for (j, t) in tail[..pad].iter_mut().enumerate() {
                        *t = x[reflect((n + j) as isize, n)];
                    }
                }
            }
            s.frame.resize(n_fft, 0.0);
            s.spectrum
                .resize(self.fft.complex_len(), Complex::new(0.0, 0.0));
            s.fft_scratch
                .resize(self.fft.get_scratch_len(), Complex::new(0.0, 0.0));
            s.power.resize(self.fft.complex_len() * BLOCK, 0.0);
            let (w0, w1) = self.win_range;
            for t0 in (0..n_frames).step_by(BLOCK) {
                let nb = BLOCK.min(n_frames - t0);
                for j in 0..nb {
                    // 3. Windowed frame: sample i of frame t is padded-signal index t hop + i.
                    let b = (t0 + j) * hop;
                    s.frame[..w0].fill(0.0);
                    s.frame[w1..].fill(0.0);
                    for ((f, &w), &x) in s.frame[w0..w1]
                        .iter_mut()
                        .zip(&self.window[w0..w1])
                        .zip(&s.signal[b + w0..b + w1])
                    {
                        *f = w * x;
                    }
                    // 4. Power spectrum, stored bin-major.
                    self.fft
                        .process_with_scratch(&mut s.frame, &mut s.spectrum, &mut s.fft_scratch)
                        .expect("FFT buffer sizes come from the plan");
                    for (k, c) in s.spectrum.iter().enumerate() {
                        s.power[k * BLOCK + j] = (c.re * c.re + c.im * c.im) as f32;
                    }
                }
                // 5.-6. Sparse mel filterbank over the block's frames, log, normalisation.
                self.mel_block(&s.power, &mut out[t0..], nb);
            }
        });
    }

    /// Mel filterbank, log and normalisation of one block of `nb` frames: `power` is bin-major
    /// (`power[k * BLOCK + j]`), `out` the mel-major output from the block's first frame on
    /// (`out[m * n_frames + j]`).
    fn mel_block(&self, power: &[f32], out: &mut [f32], nb: usize) {
        let cfg = &self.cfg;
        let n_frames = cfg.n_frames();
        let log_offset = cfg.log_offset;
        for (m, filt) in self.filters.iter().enumerate() {
            let mut acc = [0f32; BLOCK];
            let rows = &power[filt.start * BLOCK..(filt.start + filt.weights.len()) * BLOCK];
            for (&w, row) in filt.weights.iter().zip(rows.chunks_exact(BLOCK)) {
                for (a, &p) in acc.iter_mut().zip(row) {
                    *a += w * p;
                }
            }
            let dst = &mut out[m * n_frames..m * n_frames + nb];
            for (d, &a) in dst.iter_mut().zip(&acc) {
                let mut v = (a + log_offset).ln();
                if let Some((shift, scale)) = cfg.normalize {
                    v = (v + shift) / scale;
                }
                *d = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive reference: dense filterbank, DFT by definition (O(N^2), f64) on a small config.
    fn naive(cfg: &FrontEndConfig, clip: &[f32]) -> Vec<f32> {
        let n = cfg.clip_samples;
        let mut x: Vec<f64> = (0..n)
            .map(|i| clip.get(i).copied().unwrap_or(0.0) as f64)
            .collect();
        if let Some(c) = cfg.preemphasis {
            let orig = x.clone();
            for i in 1..n {
                x[i] = orig[i] - c as f64 * orig[i - 1];
            }
        }
        let pad = cfg.n_fft / 2;
        let padded: Vec<f64> = if cfg.center {
            // numpy reflect padding, written out by definition.
            (0..n + 2 * pad)
                .map(|j| {
                    // Mirror at both ends until inside (numpy repeats the reflection when
                    // the padding is longer than the signal).
                    let mut i = j as isize - pad as isize;
                    while i < 0 || i >= n as isize {
                        i = if i < 0 { -i } else { 2 * (n as isize - 1) - i };
                    }
                    x[i as usize]
                })
                .collect()
        } else {
            x
        };
        let win = stft_window(cfg);
        let fb = mel_filterbank(cfg);
        let nf = cfg.n_frames();
        let mut out = vec![0.0f32; cfg.n_mels * nf];
        for t in 0..nf {
            let frame: Vec<f64> = (0..cfg.n_fft)
                .map(|j| win[j] * padded.get(t * cfg.hop_length + j).copied().unwrap_or(0.0))
                .collect();
            let power: Vec<f64> = (0..=cfg.n_fft / 2)
                .map(|k| {
                    let (mut re, mut im) = (0.0, 0.0);
                    for (j, &v) in frame.iter().enumerate() {
                        let a = -2.0 * std::f64::consts::PI * (k * j) as f64 / cfg.n_fft as f64;
                        re += v * a.cos();
                        im += v * a.sin();
                    }
                    re * re + im * im
                })
                .collect();
            for m in 0..cfg.n_mels {
                let e: f64 = fb[m].iter().zip(&power).map(|(w, p)| w * p).sum();
                let mut v = (e + cfg.log_offset as f64).ln();
                if let Some((s, c)) = cfg.normalize {
                    v = (v + s as f64) / c as f64;
                }
                out[m * nf + t] = v as f32;
            }
        }
        out
    }

    fn small(preset: data_specs::FrontEndPreset) -> FrontEndConfig {
        FrontEndConfig {
            clip_samples: 400,
            n_fft: 64,
            win_length: 48,
            hop_length: 25,
            n_mels: 12,
            sample_rate: 8000,
            f_max: if preset == data_specs::FrontEndPreset::Cpjku {
                3800.0
            } else {
                4000.0
            },
            ..FrontEndConfig::from_preset(preset)
        }
    }

    fn test_signal(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = i as f32;
                0.4 * (0.31 * t).sin()
                    + 0.2 * (1.7 * t + 0.3).cos()
                    + 0.05 * ((i * 7919 % 97) as f32 / 97.0 - 0.5)
            })
            .collect()
    }

    #[test]
    fn matches_naive_dft_both_presets() {
        for preset in [
            data_specs::FrontEndPreset::Dcase2024,
            data_specs::FrontEndPreset::Cpjku,
        ] {
            let cfg = small(preset);
            let lm = LogMel::new(&cfg);
            let x = test_signal(cfg.clip_samples);
            let got = lm.compute(&x);
            let want = naive(&cfg, &x);
            assert_eq!(got.len(), cfg.n_mels * cfg.n_frames());
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            println!("{preset}: max |fast - naive| = {err:e}");
            assert!(err < 1e-4, "{preset}: {err}");
        }
    }

    #[test]
    fn non_centred_and_odd_lengths() {
        let cfg = FrontEndConfig {
            center: false,
            ..small(data_specs::FrontEndPreset::Dcase2024)
        };
        let lm = LogMel::new(&cfg);
        let x = test_signal(cfg.clip_samples);
        let got = lm.compute(&x);
        let want = naive(&cfg, &x);
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-4, "{err}");
        // A clip shorter than the reflect padding (n_fft / 2 = 32 here): numpy reflects again.
        let tiny = FrontEndConfig {
            clip_samples: 20,
            ..small(data_specs::FrontEndPreset::Dcase2024)
        };
        let x20 = test_signal(20);
        let err = LogMel::new(&tiny)
            .compute(&x20)
            .iter()
            .zip(&naive(&tiny, &x20))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-4, "short clip: {err}");
        // Short clips are zero-padded, long ones truncated.
        let short = lm.compute(&x[..100]);
        let mut padded = x[..100].to_vec();
        padded.resize(cfg.clip_samples, 0.0);
        assert_eq!(short, lm.compute(&padded));
        let mut long = x.clone();
        long.extend_from_slice(&x);
        assert_eq!(lm.compute(&long), got);
        // Empty clip: the log floor everywhere.
        let empty = lm.compute(&[]);
        let floor = (cfg.log_offset as f64).ln() as f32;
        assert!(empty.iter().all(|&v| (v - floor).abs() < 1e-6));
    }

    /// Kaldi mel bank re-derived independently from the formula in Kaldi's `mel-computations.cc`
    /// (triangles in the mel domain), checked on the cpjku preset: shape, zero Nyquist column,
    /// peaks at the centre frequencies, and the sum of adjacent filters equals 1 between the
    /// first and last centre (the triangles partition unity in the mel domain).
    #[test]
    fn kaldi_bank_cpjku() {
        let cfg = FrontEndConfig::cpjku();
        let fb = mel_filterbank(&cfg);
        assert_eq!(fb.len(), 256);
        assert_eq!(fb[0].len(), 2049);
        assert!(fb.iter().all(|r| r[2048] == 0.0));
        let mel = |f: f64| 1127.0 * (1.0 + f / 700.0).ln();
        let delta = (mel(15_500.0) - mel(0.0)) / 257.0;
        for (m, row) in fb.iter().enumerate().step_by(17) {
            for (k, &w) in row.iter().enumerate().take(2048) {
                let mk = mel(k as f64 * 32_000.0 / 4096.0);
                let c = (m + 1) as f64 * delta;
                let want = (1.0 - (mk - c).abs() / delta).max(0.0);
                assert!((w - want).abs() < 1e-9, "m {m} k {k}: {w} vs {want}");
            }
        }
        // Partition of unity between the first and the last centre.
        for k in 0..2048 {
            let mk = mel(k as f64 * 32_000.0 / 4096.0);
            if mk > delta && mk < 256.0 * delta {
                let s: f64 = fb.iter().map(|r| r[k]).sum();
                assert!((s - 1.0).abs() < 1e-9, "bin {k}: sum {s}");
            }
        }
        // Nothing above f_max.
        assert!(fb.iter().all(|r| r[1985..].iter().all(|&w| w == 0.0)));
    }

    /// The HTK bank equals torchaudio's closed form; the sum of filters is 1 between the
    /// first and last centre frequency (triangles on the linear-frequency grid).
    #[test]
    fn htk_bank_dcase2024() {
        let cfg = FrontEndConfig::dcase2024();
        let fb = mel_filterbank(&cfg);
        let mel_max = hz_to_mel_htk(16_000.0);
        let f1 = mel_to_hz_htk(mel_max / 257.0);
        let f256 = mel_to_hz_htk(256.0 * mel_max / 257.0);
        for k in 0..2049 {
            let f = k as f64 * 16_000.0 / 2048.0;
            if f > f1 && f < f256 {
                let s: f64 = fb.iter().map(|r| r[k]).sum();
                assert!((s - 1.0).abs() < 1e-9, "bin {k}: sum {s}");
            }
        }
        assert!((hz_to_mel_htk(mel_to_hz_htk(1234.5)) - 1234.5).abs() < 1e-9);
        assert!((hz_to_mel_htk(1000.0) - 999.9855).abs() < 1e-3);
    }

    /// Pre-emphasis and normalisation: cpjku output equals the dcase2024 pipeline applied to
    /// the pre-emphasised clip with the same window / bank, then `(x + 4.5) / 5`.
    #[test]
    fn preemphasis_and_normalisation() {
        let cp = FrontEndConfig::cpjku();
        let plain = FrontEndConfig {
            preemphasis: None,
            normalize: None,
            ..cp.clone()
        };
        // White noise: no bin near the log floor, so f32 rounding of the pre-emphasised copy
        // below stays far under the tolerance.
        let mut state = 12_345u64;
        let x: Vec<f32> = (0..cp.clip_samples)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5
            })
            .collect();
        let mut y = x.clone();
        for i in 1..y.len() {
            y[i] = x[i] - 0.97 * x[i - 1];
        }
        let a = LogMel::new(&cp).compute(&x);
        let b = LogMel::new(&plain).compute(&y);
        let err = a
            .iter()
            .zip(&b)
            .map(|(a, b)| (a - (b + 4.5) / 5.0).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-5, "{err}");
    }

    #[test]
    fn logmel_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<LogMel>();
    }
}
