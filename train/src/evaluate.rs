//! The one evaluation path: a [`Classifier`] (the float model on a device, the QAT model, the
//! int8 engine) run over the ORIGINAL rows of a set (no DIR, no replay rows) by one loop
//! ([`EvalSet::for_each_logits`]), and the evaluation of its logits: macro accuracy, per
//! class/device/group, log-loss, confusion ([`crate::metrics::EvalReport`]).

use std::collections::BTreeSet;

use asc_int8::Int8Model;
use burn::tensor::Device;
use data_specs::ClipSet;

use crate::error::{Result, TrainError};
use crate::loader::{HostBatch, Loader, LoaderConfig, Selection, ShardSet};
use crate::metrics::{EvalAccumulator, EvalReport};
use crate::model::Model;
use crate::qat::QatModel;

/// Batch size of the int8 engine's evaluation.
pub const INT8_BATCH: usize = 256;
/// Batch size of the QAT (fake-quant) model's evaluation.
pub const QAT_BATCH: usize = 128;

/// A scene classifier: the logits of a batch of log-mels. Served by the float model
/// ([`FloatModel`]), the QAT model ([`QatModel`], fake-quantized) and the int8 engine
/// ([`Int8Model`]), so that one loop ([`EvalSet::for_each_logits`]) evaluates all three.
pub trait Classifier {
    /// Logits `[B, n_classes]` row-major of the rows of `batch` (log-mel `[B, n_mels,
    /// n_frames]`, the full front-end output).
    fn batch_logits(&self, batch: HostBatch) -> Result<Vec<f32>>;
}

/// A float model and the device it computes on. Pass the inference copy (`model.valid()`) for
/// evaluation; a training-mode model normalises with each batch's statistics.
#[derive(Debug, Clone, Copy)]
pub struct FloatModel<'a> {
    /// The model.
    pub model: &'a Model,
    /// Its device.
    pub device: &'a Device,
}

impl<'a> FloatModel<'a> {
    /// `model` on `device`.
    pub fn new(model: &'a Model, device: &'a Device) -> Self {
        Self { model, device }
    }
}

/// Reads a logits tensor back to the host.
fn host_logits(t: burn::tensor::Tensor<2>) -> Result<Vec<f32>> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| TrainError::Config(format!("reading the logits: {e:?}")))
}

impl Classifier for FloatModel<'_> {
    fn batch_logits(&self, batch: HostBatch) -> Result<Vec<f32>> {
        let tb = batch.into_tensors(self.device);
        host_logits(self.model.forward(tb.logmel))
    }
}

impl Classifier for QatModel {
    fn batch_logits(&self, batch: HostBatch) -> Result<Vec<f32>> {
        let tb = batch.into_tensors(&crate::backend::default_device());
        host_logits(self.forward(tb.logmel)?)
    }
}

impl Classifier for Int8Model {
    fn batch_logits(&self, batch: HostBatch) -> Result<Vec<f32>> {
        Ok(self.infer_logmel_batch(batch.logmel())?)
    }
}

/// The original rows of one set of a shard set, in storage order, batched for inference.
#[derive(Debug)]
pub struct EvalSet {
    loader: Option<Loader>,
    len: usize,
}

impl EvalSet {
    /// The original rows of `clip_set` in `set`, in batches of `batch_size` (an empty set when
    /// the shards hold no such row).
    pub fn new(set: &ShardSet, clip_set: ClipSet, batch_size: usize) -> Result<Self> {
        Self::with_selection(set, Selection::originals(clip_set), batch_size)
    }

    /// The rows of `selection` (built from [`Selection::originals`], optionally narrowed to a location
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

    /// The one evaluation loop: runs `model` over every row, in storage order, and calls
    /// `f(rows, logits [B, n_classes] row-major, labels)` per batch.
    pub fn for_each_logits(
        &self,
        model: &dyn Classifier,
        mut f: impl FnMut(&[u32], &[f32], &[i64]) -> Result<()>,
    ) -> Result<()> {
        let Some(loader) = &self.loader else {
            return Ok(());
        };
        for batch in loader.epoch(0) {
            let batch = batch?;
            let rows = batch.rows().to_vec();
            let labels = batch.labels().to_vec();
            let logits = model.batch_logits(batch)?;
            f(&rows, &logits, &labels)?;
        }
        Ok(())
    }

    /// [`Self::for_each_logits`] of the float `model` on `device`.
    pub fn for_each_batch(
        &self,
        model: &Model,
        device: &Device,
        f: impl FnMut(&[u32], &[f32], &[i64]) -> Result<()>,
    ) -> Result<()> {
        self.for_each_logits(&FloatModel::new(model, device), f)
    }

    /// Evaluates `model` on the labelled rows; `seen` are the devices of the training
    /// selection (the "seen" group). Non-finite logits fail naming their clips.
    pub fn evaluate(
        &self,
        model: &dyn Classifier,
        set: &ShardSet,
        seen: BTreeSet<String>,
    ) -> Result<EvalReport> {
        let meta = set.meta();
        let k = meta.n_classes();
        let mut acc = EvalAccumulator::new(
            meta.labels.names().map(str::to_string).collect(),
            meta.devices.names().map(str::to_string).collect(),
            seen,
        );
        self.for_each_logits(model, |rows, logits, labels| {
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

/// Evaluates the fake-quantized model on the original rows of `clip_set`.
pub fn evaluate_qat(
    qm: &QatModel,
    set: &ShardSet,
    clip_set: ClipSet,
    seen: BTreeSet<String>,
) -> Result<EvalReport> {
    EvalSet::new(set, clip_set, QAT_BATCH)?.evaluate(qm, set, seen)
}

/// Refuses shards whose log-mel shape or labels differ from the int8 model's.
pub fn check_int8_shards(model: &Int8Model, set: &ShardSet) -> Result<()> {
    let meta = set.meta();
    let fe = model.frontend();
    if (meta.frontend.n_mels, meta.frontend.n_frames()) != (fe.n_mels, fe.n_frames()) {
        return Err(TrainError::Mismatch(format!(
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
        return Err(TrainError::Mismatch(format!(
            "the shards' labels {names:?} differ from the model's {:?}",
            model.labels().0
        )));
    }
    Ok(())
}

/// Evaluates an int8 model on the ORIGINAL rows of `clip_set` of a shard set (the engine runs
/// the clips of a batch in parallel): the same [`EvalReport`] as the float evaluation. `seen`
/// are the training devices (the "seen" group).
pub fn evaluate_int8(
    model: &Int8Model,
    set: &ShardSet,
    clip_set: ClipSet,
    seen: BTreeSet<String>,
) -> Result<EvalReport> {
    check_int8_shards(model, set)?;
    EvalSet::new(set, clip_set, INT8_BATCH)?.evaluate(model, set, seen)
}
