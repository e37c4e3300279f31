//! The run folder `runs/<name>/`: resolved config, per-epoch metrics, the markdown report and
//! the plots.
//!
//! ```text
//! runs/<name>/config.toml      resolved configuration (any serde value that is a table)
//! runs/<name>/metrics.jsonl    one EpochMetrics JSON object per line, in epoch order
//! runs/<name>/report.md        final tables: macro accuracy, per class / device / group,
//!                              confusion matrix, complexity, timing
//! runs/<name>/loss.png, accuracy.png, confusion.png
//! runs/<name>/checkpoints/<tag>/   (see crate::checkpoint)
//! ```
//!
//! `config.toml` and `report.md` are written to a temporary name and renamed; `metrics.jsonl`
//! is appended line by line (one complete line per write), and [`RunDir::truncate_metrics`]
//! rewrites it (temporary name + rename) when a run resumes from an earlier epoch.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::metrics::EvalReport;
use crate::plots::{self, PlotError};

/// Resolved configuration file of a run.
pub const CONFIG_FILE: &str = "config.toml";
/// Per-epoch metrics of a run.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Final markdown report.
pub const REPORT_FILE: &str = "report.md";
/// Loss-curve plot.
pub const LOSS_PLOT: &str = "loss.png";
/// Accuracy-curve plot.
pub const ACCURACY_PLOT: &str = "accuracy.png";
/// Confusion-matrix plot.
pub const CONFUSION_PLOT: &str = "confusion.png";

/// Why the run folder could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file system operation failed.
    #[error("run file {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A run name that is empty or would leave the runs folder.
    #[error("run name {0:?} is not a plain folder name")]
    BadName(String),
    /// The configuration cannot be written as TOML (it must serialize to a table).
    #[error("run config {path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The serializer's message.
        message: String,
    },
    /// A line of `metrics.jsonl` that is not an EpochMetrics object.
    #[error("{path} line {line}: {source}")]
    MetricsLine {
        /// The metrics file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A plot could not be drawn.
    #[error(transparent)]
    Plot(#[from] PlotError),
}

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

/// Everything the final `report.md` shows besides the evaluation tables.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Run name (title of the report).
    pub name: String,
    /// Model complexity, already formatted (parameters, MACs, memory), shown verbatim.
    pub complexity: String,
    /// Total wall-clock training time in seconds.
    pub total_seconds: f64,
    /// The per-epoch metrics of the run.
    pub epochs: Vec<EpochMetrics>,
    /// Which model the evaluation is of, one line (e.g. "the final model (epoch 39)").
    pub selection: String,
    /// The floor of the run ([`crate::floor`]) on the same test rows, when computed.
    pub floor: Option<EvalReport>,
}

/// One line of the model-vs-floor comparison: what, model, floor (fractions), examples.
pub type ComparisonRow = (String, f64, Option<f64>, u64);

/// The model-vs-floor comparison of the headline: macro accuracy, the seen / unseen groups and
/// each device (macro accuracy over the classes of each subset), and the log-loss.
pub fn comparison_rows(model: &EvalReport, floor: Option<&EvalReport>) -> Vec<ComparisonRow> {
    let find = |r: &[crate::metrics::GroupAccuracy], name: &str| {
        r.iter().find(|g| g.name == name).map(|g| g.macro_accuracy)
    };
    let mut rows = vec![(
        "macro accuracy".to_string(),
        model.macro_accuracy,
        floor.map(|f| f.macro_accuracy),
        model.n_examples,
    )];
    for g in &model.per_group {
        rows.push((
            format!("{} devices", g.name),
            g.macro_accuracy,
            floor.and_then(|f| find(&f.per_group, &g.name)),
            g.n,
        ));
    }
    for d in &model.per_device {
        rows.push((
            format!("device {}", d.name),
            d.macro_accuracy,
            floor.and_then(|f| find(&f.per_device, &d.name)),
            d.n,
        ));
    }
    rows
}

/// The warning shown when the model's macro accuracy is below the floor's (`None` otherwise).
pub fn below_floor_warning(model: &EvalReport, floor: Option<&EvalReport>) -> Option<String> {
    let f = floor?;
    (model.macro_accuracy < f.macro_accuracy).then(|| {
        format!(
            "WARNING: the model ({:.2} %) is below the floor ({:.2} %, a logistic regression on \
             log-mel mean and std): too few updates, a broken setting or a data problem",
            100.0 * model.macro_accuracy,
            100.0 * f.macro_accuracy
        )
    })
}

/// The model-vs-floor table for the terminal (aligned columns, percentages).
pub fn comparison_table(model: &EvalReport, floor: Option<&EvalReport>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<20} {:>9} {:>9} {:>9}",
        "test set", "model %", "floor %", "examples"
    );
    for (name, m, f, n) in comparison_rows(model, floor) {
        let f = f.map_or_else(|| "-".to_string(), |v| format!("{:.2}", 100.0 * v));
        let _ = writeln!(s, "{name:<20} {:>9.2} {f:>9} {n:>9}", 100.0 * m);
    }
    if let Some(w) = below_floor_warning(model, floor) {
        let _ = writeln!(s, "{w}");
    }
    s
}

/// Format a fraction as a percentage with two decimals.
fn pct(v: f64) -> String {
    format!("{:.2}", 100.0 * v)
}

/// The markdown report of a finished run.
pub fn render_report(summary: &RunSummary, eval: &EvalReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Run `{}`\n", summary.name);
    let _ = writeln!(s, "## Result\n");
    if !summary.selection.is_empty() {
        let _ = writeln!(s, "Model: {}. Test set.\n", summary.selection);
    }
    let floor = summary.floor.as_ref();
    let _ = writeln!(
        s,
        "| test set | model (%) | floor (%) | examples |\n|---|---:|---:|---:|"
    );
    for (name, m, f, n) in comparison_rows(eval, floor) {
        let f = f.map_or_else(|| "-".to_string(), pct);
        let _ = writeln!(s, "| {name} | {} | {f} | {n} |", pct(m));
    }
    let _ = writeln!(
        s,
        "\nFloor: multinomial logistic regression on the per-mel-bin mean and std over time of \
         the log-mel, fitted on the same training clips (originals); macro accuracy over the \
         classes of each subset."
    );
    if let Some(w) = below_floor_warning(eval, floor) {
        let _ = writeln!(s, "\n**{w}**");
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "| metric | value |\n|---|---|");
    let _ = writeln!(
        s,
        "| macro class accuracy (%) | {} |",
        pct(eval.macro_accuracy)
    );
    let _ = writeln!(s, "| accuracy (%) | {} |", pct(eval.accuracy));
    let _ = writeln!(s, "| log-loss | {:.4} |", eval.log_loss);
    let _ = writeln!(s, "| test examples | {} |\n", eval.n_examples);

    let _ = writeln!(s, "## Per class\n");
    let _ = writeln!(s, "| class | examples | accuracy (%) |\n|---|---:|---:|");
    for c in &eval.per_class {
        let _ = writeln!(s, "| {} | {} | {} |", c.name, c.n, pct(c.accuracy));
    }
    for (title, rows) in [
        ("Per device", &eval.per_device),
        ("Per device group", &eval.per_group),
    ] {
        let _ = writeln!(s, "\n## {title}\n");
        let _ = writeln!(
            s,
            "| {} | examples | accuracy (%) | macro accuracy (%) |\n|---|---:|---:|---:|",
            if title == "Per device" {
                "device"
            } else {
                "group"
            }
        );
        for d in rows.iter() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                d.name,
                d.n,
                pct(d.accuracy),
                pct(d.macro_accuracy)
            );
        }
    }
    if !eval.seen_devices.is_empty() {
        let _ = writeln!(s, "\nSeen devices: {}.", eval.seen_devices.join(", "));
    }

    let _ = writeln!(s, "\n## Confusion matrix\n");
    let _ = writeln!(
        s,
        "Rows: true class; columns: predicted class (by index).\n"
    );
    let k = eval.class_names.len();
    let _ = write!(s, "| true \\ predicted |");
    for j in 0..k {
        let _ = write!(s, " {j} |");
    }
    let _ = write!(s, "\n|---|");
    for _ in 0..k {
        let _ = write!(s, "---:|");
    }
    let _ = writeln!(s);
    for (i, row) in eval.confusion.iter().enumerate() {
        let name = eval.class_names.get(i).map(String::as_str).unwrap_or("?");
        let _ = write!(s, "| {i} {name} |");
        for c in row {
            let _ = write!(s, " {c} |");
        }
        let _ = writeln!(s);
    }

    let _ = writeln!(s, "\n## Complexity\n");
    let _ = writeln!(s, "```text\n{}\n```", summary.complexity.trim_end());

    let _ = writeln!(s, "\n## Timing\n");
    let n = summary.epochs.len();
    let mean_sps = if n == 0 {
        0.0
    } else {
        summary.epochs.iter().map(|e| e.samples_per_s).sum::<f64>() / n as f64
    };
    let _ = writeln!(s, "| figure | value |\n|---|---|");
    let _ = writeln!(s, "| epochs | {n} |");
    let _ = writeln!(
        s,
        "| optimizer updates | {} |",
        summary.epochs.last().map(|e| e.step).unwrap_or(0)
    );
    let _ = writeln!(s, "| total time (s) | {:.1} |", summary.total_seconds);
    let _ = writeln!(
        s,
        "| mean time per epoch (s) | {:.2} |",
        if n == 0 {
            0.0
        } else {
            summary.total_seconds / n as f64
        }
    );
    let _ = writeln!(
        s,
        "| mean training throughput (examples/s) | {mean_sps:.1} |"
    );

    let _ = writeln!(s, "\n## Plots\n");
    let _ = writeln!(
        s,
        "![loss]({LOSS_PLOT})\n\n![accuracy]({ACCURACY_PLOT})\n\n![confusion]({CONFUSION_PLOT})"
    );
    s
}

/// A run folder `runs/<name>/`.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, bytes).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

impl RunDir {
    /// Create (or reopen) `runs_root/name`. The name must be one plain path component.
    pub fn create(runs_root: &Path, name: &str) -> Result<Self, ReportError> {
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains(['/', '\\'])
            && Path::new(name).components().count() == 1;
        if !plain {
            return Err(ReportError::BadName(name.to_string()));
        }
        let root = runs_root.join(name);
        fs::create_dir_all(&root).map_err(io(&root))?;
        Ok(Self { root })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Folder of the checkpoint `tag` (e.g. `last`, `best`): `<run>/checkpoints/<tag>`.
    pub fn checkpoint_dir(&self, tag: &str) -> PathBuf {
        self.root.join("checkpoints").join(tag)
    }

    /// Write the resolved configuration as `config.toml` (it must serialize to a table).
    pub fn write_config<T: Serialize>(&self, config: &T) -> Result<PathBuf, ReportError> {
        let path = self.root.join(CONFIG_FILE);
        let text = toml::to_string_pretty(config).map_err(|e| ReportError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Append one epoch to `metrics.jsonl`.
    pub fn append_metrics(&self, m: &EpochMetrics) -> Result<(), ReportError> {
        let path = self.root.join(METRICS_FILE);
        let mut line = serde_json::to_string(m).map_err(|source| ReportError::MetricsLine {
            path: path.clone(),
            line: 0,
            source,
        })?;
        line.push('\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(line.as_bytes()).map_err(io(&path))
    }

    /// All epochs of `metrics.jsonl` (empty when the file does not exist yet).
    pub fn read_metrics(&self) -> Result<Vec<EpochMetrics>, ReportError> {
        let path = self.root.join(METRICS_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&path)(e)),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|source| ReportError::MetricsLine {
                    path: path.clone(),
                    line: i + 1,
                    source,
                })
            })
            .collect()
    }

    /// Keep only the epochs before `epoch` in `metrics.jsonl` (resume from a checkpoint taken
    /// after `epoch` epochs); returns the kept epochs.
    pub fn truncate_metrics(&self, epoch: u64) -> Result<Vec<EpochMetrics>, ReportError> {
        let kept: Vec<EpochMetrics> = self
            .read_metrics()?
            .into_iter()
            .filter(|m| m.epoch < epoch)
            .collect();
        let mut text = String::new();
        for m in &kept {
            text.push_str(&serde_json::to_string(m).unwrap_or_default());
            text.push('\n');
        }
        write_atomic(&self.root.join(METRICS_FILE), text.as_bytes())?;
        Ok(kept)
    }

    /// Write `report.md` and the three plots from the run's epochs and final evaluation;
    /// returns the paths written.
    pub fn write_report(
        &self,
        summary: &RunSummary,
        eval: &EvalReport,
    ) -> Result<Vec<PathBuf>, ReportError> {
        let report = self.root.join(REPORT_FILE);
        write_atomic(&report, render_report(summary, eval).as_bytes())?;
        let loss = self.root.join(LOSS_PLOT);
        let acc = self.root.join(ACCURACY_PLOT);
        let cm = self.root.join(CONFUSION_PLOT);
        plots::plot_loss_curves(&loss, &summary.epochs)?;
        plots::plot_accuracy_curves(&acc, &summary.epochs)?;
        plots::plot_confusion(&cm, &eval.class_names, &eval.confusion)?;
        Ok(vec![report, loss, acc, cm])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::EvalAccumulator;

    fn eval() -> EvalReport {
        let labels: Vec<String> = data_specs::TAU22_LABELS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let devices: Vec<String> = data_specs::TAU22_DEVICES
            .iter()
            .map(|s| s.to_string())
            .collect();
        let seen = ["a", "b", "c", "s1", "s2", "s3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut acc = EvalAccumulator::new(labels, devices.clone(), seen);
        // Deterministic pseudo-predictions: example i of class y predicted y unless i % 3 == 0.
        let mut i = 0usize;
        for y in 0..10 {
            for d in &devices {
                for _ in 0..3 {
                    let pred = if i.is_multiple_of(3) { (y + 1) % 10 } else { y };
                    let mut logits = [0.0f32; 10];
                    logits[pred] = 2.0;
                    acc.push(&logits, y, d).unwrap();
                    i += 1;
                }
            }
        }
        acc.finish()
    }

    /// A report of 70 % everywhere (7 of every 10 examples right).
    fn floor_eval() -> EvalReport {
        let ev = eval();
        let mut acc = EvalAccumulator::new(
            ev.class_names.clone(),
            data_specs::TAU22_DEVICES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ev.seen_devices.iter().cloned().collect(),
        );
        for y in 0..10 {
            for d in data_specs::TAU22_DEVICES {
                for i in 0..10 {
                    let pred = if i < 7 { y } else { (y + 1) % 10 };
                    let mut logits = [0.0f32; 10];
                    logits[pred] = 2.0;
                    acc.push(&logits, y, d).unwrap();
                }
            }
        }
        acc.finish()
    }

    fn epochs() -> Vec<EpochMetrics> {
        (0..4)
            .map(|e| EpochMetrics {
                epoch: e,
                step: 25 * (e + 1),
                lr: 0.005 * (1.0 - e as f64 / 4.0),
                train_loss: 2.0 - 0.3 * e as f64,
                train_acc: 0.2 + 0.1 * e as f64,
                test_macro_acc: Some(0.25 + 0.1 * e as f64),
                test_log_loss: Some(1.9 - 0.2 * e as f64),
                seconds: 12.5,
                samples_per_s: 512.0,
                val_macro_acc: None,
            })
            .collect()
    }

    #[derive(Serialize)]
    struct Cfg {
        name: String,
        lr: f64,
        augment: crate::augment::Augment,
    }

    #[test]
    fn run_folder_is_written_with_the_numbers() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path(), "demo").unwrap();
        assert!(matches!(
            RunDir::create(tmp.path(), "../x"),
            Err(ReportError::BadName(_))
        ));
        assert!(matches!(
            RunDir::create(tmp.path(), ""),
            Err(ReportError::BadName(_))
        ));

        let cfg = Cfg {
            name: "demo".into(),
            lr: 0.005,
            augment: Default::default(),
        };
        let p = run.write_config(&cfg).unwrap();
        let text = fs::read_to_string(p).unwrap();
        let back: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(back["lr"].as_float(), Some(0.005));
        assert_eq!(back["augment"]["freq_mixstyle"]["p"].as_float(), Some(0.4));

        for m in epochs() {
            run.append_metrics(&m).unwrap();
        }
        assert_eq!(run.read_metrics().unwrap(), epochs());
        let lines = fs::read_to_string(run.path().join(METRICS_FILE)).unwrap();
        assert_eq!(lines.lines().count(), 4);
        assert_eq!(run.truncate_metrics(2).unwrap(), epochs()[..2].to_vec());
        assert_eq!(run.read_metrics().unwrap().len(), 2);
        for m in &epochs()[2..] {
            run.append_metrics(m).unwrap();
        }

        let ev = eval();
        // 270 examples, 1 in 3 wrong: 66.67 % everywhere.
        assert_eq!(ev.n_examples, 270);
        let summary = RunSummary {
            name: "demo".into(),
            complexity: "params 61,148 | MACs 29.4 M".into(),
            total_seconds: 50.0,
            epochs: run.read_metrics().unwrap(),
            selection: "the final model (epoch 4)".into(),
            floor: Some(floor_eval()),
        };
        let written = run.write_report(&summary, &ev).unwrap();
        assert_eq!(written.len(), 4);
        let md = fs::read_to_string(run.path().join(REPORT_FILE)).unwrap();
        assert!(md.contains(&format!(
            "| macro class accuracy (%) | {} |",
            pct(ev.macro_accuracy)
        )));
        assert!(md.contains("| airport | 27 | 66.67 |"), "{md}");
        assert!(md.contains("| s6 | 30 | 66.67 | 66.67 |"));
        assert!(md.contains("| seen | 180 |") && md.contains("| unseen | 90 |"));
        assert!(md.contains("| 0 airport | 18 | 9 | 0 |"), "{md}");
        assert!(md.contains("params 61,148 | MACs 29.4 M"));
        assert!(md.contains("| total time (s) | 50.0 |") && md.contains("| epochs | 4 |"));
        // Model vs floor side by side, with the warning when the model is below the floor.
        assert!(
            md.contains("| macro accuracy | 66.67 | 70.00 | 270 |"),
            "{md}"
        );
        assert!(
            md.contains("| unseen devices | 66.67 | 70.00 | 90 |"),
            "{md}"
        );
        assert!(md.contains("| device s6 | 66.67 | 70.00 | 30 |"), "{md}");
        assert!(md.contains("WARNING: the model (66.67 %) is below the floor (70.00 %"));
        let table = comparison_table(&ev, Some(&floor_eval()));
        assert!(
            table.contains("macro accuracy") && table.contains("WARNING"),
            "{table}"
        );
        assert!(!comparison_table(&floor_eval(), Some(&ev)).contains("WARNING"));
        for name in [LOSS_PLOT, ACCURACY_PLOT, CONFUSION_PLOT] {
            let bytes = fs::read(run.path().join(name)).unwrap();
            assert!(
                bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
                "{name}"
            );
        }
        // A malformed metrics line is reported with its line number.
        fs::write(run.path().join(METRICS_FILE), "{\"epoch\": 0}\n").unwrap();
        let e = run.read_metrics().unwrap_err();
        assert!(matches!(e, ReportError::MetricsLine { line: 1, .. }), "{e}");
    }
}
