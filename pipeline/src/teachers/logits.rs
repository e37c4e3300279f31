//! Stage 6, teacher logits: loads precomputed teacher logits and joins them to clips.
//!
//! Two formats are read:
//! - **Parquet**: the logits table of [`data_specs::logits`] (read by
//!   [`data_specs::read_logits_table`]): a clip key column, `clip_id` (matched exactly) or
//!   `filename` (matched on the file stem, so `audio/x.wav` keys clip `x`), and a `logits`
//!   column of `FixedSizeList<Float32, n_classes>`, `List<Float32>` or `LargeList<Float32>`.
//!   Null logits mean "no logits".
//! - **`.npy`**: a float32 (`<f4`; `<f8` is converted) C-order array of shape
//!   `[rows of meta.csv, n_classes]`, row `i` holding the logits of row `i` of `meta.csv` (the
//!   format of CP-JKU's DCASE23 ensemble logits).
//!
//! [`TeacherLogits::get`] looks a clip id up exactly, then without its `@k` suffix, so every
//! second of a cut long recording carries the recording's logits; every variant of a clip
//! carries its clip's logits. A clip without logits gets null, never zeros.

use std::collections::HashMap;
use std::path::Path;

use data_specs::LogitsKey;

use crate::ingest::{MetaRow, file_stem};

/// Errors of loading teacher logits; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    /// Reading failed.
    #[error("{path}: {problem}")]
    Io {
        /// File.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The Parquet logits table cannot be read ([`data_specs::read_logits_table`]).
    #[error(transparent)]
    Table(#[from] data_specs::SpecError),
    /// The file is not in a supported format or has the wrong shape.
    #[error("{path}: {problem}")]
    Format {
        /// File.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// Teacher logits keyed by clip id, stored as one flat `[rows, n_classes]` buffer.
#[derive(Debug, Clone)]
pub struct TeacherLogits {
    n_classes: usize,
    index: HashMap<String, usize>,
    values: Vec<f32>,
    description: String,
}

impl TeacherLogits {
    /// Loads logits from a `.npy` or Parquet file (chosen by the extension). `meta_rows` are
    /// the rows of `meta.csv` (used to key `.npy` rows). `n_classes` is the length of the
    /// label vocabulary; every logits vector must have this length.
    pub fn load(
        path: &Path,
        meta_rows: &[MetaRow],
        n_classes: usize,
    ) -> Result<Self, TeacherError> {
        let is_npy = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
        if is_npy {
            let arr = read_npy_f32(path)?;
            let fmt = |problem: String| TeacherError::Format {
                path: path.display().to_string(),
                problem,
            };
            if arr.shape.len() != 2 {
                return Err(fmt(format!(
                    "expected a 2-D array [rows, classes], found shape {:?}",
                    arr.shape
                )));
            }
            let (rows, cols) = (arr.shape[0], arr.shape[1]);
            if rows != meta_rows.len() {
                return Err(fmt(format!(
                    "{rows} rows, but meta.csv has {} rows (the .npy is indexed by meta.csv row)",
                    meta_rows.len()
                )));
            }
            if cols != n_classes {
                return Err(fmt(format!(
                    "{cols} classes per row, but the label vocabulary has {n_classes}"
                )));
            }
            let index = meta_rows
                .iter()
                .map(|r| (r.stem().to_string(), r.row))
                .collect();
            Ok(Self {
                n_classes,
                index,
                values: arr.data,
                description: format!("{} (npy [{rows}, {cols}])", display_name(path)),
            })
        } else {
            Self::load_parquet(path, n_classes)
        }
    }

    fn load_parquet(path: &Path, n_classes: usize) -> Result<Self, TeacherError> {
        let table = data_specs::read_logits_table(path, n_classes)?;
        let rows = table.keys.len();
        let index = table
            .keys
            .into_iter()
            .enumerate()
            .map(|(slot, key)| match table.key {
                LogitsKey::ClipId => (key, slot),
                LogitsKey::Filename => (file_stem(&key).to_string(), slot),
            })
            .collect();
        Ok(Self {
            n_classes,
            index,
            values: table.values,
            description: format!("{} (parquet, {rows} rows)", display_name(path)),
        })
    }

    /// The logits of a clip: looked up by `clip_id`, then by the id without its `@k` suffix.
    pub fn get(&self, clip_id: &str) -> Option<&[f32]> {
        let slot = self.index.get(clip_id).or_else(|| {
            clip_id
                .rsplit_once('@')
                .and_then(|(stem, _)| self.index.get(stem))
        })?;
        Some(&self.values[slot * self.n_classes..(slot + 1) * self.n_classes])
    }

    /// Number of classes per logits vector.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// Number of clips with logits.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when no clip has logits.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Short description for the shard metadata (`asc.teacher`): file name, format and size.
    pub fn description(&self) -> &str {
        &self.description
    }
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// A float array read from a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values in C order.
    pub data: Vec<f32>,
}

/// Reads a `.npy` file (format versions 1-3) holding little-endian `float32` (`<f4`) or
/// `float64` (`<f8`, converted) values in C order.
///
/// Layout (numpy's `format.py`): magic `\x93NUMPY`, major and minor version bytes, the header
/// length (u16 LE for version 1, u32 LE for 2 and 3), then an ASCII Python dict
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (R, C), }`, padded, then the raw data.
pub fn read_npy_f32(path: &Path) -> Result<NpyArray, TeacherError> {
    let p = path.display().to_string();
    let fmt = |problem: String| TeacherError::Format {
        path: p.clone(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|e| TeacherError::Io {
        path: p.clone(),
        problem: e.to_string(),
    })?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(fmt("not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(fmt("truncated header".into()));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(fmt(format!("unsupported .npy version {v}"))),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or_else(|| fmt("truncated header".into()))?;
    let header = std::str::from_utf8(header).map_err(|_| fmt("header is not text".into()))?;
    let value_of = |key: &str| -> Result<&str, TeacherError> {
        let k = format!("'{key}'");
        let at = header
            .find(&k)
            .ok_or_else(|| fmt(format!("header has no {k}: {header}")))?;
        let rest = header[at + k.len()..].trim_start();
        rest.strip_prefix(':')
            .map(str::trim_start)
            .ok_or_else(|| fmt(format!("malformed header: {header}")))
    };
    let descr = value_of("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| fmt(format!("malformed descr in header: {header}")))?;
    let width = match descr {
        "<f4" | "=f4" | "|f4" => 4,
        "<f8" | "=f8" => 8,
        other => {
            return Err(fmt(format!(
                "dtype '{other}', expected little-endian float32 ('<f4')"
            )));
        }
    };
    if value_of("fortran_order")?.starts_with("True") {
        return Err(fmt(
            "Fortran-order arrays are not supported; save with C order".into(),
        ));
    }
    let shape_text = value_of("shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| fmt(format!("malformed shape in header: {header}")))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| fmt(format!("malformed shape '{inner}'")))?;
    let count: usize = shape.iter().product();
    let data_bytes = &bytes[start + hlen..];
    if data_bytes.len() != count * width {
        return Err(fmt(format!(
            "shape {shape:?} needs {} data bytes, the file has {}",
            count * width,
            data_bytes.len()
        )));
    }
    let data = if width == 4 {
        data_bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        data_bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect()
    };
    Ok(NpyArray { shape, data })
}

/// Writes a 2-D float32 `.npy` (version 1.0, C order); used by tests and tools.
pub fn write_npy_f32(path: &Path, rows: usize, cols: usize, data: &[f32]) -> std::io::Result<()> {
    assert_eq!(data.len(), rows * cols, "data length must be rows * cols");
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Pad so that magic + version + length + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let tmp = path.with_extension("npy.tmp");
    std::fs::write(&tmp, out)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_and_shape_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.npy");
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        write_npy_f32(&p, 3, 2, &data).unwrap();
        let a = read_npy_f32(&p).unwrap();
        assert_eq!(a.shape, vec![3, 2]);
        assert_eq!(a.data, data);
        // Hand-made header in numpy's own spelling, version 2.
        let hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
        let mut b = b"\x93NUMPY\x02\x00".to_vec();
        b.extend_from_slice(&(hdr.len() as u32).to_le_bytes());
        b.extend_from_slice(hdr.as_bytes());
        b.extend_from_slice(&1.5f32.to_le_bytes());
        b.extend_from_slice(&(-2.0f32).to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        assert_eq!(read_npy_f32(&p).unwrap().data, vec![1.5, -2.0]);
        // Truncated data.
        std::fs::write(&p, &b[..b.len() - 1]).unwrap();
        let e = read_npy_f32(&p).unwrap_err().to_string();
        assert!(e.contains("l.npy") && e.contains("data bytes"), "{e}");
        // Big-endian.
        let mut b2 = b.clone();
        let at = b2.windows(3).position(|w| w == b"<f4").unwrap();
        b2[at] = b'>';
        std::fs::write(&p, &b2).unwrap();
        assert!(
            read_npy_f32(&p)
                .unwrap_err()
                .to_string()
                .contains("float32")
        );
        std::fs::write(&p, b"hello").unwrap();
        assert!(read_npy_f32(&p).unwrap_err().to_string().contains("magic"));
    }
}
