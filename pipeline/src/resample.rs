//! Sample-rate conversion of mono clips (rubato 5.1, asynchronous windowed-sinc resampler).
//!
//! [`resample`] converts a whole clip at once with a high-quality band-limited sinc interpolator
//! (256 taps, Blackman-Harris² window, cubic interpolation between 256 oversampled sinc phases).
//! The filter delay is compensated exactly, including its fractional part: the input is
//! zero-padded in front so that the total delay is a whole number of output samples, which
//! are then dropped. A tone therefore keeps its phase (`sin(2 pi f n / from)` becomes
//! `sin(2 pi f m / to)`), and the output has `round(len * to / from)` samples.
//!
//! Resamplers are built once per thread and rate pair and kept in thread-local storage, so
//! calling [`resample`] from many rayon workers costs no construction per clip.

use std::cell::RefCell;
use std::collections::HashMap;

use rubato::audioadapter_buffers::direct::SequentialSlice;
use rubato::{
    Async, FixedAsync, Resampler, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

/// Length of the windowed-sinc interpolation filter, in input samples (a multiple of 8).
const SINC_LEN: usize = 256;
/// Number of sinc phases tabulated between two input samples.
const OVERSAMPLING: usize = 256;
/// Input chunk length handed to rubato per call.
const CHUNK: usize = 1024;

/// Errors of [`resample`].
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    /// A sample rate of zero was given.
    #[error("invalid sample rate: {from_hz} Hz -> {to_hz} Hz (rates must be > 0)")]
    InvalidRate {
        /// Input rate in Hz.
        from_hz: u32,
        /// Output rate in Hz.
        to_hz: u32,
    },
    /// The rate ratio is outside what the resampler supports (more than a factor 100 here).
    #[error("unsupported resampling ratio {from_hz} Hz -> {to_hz} Hz (at most a factor 100)")]
    UnsupportedRatio {
        /// Input rate in Hz.
        from_hz: u32,
        /// Output rate in Hz.
        to_hz: u32,
    },
    /// rubato refused to build the resampler.
    #[error("could not build the {from_hz} Hz -> {to_hz} Hz resampler: {message}")]
    Construction {
        /// Input rate in Hz.
        from_hz: u32,
        /// Output rate in Hz.
        to_hz: u32,
        /// rubato's message.
        message: String,
    },
    /// rubato failed while processing.
    #[error("resampling {from_hz} Hz -> {to_hz} Hz failed: {message}")]
    Processing {
        /// Input rate in Hz.
        from_hz: u32,
        /// Output rate in Hz.
        to_hz: u32,
        /// rubato's message.
        message: String,
    },
}

thread_local! {
    /// One resampler per (from, to) pair and thread.
    static RESAMPLERS: RefCell<HashMap<(u32, u32), Async<f32>>> = RefCell::new(HashMap::new());
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn build(from_hz: u32, to_hz: u32) -> Result<Async<f32>, ResampleError> {
    let params = SincInterpolationParameters {
        sinc_len: SINC_LEN,
        f_cutoff: None,
        interpolation: SincInterpolationType::Cubic,
        oversampling_factor: OVERSAMPLING,
        window: WindowFunction::BlackmanHarris2,
    };
    Async::<f32>::new_sinc(
        to_hz as f64 / from_hz as f64,
        1.0,
        &params,
        CHUNK,
        1,
        FixedAsync::Input,
    )
    .map_err(|e| ResampleError::Construction {
        from_hz,
        to_hz,
        message: e.to_string(),
    })
}

/// Resamples a mono clip from `from_hz` to `to_hz`.
///
/// The output has `round(samples.len() * to_hz / from_hz)` samples, is aligned with the input
/// (no filter delay: output sample `m` is the band-limited input at time `m / to_hz`), and
/// equals the input when the rates are equal. Components above `min(from, to) / 2` are
/// removed by the anti-aliasing sinc filter (stop band below -60 dB; see the tests).
pub fn resample(samples: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, ResampleError> {
    if from_hz == 0 || to_hz == 0 {
        return Err(ResampleError::InvalidRate { from_hz, to_hz });
    }
    if from_hz == to_hz {
        return Ok(samples.to_vec());
    }
    let ratio = to_hz as f64 / from_hz as f64;
    if !(0.01..=100.0).contains(&ratio) {
        return Err(ResampleError::UnsupportedRatio { from_hz, to_hz });
    }
    let out_len = (samples.len() as f64 * ratio).round() as usize;
    if samples.is_empty() {
        return Ok(Vec::new());
    }

    // The sinc filter is centred SINC_LEN / 2 input samples after the current position, so an
    // input event at input time t appears at output time (t + SINC_LEN / 2) * ratio. Pad `pre`
    // zeros in front so that (pre + SINC_LEN / 2) * to / from is an integer `delay_out`: with
    // to / from = p / q in lowest terms, pre + SINC_LEN / 2 must be a multiple of q.
    let g = gcd(from_hz as u64, to_hz as u64);
    let (p, q) = (to_hz as u64 / g, from_hz as u64 / g);
    let half = (SINC_LEN / 2) as u64;
    let mut pre = ((q - half % q) % q) as usize;
    let mut delay_out = ((pre as u64 + half) / q * p) as usize;

    RESAMPLERS.with(|cell| {
        let mut map = cell.borrow_mut();
        let rs = match map.entry((from_hz, to_hz)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(build(from_hz, to_hz)?),
        };
        // rubato itself trims floor(nbr_points * ratio / 2) output frames of start-up delay.
        // Its interpolator advances the read position before producing each output frame, so
        // the first output frame already sits one output period later: the delay left in the
        // output is delay_out - 1 frames (measured by the phase test below; what remains is a
        // constant 1/OVERSAMPLING input sample from the sinc table, < 0.01 rad at 14 kHz).
        let trimmed = rs.output_delay();
        // rubato may already have trimmed more than the delay left (upsampling): pad one more
        // period of q input samples (p output samples) until there is something left to drop.
        while delay_out < trimmed + 1 {
            pre += q as usize;
            delay_out += p as usize;
        }
        // Trailing zeros flush the filter tail.
        let post = SINC_LEN + q as usize;
        let mut input = Vec::with_capacity(pre + samples.len() + post);
        input.resize(pre, 0.0);
        input.extend_from_slice(samples);
        input.resize(pre + samples.len() + post, 0.0);
        let adapter = SequentialSlice::new(&input[..], 1, input.len()).map_err(|e| {
            ResampleError::Processing {
                from_hz,
                to_hz,
                message: e.to_string(),
            }
        })?;
        let processed =
            rs.process_all(&adapter, input.len(), None)
                .map_err(|e| ResampleError::Processing {
                    from_hz,
                    to_hz,
                    message: e.to_string(),
                })?;
        let data = processed.take_data();
        let start = delay_out - 1 - trimmed;
        let mut out = Vec::with_capacity(out_len);
        out.extend(data.iter().skip(start).take(out_len).copied());
        out.resize(out_len, 0.0);
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn tone(f: f64, sr: u32, n: usize, amp: f64) -> Vec<f32> {
        (0..n)
            .map(|i| (amp * (2.0 * PI * f * i as f64 / sr as f64).sin()) as f32)
            .collect()
    }

    /// Least-squares amplitude and phase of a tone of known frequency (sin/cos projection) over
    /// the central part of the signal (edges excluded).
    fn fit_tone(x: &[f32], f: f64, sr: u32) -> (f64, f64) {
        let (lo, hi) = (x.len() / 8, x.len() - x.len() / 8);
        let (mut ss, mut sc, mut cc, mut xs, mut xc) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (i, &v) in x.iter().enumerate().take(hi).skip(lo) {
            let w = 2.0 * PI * f * i as f64 / sr as f64;
            let (s, c) = (w.sin(), w.cos());
            ss += s * s;
            sc += s * c;
            cc += c * c;
            xs += v as f64 * s;
            xc += v as f64 * c;
        }
        // Solve [ss sc; sc cc] [a; b] = [xs; xc] for x ~ a sin + b cos.
        let det = ss * cc - sc * sc;
        let a = (xs * cc - xc * sc) / det;
        let b = (xc * ss - xs * sc) / det;
        ((a * a + b * b).sqrt(), b.atan2(a))
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn lengths_identity_and_errors() {
        let x = tone(1000.0, 44_100, 44_100, 0.5);
        assert_eq!(resample(&x, 44_100, 44_100).unwrap(), x);
        assert_eq!(resample(&x, 44_100, 32_000).unwrap().len(), 32_000);
        assert_eq!(resample(&x[..1001], 44_100, 32_000).unwrap().len(), 726); // 726.3
        assert_eq!(resample(&x[..1000], 48_000, 32_000).unwrap().len(), 667); // 666.7
        assert_eq!(resample(&x[..5], 16_000, 32_000).unwrap().len(), 10);
        assert!(resample(&[], 44_100, 32_000).unwrap().is_empty());
        assert!(matches!(
            resample(&x, 0, 32_000),
            Err(ResampleError::InvalidRate { .. })
        ));
        assert!(matches!(
            resample(&x, 44_100, 100),
            Err(ResampleError::UnsupportedRatio { .. })
        ));
    }

    /// Passband: tones up to 14 kHz keep their amplitude within 0.1 dB and their phase (no
    /// delay) through 44.1 kHz -> 32 kHz and 48 kHz -> 32 kHz.
    #[test]
    fn passband_amplitude_and_phase() {
        for from in [44_100u32, 48_000] {
            let mut worst_db: f64 = 0.0;
            let mut worst_phase: f64 = 0.0;
            for f in [
                100.0, 440.0, 1000.0, 3000.0, 6000.0, 10_000.0, 12_000.0, 14_000.0,
            ] {
                let x = tone(f, from, from as usize, 0.5);
                let y = resample(&x, from, 32_000).unwrap();
                let (amp, phase) = fit_tone(&y, f, 32_000);
                let db = 20.0 * (amp / 0.5).log10();
                println!("{from} -> 32000 Hz, {f:>7} Hz: gain {db:+.4} dB, phase {phase:+.5} rad");
                worst_db = worst_db.max(db.abs());
                worst_phase = worst_phase.max(phase.abs());
            }
            println!(
                "{from} Hz: worst passband error {worst_db:.4} dB, worst phase {worst_phase:.5} rad"
            );
            assert!(worst_db < 0.1, "passband error {worst_db} dB");
            assert!(worst_phase < 0.01, "phase error {worst_phase} rad");
        }
    }

    /// Stop band: a 20 kHz tone at 44.1 kHz lies above the new Nyquist (16 kHz) and must be
    /// attenuated by at least 60 dB (output RMS over the input RMS, edges excluded).
    #[test]
    fn aliasing_rejection() {
        for f in [17_000.0, 20_000.0, 22_000.0] {
            let x = tone(f, 44_100, 44_100, 0.5);
            let y = resample(&x, 44_100, 32_000).unwrap();
            let core = &y[2000..y.len() - 2000];
            let att = 20.0 * (rms(core) / rms(&x)).log10();
            println!("44100 -> 32000 Hz, tone {f} Hz: output/input RMS {att:.1} dB");
            assert!(att < -60.0, "{f} Hz tone only attenuated by {att} dB");
        }
    }

    /// Upsampling preserves a tone too (amplitude and phase).
    #[test]
    fn upsampling_tone() {
        let x = tone(3000.0, 16_000, 16_000, 0.5);
        let y = resample(&x, 16_000, 32_000).unwrap();
        assert_eq!(y.len(), 32_000);
        let (amp, phase) = fit_tone(&y, 3000.0, 32_000);
        assert!((amp - 0.5).abs() < 0.005, "amp {amp}");
        assert!(phase.abs() < 0.01, "phase {phase}");
    }
}
