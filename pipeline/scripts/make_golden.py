#!/usr/bin/env python3
"""Golden log-mel reference values for pipeline/tests/frontend_golden.rs.

The reference is an implementation independent of ours: librosa's melspectrogram (float64),
configured as the DCASE2024 Task 1 baseline front end (torchaudio
``MelSpectrogram(sample_rate=32000, n_fft=4096, win_length=3072, hop_length=500, n_mels=256)``
with its defaults: periodic Hann, centre with reflect padding, power 2, HTK mel, no filter
normalisation, f_min 0, f_max 16000), followed by ``log(x + 1e-5)``.

For each test signal (1 s at 32 kHz) the script writes, in pipeline/tests/golden/:
  <name>.in.i16   the input as raw little-endian int16 PCM (the reference uses exactly
                  int16 / 32768, which f32 represents exactly);
  <name>.logmel.f32  log-mel, 256 x 65 raw little-endian float32, mel-major (row m, frame t);
and manifest.txt with the names, shapes and the librosa/numpy versions.

Usage: python3 -m venv /tmp/venv && /tmp/venv/bin/pip install numpy librosa
       /tmp/venv/bin/python pipeline/scripts/make_golden.py
"""

import os

import librosa
import numpy as np

SR = 32000
N = 32000
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden")


def signals():
    t = np.arange(N) / SR
    # Exponential sweep 50 Hz -> 15 kHz, starting at a nonzero phase (exercises reflect padding).
    f0, f1 = 50.0, 15000.0
    k = np.log(f1 / f0)
    phase = 2 * np.pi * f0 * (np.exp(k * t) - 1) / k + 0.7
    chirp = 0.5 * np.sin(phase)
    # Two tones, one low and one high, far below full scale: many mel bins sit in the
    # window's side lobes, close to the 1e-5 floor.
    two_tone = 0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * np.sin(2 * np.pi * 5000.0 * t + 1.0)
    # White Gaussian noise from a fixed seed.
    rng = np.random.default_rng(20240601)
    noise = 0.1 * rng.standard_normal(N)
    # Near-silent clip: +-3 LSB of 16-bit noise, power per mel bin around the 1e-5 offset.
    quiet = 1e-4 * rng.standard_normal(N)
    return {"chirp": chirp, "two_tone": two_tone, "noise": noise, "quiet": quiet}


def main():
    os.makedirs(OUT, exist_ok=True)
    lines = [
        f"librosa {librosa.__version__}, numpy {np.__version__}",
        "melspectrogram(sr=32000, n_fft=4096, win_length=3072, hop_length=500, n_mels=256, "
        "htk=True, norm=None, center=True, pad_mode='reflect', power=2.0, fmin=0, fmax=16000, "
        "window='hann' (periodic), dtype=float64); log(x + 1e-5)",
    ]
    for name, x in signals().items():
        q = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")
        y = q.astype(np.float64) / 32768.0
        mel = librosa.feature.melspectrogram(
            y=y,
            sr=SR,
            n_fft=4096,
            hop_length=500,
            win_length=3072,
            window="hann",
            center=True,
            pad_mode="reflect",
            power=2.0,
            n_mels=256,
            fmin=0.0,
            fmax=16000.0,
            htk=True,
            norm=None,
            dtype=np.float64,
        )
        logmel = np.log(mel + 1e-5)
        assert logmel.shape == (256, 65), logmel.shape
        q.tofile(os.path.join(OUT, f"{name}.in.i16"))
        logmel.astype("<f4").tofile(os.path.join(OUT, f"{name}.logmel.f32"))
        lines.append(
            f"{name}: input {N} int16, logmel 256x65 f32, range [{logmel.min():.3f}, {logmel.max():.3f}]"
        )
    with open(os.path.join(OUT, "manifest.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
