//! `train infer MODEL file.wav...` end to end: a tiny int8 model (the IRMamba op mix on a
//! 32 x 16 log-mel, random weights, calibrated and quantized) and WAV files written here; the
//! printed label and probabilities are checked against the engine run in this process on the
//! same audio through the pipeline's own steps (decode, cut, log-mel, crop), and unreadable
//! WAV files must give an error that names them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use asc_int8::builder::{RandomNetConfig, calibrate, quantize_model, random_irmamba};
use asc_int8::{Int8Model, ModelMeta, QParams};
use data_specs::{FrontEndConfig, Vocabulary};

/// An 8 kHz front end with 32 mel bins and 17 frames (the model keeps the first 16).
fn frontend() -> FrontEndConfig {
    FrontEndConfig {
        sample_rate: 8_000,
        clip_samples: 8_000,
        n_fft: 512,
        win_length: 400,
        hop_length: 500,
        n_mels: 32,
        f_max: 4_000.0,
        ..FrontEndConfig::dcase2024()
    }
}

/// A 16-bit PCM mono WAV (RIFF header written by hand: 44 bytes, then the samples).
fn write_wav(path: &Path, rate: u32, samples: &[f32]) {
    let data: Vec<u8> = samples
        .iter()
        .flat_map(|&v| ((v.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes())
        .collect();
    let mut b = Vec::with_capacity(44 + data.len());
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&1u16.to_le_bytes()); // mono
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * 2).to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&data);
    std::fs::write(path, b).expect("writes the WAV");
}

/// A tone sweep plus deterministic noise, `secs` seconds at `rate`.
fn audio(rate: u32, secs: f32, seed: u32) -> Vec<f32> {
    let n = (rate as f32 * secs) as usize;
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let t = i as f32 / rate as f32;
            let noise = (s as f32 / u32::MAX as f32) - 0.5;
            0.3 * (2.0 * std::f32::consts::PI * (300.0 + 900.0 * t) * t).sin() + 0.2 * noise
        })
        .collect()
}

/// The tiny model, calibrated on log-mels of the test audio, saved to `dir/model.asc8`.
fn tiny_model(dir: &Path) -> (Int8Model, PathBuf) {
    let cfg = RandomNetConfig::small();
    let fe = frontend();
    assert_eq!((cfg.n_mels, cfg.n_frames), (fe.n_mels, 16));
    let (graph, tensors) = random_irmamba(&cfg, 5);
    let lm = pipeline::logmel::LogMel::new(&fe);
    let calib: Vec<Vec<f32>> = (0..6)
        .map(|k| crop(&lm.compute(&audio(fe.sample_rate, 1.0, 100 + k)), &fe))
        .collect();
    let ranges =
        calibrate(&graph, &tensors, calib.iter().map(Vec::as_slice), None).expect("calibrates");
    let meta = ModelMeta {
        name: "tiny-cli-test".into(),
        config: serde_json::json!({ "test": true }),
        frontend: fe,
        labels: Vocabulary::tau22_labels(),
    };
    let model =
        quantize_model(meta, &graph, &tensors, &ranges, QParams::REDUCED).expect("quantizes");
    let path = dir.join("model.asc8");
    model.save(&path).expect("saves");
    (model, path)
}

/// The first 16 frames of every mel row.
fn crop(logmel: &[f32], fe: &FrontEndConfig) -> Vec<f32> {
    logmel
        .chunks_exact(fe.n_frames())
        .flat_map(|row| row[..16].iter().copied())
        .collect()
}

fn run_infer(model: &Path, files: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_train"))
        .arg("infer")
        .arg(model)
        .args(files)
        .output()
        .expect("runs the train binary")
}

/// `(clip id, label, probabilities)` of one clip.
type ClipResult = (String, String, Vec<f64>);

/// Expected [`ClipResult`] per clip of a WAV, computed here: the pipeline's decode and cut,
/// its log-mel, the crop, the engine, softmax in f64.
fn expected(model: &Int8Model, wav: &Path) -> Vec<ClipResult> {
    let fe = model.frontend().clone();
    let audio = pipeline::ingest::decode_wav(wav).expect("decodes");
    assert_eq!(audio.sample_rate, fe.sample_rate);
    let lm = pipeline::logmel::LogMel::new(&fe);
    let stem = wav.file_stem().unwrap().to_str().unwrap();
    pipeline::ingest::cut_clips(&audio.samples, fe.clip_samples)
        .into_iter()
        .map(|(k, clip)| {
            let logits = model.infer(&crop(&lm.compute(&clip), &fe)).expect("runs");
            let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let e: Vec<f64> = logits.iter().map(|&v| (v as f64 - m).exp()).collect();
            let z: f64 = e.iter().sum();
            let probs: Vec<f64> = e.iter().map(|v| v / z).collect();
            let best = (0..probs.len())
                .max_by(|&a, &b| probs[a].total_cmp(&probs[b]).then(b.cmp(&a)))
                .unwrap();
            let id = k.map_or(stem.to_string(), |k| format!("{stem}@{k}"));
            (id, model.labels().0[best].clone(), probs)
        })
        .collect()
}

#[test]
fn infer_prints_the_engines_label_and_probabilities_per_clip() {
    let dir = tempfile::tempdir().unwrap();
    let (model, mpath) = tiny_model(dir.path());
    let fe = model.frontend().clone();
    // One 1 s clip, and a 2.6 s recording that is cut into several clips.
    let (one, long) = (dir.path().join("one.wav"), dir.path().join("long.wav"));
    write_wav(&one, fe.sample_rate, &audio(fe.sample_rate, 1.0, 1));
    write_wav(&long, fe.sample_rate, &audio(fe.sample_rate, 2.6, 2));
    let out = run_infer(&mpath, &[&one, &long]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "train infer failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Vec<(PathBuf, ClipResult)> = [&one, &long]
        .into_iter()
        .flat_map(|f| expected(&model, f).into_iter().map(|e| (f.clone(), e)))
        .collect();
    assert!(want.len() >= 3, "the long file gives several clips");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), want.len(), "one line per clip:\n{stdout}");
    let labels = &model.labels().0;
    for (line, (file, (id, label, probs))) in lines.iter().zip(&want) {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 5, "file, clip, label, p(label), all: {line}");
        assert_eq!(f[0], file.display().to_string());
        assert_eq!(f[1], id);
        assert_eq!(f[2], label, "{line}");
        let best = labels.iter().position(|l| l == label).unwrap();
        let p_best: f64 = f[3].parse().expect("probability");
        assert!(
            (p_best - probs[best]).abs() <= 6e-4,
            "{line}: want {}",
            probs[best]
        );
        let pairs: Vec<&str> = f[4].split(' ').collect();
        assert_eq!(pairs.len(), labels.len(), "{line}");
        for ((pair, name), &p) in pairs.iter().zip(labels).zip(probs) {
            let (l, v) = pair.split_once('=').expect("label=probability");
            assert_eq!(l, name);
            let v: f64 = v.parse().expect("probability");
            assert!((v - p).abs() <= 6e-4, "{line}: {name} want {p}");
        }
    }
    // The probabilities are not all alike: the check above can tell labels apart.
    assert!(
        want.iter()
            .any(|w| w.1.2.iter().any(|&p| (p - 0.1).abs() > 2e-3))
    );
}

#[test]
fn infer_names_a_missing_or_garbage_wav_in_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let (model, mpath) = tiny_model(dir.path());
    let good = dir.path().join("good.wav");
    write_wav(&good, model.frontend().sample_rate, &audio(8_000, 1.0, 3));
    let garbage = dir.path().join("garbage.wav");
    std::fs::write(&garbage, b"this is not RIFF audio at all, just text").unwrap();
    let missing = dir.path().join("missing.wav");
    for bad in [&missing, &garbage] {
        let out = run_infer(&mpath, &[bad]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was accepted", bad.display());
        assert!(
            stderr.contains(&bad.display().to_string()),
            "the error names the file: {stderr}"
        );
        assert!(out.stdout.is_empty());
    }
    // A bad file among good ones: the good one is still classified, the run fails and names
    // only the bad file.
    let out = run_infer(&mpath, &[&good, &garbage]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success());
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with(&good.display().to_string()));
    assert!(
        stderr.contains("garbage.wav") && !stderr.contains("good.wav"),
        "{stderr}"
    );
    // A file that is not a model is refused with its name.
    let out = run_infer(&garbage, &[&good]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("garbage.wav"));
}

/// A 32-bit float mono WAV (format tag 3) with the given samples.
fn write_float_wav(path: &Path, rate: u32, samples: &[f32]) {
    let data: Vec<u8> = samples.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut b = Vec::with_capacity(44 + data.len());
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&3u16.to_le_bytes()); // IEEE float
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * 4).to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&32u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&data);
    std::fs::write(path, b).expect("writes the WAV");
}

#[test]
fn infer_refuses_a_folder_and_non_finite_audio() {
    let dir = tempfile::tempdir().unwrap();
    let (model, mpath) = tiny_model(dir.path());
    let rate = model.frontend().sample_rate;
    let wavs = dir.path().join("wavs");
    std::fs::create_dir_all(&wavs).unwrap();
    let out = run_infer(&mpath, &[&wavs]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("is a folder, not a WAV file") && !stderr.contains("meta.csv"),
        "{stderr}"
    );
    for (value, word) in [(f32::NAN, "NaN"), (f32::NEG_INFINITY, "-inf")] {
        let mut x = audio(rate, 1.0, 4);
        x[777] = value;
        let nan = wavs.join("nan.wav");
        write_float_wav(&nan, rate, &x);
        let out = run_infer(&mpath, &[&nan]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "a label was printed for non-finite audio"
        );
        assert!(out.stdout.is_empty());
        assert!(
            stderr.contains("nan.wav") && stderr.contains("sample 777") && stderr.contains(word),
            "{stderr}"
        );
    }
}
