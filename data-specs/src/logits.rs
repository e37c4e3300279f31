//! The logits table: one row of teacher (or any model's) logits per clip, the file `train
//! predict` and `pipeline teachers fuse-logits` write and `pipeline features --teacher-logits` /
//! `pipeline teachers join-logits` read.
//!
//! ```text
//! clip_id: utf8 (not null), logits: fixed_size_list<float32 (not null)>[n_classes] (not null)
//! ```
//!
//! The list items are not nullable, as in the shards' `teacher_logits` column: a clip either has
//! a whole logits vector or no row. [`read_logits_table`] is more lenient, for tables written by
//! other tools and by older versions of the toolkit (whose `train predict` declared the items
//! nullable): the key may be `clip_id` (matched exactly) or `filename` (the caller matches its
//! file stem), string or dictionary-encoded; `logits` may be a `FixedSizeList`, `List` or
//! `LargeList` of `Float32`; a row with a null key or null logits is skipped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::cast::AsArray;
use arrow_array::types::Int32Type;
use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::SpecError;

/// Key column of a logits table written by the toolkit.
pub const CLIP_ID_COLUMN: &str = "clip_id";
/// Alternative key column (a dataset-relative audio path, matched on its file stem).
pub const FILENAME_COLUMN: &str = "filename";
/// Logits column.
pub const LOGITS_COLUMN: &str = "logits";

/// Which column keys the rows of a logits table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsKey {
    /// `clip_id`: the key is a clip id.
    ClipId,
    /// `filename`: the key is an audio path; its file stem is the clip id.
    Filename,
}

/// The rows of a logits table that have a key and logits.
#[derive(Debug, Clone, PartialEq)]
pub struct LogitsTable {
    /// The key column the table has.
    pub key: LogitsKey,
    /// Values per row.
    pub n_classes: usize,
    /// Row keys, in file order.
    pub keys: Vec<String>,
    /// `[keys.len(), n_classes]` row-major.
    pub values: Vec<f32>,
}

/// The schema of a logits table with `n_classes` values per row.
pub fn logits_schema(n_classes: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(CLIP_ID_COLUMN, DataType::Utf8, false),
        Field::new(
            LOGITS_COLUMN,
            DataType::FixedSizeList(logits_item(), n_classes as i32),
            false,
        ),
    ]))
}

fn logits_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Float32, false))
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// `<path>.<pid>-<seq>.tmp`: a temporary name unique to this process and call.
fn tmp_name(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    PathBuf::from(s)
}

/// Writes `clip_ids` with their logits (`[clip_ids.len(), n_classes]` row-major) as a logits
/// table (zstd) to `path`: to a temporary name first, renamed when complete, so a reader never
/// sees a half-written table; the temporary file is removed on failure.
pub fn write_logits_table(
    path: &Path,
    clip_ids: &[String],
    logits: &[f32],
    n_classes: usize,
) -> Result<(), SpecError> {
    let file_err = |file: &Path, problem: String| SpecError::Io {
        file: file.display().to_string(),
        problem,
    };
    if n_classes == 0 || logits.len() != clip_ids.len() * n_classes {
        return Err(file_err(
            path,
            format!(
                "{} logits values for {} clips of {n_classes} classes",
                logits.len(),
                clip_ids.len()
            ),
        ));
    }
    let schema = logits_schema(n_classes);
    let ids: ArrayRef = Arc::new(StringArray::from_iter_values(clip_ids));
    let list = FixedSizeListArray::try_new(
        logits_item(),
        n_classes as i32,
        Arc::new(Float32Array::from(logits.to_vec())),
        None,
    )
    .map_err(|e| SpecError::Arrow(e.to_string()))?;
    let batch = RecordBatch::try_new(schema.clone(), vec![ids, Arc::new(list)])
        .map_err(|e| SpecError::Arrow(e.to_string()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let tmp = tmp_name(path);
    let written = (|| {
        let file = File::create(&tmp).map_err(|e| file_err(&tmp, e.to_string()))?;
        let mut writer = ArrowWriter::try_new(file, schema, Some(props))
            .map_err(|e| file_err(&tmp, e.to_string()))?;
        writer
            .write(&batch)
            .map_err(|e| file_err(&tmp, e.to_string()))?;
        writer.close().map_err(|e| file_err(&tmp, e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| file_err(path, e.to_string()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Reads the rows of the logits table `path` that have a key and logits; every logits vector
/// must have `n_classes` values.
pub fn read_logits_table(path: &Path, n_classes: usize) -> Result<LogitsTable, SpecError> {
    let file_name = path.display().to_string();
    let bad = |problem: String| SpecError::LogitsTable {
        file: file_name.clone(),
        problem,
    };
    let file = File::open(path).map_err(|e| SpecError::Io {
        file: file_name.clone(),
        problem: e.to_string(),
    })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| SpecError::Parquet {
            file: file_name.clone(),
            problem: e.to_string(),
        })?;
    let mut table = LogitsTable {
        key: LogitsKey::ClipId,
        n_classes,
        keys: Vec::new(),
        values: Vec::new(),
    };
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let schema = batch.schema();
        let (key_col, key) = if let Ok(i) = schema.index_of(CLIP_ID_COLUMN) {
            (i, LogitsKey::ClipId)
        } else if let Ok(i) = schema.index_of(FILENAME_COLUMN) {
            (i, LogitsKey::Filename)
        } else {
            return Err(bad(format!(
                "no '{CLIP_ID_COLUMN}' or '{FILENAME_COLUMN}' column"
            )));
        };
        table.key = key;
        let logits_col = schema
            .index_of(LOGITS_COLUMN)
            .map_err(|_| bad(format!("no '{LOGITS_COLUMN}' column")))?;
        let keys = string_values(batch.column(key_col)).ok_or_else(|| {
            bad(format!(
                "column '{}' is not a string column",
                schema.field(key_col).name()
            ))
        })?;
        let logits = batch.column(logits_col);
        for (r, key) in keys.into_iter().enumerate() {
            let Some(key) = key else { continue };
            let Some(v) = list_row(logits, r).map_err(&bad)? else {
                continue;
            };
            if v.len() != n_classes {
                return Err(bad(format!(
                    "logits of '{key}' have {} values, but the label vocabulary has {n_classes}",
                    v.len()
                )));
            }
            table.values.extend_from_slice(&v);
            table.keys.push(key);
        }
    }
    Ok(table)
}

/// String values of a Utf8 / LargeUtf8 / Utf8View / Dictionary<Int32, Utf8> column.
fn string_values(a: &ArrayRef) -> Option<Vec<Option<String>>> {
    let owned =
        |it: &mut dyn Iterator<Item = Option<&str>>| it.map(|s| s.map(str::to_string)).collect();
    match a.data_type() {
        DataType::Utf8 => Some(owned(&mut a.as_string::<i32>().iter())),
        DataType::LargeUtf8 => Some(owned(&mut a.as_string::<i64>().iter())),
        DataType::Utf8View => Some(owned(&mut a.as_string_view().iter())),
        DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => {
            let d = a.as_dictionary::<Int32Type>();
            let vals = d.values().as_string::<i32>();
            Some(
                d.keys()
                    .iter()
                    .map(|k| k.map(|k| vals.value(k as usize).to_string()))
                    .collect(),
            )
        }
        _ => None,
    }
}

/// Row `r` of a list-of-Float32 column, `None` when null.
fn list_row(a: &ArrayRef, r: usize) -> Result<Option<Vec<f32>>, String> {
    if a.is_null(r) {
        return Ok(None);
    }
    let inner: ArrayRef = match a.data_type() {
        DataType::FixedSizeList(_, _) => a.as_fixed_size_list().value(r),
        DataType::List(_) => a.as_list::<i32>().value(r),
        DataType::LargeList(_) => a.as_list::<i64>().value(r),
        other => {
            return Err(format!(
                "column '{LOGITS_COLUMN}' has type {other}, expected FixedSizeList<Float32> or \
                 List<Float32>"
            ));
        }
    };
    let f = inner
        .as_any()
        .downcast_ref::<Float32Array>()
        .ok_or_else(|| {
            format!(
                "column '{LOGITS_COLUMN}' holds {}, expected Float32",
                inner.data_type()
            )
        })?;
    Ok(Some(f.values().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, ListBuilder, StringBuilder};

    fn write_batch(path: &Path, batch: &RecordBatch) {
        let file = File::create(path).unwrap();
        let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn written_tables_have_the_schema_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.parquet");
        let ids = vec!["a".to_string(), "b@1".to_string()];
        let values = [0.5, -1.0, 2.0, 3.0, 4.0, -5.5];
        write_logits_table(&path, &ids, &values, 3).unwrap();
        let file = File::open(&path).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let schema = builder.schema();
        assert_eq!(
            schema.fields(),
            logits_schema(3).fields(),
            "not-null list items, as in the shards' teacher_logits"
        );
        let t = read_logits_table(&path, 3).unwrap();
        assert_eq!(t.key, LogitsKey::ClipId);
        assert_eq!(t.keys, ids);
        assert_eq!(t.values, values);
        assert!(read_logits_table(&path, 4).is_err(), "class count checked");
        // No temporary file is left beside the table.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
        // A wrong buffer length is refused before anything is written.
        let other = tmp.path().join("u.parquet");
        assert!(write_logits_table(&other, &ids, &values[..5], 3).is_err());
        assert!(!other.exists());
    }

    #[test]
    fn older_and_foreign_layouts_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        // Nullable items (the toolkit's older `train predict` tables), a null row.
        let item = Arc::new(Field::new("item", DataType::Float32, true));
        let schema = Arc::new(Schema::new(vec![
            Field::new(CLIP_ID_COLUMN, DataType::Utf8, false),
            Field::new(
                LOGITS_COLUMN,
                DataType::FixedSizeList(item.clone(), 2),
                true,
            ),
        ]));
        let mut ids = StringBuilder::new();
        let mut b = FixedSizeListBuilder::new(Float32Builder::new(), 2).with_field(item);
        for (id, v) in [
            ("x", Some([1.0, 2.0])),
            ("y", None),
            ("z", Some([3.0, 4.0])),
        ] {
            ids.append_value(id);
            match v {
                Some(v) => {
                    b.values().append_slice(&v);
                    b.append(true);
                }
                None => {
                    b.values().append_slice(&[0.0, 0.0]);
                    b.append(false);
                }
            }
        }
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(ids.finish()), Arc::new(b.finish())])
                .unwrap();
        let path = tmp.path().join("old.parquet");
        write_batch(&path, &batch);
        let t = read_logits_table(&path, 2).unwrap();
        assert_eq!(t.keys, ["x", "z"]);
        assert_eq!(t.values, [1.0, 2.0, 3.0, 4.0]);

        // `filename` key and a variable-length list.
        let mut names = StringBuilder::new();
        let mut l = ListBuilder::new(Float32Builder::new());
        names.append_value("audio/q.wav");
        l.values().append_slice(&[7.0, 8.0]);
        l.append(true);
        let batch = RecordBatch::try_from_iter(vec![
            (FILENAME_COLUMN, Arc::new(names.finish()) as ArrayRef),
            (LOGITS_COLUMN, Arc::new(l.finish()) as ArrayRef),
        ])
        .unwrap();
        let path = tmp.path().join("list.parquet");
        write_batch(&path, &batch);
        let t = read_logits_table(&path, 2).unwrap();
        assert_eq!(t.key, LogitsKey::Filename);
        assert_eq!(t.keys, ["audio/q.wav"]);
        assert_eq!(t.values, [7.0, 8.0]);

        // No key column: the message names the file and the columns it looked for.
        let batch = RecordBatch::try_from_iter(vec![(
            "other",
            Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
        )])
        .unwrap();
        let path = tmp.path().join("nokey.parquet");
        write_batch(&path, &batch);
        let msg = read_logits_table(&path, 2).unwrap_err().to_string();
        assert!(
            msg.contains("nokey.parquet") && msg.contains("'clip_id' or 'filename'"),
            "{msg}"
        );
    }
}
