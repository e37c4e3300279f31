//! PNG plots of a run with plotters (bitmap backend, text through ab_glyph): loss curves,
//! accuracy curves and the confusion-matrix heat map.
//!
//! No system font is used: DejaVu Sans (Bitstream Vera license, `train/assets/`) is embedded in
//! the binary and registered as plotters' `sans-serif` family on first use. Every PNG is drawn
//! into a temporary `.<name>.tmp.png` next to the target, then renamed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::report::EpochMetrics;

/// The embedded font (DejaVu Sans, see `train/assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// A plot that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {message}")]
pub struct PlotError {
    /// The PNG being written.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

fn err(path: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |message| PlotError {
        path: path.to_path_buf(),
        message,
    }
}

/// Register the embedded font as `sans-serif` (normal and bold); idempotent.
pub fn register_fonts() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            register_font("sans-serif", style, FONT)
                .map_err(|_| "the embedded DejaVu Sans font is not a valid TrueType font")?;
        }
        Ok(())
    })
    .clone()
}

/// Draw with `draw` into a temporary PNG next to `path`, then rename it to `path`.
fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<(), PlotError> {
    register_fonts().map_err(err(path))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plot".into());
    let tmp = path.with_file_name(format!(".{name}.tmp.png"));
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .map_err(err(path))?;
        draw(&root).map_err(err(path))?;
        root.present()
            .map_err(|e| e.to_string())
            .map_err(err(path))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| err(path)(e.to_string()))
}

/// Range `[lo, hi]` of finite values with a 5 % margin (a unit range around a constant).
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad, hi + pad)
}

/// Axis tick text: integers without decimals, other values with up to three significant
/// decimals.
fn tick(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

type Curve = (&'static str, RGBColor, Vec<(f64, f64)>);

fn line_chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    curves: Vec<Curve>,
    y_range: Option<(f64, f64)>,
) -> Result<(), PlotError> {
    let xs = curves.iter().flat_map(|c| c.2.iter().map(|p| p.0));
    let (x0, x1) = padded_range(xs);
    let (y0, y1) = y_range
        .unwrap_or_else(|| padded_range(curves.iter().flat_map(|c| c.2.iter().map(|p| p.1))));
    render(path, (900, 560), |root| {
        let s = |e: plotters::drawing::DrawingAreaErrorKind<_>| e.to_string();
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 26))
            .margin(18)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(s)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(y_desc)
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()
            .map_err(s)?;
        for (label, color, pts) in curves {
            let pts: Vec<(f64, f64)> = pts.into_iter().filter(|p| p.1.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(s)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(s)?;
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(s)?;
        Ok(())
    })
}

/// Train loss and test log-loss per epoch.
pub fn plot_loss_curves(path: &Path, metrics: &[EpochMetrics]) -> Result<(), PlotError> {
    let train = metrics
        .iter()
        .map(|m| (m.epoch as f64, m.train_loss))
        .collect();
    let test = metrics
        .iter()
        .filter_map(|m| m.test_log_loss.map(|v| (m.epoch as f64, v)))
        .collect();
    line_chart(
        path,
        "Loss",
        "loss",
        vec![
            ("train loss", RGBColor(31, 119, 180), train),
            ("test log-loss", RGBColor(214, 39, 40), test),
        ],
        None,
    )
}

/// Train accuracy, test macro class accuracy (a diagnostic) and, when the run has one, the
/// validation macro accuracy per epoch, in percent.
pub fn plot_accuracy_curves(path: &Path, metrics: &[EpochMetrics]) -> Result<(), PlotError> {
    let train = metrics
        .iter()
        .map(|m| (m.epoch as f64, 100.0 * m.train_acc))
        .collect();
    let test = metrics
        .iter()
        .filter_map(|m| m.test_macro_acc.map(|v| (m.epoch as f64, 100.0 * v)))
        .collect();
    let val: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| m.val_macro_acc.map(|v| (m.epoch as f64, 100.0 * v)))
        .collect();
    let mut series = vec![
        ("train accuracy", RGBColor(31, 119, 180), train),
        (
            "test macro accuracy (diagnostic)",
            RGBColor(214, 39, 40),
            test,
        ),
    ];
    if !val.is_empty() {
        series.push(("validation macro accuracy", RGBColor(44, 160, 44), val));
    }
    line_chart(path, "Accuracy", "accuracy (%)", series, Some((0.0, 100.0)))
}

/// Confusion-matrix heat map: rows are true classes (`"k name"`), columns predicted classes
/// (by index `k`), each cell shaded by its row-normalised share and labelled with its count.
pub fn plot_confusion(
    path: &Path,
    class_names: &[String],
    confusion: &[Vec<u64>],
) -> Result<(), PlotError> {
    let k = class_names.len();
    if confusion.len() != k || confusion.iter().any(|r| r.len() != k) {
        return Err(err(path)(format!(
            "confusion matrix is not {k} x {k} (one row and column per class)"
        )));
    }
    let cell = 56i32;
    let left = 20 + 9 * class_names.iter().map(|n| n.len() + 3).max().unwrap_or(4) as i32;
    let top = 80i32;
    let width = (left + cell * k as i32 + 30).max(400) as u32;
    let height = (top + cell * k as i32 + 50) as u32;
    render(path, (width, height), |root| {
        let s = |e: plotters::drawing::DrawingAreaErrorKind<_>| e.to_string();
        let title = ("sans-serif", 22).into_font();
        let label = ("sans-serif", 15).into_font();
        root.draw(&Text::new(
            "Confusion matrix (rows: true class, columns: predicted)",
            (left.min(20), 12),
            title,
        ))
        .map_err(s)?;
        for (i, row) in confusion.iter().enumerate() {
            let total: u64 = row.iter().sum();
            let y = top + cell * i as i32;
            root.draw(&Text::new(
                format!("{i} {}", class_names[i]),
                (10, y + cell / 2 - 8),
                label.clone(),
            ))
            .map_err(s)?;
            for (j, &count) in row.iter().enumerate() {
                let x = left + cell * j as i32;
                let share = if total == 0 {
                    0.0
                } else {
                    count as f64 / total as f64
                };
                // White -> dark blue by row share.
                let shade = |lo: f64, hi: f64| (lo + (hi - lo) * share).round() as u8;
                let fill = RGBColor(shade(255.0, 8.0), shade(255.0, 48.0), shade(255.0, 107.0));
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    fill.filled(),
                ))
                .map_err(s)?;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    RGBColor(200, 200, 200).stroke_width(1),
                ))
                .map_err(s)?;
                let text_color = if share > 0.5 { WHITE } else { BLACK };
                let txt = count.to_string();
                let tx = x + cell / 2 - 4 * txt.len() as i32;
                root.draw(&Text::new(
                    txt,
                    (tx, y + cell / 2 - 8),
                    label.clone().color(&text_color),
                ))
                .map_err(s)?;
            }
        }
        for j in 0..k {
            let x = left + cell * j as i32 + cell / 2 - 5;
            root.draw(&Text::new(j.to_string(), (x, top - 24), label.clone()))
                .map_err(s)?;
        }
        root.draw(&Text::new(
            "predicted class",
            (left, top + cell * k as i32 + 14),
            label.clone(),
        ))
        .map_err(s)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PNG signature, then the IHDR chunk: width and height as big-endian u32 at bytes 16..24.
    pub(crate) fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
        const SIG: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
        if bytes.len() < 24 || bytes[..8] != SIG || &bytes[12..16] != b"IHDR" {
            return None;
        }
        let w = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
        let h = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
        Some((w, h))
    }

    fn metrics() -> Vec<EpochMetrics> {
        (0..12)
            .map(|e| EpochMetrics {
                epoch: e,
                step: 10 * (e + 1),
                lr: 0.005,
                train_loss: 2.3 / (1.0 + 0.3 * e as f64),
                train_acc: 0.1 + 0.05 * e as f64,
                test_macro_acc: (e % 2 == 0).then_some(0.12 + 0.04 * e as f64),
                test_log_loss: (e % 2 == 0).then_some(2.2 / (1.0 + 0.2 * e as f64)),
                seconds: 3.0,
                samples_per_s: 1000.0,
                val_macro_acc: None,
            })
            .collect()
    }

    #[test]
    fn plots_are_written_as_png() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = data_specs::TAU22_LABELS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let conf: Vec<Vec<u64>> = (0..10)
            .map(|i| {
                (0..10)
                    .map(|j| if i == j { 80 } else { (i * j % 7) as u64 })
                    .collect()
            })
            .collect();
        let loss = dir.path().join("loss.png");
        let acc = dir.path().join("accuracy.png");
        let cm = dir.path().join("confusion.png");
        plot_loss_curves(&loss, &metrics()).unwrap();
        plot_accuracy_curves(&acc, &metrics()).unwrap();
        plot_confusion(&cm, &names, &conf).unwrap();
        for (p, size) in [(&loss, (900, 560)), (&acc, (900, 560))] {
            let bytes = std::fs::read(p).unwrap();
            assert_eq!(png_size(&bytes), Some(size), "{}", p.display());
        }
        let bytes = std::fs::read(&cm).unwrap();
        let (w, h) = png_size(&bytes).unwrap();
        assert!(w >= 560 + 100 && h >= 560 + 100, "{w} x {h}");
        // No temporary file left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // A non-square matrix is a typed error naming the file.
        let e = plot_confusion(&cm, &names, &conf[..3]).unwrap_err();
        assert!(e.to_string().contains("confusion.png"));
        if let Ok(keep) = std::env::var("TRAIN_KEEP_PLOTS") {
            for p in [&loss, &acc, &cm] {
                std::fs::copy(p, Path::new(&keep).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
}
