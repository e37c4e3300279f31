//! The run folder `runs/<name>/`: its paths, its files and the models in it.
//!
//! ```text
//! runs/<name>/config.toml      resolved configuration (crate::config::TrainConfig)
//! runs/<name>/metrics.jsonl    one EpochMetrics JSON object per line, in epoch order
//! runs/<name>/checkpoints/last/, best/   checkpoints for resume (crate::checkpoint)
//! runs/<name>/model.bpk        the kept model (burnpack record of its inference copy)
//! runs/<name>/report.md        final tables (crate::report): macro accuracy, per class /
//!                              device / group, model vs floor, confusion, complexity, timing
//! runs/<name>/loss.png, accuracy.png, confusion.png
//! runs/<name>/qat/             QAT model, observers and the int8 model qat/model.asc8
//! ```
//!
//! `config.toml`, `report.md` and `model.bpk` are written to a temporary name and renamed;
//! `metrics.jsonl` is appended line by line (one complete line per write), and
//! [`RunDir::truncate_metrics`] rewrites it (temporary name + rename) when a run resumes from an
//! earlier epoch. [`load_run_model`] reads a run's model for evaluation, prediction and QAT
//! and refuses shards with another label vocabulary; [`seen_devices`] are the devices a run
//! trained on (the "seen" group of every evaluation).

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device};
use data_specs::{ClipSet, Variant};
use serde::Serialize;

use crate::checkpoint;
use crate::config::TrainConfig;
use crate::error::{Result, TrainError, io_err, run_file};
use crate::loader::ShardSet;
use crate::metrics::EpochMetrics;
use crate::model::{Model, ModelConfig};

pub use crate::config::CONFIG_FILE;
pub use crate::qat::QAT_DIR;

/// Per-epoch metrics of a run.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Final markdown report.
pub const REPORT_FILE: &str = "report.md";
/// Loss-curve plot.
pub const LOSS_PLOT: &str = "loss.png";
/// Accuracy-curve plot.
pub const ACCURACY_PLOT: &str = "accuracy.png";
/// Confusion-matrix plot.
pub const CONFUSION_PLOT: &str = "confusion.png";
/// File name of the final model record (burnpack) in the run folder.
pub const FINAL_MODEL_FILE: &str = "model.bpk";
/// Folder of the checkpoints in the run folder.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// Checkpoint tag of the last epoch.
pub const LAST: &str = "last";
/// Checkpoint tag of the evaluation with the best validation macro accuracy.
pub const BEST: &str = "best";
/// File name of the exported int8 model in the run's [`QAT_DIR`].
pub const INT8_FILE: &str = "model.asc8";

/// A run folder `runs/<name>/`.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

/// Writes `bytes` to `path` through a temporary `.<name>.tmp` beside it.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, bytes).map_err(run_file(&tmp))?;
    fs::rename(&tmp, path).map_err(run_file(path))
}

impl RunDir {
    /// Create (or reopen) `runs_root/name`. The name must be one plain path component.
    pub fn create(runs_root: &Path, name: &str) -> Result<Self> {
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains(['/', '\\'])
            && Path::new(name).components().count() == 1;
        if !plain {
            return Err(TrainError::BadRunName(name.to_string()));
        }
        let root = runs_root.join(name);
        fs::create_dir_all(&root).map_err(run_file(&root))?;
        Ok(Self { root })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Folder of the checkpoint `tag` (e.g. [`LAST`], [`BEST`]): `<run>/checkpoints/<tag>`.
    pub fn checkpoint_dir(&self, tag: &str) -> PathBuf {
        self.root.join(CHECKPOINTS_DIR).join(tag)
    }

    /// Write the resolved configuration as `config.toml` (it must serialize to a table).
    pub fn write_config<T: Serialize>(&self, config: &T) -> Result<PathBuf> {
        let path = self.root.join(CONFIG_FILE);
        let text = toml::to_string_pretty(config).map_err(|e| TrainError::RunConfig {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Append one epoch to `metrics.jsonl`.
    pub fn append_metrics(&self, m: &EpochMetrics) -> Result<()> {
        let path = self.root.join(METRICS_FILE);
        let mut line = serde_json::to_string(m).map_err(|source| TrainError::MetricsLine {
            path: path.clone(),
            line: 0,
            source,
        })?;
        line.push('\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(run_file(&path))?;
        f.write_all(line.as_bytes()).map_err(run_file(&path))
    }

    /// All epochs of `metrics.jsonl` (empty when the file does not exist yet).
    pub fn read_metrics(&self) -> Result<Vec<EpochMetrics>> {
        let path = self.root.join(METRICS_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(run_file(&path)(e)),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|source| TrainError::MetricsLine {
                    path: path.clone(),
                    line: i + 1,
                    source,
                })
            })
            .collect()
    }

    /// Keep only the epochs before `epoch` in `metrics.jsonl` (resume from a checkpoint taken
    /// after `epoch` epochs); returns the kept epochs.
    pub fn truncate_metrics(&self, epoch: u64) -> Result<Vec<EpochMetrics>> {
        let kept: Vec<EpochMetrics> = self
            .read_metrics()?
            .into_iter()
            .filter(|m| m.epoch < epoch)
            .collect();
        let mut text = String::new();
        for m in &kept {
            text.push_str(&serde_json::to_string(m).unwrap_or_default());
            text.push('\n');
        }
        write_atomic(&self.root.join(METRICS_FILE), text.as_bytes())?;
        Ok(kept)
    }
}

/// The devices of the training originals of split `split` (the "seen" group of the evaluation).
pub fn seen_devices(set: &ShardSet, split: u8) -> BTreeSet<String> {
    set.rows()
        .filter(|r| {
            r.set == ClipSet::Train
                && r.variant == Variant::Original
                && r.split.is_some_and(|s| s <= split)
        })
        .map(|r| r.device.to_string())
        .collect()
}

/// Writes the inference copy of `model` as a burnpack record to `path` (temp name + rename).
pub fn save_model_file(model: &Model, path: &Path) -> Result<()> {
    let bytes = model
        .valid()
        .into_record()
        .into_bytes()
        .map_err(|e| io_err(path, e))?;
    let tmp = path.with_extension("bpk.tmp");
    fs::write(&tmp, &bytes[..]).map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// Loads a model record written by [`save_model_file`] (or a checkpoint's `model.bpk`) into a
/// fresh model of architecture `cfg` on `device`.
pub fn load_model_file(
    cfg: &ModelConfig,
    n_classes: usize,
    path: &Path,
    device: &Device,
) -> Result<Model> {
    let bytes = fs::read(path).map_err(|e| io_err(path, e))?;
    let record =
        ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|e| io_err(path, e))?;
    let model = cfg.init(n_classes, device);
    model.try_load_record(record).map_err(|e| io_err(path, e))
}

/// Refuses shards whose label vocabulary (`labels`, of the set at `shards`) differs from the
/// one the run `run_dir` (configuration `cfg`) was trained with.
pub fn check_labels(
    cfg: &TrainConfig,
    run_dir: &Path,
    labels: &data_specs::Vocabulary,
    shards: &Path,
) -> Result<()> {
    match &cfg.labels {
        Some(own) if own != labels => Err(TrainError::Labels {
            run: run_dir.to_path_buf(),
            run_labels: own.clone(),
            shards: shards.to_path_buf(),
            shard_labels: labels.clone(),
        }),
        _ => Ok(()),
    }
}

/// The configuration of the run `run_dir` and the shard set it names (or `shards` instead),
/// refused when the shards' label vocabulary is not the run's; also returns the shards' path.
pub fn open_run_shards(
    run_dir: &Path,
    shards: Option<&Path>,
) -> Result<(TrainConfig, ShardSet, PathBuf)> {
    let cfg = TrainConfig::load(run_dir)?;
    let path = shards.map_or_else(|| cfg.shards.clone(), Path::to_path_buf);
    let set = ShardSet::open(&path, None)?;
    check_labels(&cfg, run_dir, &set.meta().labels, &path)?;
    Ok((cfg, set, path))
}

/// The model of a finished run (`<run>/model.bpk`; when the run has not finished, the model of
/// its newest intact checkpoint), its configuration and the path it came from. `labels` is the
/// vocabulary of the shards `shards` it will see: another than the run's is refused.
pub fn load_run_model(
    run_dir: &Path,
    labels: &data_specs::Vocabulary,
    shards: &Path,
    device: &Device,
) -> Result<(TrainConfig, Model, PathBuf)> {
    let cfg = TrainConfig::load(run_dir)?;
    check_labels(&cfg, run_dir, labels, shards)?;
    let n_classes = labels.len();
    let final_path = run_dir.join(FINAL_MODEL_FILE);
    let path = if final_path.exists() {
        final_path
    } else {
        let dir = checkpoint::newest_intact(&run_dir.join(CHECKPOINTS_DIR), LAST)?;
        eprintln!(
            "note: {} has no {FINAL_MODEL_FILE} (run not finished); using {}",
            run_dir.display(),
            dir.display()
        );
        dir.join(checkpoint::MODEL_FILE)
    };
    let model = load_model_file(&cfg.model, n_classes, &path, device)?;
    Ok((cfg, model.valid(), path))
}
