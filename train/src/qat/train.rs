//! The QAT fine-tuning loop: `epochs` passes of fake-quantized training after the float (KD)
//! epochs, AdamW at a small constant learning rate (5e-5), observers frozen for the last
//! `freeze_last` epochs (CP-JKU: 20 epochs, the last 4 frozen; BN statistics are frozen for the
//! whole phase, see [`crate::qat`]).

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::{Observers, QatError, QatModel, qat_forward, student};
use crate::augment::Augment;
use crate::loader::{Loader, LoaderError};
use crate::loss::{self, KdConfig};
use crate::model::Model;

/// Settings of the QAT phase.
#[derive(Debug, Clone)]
pub struct QatConfig {
    /// QAT epochs.
    pub epochs: u64,
    /// Constant learning rate (5e-5).
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Observers frozen during the last this-many epochs.
    pub freeze_last: u64,
    /// Observer averaging constant (0.01).
    pub momentum: f32,
    /// KD loss where the batch has teacher logits (else cross-entropy).
    pub kd: Option<KdConfig>,
    /// Batch augmentations (as in the float epochs).
    pub augment: Augment,
    /// Seed of the augmentation generator.
    pub seed: u64,
}

impl QatConfig {
    /// The demo defaults for `epochs` epochs: lr 5e-5, observers frozen for the last
    /// `epochs / 5` epochs (at least one when `epochs >= 2`), as CP-JKU's 4 of 20.
    pub fn new(epochs: u64) -> Self {
        Self {
            epochs,
            lr: 5e-5,
            weight_decay: 0.0,
            freeze_last: if epochs >= 2 { (epochs / 5).max(1) } else { 0 },
            momentum: super::DEFAULT_MOMENTUM,
            kd: None,
            augment: Augment::default(),
            seed: 0,
        }
    }
}

/// Errors of the QAT loop.
#[derive(Debug, thiserror::Error)]
pub enum QatTrainError {
    /// The model cannot be fake-quantized.
    #[error(transparent)]
    Qat(#[from] QatError),
    /// The loader failed.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// The loss became NaN or infinite.
    #[error("QAT diverged at update {step}: loss {loss}")]
    Diverged {
        /// Update.
        step: u64,
        /// Loss value.
        loss: f32,
    },
}

/// Fine-tunes `model` (on an autodiff device) with fake quantization for `cfg.epochs` epochs of
/// `loader`; returns the QAT model (inference copy) and its frozen observers. `on_epoch(epoch,
/// mean loss, seconds)` is called after each epoch.
pub fn qat_finetune(
    model: Model,
    loader: &Loader,
    cfg: &QatConfig,
    on_epoch: impl FnMut(u64, f64, f64),
) -> Result<QatModel, QatTrainError> {
    qat_finetune_from(model, Observers::new(cfg.momentum), loader, cfg, on_epoch)
}

/// [`qat_finetune`] starting from the observers `obs` (e.g. calibrated by
/// [`calibrate_observers`]; their `momentum` and `float_control` are kept).
pub fn qat_finetune_from(
    model: Model,
    obs: Observers,
    loader: &Loader,
    cfg: &QatConfig,
    mut on_epoch: impl FnMut(u64, f64, f64),
) -> Result<QatModel, QatTrainError> {
    student(&model)?;
    let mut model = model;
    let mut optim: ModuleOptimizer = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay as f32)
        .with_epsilon(1e-8)
        .init();
    let mut obs = obs;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut step = 0u64;
    for epoch in 0..cfg.epochs {
        obs.frozen = epoch + cfg.freeze_last >= cfg.epochs && epoch > 0;
        let t0 = Instant::now();
        let (mut loss_sum, mut n) = (0.0f64, 0usize);
        for batch in loader.epoch(epoch) {
            let batch = batch?;
            let device = model_device(&model);
            let rows = batch.len();
            // The step's tensor work on a pool worker, as the float trainer's steps
            // (`backend::in_pool`); the batch came from the loader's channel outside it.
            let (next, v) = crate::backend::in_pool(|| {
                let tb = batch.into_tensors(&device);
                let x = cfg.augment.apply(tb.logmel, &mut rng);
                let logits = qat_forward(student(&model)?, x, &mut obs);
                let loss = match &cfg.kd {
                    Some(kd) => {
                        loss::kd_loss_parts(
                            logits,
                            tb.labels,
                            tb.teacher_logits,
                            tb.teacher_mask,
                            kd,
                        )
                        .total
                    }
                    None => loss::cross_entropy(logits, tb.labels),
                };
                let v: f32 = loss.clone().into_scalar();
                if !v.is_finite() {
                    return Err(QatTrainError::Diverged { step, loss: v });
                }
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                Ok((optim.step(cfg.lr, model, grads), v))
            })?;
            model = next;
            loss_sum += v as f64 * rows as f64;
            n += rows;
            step += 1;
        }
        on_epoch(
            epoch,
            loss_sum / n.max(1) as f64,
            t0.elapsed().as_secs_f64(),
        );
    }
    obs.frozen = true;
    Ok(QatModel {
        model: model.valid(),
        observers: obs,
    })
}

/// Updates `obs` with the fake-quantized forward pass of `model` (inference copy, no
/// augmentation) over the batches of `loader` until `rows` rows were seen (at least one batch);
/// returns the rows used. Post-training calibration of the observers, e.g. on the training
/// originals before QAT.
pub fn calibrate_observers(
    model: &Model,
    loader: &Loader,
    rows: usize,
    obs: &mut Observers,
) -> Result<usize, QatTrainError> {
    let valid = model.valid();
    let m = student(&valid)?;
    let device = crate::backend::default_device();
    let mut seen = 0;
    for batch in loader.epoch(0) {
        let batch = batch?;
        seen += batch.len();
        crate::backend::in_pool(|| {
            let tb = batch.into_tensors(&device);
            qat_forward(m, tb.logmel, obs);
        });
        if seen >= rows {
            break;
        }
    }
    Ok(seen)
}

fn model_device(model: &Model) -> burn::tensor::Device {
    match model {
        Model::IrMamba(m) => m.head.conv.conv.weight.device(),
        Model::Baseline(_) | Model::CnnTeacher(_) => crate::backend::training_device(),
    }
}
