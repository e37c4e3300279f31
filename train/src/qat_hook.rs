//! Hook of the quantization-aware training phase (QAT epochs after the float epochs).
//!
//! The QAT phase (fake-quantized int8 weights and activations, straight-through estimator,
//! observer calibration, then export to the int8 engine) is being implemented separately; the
//! trainer already calls [`run_qat_phase`] after the float epochs so that the flag and the run
//! folder layout are stable.

use crate::trainer::{Result, TrainError};

/// Runs `qat_epochs` of quantization-aware training after the float epochs.
///
/// Not implemented yet: returns [`TrainError::QatUnavailable`] when `qat_epochs > 0`, and does
/// nothing for 0.
pub fn run_qat_phase(qat_epochs: u64) -> Result<()> {
    if qat_epochs > 0 {
        return Err(TrainError::QatUnavailable(qat_epochs));
    }
    Ok(())
}
