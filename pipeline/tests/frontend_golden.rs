//! The `dcase2024` log-mel front end against an independent reference: librosa's
//! `melspectrogram` in float64 (pipeline/scripts/make_golden.py, values in tests/golden/),
//! configured as torchaudio's `MelSpectrogram(sample_rate=32000, n_fft=4096, win_length=3072,
//! hop_length=500, n_mels=256)` followed by `log(x + 1e-5)`. Every value must agree within
//! 1e-3 (absolute, natural-log units).

use std::path::PathBuf;

use data_specs::FrontEndConfig;
use pipeline::logmel::LogMel;

const SIGNALS: [&str; 4] = ["chirp", "two_tone", "noise", "quiet"];

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
        .join(name)
}

fn read_i16(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(golden(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
        .collect()
}

fn read_f32(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(golden(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn dcase2024_matches_librosa_reference() {
    let cfg = FrontEndConfig::dcase2024();
    let lm = LogMel::new(&cfg);
    let mut worst = 0.0f32;
    for name in SIGNALS {
        let clip = read_i16(&format!("{name}.in.i16"));
        assert_eq!(clip.len(), 32_000);
        let want = read_f32(&format!("{name}.logmel.f32"));
        assert_eq!(want.len(), 256 * 65);
        let got = lm.compute(&clip);
        assert_eq!(got.len(), want.len());
        let (mut max_err, mut at) = (0.0f32, 0);
        let mut sum_err = 0.0f64;
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            let e = (a - b).abs();
            sum_err += e as f64;
            if e > max_err {
                max_err = e;
                at = i;
            }
        }
        println!(
            "{name:>8}: max |ours - librosa| = {max_err:.3e} at mel {} frame {} (ref {:.4}), mean {:.3e}",
            at / 65,
            at % 65,
            want[at],
            sum_err / want.len() as f64
        );
        assert!(
            max_err <= 1e-3,
            "{name}: max abs error {max_err} at mel {} frame {}",
            at / 65,
            at % 65
        );
        worst = worst.max(max_err);

        // compute_into with a reused buffer gives the same values.
        let mut out = vec![f32::NAN; cfg.logmel_len()];
        lm.compute_into(&clip, &mut out);
        assert_eq!(out, got);
    }
    println!("worst over all signals: {worst:.3e}");
}

/// The same extractor used from several threads at once gives the same values as serially
/// (thread-local scratch, shared plan).
#[test]
fn shared_across_threads() {
    let lm = LogMel::new(&FrontEndConfig::dcase2024());
    let clips: Vec<Vec<f32>> = SIGNALS
        .iter()
        .map(|n| read_i16(&format!("{n}.in.i16")))
        .collect();
    let serial: Vec<Vec<f32>> = clips.iter().map(|c| lm.compute(c)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = clips.iter().map(|c| s.spawn(|| lm.compute(c))).collect();
        for (h, want) in handles.into_iter().zip(&serial) {
            assert_eq!(&h.join().unwrap(), want);
        }
    });
}
