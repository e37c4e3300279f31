//! Non-finite values name their clip: a NaN or infinite log-mel value or teacher logit in a
//! batch ([`check_batch`], before the batch reaches the model) or a non-finite logits row
//! ([`non_finite_logits`], when the loss or an evaluation meets one) is reported with the
//! clip id, variant and shard of its row instead of a position in the batch.

use crate::loader::{HostBatch, ShardSet};
use crate::trainer::TrainError;

/// `clip <id> (<variant> row of <shard>)`.
fn describe(set: &ShardSet, row: u32) -> String {
    let info = set.row_info(row);
    format!(
        "clip {} ({} row of {})",
        info.clip_id,
        info.variant.as_str(),
        info.shard.display()
    )
}

/// Fails with [`TrainError::NonFinite`] naming the first row of `batch` whose log-mel, or
/// teacher logits where present, hold a NaN or infinite value.
pub fn check_batch(set: &ShardSet, batch: &HostBatch) -> Result<(), TrainError> {
    let (m, f) = batch.logmel_shape();
    let len = (m * f).max(1);
    let k = if batch.is_empty() {
        0
    } else {
        batch.teacher_logits().len() / batch.len()
    };
    for (b, &row) in batch.rows().iter().enumerate() {
        let x = &batch.logmel()[b * len..(b + 1) * len];
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(TrainError::NonFinite(format!(
                "{}: log-mel value {i} of {len} is {}; rebuild its shard from finite audio \
                 (`pipeline features` refuses non-finite samples)",
                describe(set, row),
                x[i]
            )));
        }
        if k > 0 && batch.teacher_mask()[b] > 0.0 {
            let t = &batch.teacher_logits()[b * k..(b + 1) * k];
            if let Some(i) = t.iter().position(|v| !v.is_finite()) {
                return Err(TrainError::NonFinite(format!(
                    "{}: teacher logit {i} is {}; fix the teacher logits and join them again",
                    describe(set, row),
                    t[i]
                )));
            }
        }
    }
    Ok(())
}

/// Names the clips of a batch (global `rows`) whose logits (`[B, n_classes]` row-major) are
/// not finite, as `": the logits of clip X (...) are not finite"`; empty when all are finite
/// or the logits could not be read.
pub fn non_finite_logits(
    set: &ShardSet,
    rows: &[u32],
    logits: Option<&[f32]>,
    n_classes: usize,
) -> String {
    let Some(logits) = logits else {
        return String::new();
    };
    let bad: Vec<String> = rows
        .iter()
        .zip(logits.chunks_exact(n_classes.max(1)))
        .filter(|(_, l)| l.iter().any(|v| !v.is_finite()))
        .map(|(&r, _)| describe(set, r))
        .collect();
    match bad.as_slice() {
        [] => String::new(),
        [one] => format!(": the logits of {one} are not finite"),
        [first, ..] => format!(
            ": the logits of {} clips are not finite, the first {first}",
            bad.len()
        ),
    }
}
