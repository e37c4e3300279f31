//! `train predict`: a model's logits for the original rows of a set, as the Parquet table the
//! pipeline reads as teacher logits (`pipeline --teacher-logits`, [`pipeline::teacher`]):
//!
//! ```text
//! clip_id: utf8 (not null), logits: fixed_size_list<float32 (nullable item)>[n_classes] (not null)
//! ```
//!
//! One row per original clip row, in shard order. The file is written to `<out>.tmp`, then renamed.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use burn::tensor::Device;
use data_specs::ClipSet;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::evaluate::EvalSet;
use crate::loader::ShardSet;
use crate::model::Model;
use crate::trainer::{Result, io_err};

/// Which rows `predict` covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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

/// Writes `clip_id` / `logits` rows to the Parquet file `out` (temp name, then rename).
pub fn write_logits_parquet(
    out: &Path,
    clip_ids: &[String],
    logits: &[f32],
    n_classes: usize,
) -> Result<()> {
    if n_classes == 0 || logits.len() != clip_ids.len() * n_classes {
        return Err(io_err(
            out,
            format!(
                "{} logits values for {} clips of {n_classes} classes",
                logits.len(),
                clip_ids.len()
            ),
        ));
    }
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("clip_id", DataType::Utf8, false),
        Field::new(
            "logits",
            DataType::FixedSizeList(item.clone(), n_classes as i32),
            false,
        ),
    ]));
    let ids: ArrayRef = Arc::new(StringArray::from_iter_values(clip_ids));
    let list = FixedSizeListArray::try_new(
        item,
        n_classes as i32,
        Arc::new(Float32Array::from(logits.to_vec())),
        None,
    )
    .map_err(|e| io_err(out, e))?;
    let batch = RecordBatch::try_new(schema.clone(), vec![ids, Arc::new(list)])
        .map_err(|e| io_err(out, e))?;
    let tmp: PathBuf = {
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "logits.parquet".into());
        out.with_file_name(format!(".{name}.tmp"))
    };
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let file = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    let mut writer =
        ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| io_err(&tmp, e))?;
    writer.write(&batch).map_err(|e| io_err(&tmp, e))?;
    writer.close().map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, out).map_err(|e| io_err(out, e))
}
