//! Inference with the int8 engine ([`asc_int8`]): WAV files through the pipeline's front end
//! ([`infer_wav`]: `pipeline::ingest::decode_wav` -> `pipeline::resample::resample` ->
//! `pipeline::ingest::cut_clips` -> `pipeline::logmel::LogMel`, the one front end of the
//! toolkit, configured by the model file) into [`Int8Model::classify`], and evaluation of an
//! int8 model on the original rows of a shard set with the float evaluation's metrics
//! ([`evaluate_int8`]). The engine takes the full log-mel and crops it itself.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use data_specs::{ClipSet, Variant};
use pipeline::ingest::{clip_id, cut_clips, decode_wav, file_stem};
use pipeline::logmel::LogMel;

use crate::loader::{Loader, LoaderConfig, LoaderError, Selection, ShardSet};
use crate::metrics::{EvalAccumulator, EvalReport, MetricsError};
use asc_int8::{Int8Error, Int8Model};

/// Errors of int8 inference and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The audio file could not be decoded or resampled.
    #[error("{path}: {problem}")]
    Audio {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// The audio file is not a readable, finite WAV file (the message names it).
    #[error(transparent)]
    Decode(#[from] pipeline::ingest::IngestError),
    /// The engine refused the input or the model.
    #[error(transparent)]
    Int8(#[from] Int8Error),
    /// The shards could not be read.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// Metric bookkeeping failed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The shards' front end or labels differ from the model's.
    #[error("{0}")]
    Mismatch(String),
}

/// The prediction for one 1 s clip of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipPrediction {
    /// Clip id (`<stem>` or `<stem>@<k>` for a recording cut into several clips).
    pub clip_id: String,
    /// Predicted label.
    pub label: String,
    /// Softmax probabilities, in the model's label order.
    pub probs: Vec<f32>,
    /// Raw logits.
    pub logits: Vec<f32>,
}

pub use asc_int8::{argmax, softmax};

/// Decodes a WAV file, resamples it to the model's front-end rate, cuts it into 1 s clips
/// (the pipeline's rule) and classifies each clip with the int8 engine.
pub fn infer_wav(
    model: &Int8Model,
    logmel: &LogMel,
    path: &Path,
) -> Result<Vec<ClipPrediction>, InferError> {
    let fe = model.frontend();
    let audio_err = |problem: String| InferError::Audio {
        path: path.to_path_buf(),
        problem,
    };
    let audio = decode_wav(path)?;
    let wave = if audio.sample_rate == fe.sample_rate {
        audio.samples
    } else {
        pipeline::resample::resample(&audio.samples, audio.sample_rate, fe.sample_rate)
            .map_err(|e| audio_err(e.to_string()))?
    };
    let clips = cut_clips(&wave, fe.clip_samples);
    if clips.is_empty() {
        return Err(audio_err(format!(
            "too short: {:.3} s (a clip needs at least 0.5 s)",
            wave.len() as f64 / fe.sample_rate as f64
        )));
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("clip");
    let stem = file_stem(name);
    let mut out = Vec::with_capacity(clips.len());
    for (k, clip) in clips {
        let p = model.classify(&logmel.compute(&clip))?;
        out.push(ClipPrediction {
            clip_id: clip_id(stem, k),
            label: p.label,
            probs: p.probs,
            logits: p.logits,
        });
    }
    Ok(out)
}

/// Evaluates an int8 model on the ORIGINAL rows of `clip_set` of a shard set (clips in
/// parallel with rayon): the same [`EvalReport`] as the float evaluation. `seen` are the
/// training devices (the "seen" group).
pub fn evaluate_int8(
    model: &Int8Model,
    set: &ShardSet,
    clip_set: ClipSet,
    seen: BTreeSet<String>,
) -> Result<EvalReport, InferError> {
    let meta = set.meta();
    let fe = model.frontend();
    if (meta.frontend.n_mels, meta.frontend.n_frames()) != (fe.n_mels, fe.n_frames()) {
        return Err(InferError::Mismatch(format!(
            "the shards hold {}x{} log-mels, the model expects {}x{} (front end {:?} vs {:?})",
            meta.frontend.n_mels,
            meta.frontend.n_frames(),
            fe.n_mels,
            fe.n_frames(),
            meta.frontend.preset,
            fe.preset
        )));
    }
    let names: Vec<String> = meta.labels.names().map(str::to_string).collect();
    if names != model.labels().0 {
        return Err(InferError::Mismatch(format!(
            "the shards' labels {names:?} differ from the model's {:?}",
            model.labels().0
        )));
    }
    let mut acc = EvalAccumulator::new(
        names,
        meta.devices.names().map(str::to_string).collect(),
        seen,
    );
    let any = set
        .rows()
        .any(|r| r.set == clip_set && r.variant == Variant::Original);
    if !any {
        return Ok(acc.finish());
    }
    let sel = Selection {
        set: clip_set,
        max_split: None,
        devices: None,
        replay: false,
        p_dir: 0.0,
        fold: None,
    };
    let cfg = LoaderConfig {
        batch_size: 256,
        shuffle: false,
        drop_last: false,
        ..LoaderConfig::default()
    };
    let loader = Loader::new(set, sel, cfg)?;
    let k = model.n_classes();
    for batch in loader.epoch(0) {
        let batch = batch?;
        let logits = model.infer_logmel_batch(batch.logmel())?;
        for ((row, lg), &y) in batch
            .rows()
            .iter()
            .zip(logits.chunks_exact(k))
            .zip(batch.labels())
        {
            if y >= 0 {
                acc.push(lg, y as usize, set.row_info(*row).device)?;
            }
        }
    }
    Ok(acc.finish())
}
