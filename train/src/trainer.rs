//! The knowledge-distillation trainer: one loop that turns a shard folder into a finished run
//! folder.
//!
//! ```text
//! ShardSet::open -> Loader (Selection: train set, split P, p_dir, replay)     per epoch e:
//!   for each batch (step s):  augment (rng = epoch_rng(seed, s, AUGMENT_STREAM))
//!                             -> forward -> kd_loss (teacher logits + mask) | cross_entropy
//!                             -> backward -> AdamW step with lr = LrSchedule::lr_at(s)
//!   every few epochs and after the last (EvalConfig::due): precise BN over training rows,
//!   then evaluate on the validation fold (if any) and on the test set (a diagnostic)
//!   metrics.jsonl += EpochMetrics;  checkpoints/last  (+ checkpoints/best when the validation
//!   macro accuracy improved); optional early stopping on the validation accuracy
//! start: the schedule (ScheduleRule, chosen by the caller) and the floor (crate::floor)
//! end: model.bpk (the final model, or the validation-selected one; precise BN), report.md
//!   with model vs floor on the test set, loss/accuracy/confusion PNGs, then QAT if asked
//! ```
//!
//! # Model selection
//! Never by the test set. Without a validation fold (`EvalConfig::validation`) the run keeps
//! its final model; with one (location fold k of K of the training clips, left out of
//! training), `checkpoints/best` and `model.bpk` hold the model of the evaluation with the best
//! validation macro accuracy. The per-epoch test accuracy is logged and plotted as a
//! diagnostic only.
//!
//! # Reproducibility and resume
//! Every random draw is derived from the run seed: the model initialisation seeds the device with
//! `derive_seed(seed, 0, INIT_STREAM)`; the loader's variant draw and shuffle depend only on
//! `(seed, epoch)`; the augmentation generator of update `s` is `epoch_rng(seed, s,
//! AUGMENT_STREAM)` and the device is re-seeded with `derive_seed(seed, s, DEVICE_STREAM)` before
//! each update. A checkpoint is written at the end of every epoch (model, AdamW moments, step,
//! loader state, best metric), so `--resume` continues at the next epoch with exactly the
//! generators an uninterrupted run would use.
//!
//! # Threads
//! The rayon global pool (size `--threads`, default all cores) runs burn Flex's gemm/conv kernels
//! and the fused selective scan; the loader decodes the next batches on its own prefetch thread,
//! so Parquet decoding overlaps the compute.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device};
use data_specs::{ClipSet, Variant};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::augment::Augment;
use crate::checkpoint::{self, CheckpointError, TrainState};
use crate::complexity;
use crate::evaluate::{EvalConfig, EvalSet};
use crate::loader::{
    Fold, FoldFilter, LoaderConfig, LoaderError, LoaderState, Selection, ShardSet,
};
use crate::loss::{self, KdConfig};
use crate::metrics::{EvalReport, MetricsError};
use crate::model::{Model, ModelConfig, ModelConfigError};
use crate::report::{EpochMetrics, ReportError, RunDir, RunSummary};
use crate::schedule::{self, LrSchedule};

/// File name of the final model record (burnpack) in the run folder.
pub const FINAL_MODEL_FILE: &str = "model.bpk";
/// Checkpoint tag of the last epoch.
pub const LAST: &str = "last";
/// Checkpoint tag of the evaluation with the best validation macro accuracy.
pub const BEST: &str = "best";
/// RNG stream of the model initialisation.
pub const INIT_STREAM: u64 = 1;
/// RNG stream of the batch augmentations (indexed by update step).
pub const AUGMENT_STREAM: u64 = 2;
/// RNG stream of the device generator (indexed by update step).
pub const DEVICE_STREAM: u64 = 3;

/// Errors of training, evaluation and prediction; every variant about a file names it.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The shard loader failed.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The run folder could not be written.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// The model configuration is invalid.
    #[error(transparent)]
    Model(#[from] ModelConfigError),
    /// Evaluation bookkeeping failed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// A file operation failed.
    #[error("{path}: {problem}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
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

/// Result alias of the trainer.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        problem: e.to_string(),
    }
}

/// The resolved configuration of a run (written to `config.toml`; its hash guards `--resume`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Run name (folder under the runs root).
    pub name: String,
    /// Shard folder or manifest.
    pub shards: PathBuf,
    /// How the model was named on the command line (preset or TOML file).
    pub model_spec: String,
    /// DCASE2024 training split in percent (5, 10, 25, 50, 100).
    pub split: u8,
    /// Number of epochs.
    pub epochs: u64,
    /// Rows per batch.
    pub batch_size: usize,
    /// Planned optimizer updates (epochs x updates per epoch), as the schedule rule computed
    /// them (informative: the run's length is `epochs`; 0 when the caller set no rule).
    #[serde(default)]
    pub updates: u64,
    /// How epochs, batch and warm-up were chosen ([`schedule::ScheduleRule::reason`]).
    #[serde(default)]
    pub schedule_rule: String,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Warm-up updates, used as given (the schedule rule's default is capped at 10 % of the
    /// run, [`schedule::default_warmup`]).
    pub warmup_steps: u64,
    /// Run seed.
    pub seed: u64,
    /// Probability of drawing a DIR variant of a clip.
    pub p_dir: f64,
    /// Include replay rows.
    pub replay: bool,
    /// Leave this fold of the training clips out (`--holdout-fold k/K`, grouped by recording
    /// location): the run of one out-of-fold teacher, see [`crate::predict`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_fold: Option<Fold>,
    /// Use the KD loss where the shards carry teacher logits (false: plain cross-entropy).
    pub use_kd: bool,
    /// QAT epochs after the float epochs (0: none).
    pub qat_epochs: u64,
    /// Compute device the run was started on (`--device`, [`crate::backend::parse_device`]);
    /// absent from configs written before the flag existed (they ran on the CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// KD settings.
    pub kd: KdConfig,
    /// Batch augmentations.
    pub augment: Augment,
    /// The model architecture.
    pub model: ModelConfig,
    /// Evaluation while training: validation fold, early stopping, interval, precise BN.
    #[serde(default)]
    pub eval: EvalConfig,
    /// The label vocabulary of the shards the run was trained on (recorded when the run
    /// starts; absent in runs of older versions). Evaluation, prediction, QAT and resume refuse
    /// shards with another vocabulary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<data_specs::Vocabulary>,
}

impl TrainConfig {
    /// Checks the settings that would otherwise fail late or silently.
    pub fn validate(&self) -> Result<()> {
        if !data_specs::SPLITS.contains(&self.split) {
            return Err(TrainError::Config(format!(
                "--split {} is not one of {:?}",
                self.split,
                data_specs::SPLITS
            )));
        }
        if self.batch_size == 0 {
            return Err(TrainError::Config("--batch-size must be at least 1".into()));
        }
        if self.epochs == 0 {
            return Err(TrainError::Config("--epochs must be at least 1".into()));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TrainError::Config(format!("--lr {} must be > 0", self.lr)));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(TrainError::Config(format!(
                "--weight-decay {} must be >= 0",
                self.weight_decay
            )));
        }
        if !(0.0..=1.0).contains(&self.p_dir) {
            return Err(TrainError::Config(format!(
                "--p-dir {} is not a probability",
                self.p_dir
            )));
        }
        let tau_ok = self.kd.tau.is_finite() && self.kd.tau > 0.0;
        if !tau_ok || !(0.0..=1.0).contains(&self.kd.lambda) {
            return Err(TrainError::Config(format!(
                "--kd-lambda {} must be in [0, 1] and --kd-tau {} > 0",
                self.kd.lambda, self.kd.tau
            )));
        }
        self.augment
            .validate()
            .map_err(|e| TrainError::Config(e.to_string()))?;
        self.model.validate()?;
        if self.eval.validation.is_some() && self.holdout_fold.is_some() {
            return Err(TrainError::Config(
                "--val-fold and --holdout-fold cannot be combined (both leave a location fold \
                 out)"
                    .into(),
            ));
        }
        if self.eval.validation.is_some_and(|f| !f.is_valid()) {
            return Err(TrainError::Config("--val-fold must be a fold k/K".into()));
        }
        if self.eval.early_stop.is_some() && self.eval.validation.is_none() {
            return Err(TrainError::Config(
                "--early-stop needs a validation fold (--val-fold k/K)".into(),
            ));
        }
        Ok(())
    }

    /// The settings that depend on the shards: the frequency-mask fill becomes the front end's
    /// log of silence ([`Augment::for_frontend`]) unless set.
    pub fn for_frontend(mut self, fe: &data_specs::FrontEndConfig) -> Self {
        self.augment = self.augment.for_frontend(fe);
        self
    }

    /// The location fold the training selection leaves out (hold-out or validation), if any.
    pub fn excluded_fold(&self) -> Option<Fold> {
        self.holdout_fold.or(self.eval.validation)
    }

    /// Reads the `config.toml` of a run folder.
    pub fn load(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(crate::report::CONFIG_FILE);
        let text = fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        let cfg: Self = toml::from_str(&text).map_err(|e| io_err(&path, e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The training selection of this configuration.
    pub fn selection(&self) -> Selection {
        Selection {
            set: ClipSet::Train,
            max_split: Some(self.split),
            devices: None,
            replay: self.replay,
            p_dir: self.p_dir,
            fold: self.excluded_fold().map(FoldFilter::Without),
        }
    }
}

/// Rows per epoch of the training selection of `cfg` in `set` (one per clip plus replay rows):
/// the `N` of [`schedule::ScheduleRule`].
pub fn epoch_rows(set: &ShardSet, cfg: &TrainConfig) -> Result<usize> {
    let probe = crate::loader::Loader::new(set, cfg.selection(), LoaderConfig::default())?;
    Ok(probe.epoch_len())
}

/// Sets `cfg`'s batch size, epochs, warm-up, planned updates and rule line from the schedule
/// rule for its training selection in `set`, the values in `flags` winning; returns the rule.
pub fn apply_schedule_rule(
    cfg: &mut TrainConfig,
    set: &ShardSet,
    flags: &schedule::ScheduleFlags,
) -> Result<schedule::ScheduleRule> {
    let rows = epoch_rows(set, cfg)?;
    let rule = schedule::ScheduleRule::for_rows(rows, flags);
    cfg.batch_size = rule.batch_size;
    cfg.epochs = rule.epochs;
    cfg.warmup_steps = rule.warmup_steps;
    cfg.updates = rule.updates;
    cfg.schedule_rule = rule.reason.clone();
    Ok(rule)
}

/// Training rows (any variant) of a shard set.
pub fn count_train_rows(set: &ShardSet) -> usize {
    set.rows().filter(|r| r.set == ClipSet::Train).count()
}

/// How a run is started.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The resolved configuration (ignored on resume: the run's own `config.toml` is used).
    pub config: TrainConfig,
    /// Folder that holds the run folders.
    pub runs_root: PathBuf,
    /// Continue the run folder `runs_root/<config.name>` from its last checkpoint.
    pub resume: bool,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// Stop after this many completed epochs without finishing the run (tests of resume).
    pub stop_after: Option<u64>,
}

/// What a finished (or stopped) run returns.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Evaluation of the kept model (final, or validation-selected) on the test set; for a
    /// stopped run, of the last evaluated epoch.
    pub final_eval: Option<EvalReport>,
    /// `(epoch, validation macro accuracy)` of `checkpoints/best` (runs with a validation
    /// fold).
    pub best: Option<(u64, f64)>,
    /// Zero-based epoch of the kept model.
    pub selected_epoch: Option<u64>,
    /// The floor on the same test rows ([`crate::floor`]), when it could be computed.
    pub floor: Option<crate::floor::Floor>,
    /// True when early stopping ended the run before its last epoch.
    pub stopped_early: bool,
    /// Every epoch's metrics.
    pub metrics: Vec<EpochMetrics>,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
    /// Training examples per second over this invocation's epochs.
    pub samples_per_s: f64,
    /// True when the run completed all epochs.
    pub finished: bool,
}

/// Rows of one epoch counted by device and variant (for the starting message).
fn describe_rows(
    set: &ShardSet,
    rows: &[u32],
) -> (BTreeMap<String, usize>, BTreeMap<String, usize>, usize) {
    let mut by_device = BTreeMap::new();
    let mut by_variant = BTreeMap::new();
    let mut with_teacher = 0;
    for &r in rows {
        let info = set.row_info(r);
        *by_device.entry(info.device.to_string()).or_insert(0) += 1;
        *by_variant
            .entry(format!("{:?}", info.variant).to_lowercase())
            .or_insert(0) += 1;
        with_teacher += usize::from(info.has_teacher);
    }
    (by_device, by_variant, with_teacher)
}

fn fmt_counts(m: &BTreeMap<String, usize>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
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
        let dir = checkpoint::newest_intact(&run_dir.join("checkpoints"), LAST)?;
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

/// The optimizer of the recipe: AdamW with decoupled weight decay (eps 1e-8 as in PyTorch's
/// AdamW, which the paper used; burn's default would be 1e-5).
fn optimizer(cfg: &TrainConfig) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay as f32)
        .with_epsilon(1e-8)
        .init()
}

/// Host-side argmax accuracy of `logits` `[B, C]` against `labels`.
fn count_correct(logits: &[f32], labels: &[i64], n_classes: usize) -> usize {
    logits
        .chunks_exact(n_classes)
        .zip(labels)
        .filter(|&(row, &y)| {
            let mut best = 0;
            for (k, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = k;
                }
            }
            best as i64 == y
        })
        .count()
}

/// Train (or resume) a run; see the module docs for the loop.
pub fn train(opts: TrainOptions) -> Result<TrainOutcome> {
    let t_start = Instant::now();
    let run_path = opts.runs_root.join(&opts.config.name);
    // On resume, the checkpoints carry the hash of the configuration as written; the run name
    // then follows the folder, so a moved or renamed run folder resumes under its new name.
    let (mut cfg, resumed_hash) = if opts.resume {
        let mut c = TrainConfig::load(&run_path)?;
        let hash = checkpoint::config_hash(&c);
        c.name = opts.config.name.clone();
        (c, Some(hash))
    } else {
        if run_path.exists() {
            return Err(TrainError::RunExists(run_path));
        }
        (opts.config.clone(), None)
    };
    cfg.validate()?;
    let set = ShardSet::open(&cfg.shards, None)?;
    let meta = set.meta().clone();
    check_labels(&cfg, &run_path, &meta.labels, &cfg.shards)?;
    cfg.labels = Some(meta.labels.clone());
    let cfg = cfg.for_frontend(&meta.frontend);
    let n_classes = meta.n_classes();
    let (n_mels, n_frames) = (meta.frontend.n_mels, meta.frontend.n_frames());
    let run = RunDir::create(&opts.runs_root, &cfg.name)?;
    let config_hash = resumed_hash.unwrap_or_else(|| checkpoint::config_hash(&cfg));
    if !opts.resume {
        run.write_config(&cfg)?;
    }

    // Loaders. drop_last keeps BatchNorm away from a 1-example batch at the end of an epoch.
    let mut loader_cfg = LoaderConfig {
        batch_size: cfg.batch_size,
        seed: cfg.seed,
        shuffle: true,
        drop_last: false,
        prefetch_next_epoch: true,
        ..LoaderConfig::default()
    };
    let probe = crate::loader::Loader::new(&set, cfg.selection(), loader_cfg.clone())?;
    loader_cfg.drop_last = probe.epoch_len() > cfg.batch_size;
    drop(probe);
    let test = EvalSet::new(&set, ClipSet::Test, cfg.batch_size.max(64))?;
    let val = match cfg.eval.validation_selection(cfg.split) {
        Some(sel) => Some(EvalSet::with_selection(&set, sel, cfg.batch_size.max(64))?),
        None => None,
    };
    let seen = seen_devices(&set, cfg.split);

    // Model, optimizer, state.
    let device = crate::backend::training_device();
    // Drawn now from the CPU generator, on a GPU too: one seed, one initial model.
    let init_seed = checkpoint::derive_seed(cfg.seed, 0, INIT_STREAM);
    let mut model =
        crate::backend::init_model(&device, init_seed, |d| cfg.model.init(n_classes, d));
    let mut optim = optimizer(&cfg);
    let mut state = TrainState {
        epoch: 0,
        step: 0,
        seed: cfg.seed,
        loader_state: serde_json::to_value(LoaderState {
            seed: cfg.seed,
            epoch: 0,
            batch: 0,
        })
        .unwrap_or_default(),
        best_metric: None,
        best_epoch: None,
        config_hash: config_hash.clone(),
    };
    let mut metrics = Vec::new();
    if opts.resume {
        let dir = checkpoint::newest_intact(&run.path().join("checkpoints"), LAST)?;
        let (m, o, s) = checkpoint::load_checkpoint(&dir, model, optim)?;
        checkpoint::check_config(&dir, &s, &config_hash)?;
        model = m;
        optim = o;
        state = s;
        metrics = run.truncate_metrics(state.epoch)?;
        eprintln!(
            "resuming {} at epoch {} (update {}) from {}",
            cfg.name,
            state.epoch,
            state.step,
            dir.display()
        );
    }
    let loader_state: LoaderState =
        serde_json::from_value(state.loader_state.clone()).unwrap_or(LoaderState {
            seed: cfg.seed,
            epoch: state.epoch,
            batch: 0,
        });
    let loader = crate::loader::Loader::resume(&set, cfg.selection(), loader_cfg, loader_state)?;
    let steps_per_epoch = loader.batches_per_epoch();
    let total_steps = cfg.epochs * steps_per_epoch;
    let sched = LrSchedule::exact(cfg.lr, cfg.warmup_steps, total_steps);

    // Starting message.
    let cx = complexity::summary(&cfg.model, n_classes, n_mels, n_frames);
    let epoch0 = loader.epoch_order(state.epoch);
    let (by_device, by_variant, with_teacher) = describe_rows(&set, &epoch0);
    let use_kd = cfg.use_kd && with_teacher > 0;
    eprintln!(
        "model {} ({}): {} parameters, {:.2} M MACs, input {n_mels}x{n_frames}, {n_classes} classes",
        cfg.model.name(),
        cfg.model_spec,
        cx.params(),
        cx.macs() as f64 / 1e6
    );
    eprintln!(
        "training rows per epoch: {} (split {} %, p_dir {}, replay {}{}) from {}",
        epoch0.len(),
        cfg.split,
        cfg.p_dir,
        if cfg.replay { "on" } else { "off" },
        cfg.holdout_fold
            .map(|f| format!(", fold {f} left out"))
            .unwrap_or_default(),
        cfg.shards.display()
    );
    eprintln!("  by device:  {}", fmt_counts(&by_device));
    eprintln!("  by variant: {}", fmt_counts(&by_variant));
    eprintln!("test rows: {} (originals)", test.len());
    if let (Some(v), Some(f)) = (&val, cfg.eval.validation) {
        eprintln!(
            "validation rows: {} (originals of location fold {f}, left out of training; they \
             select the kept model{})",
            v.len(),
            cfg.eval
                .early_stop
                .map(|p| format!(" and stop the run after {p} evaluations without gain"))
                .unwrap_or_default()
        );
    }
    eprintln!(
        "loss: {}",
        if use_kd {
            format!(
                "KD (lambda {}, tau {}) on the {with_teacher} rows with teacher logits ({}), \
                 cross-entropy on the others",
                cfg.kd.lambda,
                cfg.kd.tau,
                if meta.teacher.is_empty() {
                    "unnamed teacher"
                } else {
                    &meta.teacher
                }
            )
        } else if cfg.use_kd {
            "plain cross-entropy: the shards carry no teacher logits for the selected rows".into()
        } else {
            "plain cross-entropy (--no-kd)".into()
        }
    );
    eprintln!(
        "schedule: {total_steps} updates of {} ({} epochs x {steps_per_epoch}, drop_last {}), \
         lr {} warm-up {} updates then cosine to 0{}",
        cfg.batch_size,
        cfg.epochs,
        loader.config().drop_last,
        cfg.lr,
        sched.warmup_steps,
        if cfg.schedule_rule.is_empty() {
            String::new()
        } else {
            format!("\n  rule: {}", cfg.schedule_rule)
        }
    );
    eprintln!(
        "evaluation: every {} epochs and after the last, precise BN over {} training rows first",
        cfg.eval.interval(cfg.epochs),
        cfg.eval.precise_bn_rows
    );
    eprintln!(
        "threads: {} rayon (burn Flex kernels, selective scan) + 1 loader prefetch thread",
        rayon::current_num_threads()
    );
    eprintln!("run folder: {}", run.path().display());
    if steps_per_epoch == 0 {
        return Err(TrainError::Config(
            "the training selection is empty (check --split and the shards)".into(),
        ));
    }
    let floor = compute_floor(&set, &cfg, seen.clone());

    let mut train_samples = 0u64;
    let mut train_seconds = 0.0f64;
    let mut last_eval: Option<(u64, EvalReport)> = None;
    let mut epochs_this_call = 0u64;
    let log_to_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log_every = steps_per_epoch.div_ceil(10).max(1);
    let mut stopped_early = early_stop_reached(&metrics, cfg.eval.early_stop);
    while state.epoch < cfg.epochs && !stopped_early {
        if opts.stop_after.is_some_and(|k| epochs_this_call >= k) {
            break;
        }
        let epoch = state.epoch;
        let t_epoch = Instant::now();
        let bar = if opts.progress {
            let b = ProgressBar::new(steps_per_epoch);
            b.set_style(
                ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
            b
        } else {
            ProgressBar::hidden()
        };
        let (mut loss_sum, mut n_seen, mut n_correct, mut lr) = (0.0f64, 0u64, 0u64, 0.0);
        for batch in loader.epoch(epoch) {
            let batch = batch?;
            let step = state.step;
            lr = sched.lr_at(step);
            device.seed(checkpoint::derive_seed(cfg.seed, step, DEVICE_STREAM));
            let mut rng = checkpoint::epoch_rng(cfg.seed, step, AUGMENT_STREAM);
            crate::finite::check_batch(&set, &batch)?;
            let (batch_index, b) = (batch.index(), batch.len() as u64);
            let host_labels = batch.labels().to_vec();
            // The step's tensor work on a pool worker (`in_pool`); the batch came from the
            // loader's channel outside it.
            let (next, loss_value, host_logits) = crate::backend::in_pool(|| {
                let tb = batch.into_tensors(&device);
                let x = cfg.augment.apply(tb.logmel, &mut rng);
                let logits = model.forward(x);
                let loss = if use_kd {
                    loss::kd_loss_parts(
                        logits.clone(),
                        tb.labels,
                        tb.teacher_logits,
                        tb.teacher_mask,
                        &cfg.kd,
                    )
                    .total
                } else {
                    loss::cross_entropy(logits.clone(), tb.labels)
                };
                let loss_value: f32 = loss.clone().into_scalar();
                if !loss_value.is_finite() {
                    let host = logits.clone().into_data().try_to_vec::<f32>().ok();
                    return Err(TrainError::Diverged {
                        step,
                        loss: loss_value,
                        detail: crate::finite::non_finite_logits(
                            &set,
                            &tb.rows,
                            host.as_deref(),
                            n_classes,
                        ),
                    });
                }
                let host_logits = logits
                    .detach()
                    .into_data()
                    .try_to_vec::<f32>()
                    .map_err(|e| TrainError::Config(format!("reading the logits: {e:?}")))?;
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                Ok((optim.step(lr, model, grads), loss_value, host_logits))
            })?;
            model = next;
            n_correct += count_correct(&host_logits, &host_labels, n_classes) as u64;
            loss_sum += loss_value as f64 * b as f64;
            n_seen += b;
            state.step += 1;
            let secs = t_epoch.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} samples/s",
                loss_sum / n_seen as f64,
                lr,
                n_seen as f64 / secs
            ));
            bar.inc(1);
            // Without a terminal the bar is invisible: log about ten lines per epoch instead.
            if opts.progress && !log_to_terminal && (batch_index + 1) % log_every == 0 {
                eprintln!(
                    "  epoch {} update {}/{steps_per_epoch}: loss {:.4} lr {:.2e} {:.1} samples/s",
                    epoch + 1,
                    batch_index + 1,
                    loss_sum / n_seen as f64,
                    lr,
                    n_seen as f64 / secs
                );
            }
        }
        let train_secs = t_epoch.elapsed().as_secs_f64();
        bar.finish_and_clear();
        train_samples += n_seen;
        train_seconds += train_secs;

        // Every few epochs: precise BN, then validation (selection) and test (diagnostic).
        let evaluation = if cfg.eval.due(epoch, cfg.epochs) {
            let (m, ev) = evaluate_now(model, &set, &cfg, &test, val.as_ref(), &seen)?;
            model = m;
            Some(ev)
        } else {
            None
        };
        state.epoch += 1;
        state.loader_state = serde_json::to_value(LoaderState {
            seed: cfg.seed,
            epoch: state.epoch,
            batch: 0,
        })
        .unwrap_or_default();
        let val_acc = evaluation
            .as_ref()
            .and_then(|(_, v)| v.as_ref())
            .filter(|v| v.n_examples > 0)
            .map(|v| v.macro_accuracy);
        let improved = val_acc.is_some_and(|a| state.best_metric.is_none_or(|b| a > b));
        if improved {
            state.best_metric = val_acc;
            state.best_epoch = Some(epoch);
        }
        let test_eval = evaluation
            .as_ref()
            .map(|(t, _)| t)
            .filter(|t| t.n_examples > 0);
        let m = EpochMetrics {
            epoch,
            step: state.step,
            lr,
            train_loss: loss_sum / n_seen.max(1) as f64,
            train_acc: n_correct as f64 / n_seen.max(1) as f64,
            test_macro_acc: test_eval.map(|t| t.macro_accuracy),
            test_log_loss: test_eval.map(|t| t.log_loss),
            seconds: t_epoch.elapsed().as_secs_f64(),
            samples_per_s: n_seen as f64 / train_secs.max(1e-9),
            val_macro_acc: val_acc,
        };
        run.append_metrics(&m)?;
        checkpoint::save_checkpoint(&run.checkpoint_dir(LAST), &model, &optim, &state)?;
        if improved {
            checkpoint::save_checkpoint(&run.checkpoint_dir(BEST), &model, &optim, &state)?;
        }
        eprintln!("{}", epoch_line(&m, cfg.epochs, improved));
        metrics.push(m);
        if let Some((t, _)) = evaluation {
            last_eval = Some((epoch, t));
        }
        epochs_this_call += 1;
        stopped_early = early_stop_reached(&metrics, cfg.eval.early_stop);
        if stopped_early && state.epoch < cfg.epochs {
            eprintln!(
                "early stop: no validation gain in {} evaluations (best: epoch {})",
                cfg.eval.early_stop.unwrap_or(0),
                state.best_epoch.map_or(0, |e| e + 1)
            );
        }
    }

    let finished = state.epoch >= cfg.epochs || stopped_early;
    let best = state.best_epoch.zip(state.best_metric);
    let samples_per_s = train_samples as f64 / train_seconds.max(1e-9);
    if !finished {
        return Ok(TrainOutcome {
            run_dir: run.path().to_path_buf(),
            final_eval: last_eval.map(|(_, e)| e),
            best,
            selected_epoch: None,
            floor,
            metrics,
            seconds: t_start.elapsed().as_secs_f64(),
            samples_per_s,
            finished,
            stopped_early,
        });
    }
    // The kept model: the validation-selected one, else the final one; its BN statistics
    // recomputed for its weights (precise BN) before it is saved and evaluated.
    let last_epoch = state.epoch.saturating_sub(1);
    let (model, selected_epoch, selection) = match state.best_epoch {
        Some(e) if val.is_some() => {
            let path = run.checkpoint_dir(BEST).join(checkpoint::MODEL_FILE);
            let m = load_model_file(&cfg.model, n_classes, &path, &device)?;
            let what = format!(
                "the validation-selected model (epoch {} of {}, validation macro accuracy {:.2} %)",
                e + 1,
                state.epoch,
                100.0 * state.best_metric.unwrap_or(0.0)
            );
            (m, e, what)
        }
        _ => (
            model,
            last_epoch,
            format!("the final model (epoch {})", state.epoch),
        ),
    };
    let (model, final_eval) = match last_eval {
        Some((e, eval)) if e == selected_epoch => (model, eval),
        // Another epoch's model, or a resumed finished run: precise BN and evaluate it.
        _ => {
            let (m, (eval, _)) = evaluate_now(model, &set, &cfg, &test, None, &seen)?;
            (m, eval)
        }
    };
    save_model_file(&model, &run.path().join(FINAL_MODEL_FILE))?;
    let total_seconds: f64 = metrics.iter().map(|m| m.seconds).sum();
    let summary = RunSummary {
        name: cfg.name.clone(),
        complexity: cx.to_string(),
        total_seconds,
        epochs: metrics.clone(),
        selection,
        floor: floor.as_ref().map(|f| f.eval.clone()),
    };
    run.write_report(&summary, &final_eval)?;
    // QAT fine-tuning of the kept model (model.bpk, precise BN statistics), then int8 export
    // (runs/<name>/qat/).
    crate::qat_hook::run_qat_phase(run.path(), cfg.qat_epochs, opts.progress)?;
    Ok(TrainOutcome {
        run_dir: run.path().to_path_buf(),
        final_eval: Some(final_eval),
        best,
        selected_epoch: Some(selected_epoch),
        floor,
        metrics,
        seconds: t_start.elapsed().as_secs_f64(),
        samples_per_s,
        finished,
        stopped_early,
    })
}

/// Precise BN of `model` over the run's training rows (unless switched off), then the
/// evaluation of its inference copy on the test set and, when given, the validation set.
fn evaluate_now(
    model: Model,
    set: &ShardSet,
    cfg: &TrainConfig,
    test: &EvalSet,
    val: Option<&EvalSet>,
    seen: &BTreeSet<String>,
) -> Result<(Model, (EvalReport, Option<EvalReport>))> {
    let eval_device = crate::backend::default_device();
    let model = if cfg.eval.precise_bn_rows > 0 {
        crate::precise_bn::precise_bn_on_training_rows(
            model,
            set,
            cfg.selection(),
            cfg.batch_size,
            cfg.eval.precise_bn_rows,
            &eval_device,
        )?
        .0
    } else {
        model
    };
    let inference = model.valid();
    let t = test.evaluate(&inference, set, seen.clone(), &eval_device)?;
    let v = match val {
        Some(v) => Some(v.evaluate(&inference, set, seen.clone(), &eval_device)?),
        None => None,
    };
    Ok((model, (t, v)))
}

/// True when the last `patience` evaluations with a validation accuracy brought no gain over
/// the best one before them (`None`: never).
pub fn early_stop_reached(metrics: &[EpochMetrics], patience: Option<u64>) -> bool {
    let Some(p) = patience else {
        return false;
    };
    let vals: Vec<f64> = metrics.iter().filter_map(|m| m.val_macro_acc).collect();
    let Some(best_at) = vals
        .iter()
        .enumerate()
        .fold(None, |b: Option<(usize, f64)>, (i, &v)| match b {
            Some((_, bv)) if v <= bv => b,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i)
    else {
        return false;
    };
    (vals.len() - 1 - best_at) as u64 >= p.max(1)
}

/// The floor of a run ([`crate::floor`]) with its starting message; `None` (with a note) when
/// it cannot be computed, which does not stop the run.
fn compute_floor(
    set: &ShardSet,
    cfg: &TrainConfig,
    seen: BTreeSet<String>,
) -> Option<crate::floor::Floor> {
    match crate::floor::floor(set, cfg.split, cfg.excluded_fold(), seen) {
        Ok(f) => {
            let group = |name: &str| {
                f.eval
                    .per_group
                    .iter()
                    .find(|g| g.name == name)
                    .map_or_else(
                        || "-".into(),
                        |g| format!("{:.2} %", 100.0 * g.macro_accuracy),
                    )
            };
            eprintln!(
                "floor (logistic regression on log-mel mean/std, {} training clips, L2 {}): \
                 test macro accuracy {:.2} % (seen {}, unseen {}), {:.1} s",
                f.n_train,
                f.lambda,
                100.0 * f.eval.macro_accuracy,
                group("seen"),
                group("unseen"),
                f.seconds
            );
            Some(f)
        }
        Err(e) => {
            eprintln!("note: no floor for this run: {e}");
            None
        }
    }
}

/// The console line of one epoch.
fn epoch_line(m: &EpochMetrics, epochs: u64, improved: bool) -> String {
    let mut line = format!(
        "epoch {:>3}/{epochs}: loss {:.4} train acc {:5.1} %",
        m.epoch + 1,
        m.train_loss,
        100.0 * m.train_acc
    );
    if let Some(v) = m.val_macro_acc {
        line.push_str(&format!(" | val macro acc {:5.2} %", 100.0 * v));
    }
    if let (Some(a), Some(l)) = (m.test_macro_acc, m.test_log_loss) {
        line.push_str(&format!(
            " | test macro acc {:5.2} % log-loss {l:.4} (diagnostic)",
            100.0 * a
        ));
    }
    line.push_str(&format!(
        " | {:.0} samples/s, {:.0} s{}",
        m.samples_per_s,
        m.seconds,
        if improved { " (best)" } else { "" }
    ));
    line
}
