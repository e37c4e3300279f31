//! Inference with the int8 engine ([`asc_int8`]) on WAV files: [`infer_wav`] runs a file
//! through the pipeline's front end (`pipeline::ingest::decode_wav` ->
//! `pipeline::resample::resample` -> `pipeline::ingest::cut_clips` ->
//! `pipeline::logmel::LogMel`, the one front end of the toolkit, configured by the model file)
//! into [`Int8Model::classify`]; the engine takes the full log-mel and crops it itself. The
//! evaluation of an int8 model on a shard set is [`crate::evaluate::evaluate_int8`].

use std::path::{Path, PathBuf};

use asc_int8::{Int8Error, Int8Model};
use pipeline::ingest::{clip_id, cut_clips, decode_wav, file_stem};
use pipeline::logmel::LogMel;

/// Errors of int8 inference on WAV files; each names the file.
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
