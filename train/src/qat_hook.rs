//! The quantization-aware training phase of a training run (`train --qat-epochs N`).
//!
//! After the float epochs, the trainer hands the finished run folder to the QAT fine-tuning of
//! [`crate::int8_cli::run_qat`] (fake-quantized int8 weights and activations, moving-average
//! observers frozen for the last epochs, lr 5e-5), which writes `runs/<name>/qat/` with the QAT
//! model and the exported int8 model `qat/model.asc8`, and prints float vs QAT vs int8 accuracy.

use std::path::Path;

use crate::int8_cli::{QatArgs, run_qat};
use crate::trainer::{Result, TrainError};

/// Runs `qat_epochs` of quantization-aware training on the finished float run in `run_dir`
/// (nothing for 0).
pub fn run_qat_phase(run_dir: &Path, qat_epochs: u64, progress: bool) -> Result<()> {
    if qat_epochs == 0 {
        return Ok(());
    }
    let args = QatArgs {
        model: run_dir.to_path_buf(),
        shards: None,
        epochs: qat_epochs,
        lr: 5e-5,
        freeze_last: None,
    };
    run_qat(&args, progress).map_err(|e| TrainError::Qat(format!("{e:#}")))
}
