//! # data-specs
//!
//! The one definition of the data formats of the ASC toolkit: the Parquet shard schema and its
//! key-value metadata ([`ShardMeta`]), the front-end configuration and its presets
//! ([`FrontEndConfig`]), the label and device vocabularies ([`Vocabulary`]), the clip energy
//! ([`clip_energy`]), the shard-set manifest ([`Manifest`]), the Parquet writer properties of a
//! shard ([`shard_writer_properties`]), the logits table ([`write_logits_table`],
//! [`read_logits_table`]), the stable hashes ([`hash`]: FNV-1a, SplitMix64) and the DCASE2024
//! complexity limits ([`limits`]). Every other crate takes these from here.
//!
//! This crate knows formats, not algorithms. `README.md` beside it documents every column for
//! readers in pyarrow, DuckDB or polars.

pub mod frontend;
pub mod hash;
pub mod integrity;
pub mod limits;
pub mod logits;
pub mod manifest;
pub mod schema;
pub mod vocab;
pub mod writer;

use std::path::Path;

pub use frontend::{FrontEndConfig, FrontEndPreset, MelScale, WindowKind};
pub use integrity::{VERIFIED_FILE, VerifyReport, sha256_file, verify_shards};
pub use logits::{LogitsKey, LogitsTable, read_logits_table, write_logits_table};
pub use manifest::{MANIFEST_FILE, Manifest, ShardEntry};
pub use schema::{
    ClipRecord, ClipSet, DirSet, LogmelType, META_DATASET, META_DEVICES, META_DIR_SET,
    META_ENERGY_THRESHOLD, META_FRONTEND, META_LABELS, META_LOGMEL_TYPE, META_SPEC_VERSION,
    META_TEACHER, MIN_SPEC_VERSION, SPEC_VERSION, SPLITS, ShardMeta, Variant, col,
    records_to_batch,
};
pub use vocab::{
    REFERENCE_DEVICE, TAU22_DEVICES, TAU22_LABELS, TAU22_UNSEEN_DEVICES, TauFileName, Vocabulary,
};
pub use writer::shard_writer_properties;

/// Errors about data that does not follow the spec. Every variant names the offending file
/// (or clip) so that the message alone tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file has no spec-version key: it was not written by this toolkit.
    #[error("{file}: not an ASC shard (no '{key}' metadata); was it written by `pipeline`?", key = META_SPEC_VERSION)]
    NotAShard {
        /// File.
        file: String,
    },
    /// The spec version differs from the one this build reads.
    #[error(
        "{file}: shard spec version {found}, but this build reads version {min} to version {expected}; rebuild the shards with `make features`",
        min = MIN_SPEC_VERSION
    )]
    VersionMismatch {
        /// File.
        file: String,
        /// Version in the file.
        found: u32,
        /// Version of this build.
        expected: u32,
    },
    /// A metadata key is missing.
    #[error("{file}: metadata key '{key}' is missing")]
    MissingMetadata {
        /// File.
        file: String,
        /// Key.
        key: String,
    },
    /// A metadata value cannot be parsed.
    #[error("{file}: metadata key '{key}' is invalid: {problem}")]
    BadMetadata {
        /// File.
        file: String,
        /// Key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// A column of the spec is missing.
    #[error("{file}: column '{column}' is missing")]
    MissingColumn {
        /// File.
        file: String,
        /// Column.
        column: String,
    },
    /// A column has another type than the spec's.
    #[error("{file}: column '{column}' has type {found}, expected {expected}")]
    ColumnType {
        /// File.
        file: String,
        /// Column.
        column: String,
        /// Type found.
        found: String,
        /// Type of the spec.
        expected: String,
    },
    /// Columns that the spec does not define.
    #[error("{file}: unexpected columns {columns:?}")]
    ExtraColumns {
        /// File.
        file: String,
        /// The extra columns.
        columns: Vec<String>,
    },
    /// A record's list column has the wrong length.
    #[error("clip {clip_id}: column '{column}' has {found} values, expected {expected}")]
    RecordShape {
        /// Clip.
        clip_id: String,
        /// Column.
        column: String,
        /// Length found.
        found: usize,
        /// Length expected.
        expected: usize,
    },
    /// The manifest cannot be parsed.
    #[error("{file}: invalid manifest: {problem}")]
    BadManifest {
        /// File.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// A shard the manifest lists is not there.
    #[error(
        "{file}: listed in {manifest} but missing; restore it, or rerun `pipeline features` with \
         the same options and --out to write it again"
    )]
    ShardMissing {
        /// The shard.
        file: String,
        /// The manifest listing it.
        manifest: String,
    },
    /// A shard's bytes do not have the SHA-256 the manifest records.
    #[error(
        "{file}: SHA-256 {found}, but {manifest} records {expected}: the shard was damaged or \
         changed after it was written{}; rerun `pipeline features` with the same options and \
         --out to write it again (it rewrites shards that do not match the manifest)",
        if *others > 0 { format!(" ({others} more shards differ too)") } else { String::new() }
    )]
    Checksum {
        /// The shard.
        file: String,
        /// The manifest.
        manifest: String,
        /// SHA-256 recorded in the manifest.
        expected: String,
        /// SHA-256 of the file's bytes.
        found: String,
        /// Further shards that differ.
        others: usize,
    },
    /// Reading or writing failed.
    #[error("{file}: {problem}")]
    Io {
        /// File.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// The file is not readable Parquet.
    #[error("{file}: not a readable Parquet file: {problem}")]
    Parquet {
        /// File.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// Arrow rejected a batch (a bug in the caller).
    #[error("arrow: {0}")]
    Arrow(String),
    /// A logits table without the columns or values it needs.
    #[error("{file}: {problem}")]
    LogitsTable {
        /// File.
        file: String,
        /// What is wrong.
        problem: String,
    },
}

/// Energy of a clip: the sum of squared samples of the 1 s, 32 kHz mono waveform with samples
/// scaled to [-1, 1]: `E = sum_n x[n]^2` (so `E = 32000 * mean square`).
///
/// The paper gates DIR augmentation on energy > 323, "the average energy of the training set".
/// With this definition 323 corresponds to a mean square of 0.0101, i.e. an RMS of 0.10
/// (-20 dBFS), which is the typical level of TAU22 clips; we believe the paper used the same
/// definition, but it does not say so, and the default threshold is recomputed from the data.
pub fn clip_energy(samples: &[f32]) -> f32 {
    samples
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>() as f32
}

/// Reads the Arrow schema of a Parquet shard and validates it (spec version, columns, types).
pub fn read_shard_meta(path: &Path) -> Result<ShardMeta, SpecError> {
    let source = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| SpecError::Io {
        file: source.clone(),
        problem: e.to_string(),
    })?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| SpecError::Parquet {
            file: source.clone(),
            problem: e.to_string(),
        })?;
    ShardMeta::validate(builder.schema(), &source)
}

#[cfg(test)]
mod tests;
