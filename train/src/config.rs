//! The resolved configuration of a run ([`TrainConfig`], written to the run folder as
//! [`CONFIG_FILE`]; its hash guards `--resume`) and of its evaluation while training
//! ([`EvalConfig`]), with the selections they imply and the schedule rule applied to them
//! ([`apply_schedule_rule`]).

use std::fs;
use std::path::{Path, PathBuf};

use data_specs::ClipSet;
use serde::{Deserialize, Serialize};

use crate::augment::Augment;
use crate::error::{Result, TrainError, io_err};
use crate::loader::{Fold, FoldFilter, LoaderConfig, Selection, ShardSet};
use crate::loss::KdConfig;
use crate::model::ModelConfig;
use crate::schedule;

/// Resolved configuration file of a run folder.
pub const CONFIG_FILE: &str = "config.toml";

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
        let path = run_dir.join(CONFIG_FILE);
        let text = fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        let cfg: Self = toml::from_str(&text).map_err(|e| io_err(&path, e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The training selection of this configuration.
    pub fn selection(&self) -> Selection {
        Selection {
            max_split: Some(self.split),
            replay: self.replay,
            p_dir: self.p_dir,
            fold: self.excluded_fold().map(FoldFilter::Without),
            ..Selection::originals(ClipSet::Train)
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

/// How a run evaluates itself while training and which model it keeps.
///
/// Model selection never looks at the test set: without a validation fold the run keeps its
/// final model; with one (`validation = k/K`: location fold k of K of the training clips, the
/// hold-out machinery of `--holdout-fold`, never trained on), it keeps the model of the
/// evaluation with the best validation macro accuracy and may stop early. The test set is
/// evaluated alongside as a diagnostic (its curve is plotted, never used to choose).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalConfig {
    /// Location fold of the training clips held out for validation (`None`: no validation,
    /// the final model is kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<Fold>,
    /// Stop when the validation macro accuracy has not improved for this many evaluations
    /// (needs `validation`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<u64>,
    /// Evaluate after every this many epochs and after the last (0: about
    /// [`AUTO_EVALUATIONS`] evaluations per run, see [`EvalConfig::interval`]).
    pub every: u64,
    /// Training rows of the precise BatchNorm before each evaluation and before the final
    /// model is saved ([`crate::precise_bn`]; 0 switches it off and keeps the running
    /// averages).
    pub precise_bn_rows: usize,
}

/// Evaluations per run when [`EvalConfig::every`] is 0.
pub const AUTO_EVALUATIONS: u64 = 10;

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            validation: None,
            early_stop: None,
            every: 0,
            precise_bn_rows: crate::precise_bn::DEFAULT_ROWS,
        }
    }
}

impl EvalConfig {
    /// Epochs between evaluations of a run of `epochs` epochs: `every`, or
    /// `ceil(epochs / AUTO_EVALUATIONS)` when 0.
    pub fn interval(&self, epochs: u64) -> u64 {
        if self.every > 0 {
            self.every
        } else {
            epochs.div_ceil(AUTO_EVALUATIONS).max(1)
        }
    }

    /// Whether the run evaluates after zero-based epoch `epoch` (every interval, and always
    /// after the last epoch).
    pub fn due(&self, epoch: u64, epochs: u64) -> bool {
        (epoch + 1).is_multiple_of(self.interval(epochs)) || epoch + 1 >= epochs
    }

    /// The validation rows: the originals of the training clips of split `split` in the
    /// validation fold.
    pub fn validation_selection(&self, split: u8) -> Option<Selection> {
        self.validation.map(|f| Selection {
            max_split: Some(split),
            fold: Some(FoldFilter::Only(f)),
            ..Selection::originals(ClipSet::Train)
        })
    }
}
