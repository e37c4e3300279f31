//! Host-side evaluation: macro class accuracy (the DCASE2024 Task 1 ranking metric), overall
//! accuracy, accuracy per class / device / device group, log-loss and the confusion matrix.
//!
//! Definitions (`N` examples, `K` classes, prediction = first arg-max of the logits):
//! - accuracy of a set of examples: `correct / n`;
//! - macro class accuracy: `(1/K') sum_k acc_k` over the `K'` classes with at least one
//!   example (the DCASE metric, where every class has test examples, so `K' = K`);
//! - per device and per group: plain accuracy over its examples and its own macro accuracy;
//!   groups are "seen" (devices present in the training selection) and "unseen" (the others);
//! - log-loss: `(1/N) sum_i -log softmax(logits_i)[label_i]` (natural log, log-sum-exp form);
//! - confusion matrix: `confusion[true][predicted]` counts.
//!
//! [`EpochMetrics`] are the figures of one training epoch (a line of the run's `metrics.jsonl`).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Figures of one epoch (one line of `metrics.jsonl`). Accuracies are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Zero-based epoch index.
    pub epoch: u64,
    /// Optimizer updates done at the end of the epoch.
    pub step: u64,
    /// Learning rate of the last update of the epoch.
    pub lr: f64,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Training accuracy over the epoch (augmented inputs).
    pub train_acc: f64,
    /// Test macro class accuracy, when the test set was evaluated this epoch (a diagnostic:
    /// never used to select a model).
    pub test_macro_acc: Option<f64>,
    /// Test log-loss, when the test set was evaluated this epoch.
    pub test_log_loss: Option<f64>,
    /// Wall-clock seconds of the epoch (training and evaluation).
    pub seconds: f64,
    /// Training throughput, examples per second.
    pub samples_per_s: f64,
    /// Validation macro class accuracy, when the run has a validation fold and evaluated this
    /// epoch (what selects the kept model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_macro_acc: Option<f64>,
}

/// Bad input fed to the accumulator.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    /// A logits row whose length is not the number of classes.
    #[error("logits row has {got} values, expected {expected} (one per class)")]
    LogitsLength {
        /// Values in the row.
        got: usize,
        /// Number of classes.
        expected: usize,
    },
    /// A label outside the class vocabulary.
    #[error("label {label} is outside the {n_classes} classes")]
    Label {
        /// The offending label.
        label: usize,
        /// Number of classes.
        n_classes: usize,
    },
    /// A device name that is not in the device vocabulary.
    #[error("device {0:?} is not in the device vocabulary")]
    Device(String),
    /// A logits row with NaN or infinite values.
    #[error("logits row of example {0} is not finite")]
    NonFinite(u64),
    /// Slices of a batch with different lengths.
    #[error("batch of {rows} logits rows but {labels} labels and {devices} devices")]
    BatchLength {
        /// Rows in the logits buffer.
        rows: usize,
        /// Number of labels.
        labels: usize,
        /// Number of device names.
        devices: usize,
    },
}

#[derive(Debug, Clone, Default)]
struct Counts {
    n: Vec<u64>,
    correct: Vec<u64>,
}

impl Counts {
    fn new(k: usize) -> Self {
        Self {
            n: vec![0; k],
            correct: vec![0; k],
        }
    }
    fn add(&mut self, label: usize, hit: bool) {
        self.n[label] += 1;
        self.correct[label] += hit as u64;
    }
    fn summary(&self, name: &str) -> GroupAccuracy {
        let n: u64 = self.n.iter().sum();
        let correct: u64 = self.correct.iter().sum();
        GroupAccuracy {
            name: name.to_string(),
            n,
            correct,
            accuracy: ratio(correct, n),
            macro_accuracy: macro_of(&self.n, &self.correct),
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn macro_of(n: &[u64], correct: &[u64]) -> f64 {
    let accs: Vec<f64> = n
        .iter()
        .zip(correct)
        .filter(|(n, _)| **n > 0)
        .map(|(&n, &c)| ratio(c, n))
        .collect();
    if accs.is_empty() {
        0.0
    } else {
        accs.iter().sum::<f64>() / accs.len() as f64
    }
}

/// Accumulates predictions example by example; [`EvalAccumulator::finish`] gives the report.
#[derive(Debug, Clone)]
pub struct EvalAccumulator {
    class_names: Vec<String>,
    device_names: Vec<String>,
    seen_devices: BTreeSet<String>,
    total: Counts,
    per_device: Vec<Counts>,
    seen: Counts,
    unseen: Counts,
    confusion: Vec<Vec<u64>>,
    nll_sum: f64,
    count: u64,
}

impl EvalAccumulator {
    /// An empty accumulator for the given class names (label `k` is `class_names[k]`), device
    /// vocabulary, and the devices of the training selection (the "seen" group).
    pub fn new(
        class_names: Vec<String>,
        device_names: Vec<String>,
        seen_devices: BTreeSet<String>,
    ) -> Self {
        let k = class_names.len();
        let d = device_names.len();
        Self {
            total: Counts::new(k),
            per_device: vec![Counts::new(k); d],
            seen: Counts::new(k),
            unseen: Counts::new(k),
            confusion: vec![vec![0; k]; k],
            class_names,
            device_names,
            seen_devices,
            nll_sum: 0.0,
            count: 0,
        }
    }

    /// Number of examples added so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no example was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Add one example: its logits row (one value per class), true label and device name.
    pub fn push(&mut self, logits: &[f32], label: usize, device: &str) -> Result<(), MetricsError> {
        let k = self.class_names.len();
        if logits.len() != k {
            return Err(MetricsError::LogitsLength {
                got: logits.len(),
                expected: k,
            });
        }
        if label >= k {
            return Err(MetricsError::Label {
                label,
                n_classes: k,
            });
        }
        let d = self
            .device_names
            .iter()
            .position(|n| n == device)
            .ok_or_else(|| MetricsError::Device(device.to_string()))?;
        if logits.iter().any(|v| !v.is_finite()) {
            return Err(MetricsError::NonFinite(self.count));
        }
        let pred = asc_kernels::math::argmax(logits);
        let max = logits[pred] as f64;
        let lse = max
            + logits
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        self.nll_sum += lse - logits[label] as f64;
        let hit = pred == label;
        self.total.add(label, hit);
        self.per_device[d].add(label, hit);
        if self.seen_devices.contains(device) {
            self.seen.add(label, hit);
        } else {
            self.unseen.add(label, hit);
        }
        self.confusion[label][pred] += 1;
        self.count += 1;
        Ok(())
    }

    /// Add a batch: `logits` row-major `[B, K]`, `labels` and `devices` of length `B`.
    pub fn push_batch<S: AsRef<str>>(
        &mut self,
        logits: &[f32],
        labels: &[usize],
        devices: &[S],
    ) -> Result<(), MetricsError> {
        let k = self.class_names.len().max(1);
        let rows = logits.len() / k;
        if !logits.len().is_multiple_of(k) || rows != labels.len() || rows != devices.len() {
            return Err(MetricsError::BatchLength {
                rows,
                labels: labels.len(),
                devices: devices.len(),
            });
        }
        for ((row, &label), dev) in logits.chunks_exact(k).zip(labels).zip(devices) {
            self.push(row, label, dev.as_ref())?;
        }
        Ok(())
    }

    /// The report of everything added so far.
    pub fn finish(&self) -> EvalReport {
        let per_class = self
            .class_names
            .iter()
            .enumerate()
            .map(|(k, name)| ClassAccuracy {
                name: name.clone(),
                n: self.total.n[k],
                correct: self.total.correct[k],
                accuracy: ratio(self.total.correct[k], self.total.n[k]),
            })
            .collect();
        let per_device = self
            .device_names
            .iter()
            .zip(&self.per_device)
            .filter(|(_, c)| c.n.iter().sum::<u64>() > 0)
            .map(|(name, c)| c.summary(name))
            .collect();
        let per_group = [("seen", &self.seen), ("unseen", &self.unseen)]
            .into_iter()
            .filter(|(_, c)| c.n.iter().sum::<u64>() > 0)
            .map(|(name, c)| c.summary(name))
            .collect();
        EvalReport {
            n_examples: self.count,
            macro_accuracy: macro_of(&self.total.n, &self.total.correct),
            accuracy: ratio(self.total.correct.iter().sum(), self.count),
            log_loss: if self.count == 0 {
                0.0
            } else {
                self.nll_sum / self.count as f64
            },
            class_names: self.class_names.clone(),
            per_class,
            per_device,
            per_group,
            seen_devices: self.seen_devices.iter().cloned().collect(),
            confusion: self.confusion.clone(),
        }
    }
}

/// Accuracy of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAccuracy {
    /// Class name.
    pub name: String,
    /// Examples of this class.
    pub n: u64,
    /// Of which predicted correctly.
    pub correct: u64,
    /// `correct / n` (0 when `n = 0`).
    pub accuracy: f64,
}

/// Accuracy of a subset of examples (one device, or the seen / unseen device group).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupAccuracy {
    /// Device name, or `seen` / `unseen`.
    pub name: String,
    /// Examples in the subset.
    pub n: u64,
    /// Of which predicted correctly.
    pub correct: u64,
    /// `correct / n`.
    pub accuracy: f64,
    /// Mean over classes present in the subset of the per-class accuracy.
    pub macro_accuracy: f64,
}

/// The result of an evaluation (all accuracies are fractions in [0, 1]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Number of evaluated examples.
    pub n_examples: u64,
    /// Macro class accuracy: the DCASE2024 Task 1 ranking metric.
    pub macro_accuracy: f64,
    /// Overall (micro) accuracy.
    pub accuracy: f64,
    /// Mean negative log-probability of the true class.
    pub log_loss: f64,
    /// Class names in label order.
    pub class_names: Vec<String>,
    /// Accuracy per class, in label order.
    pub per_class: Vec<ClassAccuracy>,
    /// Accuracy per device, in vocabulary order (devices without examples are left out).
    pub per_device: Vec<GroupAccuracy>,
    /// Seen / unseen device groups (groups without examples are left out).
    pub per_group: Vec<GroupAccuracy>,
    /// The devices counted as seen.
    pub seen_devices: Vec<String>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// A terminal table: overall figures, per class, per device and per group, aligned columns,
/// percentages with two decimals.
impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "examples {}   macro accuracy {:6.2} %   accuracy {:6.2} %   log-loss {:.4}",
            self.n_examples,
            100.0 * self.macro_accuracy,
            100.0 * self.accuracy,
            self.log_loss
        )?;
        let w = self
            .per_class
            .iter()
            .map(|c| c.name.len())
            .chain(self.per_device.iter().map(|d| d.name.len()))
            .chain(["unseen".len(), "class".len()])
            .max()
            .unwrap_or(8);
        writeln!(f)?;
        writeln!(f, "{:<w$}  {:>7}  {:>9}", "class", "n", "acc %")?;
        for c in &self.per_class {
            writeln!(f, "{:<w$}  {:>7}  {:>9.2}", c.name, c.n, 100.0 * c.accuracy)?;
        }
        for (title, rows) in [("device", &self.per_device), ("group", &self.per_group)] {
            writeln!(f)?;
            writeln!(
                f,
                "{:<w$}  {:>7}  {:>9}  {:>9}",
                title, "n", "acc %", "macro %"
            )?;
            for d in rows {
                writeln!(
                    f,
                    "{:<w$}  {:>7}  {:>9.2}  {:>9.2}",
                    d.name,
                    d.n,
                    100.0 * d.accuracy,
                    100.0 * d.macro_accuracy
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc() -> EvalAccumulator {
        EvalAccumulator::new(
            vec!["park".into(), "metro".into(), "bus".into()],
            vec!["a".into(), "b".into(), "s6".into()],
            ["a".to_string(), "b".to_string()].into_iter().collect(),
        )
    }

    #[test]
    fn hand_computed_small_case() {
        let mut a = acc();
        // (logits, label, device); predictions by arg-max: 0, 1, 1, 2, 0, 2.
        let rows: [([f32; 3], usize, &str); 6] = [
            ([2.0, 0.0, 0.0], 0, "a"),  // hit
            ([0.0, 1.0, 0.0], 1, "a"),  // hit
            ([0.0, 3.0, 1.0], 2, "b"),  // miss: 2 -> 1
            ([0.0, 0.0, 1.0], 2, "s6"), // hit
            ([1.0, 0.5, 0.0], 1, "s6"), // miss: 1 -> 0
            ([0.0, 0.0, 5.0], 0, "b"),  // miss: 0 -> 2
        ];
        for (l, y, d) in rows {
            a.push(&l, y, d).unwrap();
        }
        let r = a.finish();
        assert_eq!(r.n_examples, 6);
        // Per class: park 1/2, metro 1/2, bus 1/2 -> macro 0.5; overall 3/6.
        assert!((r.macro_accuracy - 0.5).abs() < 1e-12);
        assert!((r.accuracy - 0.5).abs() < 1e-12);
        assert_eq!(
            r.confusion,
            vec![vec![1, 0, 1], vec![1, 1, 0], vec![0, 1, 1]]
        );
        // Per device: a 2/2, b 0/2, s6 1/2.
        let dev: Vec<(String, u64, f64)> = r
            .per_device
            .iter()
            .map(|d| (d.name.clone(), d.n, d.accuracy))
            .collect();
        assert_eq!(
            dev,
            vec![
                ("a".into(), 2, 1.0),
                ("b".into(), 2, 0.0),
                ("s6".into(), 2, 0.5)
            ]
        );
        // s6 macro: bus 1/1, metro 0/1 -> 0.5. Groups: seen a+b 2/4, unseen s6 1/2.
        assert!((r.per_device[2].macro_accuracy - 0.5).abs() < 1e-12);
        assert_eq!(r.per_group[0].name, "seen");
        assert_eq!((r.per_group[0].n, r.per_group[0].correct), (4, 2));
        // seen: park 1/2 (rows 0, 5), metro 1/1, bus 0/1 -> macro (0.5 + 1 + 0) / 3.
        assert!((r.per_group[0].macro_accuracy - 0.5).abs() < 1e-12);
        assert_eq!((r.per_group[1].n, r.per_group[1].correct), (2, 1));
        // Log-loss by hand: -log softmax(row)[label], averaged.
        let nll = |l: [f64; 3], y: usize| (l.iter().map(|v| v.exp()).sum::<f64>()).ln() - l[y];
        let want = (nll([2.0, 0.0, 0.0], 0)
            + nll([0.0, 1.0, 0.0], 1)
            + nll([0.0, 3.0, 1.0], 2)
            + nll([0.0, 0.0, 1.0], 2)
            + nll([1.0, 0.5, 0.0], 1)
            + nll([0.0, 0.0, 5.0], 0))
            / 6.0;
        assert!((r.log_loss - want).abs() < 1e-9, "{} vs {want}", r.log_loss);
        // Display carries the numbers; serde round trip.
        let text = r.to_string();
        assert!(text.contains(" 50.00 %") && text.contains("s6") && text.contains("unseen"));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<EvalReport>(&json).unwrap(), r);
    }

    #[test]
    fn macro_differs_from_micro_on_imbalanced_classes() {
        let mut a = acc();
        for _ in 0..8 {
            a.push(&[1.0, 0.0, 0.0], 0, "a").unwrap(); // park: 8/8
        }
        a.push(&[1.0, 0.0, 0.0], 1, "a").unwrap(); // metro: 0/1
        a.push(&[0.0, 0.0, 1.0], 2, "a").unwrap(); // bus: 1/1
        let r = a.finish();
        assert!((r.accuracy - 0.9).abs() < 1e-12);
        assert!((r.macro_accuracy - 2.0 / 3.0).abs() < 1e-12);
        // Large logits: log-loss stays finite (log-sum-exp).
        let mut b = acc();
        b.push(&[1000.0, -1000.0, 0.0], 1, "a").unwrap();
        assert!((b.finish().log_loss - 2000.0).abs() < 1e-9);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let mut a = acc();
        assert_eq!(
            a.push(&[0.0, 1.0], 0, "a"),
            Err(MetricsError::LogitsLength {
                got: 2,
                expected: 3
            })
        );
        assert_eq!(
            a.push(&[0.0; 3], 3, "a"),
            Err(MetricsError::Label {
                label: 3,
                n_classes: 3
            })
        );
        assert_eq!(
            a.push(&[0.0; 3], 0, "z"),
            Err(MetricsError::Device("z".into()))
        );
        assert_eq!(
            a.push(&[f32::NAN, 0.0, 0.0], 0, "a"),
            Err(MetricsError::NonFinite(0))
        );
        assert!(matches!(
            a.push_batch(&[0.0; 6], &[0], &["a", "a"]),
            Err(MetricsError::BatchLength { .. })
        ));
        a.push_batch(&[0.0, 1.0, 0.0, 1.0, 0.0, 0.0], &[1, 0], &["a", "b"])
            .unwrap();
        assert_eq!(a.finish().accuracy, 1.0);
    }
}
