//! Scoring a teacher ensemble and fusing its logits: each teacher's, the averaged and the fused
//! ensemble's accuracy and cross-entropy on the training and test clips ([`score`]), and the
//! fusion of eq. (4) fitted on the labelled original training rows ([`fuse_logits`]).

use std::collections::BTreeSet;

use data_specs::ClipSet;
use serde::Serialize;

use super::fusion::{FitReport, Fusion};
use super::join::{MaterializeError, OriginalRows};
use super::logits::TeacherLogits;

/// Accuracy and cross-entropy of one ensemble (or teacher) on one set of clips.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    /// Clips scored.
    pub clips: usize,
    /// Fraction of clips whose argmax equals the label.
    pub accuracy: f64,
    /// Macro (class-wise mean) accuracy, the DCASE metric.
    pub macro_accuracy: f64,
    /// Mean cross-entropy of softmax(logits) against the labels (nats).
    pub cross_entropy: f64,
}

/// Scores `fusion` on clips whose teacher logits are `teachers[k]` (row-major) and `labels`.
pub fn score(fusion: &Fusion, teachers: &[Vec<f32>], labels: &[usize]) -> Scores {
    let c = fusion.beta.len();
    let mut hit = vec![0usize; c];
    let mut count = vec![0usize; c];
    let mut ce = 0.0;
    let mut rows: Vec<&[f32]> = Vec::with_capacity(teachers.len());
    for (i, &y) in labels.iter().enumerate() {
        rows.clear();
        rows.extend(teachers.iter().map(|t| &t[i * c..(i + 1) * c]));
        let h = fusion.apply(&rows);
        let m = h.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + h.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        ce += lse - h[y] as f64;
        let best = h
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv { (i, v) } else { (bi, bv) }
            })
            .0;
        count[y] += 1;
        if best == y {
            hit[y] += 1;
        }
    }
    let n = labels.len();
    let present: Vec<f64> = (0..c)
        .filter(|&k| count[k] > 0)
        .map(|k| hit[k] as f64 / count[k] as f64)
        .collect();
    Scores {
        clips: n,
        accuracy: hit.iter().sum::<usize>() as f64 / n.max(1) as f64,
        macro_accuracy: present.iter().sum::<f64>() / present.len().max(1) as f64,
        cross_entropy: ce / n.max(1) as f64,
    }
}

/// Options of [`fuse_logits`].
#[derive(Debug, Clone)]
pub struct FuseOptions {
    /// Plain averaging (`alpha = 1/K`, `beta = 0`) instead of the fitted fusion.
    pub average: bool,
    /// Ridge on `beta` of the fit.
    pub ridge: f64,
    /// Ridge shrinking `alpha` toward plain averaging (`alpha_ridge * sum (alpha_k - 1/K)^2`).
    pub alpha_ridge: f64,
    /// Fit only on training clips of this DCASE split (split column <= P); None: every
    /// training clip with logits from every teacher.
    pub split: Option<u8>,
}

/// Report of [`fuse_logits`] (written as JSON by `--out-report`).
#[derive(Debug, Clone, Serialize)]
pub struct FuseReport {
    /// The teacher logits files, in order.
    pub teachers: Vec<String>,
    /// The fusion used (fitted, or the average with `--average`).
    pub fusion: Fusion,
    /// Newton iterations, initial and final training loss of the fit (None with `--average`).
    pub fit: Option<FitReport>,
    /// Split the fit was restricted to.
    pub split: Option<u8>,
    /// Per teacher: scores on the training clips used by the fit and on the test clips.
    pub teacher_scores: Vec<SetScores>,
    /// Averaged ensemble.
    pub averaged: SetScores,
    /// Fused ensemble.
    pub fused: SetScores,
    /// Clips written to the fused logits table.
    pub fused_clips: usize,
}

/// Scores on training and test clips.
#[derive(Debug, Clone, Serialize)]
pub struct SetScores {
    /// Training clips of the fit.
    pub train: Scores,
    /// Test clips (those with logits from every teacher); None when there are none.
    pub test: Option<Scores>,
}

/// Gathers the logits of `ids` (row-major per teacher).
fn gather(teachers: &[TeacherLogits], ids: &[&str]) -> Vec<Vec<f32>> {
    teachers
        .iter()
        .map(|t| {
            ids.iter()
                .flat_map(|id| t.get(id).expect("filtered").iter().copied())
                .collect()
        })
        .collect()
}

/// Fits (or averages) the teachers on the labelled original training rows of `rows`, scores
/// every teacher and both ensembles, and returns the report with the fused logits of every
/// original clip id that has logits from every teacher (`(ids, row-major logits)`).
pub fn fuse_logits(
    rows: &OriginalRows,
    n_classes: usize,
    teachers: &[TeacherLogits],
    names: &[String],
    opts: &FuseOptions,
) -> Result<(FuseReport, Vec<String>, Vec<f32>), MaterializeError> {
    let has_all = |id: &str| teachers.iter().all(|t| t.get(id).is_some());
    let pick = |set: ClipSet, split: Option<u8>| -> (Vec<&str>, Vec<usize>) {
        let mut seen = BTreeSet::new();
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        for i in 0..rows.clip_id.len() {
            let id = rows.clip_id[i].as_str();
            let in_split = match split {
                None => true,
                Some(p) => rows.split[i].is_some_and(|s| s <= p),
            };
            if rows.set[i] == set
                && in_split
                && has_all(id)
                && seen.insert(id)
                && let Some(y) = rows.label[i].filter(|&y| y < n_classes)
            {
                ids.push(id);
                labels.push(y);
            }
        }
        (ids, labels)
    };
    let (train_ids, train_y) = pick(ClipSet::Train, opts.split);
    if train_ids.is_empty() {
        return Err(MaterializeError::Invalid {
            path: names.join(", "),
            problem: "no labelled training clip has logits from every teacher".into(),
        });
    }
    let (test_ids, test_y) = pick(ClipSet::Test, None);
    let train_l = gather(teachers, &train_ids);
    let test_l = gather(teachers, &test_ids);
    let k = teachers.len();
    let averaged = Fusion::average(k, n_classes);
    let (fusion, fit) = if opts.average {
        (averaged.clone(), None)
    } else {
        let (f, r) =
            Fusion::fit_shrunk(&train_l, &train_y, n_classes, opts.ridge, opts.alpha_ridge)?;
        (f, Some(r))
    };
    // Scores of `f` over all teachers (`only = None`) or over teacher j alone.
    let scores = |f: &Fusion, only: Option<usize>| {
        let sel = |l: &[Vec<f32>]| match only {
            Some(j) => vec![l[j].clone()],
            None => l.to_vec(),
        };
        SetScores {
            train: score(f, &sel(&train_l), &train_y),
            test: (!test_y.is_empty()).then(|| score(f, &sel(&test_l), &test_y)),
        }
    };
    let single = Fusion {
        alpha: vec![1.0],
        beta: vec![0.0; n_classes],
    };
    let teacher_scores = (0..k).map(|j| scores(&single, Some(j))).collect();
    // Fused logits of every original clip id with logits from every teacher.
    let mut seen = BTreeSet::new();
    let mut ids = Vec::new();
    let mut values = Vec::new();
    let mut row: Vec<&[f32]> = Vec::with_capacity(k);
    for id in &rows.clip_id {
        if !seen.insert(id.as_str()) || !has_all(id) {
            continue;
        }
        row.clear();
        row.extend(teachers.iter().map(|t| t.get(id).expect("checked")));
        values.extend(fusion.apply(&row));
        ids.push(id.clone());
    }
    let report = FuseReport {
        teachers: names.to_vec(),
        averaged: scores(&averaged, None),
        fused: scores(&fusion, None),
        fusion,
        fit,
        split: opts.split,
        teacher_scores,
        fused_clips: ids.len(),
    };
    Ok((report, ids, values))
}

/// The `asc.teacher` description of a fused ensemble: teachers and weights.
pub fn fused_description(report: &FuseReport) -> String {
    let kind = if report.fit.is_some() {
        "fused (eq. 4, fitted)"
    } else {
        "averaged"
    };
    let f = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "teacher ensemble, {kind}, of {} teacher(s): {}; alpha = [{}]; beta = [{}]; split {}",
        report.teachers.len(),
        report.teachers.join(", "),
        f(&report.fusion.alpha),
        f(&report.fusion.beta),
        report
            .split
            .map_or_else(|| "all training clips".to_string(), |p| p.to_string())
    )
}
