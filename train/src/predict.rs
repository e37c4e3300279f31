//! `train predict`: a model's logits for the original rows of a set, for the logits table the
//! pipeline reads as teacher logits ([`data_specs::logits`], written by
//! [`data_specs::write_logits_table`]; `pipeline features --teacher-logits`).
//!
//! One row per original clip row, in shard order.
//!
//! **Out-of-fold logits** ([`predict_out_of_fold`]): K runs trained with `--holdout-fold k/K`
//! (k = 1..K; folds group the clips by recording location, [`Fold`]) act as one teacher. Each
//! training clip is scored by the run that did not train on its fold, so its logits are as
//! (over)confident as the teacher's on unseen audio; test and unused clips, seen by no run, get
//! the mean of the K runs' logits.

use std::collections::BTreeMap;

use burn::tensor::Device;
use data_specs::{ClipSet, Variant};

use crate::error::{Result, TrainError};
use crate::evaluate::EvalSet;
use crate::loader::{Fold, FoldFilter, Selection, ShardSet};
use crate::model::Model;

/// Which rows `predict` covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictSet {
    /// Original rows of the training set.
    Train,
    /// Original rows of the test set.
    Test,
    /// Original rows of every set (train, test, unused).
    All,
}

impl PredictSet {
    /// The clip sets covered.
    pub fn clip_sets(self) -> &'static [ClipSet] {
        match self {
            Self::Train => &[ClipSet::Train],
            Self::Test => &[ClipSet::Test],
            Self::All => &[ClipSet::Train, ClipSet::Test, ClipSet::Unused],
        }
    }
}

/// Logits of `model` for the original rows of `sets`: clip ids and a `[rows, n_classes]` buffer.
pub fn predict_logits(
    model: &Model,
    set: &ShardSet,
    sets: &[ClipSet],
    batch_size: usize,
    device: &Device,
) -> Result<(Vec<String>, Vec<f32>)> {
    let mut ids = Vec::new();
    let mut values = Vec::new();
    for &clip_set in sets {
        let eval = EvalSet::new(set, clip_set, batch_size)?;
        eval.for_each_batch(model, device, |rows, logits, _| {
            ids.extend(rows.iter().map(|&r| set.row_info(r).clip_id.to_string()));
            values.extend_from_slice(logits);
            Ok(())
        })?;
    }
    Ok((ids, values))
}

/// Checks that `folds` are the K folds `1/K ..= K/K` of one partition, each once (in any order).
pub fn check_folds(folds: &[Fold]) -> Result<()> {
    let k = folds.first().map_or(0, |f| f.count);
    let mut seen = vec![false; k as usize];
    for f in folds {
        if !f.is_valid() || f.count != k || std::mem::replace(&mut seen[f.index as usize - 1], true)
        {
            return Err(TrainError::Config(format!(
                "out-of-fold runs must be the folds 1/K..K/K of one K, each once; got [{}]",
                folds
                    .iter()
                    .map(Fold::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    if folds.len() != k as usize {
        return Err(TrainError::Config(format!(
            "out-of-fold runs: {} of {k} folds given (every fold needs its run)",
            folds.len()
        )));
    }
    Ok(())
}

/// Out-of-fold logits of the teacher made of `members` (each a model trained on split `split`
/// without its fold, `--holdout-fold`): a training clip of the split in fold k gets the logits
/// of the member trained without fold k; every other clip (test, unused, training clips
/// outside the split) gets the mean over members. Same output as [`predict_logits`] (original
/// rows of `sets`), in global row order.
pub fn predict_out_of_fold(
    members: &[(Fold, Model)],
    split: Option<u8>,
    set: &ShardSet,
    sets: &[ClipSet],
    batch_size: usize,
    device: &Device,
) -> Result<(Vec<String>, Vec<f32>)> {
    check_folds(&members.iter().map(|(f, _)| *f).collect::<Vec<_>>())?;
    let n_classes = set.meta().n_classes();
    let in_split = |row: u32| {
        let r = set.row_info(row);
        r.set == ClipSet::Train && split.is_none_or(|p| r.split.is_some_and(|s| s <= p))
    };
    // Row -> (sum of logits, number of members that scored it).
    let mut scored: BTreeMap<u32, (Vec<f32>, u32)> = BTreeMap::new();
    let mut run = |model: &Model, selection: Selection, skip_split: bool| -> Result<()> {
        let eval = EvalSet::with_selection(set, selection, batch_size)?;
        eval.for_each_batch(model, device, |rows, logits, _| {
            for (&row, lg) in rows.iter().zip(logits.chunks_exact(n_classes)) {
                if skip_split && in_split(row) {
                    continue;
                }
                let (sum, n) = scored
                    .entry(row)
                    .or_insert_with(|| (vec![0.0; n_classes], 0));
                sum.iter_mut().zip(lg).for_each(|(s, &v)| *s += v);
                *n += 1;
            }
            Ok(())
        })
    };
    let outside_split = set
        .rows()
        .any(|r| r.variant == Variant::Original && r.set == ClipSet::Train && !in_split(r.row));
    for &clip_set in sets {
        for (fold, model) in members {
            if clip_set != ClipSet::Train {
                run(model, Selection::originals(clip_set), false)?;
                continue;
            }
            // The member's own held-out fold of the split...
            let held_out = Selection {
                max_split: split,
                fold: Some(FoldFilter::Only(*fold)),
                ..Selection::originals(ClipSet::Train)
            };
            run(model, held_out, false)?;
            // ... and, like the test set, the training clips outside the split (if any).
            if outside_split {
                run(model, Selection::originals(ClipSet::Train), true)?;
            }
        }
    }
    let mut ids = Vec::with_capacity(scored.len());
    let mut values = Vec::with_capacity(scored.len() * n_classes);
    for (row, (sum, n)) in scored {
        ids.push(set.row_info(row).clip_id.to_string());
        values.extend(sum.iter().map(|s| s / n as f32));
    }
    Ok((ids, values))
}
