//! Batched inference over the ORIGINAL rows of a set (no DIR, no replay rows) and the evaluation
//! of a model on them: macro accuracy, per class/device/group, log-loss, confusion
//! ([`crate::metrics::EvalReport`]).

use std::collections::BTreeSet;

use burn::tensor::Device;
use data_specs::ClipSet;

use crate::loader::{Loader, LoaderConfig, Selection, ShardSet};
use crate::metrics::{EvalAccumulator, EvalReport};
use crate::model::Model;
use crate::trainer::{Result, TrainError};

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
