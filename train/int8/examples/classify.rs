//! Classifies log-mel spectrograms with an int8 model: the embedding example of the README.
//!
//! `cargo run --release -p asc-int8 --example classify -- MODEL.asc8 LOGMEL.f32...` prints the
//! label and probabilities of each log-mel file (raw little-endian `f32`, `n_mels x n_frames`
//! of the model's front end, mel-bin major: 256 x 65 for the DCASE2024 front end; the
//! `pipeline` crate computes them from audio). Without arguments it builds a small random
//! network with the student's op mix (calibrated and quantized here) and classifies synthetic
//! log-mels, so that it runs anywhere.

use std::error::Error;
use std::path::Path;

use asc_int8::builder::{RandomNetConfig, calibrate, quantize_model, random_irmamba};
use asc_int8::{Int8Model, ModelMeta, QParams};
use data_specs::{FrontEndConfig, Vocabulary};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = match args.first() {
        Some(path) => Int8Model::load(Path::new(path))?,
        None => tiny_model()?,
    };
    let (n_mels, n_frames) = model.logmel_shape();
    let inputs: Vec<(String, Vec<f32>)> = if args.len() > 1 {
        args[1..]
            .iter()
            .map(|f| Ok((f.clone(), read_f32(Path::new(f))?)))
            .collect::<Result<_, Box<dyn Error>>>()?
    } else {
        (0..3)
            .map(|k| (format!("synthetic-{k}"), synthetic(n_mels * n_frames, k)))
            .collect()
    };
    println!(
        "{} ({} classes): log-mel {n_mels} x {n_frames}, kernels {}",
        model.meta().name,
        model.n_classes(),
        model.isa().name()
    );
    for (name, logmel) in inputs {
        // The whole embedding: one call per 1 s clip (the frame crop happens inside).
        let p = model
            .classify(&logmel)
            .map_err(|e| format!("{name}: {e}"))?;
        let probs: Vec<String> = (model.labels().0.iter().zip(&p.probs))
            .map(|(l, q)| format!("{l}={q:.3}"))
            .collect();
        println!("{name}: {} ({})", p.label, probs.join(" "));
    }
    Ok(())
}

/// A raw little-endian `f32` file.
fn read_f32(path: &Path) -> Result<Vec<f32>, Box<dyn Error>> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() % 4 != 0 {
        return Err(format!("{}: not a whole number of f32 values", path.display()).into());
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Deterministic log-mel-like values (a ramp over the mel bins plus a hash).
fn synthetic(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) % 1000;
            -6.0 + 4.0 * ((i % 97) as f32 / 97.0) + h as f32 / 500.0
        })
        .collect()
}

/// A random 32-mel network of the student's op mix (stem, inverted residual block, parallel
/// Mamba, head) for a front end of 32 bins x 17 frames (the network keeps 16), calibrated on
/// synthetic log-mels and quantized.
fn tiny_model() -> Result<Int8Model, Box<dyn Error>> {
    let cfg = RandomNetConfig::small();
    let frontend = FrontEndConfig {
        sample_rate: 8_000,
        clip_samples: 8_000,
        n_fft: 512,
        win_length: 400,
        hop_length: 500,
        n_mels: cfg.n_mels,
        f_max: 4_000.0,
        ..FrontEndConfig::dcase2024()
    };
    let (graph, tensors) = random_irmamba(&cfg, 7);
    let crops: Vec<Vec<f32>> = (0..4)
        .map(|k| synthetic(cfg.n_mels * cfg.n_frames, 10 + k))
        .collect();
    let ranges = calibrate(&graph, &tensors, crops.iter().map(Vec::as_slice), None)?;
    let meta = ModelMeta {
        name: "tiny-random".into(),
        config: serde_json::json!({ "example": true }),
        frontend,
        labels: Vocabulary::tau22_labels(),
    };
    Ok(quantize_model(
        meta,
        &graph,
        &tensors,
        &ranges,
        QParams::REDUCED,
    )?)
}
