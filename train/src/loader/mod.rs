//! The memory-mapped shard loader: the bridge between the Parquet shards written by `pipeline`
//! and the trainer.
//!
//! ```text
//! ShardSet::open(folder | manifest.json)   mmap every shard, validate metadata, read the small
//!                                           columns into a row index (never the log-mel)
//! Loader::new(&set, Selection, LoaderConfig) select rows (set, split, devices), group by clip
//! loader.epoch(e)                           plan the epoch (variant draw + block shuffle), then a
//!                                           background thread decodes each drawn row straight
//!                                           into its slot of a batch buffer -> HostBatch ->
//!                                           burn tensors (moved, not copied: into_tensors)
//! ```
//!
//! # Reading
//!
//! The row groups of a window are decoded in parallel (rayon), each drawn row's log-mel
//! written straight into its batch slot: from uncompressed PLAIN pages (the pipeline's default)
//! by `pread` of just that row's bytes, so the map's data pages are never faulted in; from
//! compressed or BYTE_STREAM_SPLIT pages by decoding the pages that hold drawn rows; any other
//! layout through the Arrow reader. Window k + 1 is decoded while the batches of window k are
//! sent, and with [`LoaderConfig::prefetch_next_epoch`] (the trainer's setting) the thread goes
//! on into the next epoch, so a consumer never waits at an epoch boundary. Resident memory is
//! bounded by the window, the prefetch queue and the batches the consumer holds, not by the
//! size of the set.
//!
//! # Variant sampling (IRMamba / CP-JKU DIR augmentation)
//!
//! An epoch holds one row per selected clip: for a clip with DIR rows, a DIR row is drawn with
//! probability `p_dir` (uniformly among the clip's DIR rows), the original otherwise. Replay rows
//! (`replay`, `replay-sim`) are extra training examples, all included when `replay` is on. Test
//! and unused sets use originals only.
//!
//! # Shuffle scheme (row-group-aware block shuffle)
//!
//! With seed `s` and epoch `e`, two independent generators are derived from `(s, e)` (splitmix64
//! of both, then `StdRng`, i.e. ChaCha12 of rand 0.9): one for the variant draw, one for the
//! order. The epoch's rows are grouped by row group; the row groups are put in a uniformly random
//! order (Fisher-Yates); consecutive row groups of that order are packed into *windows* of at
//! least [`LoaderConfig::shuffle_window`] rows; the rows of each window are permuted uniformly.
//! The epoch order is the concatenation of the windows, cut into batches of `batch_size`.
//! So every row group is decoded exactly once per epoch and reads stay sequential within a
//! row group, while each batch mixes rows of several random row groups from anywhere in the set.
//! Two rows can share a batch only if their row groups land in the same or neighbouring windows;
//! a larger window mixes better and costs about `shuffle_window * logmel_len * 4` bytes of batch
//! buffers in flight. Shards should be written in a shuffled clip order (not sorted by scene) so that a
//! row group is not label-homogeneous.
//!
//! The order depends only on `(seed, epoch, selection, shard set)`, never on thread timing, so
//! [`LoaderState`] `{ seed, epoch, batch }` is enough to resume exactly.

mod batch;
mod pages;
mod plan;
mod reader;
mod shards;
pub mod synth;

#[cfg(test)]
mod tests;

pub use batch::{HostBatch, TensorBatch};
pub use plan::{Fold, FoldFilter, LoaderConfig, LoaderState, LocationFolds, Selection};
pub use reader::{EpochIter, Loader};
pub use shards::{RowInfo, ShardSet};

use data_specs::SpecError;

/// Errors of the shard loader. Every variant about a file names it.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// A shard or manifest does not follow the spec (the message names the file).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Opening or mapping a file failed.
    #[error("{path}: {problem}")]
    Io {
        /// File.
        path: String,
        /// What went wrong.
        problem: String,
    },
    /// The file is not readable Parquet (truncated, corrupt, not Parquet).
    #[error("{path}: not a readable Parquet shard: {problem}")]
    Parquet {
        /// File.
        path: String,
        /// What went wrong.
        problem: String,
    },
    /// The shard's front end is not the one the model expects.
    #[error(
        "{path}: log-mel front end differs from the model's ({found} vs expected {expected}); \
         rebuild the features or pick the matching front-end preset"
    )]
    FrontEnd {
        /// File.
        path: String,
        /// Short description of the shard's front end.
        found: String,
        /// Short description of the expected front end.
        expected: String,
    },
    /// Two shards of one set carry different metadata.
    #[error("{path}: metadata '{key}' differs from the set's first shard {first}")]
    Inconsistent {
        /// File.
        path: String,
        /// The first shard of the set.
        first: String,
        /// The metadata field that differs.
        key: String,
    },
    /// The manifest's row count disagrees with the file.
    #[error("{path}: the manifest lists {expected} rows but the file has {found}")]
    RowCount {
        /// File.
        path: String,
        /// Rows in the manifest.
        expected: u64,
        /// Rows in the file.
        found: u64,
    },
    /// A cell holds a value the spec does not allow.
    #[error("{path}: column '{column}': {problem}")]
    BadValue {
        /// File.
        path: String,
        /// Column.
        column: String,
        /// What is wrong.
        problem: String,
    },
    /// The path given as a shard set is something else (a dataset's `meta.csv`, a missing path).
    #[error("{path}: {problem}")]
    NotAShardSet {
        /// The path.
        path: String,
        /// What it is and what is expected.
        problem: String,
    },
    /// The folder holds no shard.
    #[error("{path}: no Parquet shards found (expected manifest.json or *.parquet)")]
    NoShards {
        /// Folder.
        path: String,
    },
    /// Bad selection or configuration (message says which field).
    #[error("invalid loader setting: {0}")]
    Config(String),
    /// The prefetch thread died.
    #[error("loader prefetch thread panicked: {0}")]
    Thread(String),
}

/// Result alias of the loader.
pub type Result<T, E = LoaderError> = std::result::Result<T, E>;
