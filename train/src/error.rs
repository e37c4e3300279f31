//! The error of the trainer's library calls: training, evaluation, prediction, the run
//! folder, QAT and export ([`TrainError`]). Each layer below keeps its own error type (the
//! loader's, the checkpoint's, the model configuration's, ...); this one wraps them, so the
//! modules above (config, run, evaluate, predict, qat_phase, trainer) share one `Result`.

use std::path::{Path, PathBuf};

use crate::checkpoint::CheckpointError;
use crate::export::ExportError;
use crate::loader::LoaderError;
use crate::metrics::MetricsError;
use crate::model::ModelConfigError;
use crate::plots::PlotError;
use crate::qat::QatError;
use crate::qat::train::QatTrainError;

/// Errors of training, evaluation and prediction; every variant about a file names it.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The shard loader failed.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The model configuration is invalid.
    #[error(transparent)]
    Model(#[from] ModelConfigError),
    /// Evaluation bookkeeping failed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// A plot of the run folder could not be drawn.
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// A file operation failed.
    #[error("{path}: {problem}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// A file of the run folder could not be written or read.
    #[error("run file {path}: {source}")]
    RunFile {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A run name that is empty or would leave the runs folder.
    #[error("run name {0:?} is not a plain folder name")]
    BadRunName(String),
    /// The configuration cannot be written as TOML (it must serialize to a table).
    #[error("run config {path}: {message}")]
    RunConfig {
        /// The config file.
        path: PathBuf,
        /// The serializer's message.
        message: String,
    },
    /// A line of `metrics.jsonl` that is not an EpochMetrics object.
    #[error("{path} line {line}: {source}")]
    MetricsLine {
        /// The metrics file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parse error.
        source: serde_json::Error,
    },
    /// An invalid setting (the message names it).
    #[error("invalid setting: {0}")]
    Config(String),
    /// The run folder exists already and `--resume` was not given.
    #[error(
        "run folder {0} exists already; pick another --name, delete it, or continue it with \
         --resume {0}"
    )]
    RunExists(PathBuf),
    /// The QAT phase failed.
    #[error("QAT phase: {0}")]
    Qat(String),
    /// The model cannot be fake-quantized, or a QAT file cannot be read or written.
    #[error(transparent)]
    QatModel(#[from] QatError),
    /// The QAT fine-tuning loop failed.
    #[error(transparent)]
    QatTraining(#[from] QatTrainError),
    /// The int8 export failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The int8 engine refused a model or an input.
    #[error(transparent)]
    Int8(#[from] asc_int8::Int8Error),
    /// The shards' front end or labels differ from an int8 model's.
    #[error("{0}")]
    Mismatch(String),
    /// The shards' label vocabulary differs from the run's.
    #[error(
        "{run}: the run was trained with the {} labels [{}], but {shards} has the {} labels \
         [{}]; use the shards the run was trained on (or train a new run on these)",
        run_labels.len(), run_labels.0.join(", "), shard_labels.len(), shard_labels.0.join(", ")
    )]
    Labels {
        /// The run folder.
        run: PathBuf,
        /// The run's vocabulary.
        run_labels: data_specs::Vocabulary,
        /// The shard set.
        shards: PathBuf,
        /// The shards' vocabulary.
        shard_labels: data_specs::Vocabulary,
    },
    /// The training loss became NaN or infinite.
    #[error("training diverged at update {step}: loss {loss}{detail}")]
    Diverged {
        /// Update step.
        step: u64,
        /// Loss value.
        loss: f32,
        /// The clips whose logits are not finite, if any ([`crate::finite::non_finite_logits`]).
        detail: String,
    },
    /// A clip's input or output holds NaN or infinite values.
    #[error("{0}")]
    NonFinite(String),
}

/// Result alias of the trainer's library calls.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// A [`TrainError::Io`] about `path`.
pub fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        problem: e.to_string(),
    }
}

/// A [`TrainError::RunFile`] about `path`, for `map_err`.
pub(crate) fn run_file(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::RunFile {
        path: path.to_path_buf(),
        source,
    }
}
