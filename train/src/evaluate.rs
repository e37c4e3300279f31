//! Batched inference over the ORIGINAL rows of a set (no DIR, no replay rows) and the evaluation
//! of a model on them: macro accuracy, per class/device/group, log-loss, confusion
//! ([`crate::metrics::EvalReport`]).

use std::collections::BTreeSet;

use burn::tensor::Device;
use data_specs::ClipSet;
use serde::{Deserialize, Serialize};

use crate::loader::{Fold, FoldFilter, Loader, LoaderConfig, Selection, ShardSet};
use crate::metrics::{EvalAccumulator, EvalReport};
use crate::model::Model;
use crate::trainer::{Result, TrainError};

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
            ..originals(ClipSet::Train)
        })
    }
}

/// The original rows of one set of a shard set, in storage order, batched for inference.
#[derive(Debug)]
pub struct EvalSet {
    loader: Option<Loader>,
    len: usize,
}

/// The selection of the original rows of `set` (DIR and replay rows excluded).
pub fn originals(set: ClipSet) -> Selection {
    Selection {
        set,
        max_split: None,
        devices: None,
        replay: false,
        p_dir: 0.0,
        fold: None,
    }
}

impl EvalSet {
    /// The original rows of `clip_set` in `set`, in batches of `batch_size` (an empty set when
    /// the shards hold no such row).
    pub fn new(set: &ShardSet, clip_set: ClipSet, batch_size: usize) -> Result<Self> {
        Self::with_selection(set, originals(clip_set), batch_size)
    }

    /// The rows of `selection` (built from [`originals`], optionally narrowed to a location
    /// fold), in storage order.
    pub fn with_selection(set: &ShardSet, selection: Selection, batch_size: usize) -> Result<Self> {
        let cfg = LoaderConfig {
            batch_size: batch_size.max(1),
            shuffle: false,
            drop_last: false,
            ..LoaderConfig::default()
        };
        let loader = Loader::new(set, selection, cfg)?;
        let len = loader.epoch_len();
        Ok(Self {
            loader: (len > 0).then_some(loader),
            len,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the set has no row.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Runs `model` (an inference copy, `model.valid()`) over every row and calls `f(rows,
    /// logits [B, n_classes] row-major, labels)` per batch.
    pub fn for_each_batch(
        &self,
        model: &Model,
        device: &Device,
        mut f: impl FnMut(&[u32], &[f32], &[i64]) -> Result<()>,
    ) -> Result<()> {
        let Some(loader) = &self.loader else {
            return Ok(());
        };
        for batch in loader.epoch(0) {
            let batch = batch?;
            let labels = batch.labels().to_vec();
            let tb = batch.into_tensors(device);
            let logits = model.forward(tb.logmel);
            let host = logits
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| TrainError::Config(format!("reading the logits: {e:?}")))?;
            f(&tb.rows, &host, &labels)?;
        }
        Ok(())
    }

    /// Evaluates `model` on the labelled rows; `seen` are the devices of the training
    /// selection (the "seen" group).
    pub fn evaluate(
        &self,
        model: &Model,
        set: &ShardSet,
        seen: BTreeSet<String>,
        device: &Device,
    ) -> Result<EvalReport> {
        let meta = set.meta();
        let k = meta.n_classes();
        let mut acc = EvalAccumulator::new(
            meta.labels.names().map(str::to_string).collect(),
            meta.devices.names().map(str::to_string).collect(),
            seen,
        );
        self.for_each_batch(model, device, |rows, logits, labels| {
            let bad = crate::finite::non_finite_logits(set, rows, Some(logits), k);
            if !bad.is_empty() {
                return Err(TrainError::NonFinite(format!("evaluation{bad}")));
            }
            for ((row, lg), &y) in rows.iter().zip(logits.chunks_exact(k)).zip(labels) {
                if y >= 0 {
                    acc.push(lg, y as usize, set.row_info(*row).device)?;
                }
            }
            Ok(())
        })?;
        Ok(acc.finish())
    }
}
