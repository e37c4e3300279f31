//! The report of a finished run: `report.md` (macro accuracy, per class / device / group,
//! model vs floor, confusion matrix, complexity, timing), the model-vs-floor table of the
//! console, and the three plots ([`write_report`] writes them into the run folder).

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::error::Result;
use crate::metrics::{EpochMetrics, EvalReport, GroupAccuracy};
use crate::plots;
use crate::run::{ACCURACY_PLOT, CONFUSION_PLOT, LOSS_PLOT, REPORT_FILE, RunDir, write_atomic};

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
    let find = |r: &[GroupAccuracy], name: &str| {
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

/// Writes `report.md` and the three plots into the run folder `run` from the run's epochs and
/// final evaluation; returns the paths written.
pub fn write_report(run: &RunDir, summary: &RunSummary, eval: &EvalReport) -> Result<Vec<PathBuf>> {
    let root = run.path();
    let report = root.join(REPORT_FILE);
    write_atomic(&report, render_report(summary, eval).as_bytes())?;
    let loss = root.join(LOSS_PLOT);
    let acc = root.join(ACCURACY_PLOT);
    let cm = root.join(CONFUSION_PLOT);
    plots::plot_loss_curves(&loss, &summary.epochs)?;
    plots::plot_accuracy_curves(&acc, &summary.epochs)?;
    plots::plot_confusion(&cm, &eval.class_names, &eval.confusion)?;
    Ok(vec![report, loss, acc, cm])
}

#[cfg(test)]
mod tests {
    use std::fs;

    use serde::Serialize;

    use super::*;
    use crate::error::TrainError;
    use crate::metrics::EvalAccumulator;
    use crate::run::METRICS_FILE;

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
            Err(TrainError::BadRunName(_))
        ));
        assert!(matches!(
            RunDir::create(tmp.path(), ""),
            Err(TrainError::BadRunName(_))
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
        let written = write_report(&run, &summary, &ev).unwrap();
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
        assert!(matches!(e, TrainError::MetricsLine { line: 1, .. }), "{e}");
    }
}
