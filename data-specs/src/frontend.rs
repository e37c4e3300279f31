//! Front-end (log-mel) configuration and its presets.
//!
//! The configuration is stored as JSON in every shard's metadata (key [`crate::META_FRONTEND`]),
//! and the trainer and the int8 engine refuse features made with another configuration.

use serde::{Deserialize, Serialize};

/// Named front-end presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FrontEndPreset {
    /// The official DCASE2024 Task 1 baseline front end (torchaudio `MelSpectrogram`). Default.
    #[default]
    Dcase2024,
    /// CP-JKU's `AugmentMelSTFT` (pre-emphasis, Kaldi mel banks, `(x + 4.5) / 5`).
    Cpjku,
}

impl std::str::FromStr for FrontEndPreset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dcase2024" => Ok(Self::Dcase2024),
            "cpjku" => Ok(Self::Cpjku),
            other => Err(format!(
                "unknown front-end preset '{other}' (expected dcase2024 or cpjku)"
            )),
        }
    }
}

impl std::fmt::Display for FrontEndPreset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Dcase2024 => "dcase2024",
            Self::Cpjku => "cpjku",
        })
    }
}

/// Analysis window shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// Periodic Hann, `0.5 - 0.5 cos(2 pi n / N)` (torch's `hann_window` default).
    HannPeriodic,
    /// Symmetric Hann, `0.5 - 0.5 cos(2 pi n / (N - 1))`.
    HannSymmetric,
}

/// Mel filterbank construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MelScale {
    /// HTK mel scale `2595 log10(1 + f / 700)`, triangular filters on the linear-frequency
    /// grid, no area normalisation (torchaudio `melscale_fbanks(norm=None, mel_scale="htk")`).
    Htk,
    /// Kaldi mel banks (`torchaudio.compliance.kaldi.get_mel_banks`, mel `1127 ln(1 + f/700)`,
    /// triangles computed in the mel domain, VTLN warp factor 1), padded with one zero column
    /// for the Nyquist bin, as CP-JKU do.
    Kaldi,
}

/// Everything needed to turn a 1 s waveform into the log-mel matrix stored in the shards.
///
/// The log-mel of a clip is `n_mels x n_frames` values, row-major (mel bin major, frame minor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontEndConfig {
    /// Preset this configuration was made from.
    pub preset: FrontEndPreset,
    /// Sample rate of the clips in Hz.
    pub sample_rate: u32,
    /// Clip length in samples at `sample_rate` (1 s).
    pub clip_samples: usize,
    /// FFT size.
    pub n_fft: usize,
    /// Window length (the window is zero-padded to `n_fft`, centred).
    pub win_length: usize,
    /// Hop length in samples.
    pub hop_length: usize,
    /// Number of mel bins.
    pub n_mels: usize,
    /// Lowest filter edge in Hz.
    pub f_min: f32,
    /// Highest filter edge in Hz.
    pub f_max: f32,
    /// Window shape.
    pub window: WindowKind,
    /// Mel filterbank construction.
    pub mel_scale: MelScale,
    /// Pre-emphasis coefficient `c`: `y[n] = x[n] - c x[n-1]` before the STFT (CP-JKU: 0.97).
    pub preemphasis: Option<f32>,
    /// Frames are centred: the signal is reflect-padded by `n_fft / 2` on both sides.
    pub center: bool,
    /// Offset inside the logarithm: `log(mel + log_offset)` (natural log).
    pub log_offset: f32,
    /// Optional affine normalisation after the log: `(x + shift) / scale` (CP-JKU: 4.5, 5).
    pub normalize: Option<(f32, f32)>,
}

impl FrontEndConfig {
    /// The official DCASE2024 Task 1 baseline front end: 32 kHz, `MelSpectrogram(n_fft=4096,
    /// win_length=3072, hop_length=500, n_mels=256)` (periodic Hann, power 2, centre with
    /// reflect padding, HTK mel, no norm, f_max 16 kHz), then `log(x + 1e-5)`: 256 x 65.
    pub fn dcase2024() -> Self {
        Self {
            preset: FrontEndPreset::Dcase2024,
            sample_rate: 32_000,
            clip_samples: 32_000,
            n_fft: 4096,
            win_length: 3072,
            hop_length: 500,
            n_mels: 256,
            f_min: 0.0,
            f_max: 16_000.0,
            window: WindowKind::HannPeriodic,
            mel_scale: MelScale::Htk,
            preemphasis: None,
            center: true,
            log_offset: 1e-5,
            normalize: None,
        }
    }

    /// CP-JKU's `AugmentMelSTFT` at inference (no f_min/f_max jitter): pre-emphasis 0.97,
    /// symmetric Hann 3072, n_fft 4096, hop 500, Kaldi mel banks (256 bins, 0-15.5 kHz),
    /// `(log(x + 1e-5) + 4.5) / 5`.
    pub fn cpjku() -> Self {
        Self {
            preset: FrontEndPreset::Cpjku,
            f_max: 15_500.0,
            window: WindowKind::HannSymmetric,
            mel_scale: MelScale::Kaldi,
            preemphasis: Some(0.97),
            normalize: Some((4.5, 5.0)),
            ..Self::dcase2024()
        }
    }

    /// The configuration of a preset.
    pub fn from_preset(preset: FrontEndPreset) -> Self {
        match preset {
            FrontEndPreset::Dcase2024 => Self::dcase2024(),
            FrontEndPreset::Cpjku => Self::cpjku(),
        }
    }

    /// Number of STFT frames of one clip: `1 + clip_samples / hop_length` when centred
    /// (65 for the presets), `1 + (clip_samples - n_fft) / hop_length` otherwise.
    pub fn n_frames(&self) -> usize {
        if self.center {
            1 + self.clip_samples / self.hop_length
        } else {
            1 + (self.clip_samples.saturating_sub(self.n_fft)) / self.hop_length
        }
    }

    /// Number of log-mel values of one clip: `n_mels * n_frames`.
    pub fn logmel_len(&self) -> usize {
        self.n_mels * self.n_frames()
    }

    /// Number of STFT frequency bins: `n_fft / 2 + 1`.
    pub fn n_freqs(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// The log-mel value of a bin with zero mel power (digital silence):
    /// `ln(0 + log_offset)`, then the preset's normalisation `(x + shift) / scale` if any.
    /// dcase2024: `ln(1e-5) = -11.51`; cpjku: `(ln(1e-5) + 4.5) / 5 = -1.40`. The DCASE2024
    /// baseline's frequency mask zeroes mel *power* before the log, so its masked bins read
    /// this value.
    pub fn log_silence(&self) -> f32 {
        let x = f64::from(self.log_offset).ln();
        let x = match self.normalize {
            Some((shift, scale)) => (x + f64::from(shift)) / f64::from(scale),
            None => x,
        };
        x as f32
    }
}

impl Default for FrontEndConfig {
    fn default() -> Self {
        Self::dcase2024()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_give_256_by_65() {
        for c in [FrontEndConfig::dcase2024(), FrontEndConfig::cpjku()] {
            assert_eq!(c.n_mels, 256);
            assert_eq!(c.n_frames(), 65);
            assert_eq!(c.logmel_len(), 256 * 65);
            assert_eq!(c.n_freqs(), 2049);
        }
    }

    #[test]
    fn log_silence_follows_each_preset() {
        // ln(1e-5) = -11.512925...; CP-JKU: (ln(1e-5) + 4.5) / 5 = -1.402585...
        assert!((FrontEndConfig::dcase2024().log_silence() - (-11.512_925)).abs() < 1e-5);
        assert!((FrontEndConfig::cpjku().log_silence() - (-1.402_585)).abs() < 1e-5);
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = FrontEndConfig::cpjku();
        let json = serde_json::to_string(&c).unwrap();
        let back: FrontEndConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(c, back);
        assert!(json.contains("\"preset\":\"cpjku\""));
    }
}
