//! Device impulse response (DIR) augmentation: loading the MicIRP set, causal FFT convolution
//! and the seeded per-clip choice of responses.
//!
//! DIR augmentation (Morocutti et al., DCASE2023; IRMamba report): a clip recorded by device `a`
//! is convolved with the impulse response of another microphone, `y = (x * h)[0 .. len(x)]`
//! (full linear convolution, first `len(x)` samples, no gain normalisation), to simulate a
//! recording by that device.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use realfft::RealFftPlanner;
use realfft::num_complex::Complex;

use crate::resample::{ResampleError, resample};

/// One device impulse response at the pipeline's sample rate.
#[derive(Debug, Clone, PartialEq)]
pub struct ImpulseResponse {
    /// File stem of the source WAV (e.g. `Altec_639`).
    pub name: String,
    /// Mono samples at the pipeline rate (downmixed, resampled, full-scale float).
    pub samples: Vec<f32>,
}

/// Errors of [`load_dir_set`].
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// The folder could not be listed.
    #[error("cannot read the DIR folder {}: {source}", path.display())]
    ReadDir {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A WAV file could not be opened or decoded (not a WAV, truncated, unsupported format).
    #[error("cannot decode impulse response {}: {source}", path.display())]
    Wav {
        /// The file.
        path: PathBuf,
        /// hound's error.
        source: hound::Error,
    },
    /// A WAV file holds no samples.
    #[error("impulse response {} holds no samples", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A WAV file has a sample rate of zero or could not be resampled.
    #[error("cannot resample impulse response {}: {source}", path.display())]
    Resample {
        /// The file.
        path: PathBuf,
        /// The resampler's error.
        source: ResampleError,
    },
    /// The folder holds no `*.wav` file.
    #[error("no *.wav impulse responses in {}", path.display())]
    NoImpulseResponses {
        /// The folder.
        path: PathBuf,
    },
}

/// The repository's MicIRP device impulse responses, `pipeline/dirs/micirp` (66 WAV files).
pub fn default_dir_folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dirs")
        .join("micirp")
}

/// Reads one WAV file as mono f32 (mean of the channels), any integer bit depth (scaled by
/// `2^(bits - 1)`) or 32-bit float. Returns the samples and the file's sample rate.
pub fn read_wav_mono(path: &Path) -> Result<(Vec<f32>, u32), DirError> {
    let wav_err = |source| DirError::Wav {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = hound::WavReader::open(path).map_err(wav_err)?;
    let spec = reader.spec();
    let channels = spec.channels.max(1) as usize;
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(wav_err)?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f64;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| (v as f64 * scale) as f32))
                .collect::<Result<_, _>>()
                .map_err(wav_err)?
        }
    };
    let mono: Vec<f32> = interleaved
        .chunks(channels)
        .map(|c| c.iter().sum::<f32>() / c.len() as f32)
        .collect();
    Ok((mono, spec.sample_rate))
}

/// Loads every `*.wav` (case-insensitive extension) of `dir`, sorted by file name, downmixed
/// to mono and resampled to `sample_rate` with [`resample`]. The name of each response is its
/// file stem. Fails on the first unreadable file, naming it.
pub fn load_dir_set(dir: &Path, sample_rate: u32) -> Result<Vec<ImpulseResponse>, DirError> {
    let read_dir_err = |source| DirError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir_err)? {
        let path = entry.map_err(read_dir_err)?.path();
        let is_wav = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
        if is_wav && path.is_file() {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(DirError::NoImpulseResponses {
            path: dir.to_path_buf(),
        });
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    paths
        .into_iter()
        .map(|path| {
            let (samples, sr) = read_wav_mono(&path)?;
            if samples.is_empty() {
                return Err(DirError::Empty { path });
            }
            let samples =
                resample(&samples, sr, sample_rate).map_err(|source| DirError::Resample {
                    path: path.clone(),
                    source,
                })?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(ImpulseResponse { name, samples })
        })
        .collect()
}

/// Smallest `2^a 3^b 5^c >= n`: FFT sizes that rustfft handles with fast radix kernels.
pub(crate) fn fast_fft_len(n: usize) -> usize {
    let n = n.max(1);
    let mut best = n.next_power_of_two();
    let mut p5 = 1usize;
    while p5 < best {
        let mut p35 = p5;
        while p35 < best {
            let mut v = p35;
            while v < n {
                v *= 2;
            }
            best = best.min(v);
            p35 *= 3;
        }
        p5 *= 5;
    }
    best
}

/// Per-thread FFT planner (plans are cached by size) and buffers for the FFT convolutions.
pub(crate) struct FftWork {
    pub(crate) planner: RealFftPlanner<f32>,
    pub(crate) a: Vec<f32>,
    pub(crate) fa: Vec<Complex<f32>>,
    pub(crate) fb: Vec<Complex<f32>>,
    pub(crate) scratch: Vec<Complex<f32>>,
}

thread_local! {
    pub(crate) static FFT_WORK: RefCell<FftWork> = RefCell::new(FftWork {
        planner: RealFftPlanner::new(),
        a: Vec::new(),
        fa: Vec::new(),
        fb: Vec::new(),
        scratch: Vec::new(),
    });
}

impl FftWork {
    /// Forward FFTs of `x` and `y`, each zero-padded to `len`, into `fa` and `fb`.
    pub(crate) fn forward_pair(&mut self, x: &[f32], y: &[f32], len: usize) {
        self.forward_a(y, len);
        std::mem::swap(&mut self.fa, &mut self.fb);
        self.forward_a(x, len);
    }

    /// Forward FFT of `x`, zero-padded to `len`, into `fa` (through the buffer `a`).
    pub(crate) fn forward_a(&mut self, x: &[f32], len: usize) {
        let fwd = self.planner.plan_fft_forward(len);
        self.fa.resize(len / 2 + 1, Complex::new(0.0, 0.0));
        self.scratch
            .resize(fwd.get_scratch_len(), Complex::new(0.0, 0.0));
        self.a.clear();
        self.a.extend_from_slice(&x[..x.len().min(len)]);
        self.a.resize(len, 0.0);
        fwd.process_with_scratch(&mut self.a, &mut self.fa, &mut self.scratch)
            .expect("buffer sizes come from the plan");
    }

    /// Inverse FFT of `fa` (length `len`) into `a`, scaled by `1 / len`.
    pub(crate) fn inverse_a(&mut self, len: usize) {
        self.inverse_a_unscaled(len);
        let s = 1.0 / len as f32;
        for v in &mut self.a {
            *v *= s;
        }
    }

    /// Inverse FFT of `fa` (length `len`) into `a`, without the `1 / len` normalisation.
    pub(crate) fn inverse_a_unscaled(&mut self, len: usize) {
        let inv = self.planner.plan_fft_inverse(len);
        self.scratch
            .resize(inv.get_scratch_len(), Complex::new(0.0, 0.0));
        self.a.resize(len, 0.0);
        // A real signal's spectrum has real DC and Nyquist bins; drop round-off there.
        self.fa[0].im = 0.0;
        if len.is_multiple_of(2) {
            let last = self.fa.len() - 1;
            self.fa[last].im = 0.0;
        }
        inv.process_with_scratch(&mut self.fa, &mut self.a, &mut self.scratch)
            .expect("buffer sizes come from the plan");
    }
}

/// Causal convolution of a clip with an impulse response: the first `clip.len()` samples of
/// the full linear convolution, `y[n] = sum_{j <= n} h[j] x[n - j]`, without gain
/// normalisation. FFT-based (realfft, size `2^a 3^b 5^c >= len(x) + min(len(h), len(x)) - 1`,
/// so no circular wrap-around reaches the kept samples).
pub fn convolve_causal(clip: &[f32], ir: &[f32]) -> Vec<f32> {
    let n = clip.len();
    if n == 0 || ir.is_empty() {
        return vec![0.0; n];
    }
    // IR taps beyond n cannot reach the first n outputs.
    let ir = &ir[..ir.len().min(n)];
    let len = fast_fft_len(n + ir.len() - 1);
    FFT_WORK.with(|cell| {
        let mut w = cell.borrow_mut();
        w.forward_pair(clip, ir, len);
        let FftWork { fa, fb, .. } = &mut *w;
        for (a, b) in fa.iter_mut().zip(fb.iter()) {
            *a *= *b;
        }
        w.inverse_a(len);
        w.a[..n].to_vec()
    })
}

/// A DIR set prepared for convolving many clips of one length: the spectra of every impulse
/// response at one FFT length, computed once, so that the `k` DIR copies of a clip cost one
/// forward FFT of the clip and `k` products and inverse FFTs (instead of three FFTs per copy
/// with [`convolve_causal`]). The result is the same causal convolution,
/// `y[n] = sum_{j <= n} h[j] x[n - j]` for `n < clip_len`, up to FFT round-off.
#[derive(Debug, Clone)]
pub struct DirBank {
    clip_len: usize,
    /// FFT length: `2^a 3^b 5^c >= clip_len + min(longest IR, clip_len) - 1`, so no circular
    /// wrap-around reaches the kept samples of any response.
    fft_len: usize,
    /// Spectrum of each response (truncated to `clip_len` taps, zero-padded to `fft_len`),
    /// pre-scaled by `1 / fft_len` (the inverse FFT's normalisation).
    spectra: Vec<Vec<Complex<f32>>>,
}

impl DirBank {
    /// Prepares `irs` for clips of `clip_len` samples.
    pub fn new(irs: &[ImpulseResponse], clip_len: usize) -> Self {
        let longest = irs
            .iter()
            .map(|ir| ir.samples.len().min(clip_len))
            .max()
            .unwrap_or(1)
            .max(1);
        let fft_len = fast_fft_len(clip_len.max(1) + longest - 1);
        let scale = 1.0 / fft_len as f32;
        let spectra = FFT_WORK.with(|cell| {
            let mut w = cell.borrow_mut();
            irs.iter()
                .map(|ir| {
                    let taps = &ir.samples[..ir.samples.len().min(clip_len)];
                    w.forward_a(taps, fft_len);
                    w.fa.iter().map(|c| c * scale).collect()
                })
                .collect()
        });
        DirBank {
            clip_len,
            fft_len,
            spectra,
        }
    }

    /// Number of responses.
    pub fn len(&self) -> usize {
        self.spectra.len()
    }

    /// True when the bank holds no response.
    pub fn is_empty(&self) -> bool {
        self.spectra.is_empty()
    }

    /// The causal convolutions of `clip` (padded or truncated to the bank's clip length) with
    /// the responses `which` (indices into the set), each `clip_len` samples, in that order.
    pub fn convolve(&self, clip: &[f32], which: &[usize]) -> Vec<Vec<f32>> {
        let n = self.clip_len;
        let len = self.fft_len;
        FFT_WORK.with(|cell| {
            let mut w = cell.borrow_mut();
            let clip = &clip[..clip.len().min(n)];
            w.forward_a(clip, len);
            // Keep the clip's spectrum in fb; fa is overwritten by each product.
            let FftWork { fa, fb, .. } = &mut *w;
            std::mem::swap(fa, fb);
            which
                .iter()
                .map(|&i| {
                    let FftWork { fa, fb, .. } = &mut *w;
                    fa.clear();
                    fa.extend(fb.iter().zip(&self.spectra[i]).map(|(x, h)| x * h));
                    w.inverse_a_unscaled(len);
                    w.a[..n].to_vec()
                })
                .collect()
        })
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014, [`data_specs::hash::splitmix64`]) with the few
/// distributions the DIR and replay draws need: a small, portable, seedable generator whose
/// output is fixed by its definition (unlike `rand`'s `StdRng`, which may change between versions).
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// Generator seeded with `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        data_specs::hash::splitmix64(&mut self.0)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub(crate) fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform integer in `0..n` (`n > 0`), unbiased (Lemire's multiply-and-reject).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Standard normal sample (Box-Muller).
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// 64-bit seed derived from a clip identifier and a global seed: the first 8 bytes of
/// `SHA-256(seed as 8 little-endian bytes || domain || clip_id)`. Independent of processing
/// order and stable across platforms and Rust versions.
pub(crate) fn clip_seed(clip_id: &str, seed: u64, domain: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(domain.as_bytes());
    h.update([0u8]);
    h.update(clip_id.as_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("SHA-256 has 32 bytes"))
}

/// The `k` impulse responses (indices into a set of `n_irs`) applied to clip `clip_id`:
/// uniform picks without replacement when `k <= n_irs` (a partial Fisher-Yates shuffle), with
/// replacement otherwise; empty when `n_irs == 0`. Deterministic per `(clip_id, seed)`,
/// whatever order or thread the clips are processed in.
pub fn choose_irs(clip_id: &str, seed: u64, n_irs: usize, k: usize) -> Vec<usize> {
    if n_irs == 0 {
        return Vec::new();
    }
    let mut rng = SplitMix64::new(clip_seed(clip_id, seed, "dir"));
    if k <= n_irs {
        let mut idx: Vec<usize> = (0..n_irs).collect();
        for i in 0..k {
            let j = i + rng.below((n_irs - i) as u64) as usize;
            idx.swap(i, j);
        }
        idx.truncate(k);
        idx
    } else {
        (0..k).map(|_| rng.below(n_irs as u64) as usize).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_causal(x: &[f32], h: &[f32]) -> Vec<f32> {
        (0..x.len())
            .map(|n| {
                (0..=n.min(h.len().saturating_sub(1)))
                    .map(|j| h[j] as f64 * x[n - j] as f64)
                    .sum::<f64>() as f32
            })
            .collect()
    }

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut r = SplitMix64::new(seed);
        (0..n).map(|_| r.uniform(-1.0, 1.0) as f32).collect()
    }

    #[test]
    fn fast_len() {
        assert_eq!(fast_fft_len(1), 1);
        assert_eq!(fast_fft_len(47_999), 48_000);
        assert_eq!(fast_fft_len(1025), 1080);
        for n in 1..2000 {
            let l = fast_fft_len(n);
            assert!(l >= n);
            let mut v = l;
            for p in [2, 3, 5] {
                while v.is_multiple_of(p) {
                    v /= p;
                }
            }
            assert_eq!(v, 1, "{l}");
        }
    }

    #[test]
    fn convolution_matches_naive() {
        for (n, m) in [
            (32_000, 16_000),
            (32_000, 3),
            (7, 3),
            (5, 11),
            (1, 1),
            (1001, 999),
            (33, 1),
        ] {
            let x = noise(n, 1 + n as u64);
            let h: Vec<f32> = noise(m, 7 + m as u64)
                .iter()
                .enumerate()
                .map(|(i, v)| v * (-(i as f32) / 2000.0).exp())
                .collect();
            let got = convolve_causal(&x, &h);
            assert_eq!(got.len(), n);
            let want = naive_causal(&x, &h);
            let scale = want.iter().fold(1.0f32, |a, v| a.max(v.abs()));
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            println!("n {n} m {m}: max err {err:e} (peak {scale})");
            assert!(err <= 2e-5 * scale, "n {n} m {m}: {err}");
        }
        assert!(convolve_causal(&[], &[1.0]).is_empty());
        assert_eq!(convolve_causal(&[1.0, 2.0], &[]), vec![0.0, 0.0]);
        // A unit impulse response is the identity; a delayed one shifts.
        let x = noise(100, 3);
        let id = convolve_causal(&x, &[1.0]);
        assert!(id.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-6));
        let sh = convolve_causal(&x, &[0.0, 0.0, 1.0]);
        assert!(sh[2..].iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-6));
        assert!(sh[..2].iter().all(|v| v.abs() < 1e-6));
    }

    /// The bank's shared-spectrum convolutions equal the direct causal convolution, for IRs
    /// shorter and longer than the clip, in the requested order.
    #[test]
    fn bank_matches_naive() {
        let irs: Vec<ImpulseResponse> = [(16_000usize, 1u64), (3, 2), (700, 3), (40_000, 4)]
            .iter()
            .map(|&(m, seed)| ImpulseResponse {
                name: format!("ir{seed}"),
                samples: noise(m, seed)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * (-(i as f32) / 3000.0).exp())
                    .collect(),
            })
            .collect();
        for n in [32_000usize, 1_001] {
            let bank = DirBank::new(&irs, n);
            assert_eq!(bank.len(), 4);
            let x = noise(n, 99 + n as u64);
            let which = [2, 0, 3, 1, 2];
            let got = bank.convolve(&x, &which);
            assert_eq!(got.len(), which.len());
            for (y, &i) in got.iter().zip(&which) {
                assert_eq!(y.len(), n);
                let want = naive_causal(&x, &irs[i].samples);
                let scale = want.iter().fold(1.0f32, |a, v| a.max(v.abs()));
                let err = y
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(err <= 2e-5 * scale, "n {n} ir {i}: {err}");
            }
            // A short clip is zero-padded to the bank's length.
            let short = bank.convolve(&x[..10], &[1]);
            let mut padded = x[..10].to_vec();
            padded.resize(n, 0.0);
            let want = naive_causal(&padded, &irs[1].samples);
            assert!(
                short[0]
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| (a - b).abs() < 1e-5)
            );
        }
    }

    #[test]
    fn choose_irs_deterministic_distinct() {
        let a = choose_irs("airport-lisbon-1000-40000-a_3", 42, 66, 5);
        assert_eq!(a, choose_irs("airport-lisbon-1000-40000-a_3", 42, 66, 5));
        assert_ne!(a, choose_irs("airport-lisbon-1000-40000-a_3", 43, 66, 5));
        assert_ne!(a, choose_irs("airport-lisbon-1000-40000-a_4", 42, 66, 5));
        let mut s = a.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 5);
        assert!(a.iter().all(|&i| i < 66));
        let all = choose_irs("x", 1, 66, 66);
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, (0..66).collect::<Vec<_>>());
        assert_eq!(choose_irs("x", 1, 3, 10).len(), 10);
        assert!(choose_irs("x", 1, 3, 10).iter().all(|&i| i < 3));
        assert!(choose_irs("x", 1, 0, 4).is_empty());
        assert!(choose_irs("x", 1, 10, 0).is_empty());
        // The first pick is a prefix-stable function of the clip: k = 1 equals the first of k = 5.
        assert_eq!(choose_irs("c", 9, 66, 1)[0], choose_irs("c", 9, 66, 5)[0]);
    }

    /// Uniformity: 66,000 clips, one pick each; Pearson chi-square over 66 cells (65 degrees of
    /// freedom: mean 65, sd 11.4; the 99.9 % quantile is 110.1).
    #[test]
    fn choose_irs_uniform() {
        let n = 66usize;
        let trials = 66_000usize;
        let mut counts = vec![0usize; n];
        let mut pos2 = vec![0usize; n];
        for i in 0..trials {
            let pick = choose_irs(&format!("clip-{i}"), 7, n, 2);
            counts[pick[0]] += 1;
            pos2[pick[1]] += 1;
        }
        let expected = trials as f64 / n as f64;
        for c in [&counts, &pos2] {
            let chi2: f64 = c
                .iter()
                .map(|&o| (o as f64 - expected).powi(2) / expected)
                .sum();
            println!("chi-square over {n} cells: {chi2:.1}");
            assert!(chi2 < 110.1, "chi2 {chi2}");
        }
    }

    #[test]
    fn splitmix_reference_values() {
        // Reference outputs of SplitMix64 seeded with 1234567 (from the published C code).
        let mut r = SplitMix64::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn load_micirp_set() {
        let irs = load_dir_set(&default_dir_folder(), 32_000).unwrap();
        assert_eq!(irs.len(), 66);
        let mut names: Vec<&str> = irs.iter().map(|r| r.name.as_str()).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]));
        names.dedup();
        assert_eq!(names.len(), 66);
        assert_eq!(irs[0].name, "Altec_639");
        for ir in &irs {
            assert!(!ir.samples.is_empty());
            assert!(ir.samples.iter().all(|v| v.is_finite()));
            let peak = ir.samples.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            assert!(peak > 1e-3 && peak < 4.0, "{}: peak {peak}", ir.name);
        }
        // Check the resampling against the raw files: length round(len * 32000 / rate).
        let mut n44 = 0;
        let mut n48 = 0;
        for ir in &irs {
            let path = default_dir_folder().join(format!("{}.wav", ir.name));
            let reader = hound::WavReader::open(&path).unwrap();
            let spec = reader.spec();
            assert_eq!(spec.bits_per_sample, 24);
            let len = reader.duration() as f64;
            match spec.sample_rate {
                44_100 => n44 += 1,
                48_000 => n48 += 1,
                r => panic!("unexpected rate {r}"),
            }
            let want = (len * 32_000.0 / spec.sample_rate as f64).round() as usize;
            assert_eq!(ir.samples.len(), want, "{}", ir.name);
        }
        assert_eq!((n44, n48), (61, 5));
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_dir_set(dir.path(), 32_000),
            Err(DirError::NoImpulseResponses { .. })
        ));
        // A valid 16-bit stereo file and a non-WAV file with a .wav name.
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let good = dir.path().join("a_good.wav");
        let mut w = hound::WavWriter::create(&good, spec).unwrap();
        for i in 0..200 {
            w.write_sample(if i == 0 { 16_384i16 } else { 0 }).unwrap();
            w.write_sample(if i == 0 { -8_192i16 } else { 0 }).unwrap();
        }
        w.finalize().unwrap();
        let set = load_dir_set(dir.path(), 16_000).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].samples.len(), 200);
        assert!((set[0].samples[0] - 0.125).abs() < 1e-6); // (0.5 - 0.25) / 2
        std::fs::write(dir.path().join("b_text.wav"), b"this is not a RIFF file").unwrap();
        let err = load_dir_set(dir.path(), 16_000).unwrap_err();
        assert!(matches!(err, DirError::Wav { .. }));
        assert!(err.to_string().contains("b_text.wav"), "{err}");
        std::fs::remove_file(dir.path().join("b_text.wav")).unwrap();
        // A truncated copy of a real 24-bit IR.
        let bytes = std::fs::read(default_dir_folder().join("Altec_639.wav")).unwrap();
        std::fs::write(
            dir.path().join("c_trunc.wav"),
            &bytes[..bytes.len() / 2 + 1],
        )
        .unwrap();
        let err = load_dir_set(dir.path(), 32_000).unwrap_err();
        assert!(err.to_string().contains("c_trunc.wav"), "{err}");
        // Not a folder.
        let err = load_dir_set(&dir.path().join("missing"), 32_000).unwrap_err();
        assert!(matches!(err, DirError::ReadDir { .. }));
    }
}
