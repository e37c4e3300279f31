//! Joining teacher logits into the `teacher_logits` column of an existing shard set
//! ([`join_teacher_logits`]), and reading the labelled original rows a fusion is fitted on
//! ([`read_original_rows`]).
//!
//! ## Safe rewrite
//! Every shard is rewritten, batch by batch, into a sibling folder `<shards>.teachers-new/` (the
//! other files of the folder are copied there); every column except `teacher_logits` is carried
//! over as the same Arrow arrays, so it is bit-identical. Each new shard is verified (schema and
//! metadata through [`data_specs::read_shard_meta`], row count, SHA-256 re-read from disk); the
//! manifest is written last, so its presence marks the new set complete. Then the swap: rename
//! `<shards>` to `<shards>.teachers-old/`, rename the new folder to `<shards>`, delete the old
//! one. A failure before the swap deletes the new folder and leaves the old set untouched; a
//! crash at any point leaves a complete set under `<shards>` or, between the two renames, both
//! complete sets beside it, which the next run (or [`recover_interrupted_swap`]) resolves.
//!
//! ## Splits
//! The shards have one `teacher_logits` column, so materializing for DCASE split P writes the
//! logits of split-P teachers (trained on split P's training clips only) into the shard set
//! given. For several splits, copy the shard folder per split (`cp -r data data-split5`) and
//! materialize each copy (`make teachers SPLIT=5 OUT=data-split5`).

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, UInt8Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field};
use data_specs::{ClipSet, MANIFEST_FILE, Manifest, ShardEntry, ShardMeta, Variant, col};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rayon::prelude::*;
use serde::Serialize;

use super::fusion::FusionError;
use super::logits::{TeacherError, TeacherLogits};
use crate::shards::{
    Codec, ManifestLock, ShardCompression, ShardError, ShardWriter, check_shard, sha256_file,
};

/// Errors of fusing and materializing teacher logits; each names the file or folder.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    /// A file or folder operation failed.
    #[error("{path}: {problem}")]
    Io {
        /// File or folder.
        path: String,
        /// What went wrong.
        problem: String,
    },
    /// A shard could not be read, written or verified.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// The shard set does not follow the spec.
    #[error(transparent)]
    Spec(#[from] data_specs::SpecError),
    /// A logits table could not be loaded.
    #[error(transparent)]
    Teacher(#[from] TeacherError),
    /// The fusion fit failed.
    #[error(transparent)]
    Fusion(#[from] FusionError),
    /// The inputs are inconsistent (class counts, missing clips, metadata).
    #[error("{path}: {problem}")]
    Invalid {
        /// File or folder.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

pub(crate) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> MaterializeError + '_ {
    move |e| MaterializeError::Io {
        path: path.display().to_string(),
        problem: e.to_string(),
    }
}

fn pq_err(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> MaterializeError + '_ {
    move |e| {
        MaterializeError::Shard(ShardError::Parquet {
            path: path.display().to_string(),
            problem: e.to_string(),
        })
    }
}

/// A source of per-clip teacher logits for [`join_teacher_logits`].
pub trait LogitsLookup: Sync {
    /// Length of every logits vector.
    fn n_classes(&self) -> usize;
    /// Logits of a clip id (`None`: the clip gets null).
    fn logits(&self, clip_id: &str) -> Option<&[f32]>;
}

impl LogitsLookup for TeacherLogits {
    fn n_classes(&self) -> usize {
        TeacherLogits::n_classes(self)
    }
    fn logits(&self, clip_id: &str) -> Option<&[f32]> {
        self.get(clip_id)
    }
}

/// Options of [`join_teacher_logits`].
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// Rows of these sets get logits; rows of other sets get null.
    pub sets: Vec<ClipSet>,
    /// Text stored in the `asc.teacher` metadata of every shard.
    pub description: String,
    /// Test hook: fail after this many new shards have been written and verified.
    pub fail_after_shards: Option<usize>,
}

/// What a join did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JoinReport {
    /// Shards rewritten.
    pub shards: usize,
    /// Rows in the set.
    pub rows: u64,
    /// Rows that received logits.
    pub rows_with_logits: u64,
    /// Distinct clip ids (of the joined sets) left without logits.
    pub clips_without_logits: usize,
}

/// Sibling folder `<dir><suffix>` (same parent, so that renames stay on one file system).
pub(crate) fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

const NEW_SUFFIX: &str = ".teachers-new";
const OLD_SUFFIX: &str = ".teachers-old";

/// Finishes or undoes a swap interrupted by a crash (see the module documentation):
/// `<dir>` missing: the new set moves in when complete (its manifest exists and every shard
/// matches its checksum), else the old set moves back; leftover new/old folders are deleted.
pub fn recover_interrupted_swap(dir: &Path) -> Result<(), MaterializeError> {
    let new = sibling(dir, NEW_SUFFIX);
    let old = sibling(dir, OLD_SUFFIX);
    if !dir.exists() {
        if new.is_dir() && set_is_complete(&new) {
            std::fs::rename(&new, dir).map_err(io_err(dir))?;
        } else if old.is_dir() {
            std::fs::rename(&old, dir).map_err(io_err(dir))?;
        }
    }
    if dir.exists() {
        for leftover in [new, old] {
            if leftover.exists() {
                std::fs::remove_dir_all(&leftover).map_err(io_err(&leftover))?;
            }
        }
    }
    Ok(())
}

/// True when `dir` has a manifest and every listed shard exists with its checksum.
fn set_is_complete(dir: &Path) -> bool {
    let Ok(m) = Manifest::load(dir) else {
        return false;
    };
    m.shards
        .iter()
        .all(|e| sha256_file(&dir.join(&e.file)).is_ok_and(|h| h == e.sha256))
}

/// Rewrites the shard set in `dir` with the `teacher_logits` column taken from `lookup`
/// (rows of `opts.sets` get their clip's logits, or null when the clip has none; other rows get
/// null) and `asc.teacher` set to `opts.description`. Every other column is kept bit-identical.
/// The rewrite is crash-safe (see the module documentation); on error the previous set is left
/// intact.
pub fn join_teacher_logits(
    dir: &Path,
    lookup: &dyn LogitsLookup,
    opts: &JoinOptions,
) -> Result<JoinReport, MaterializeError> {
    recover_interrupted_swap(dir)?;
    let manifest = Manifest::load(dir)?;
    if manifest.shards.is_empty() {
        return Err(MaterializeError::Invalid {
            path: dir.join(MANIFEST_FILE).display().to_string(),
            problem: "the manifest lists no shards".into(),
        });
    }
    // Every shard must share one metadata (up to the teacher description) with matching classes.
    let mut base: Option<ShardMeta> = None;
    for e in &manifest.shards {
        let path = dir.join(&e.file);
        let (mut meta, rows) = check_shard(&path, None)?;
        if rows != e.rows {
            return Err(MaterializeError::Invalid {
                path: path.display().to_string(),
                problem: format!("{rows} rows, the manifest says {}", e.rows),
            });
        }
        meta.teacher.clear();
        match &base {
            None => base = Some(meta),
            Some(b) if *b != meta => {
                return Err(MaterializeError::Invalid {
                    path: path.display().to_string(),
                    problem: crate::shards::describe_difference(&meta, b),
                });
            }
            Some(_) => {}
        }
    }
    let mut new_meta = base.expect("at least one shard");
    if new_meta.n_classes() != lookup.n_classes() {
        return Err(MaterializeError::Invalid {
            path: dir.display().to_string(),
            problem: format!(
                "the logits have {} classes, the shards' label vocabulary has {}",
                lookup.n_classes(),
                new_meta.n_classes()
            ),
        });
    }
    new_meta.teacher = opts.description.clone();

    let lock = ManifestLock::acquire(dir, "pipeline teachers join-logits")?;
    if let Some((file, holder)) = crate::lock::live_holders(dir, crate::lock::FEATURES_LOCK_PREFIX)
        .into_iter()
        .next()
    {
        return Err(MaterializeError::Invalid {
            path: dir.display().to_string(),
            problem: format!(
                "{holder} is writing shards into this folder (lock file {}); join the logits \
                 after it has finished",
                file.display()
            ),
        });
    }
    let new_dir = sibling(dir, NEW_SUFFIX);
    if new_dir.exists() {
        std::fs::remove_dir_all(&new_dir).map_err(io_err(&new_dir))?;
    }
    std::fs::create_dir_all(&new_dir).map_err(io_err(&new_dir))?;
    let result = write_new_set(dir, &new_dir, &manifest, &new_meta, lookup, opts);
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&new_dir);
            return Err(e);
        }
    };
    // Swap: old away, new in, old deleted. The lock file travels with the old folder.
    let old_dir = sibling(dir, OLD_SUFFIX);
    if old_dir.exists() {
        std::fs::remove_dir_all(&old_dir).map_err(io_err(&old_dir))?;
    }
    std::fs::rename(dir, &old_dir).map_err(io_err(dir))?;
    lock.forget();
    if let Err(e) = std::fs::rename(&new_dir, dir) {
        // Put the old set back so that the folder name never stays empty.
        let _ = std::fs::rename(&old_dir, dir);
        let _ = std::fs::remove_file(dir.join(format!("{MANIFEST_FILE}.lock")));
        return Err(io_err(dir)(e));
    }
    std::fs::remove_dir_all(&old_dir).map_err(io_err(&old_dir))?;
    Ok(report)
}

/// Writes and verifies the new set in `new_dir`; the manifest last.
fn write_new_set(
    dir: &Path,
    new_dir: &Path,
    manifest: &Manifest,
    new_meta: &ShardMeta,
    lookup: &dyn LogitsLookup,
    opts: &JoinOptions,
) -> Result<JoinReport, MaterializeError> {
    // Copy the other files of the folder (e.g. energy-threshold.json).
    let listed: BTreeSet<&str> = manifest.shards.iter().map(|e| e.file.as_str()).collect();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let skip = listed.contains(name.as_str())
            || name == MANIFEST_FILE
            || name.ends_with(".tmp")
            || name.ends_with(".lock")
            || (name.starts_with("shard-") && name.ends_with(".parquet"));
        if skip || !entry.path().is_file() {
            continue;
        }
        std::fs::copy(entry.path(), new_dir.join(&name)).map_err(io_err(&entry.path()))?;
    }
    let done = AtomicUsize::new(0);
    let results: Vec<(ShardEntry, u64, BTreeSet<String>)> = manifest
        .shards
        .par_iter()
        .map(|e| {
            let out = rewrite_shard(dir, new_dir, e, new_meta, lookup, &opts.sets)?;
            let n = done.fetch_add(1, Ordering::SeqCst) + 1;
            if opts.fail_after_shards.is_some_and(|k| n >= k) {
                return Err(MaterializeError::Invalid {
                    path: new_dir.display().to_string(),
                    problem: format!("injected failure after {n} new shards (test hook)"),
                });
            }
            Ok(out)
        })
        .collect::<Result<_, _>>()?;
    let mut missing = BTreeSet::new();
    let mut shards = Vec::with_capacity(results.len());
    let mut with_logits = 0;
    for (entry, w, m) in results {
        shards.push(entry);
        with_logits += w;
        missing.extend(m);
    }
    shards.sort_by(|a, b| a.file.cmp(&b.file));
    let m = Manifest {
        spec_version: manifest.spec_version,
        shards,
    };
    m.store(new_dir)?;
    Ok(JoinReport {
        shards: m.shards.len(),
        rows: m.total_rows(),
        rows_with_logits: with_logits,
        clips_without_logits: missing.len(),
    })
}

/// Rewrites one shard into `new_dir`; returns its manifest entry, the rows given logits and the
/// clip ids (of the joined sets) without logits.
fn rewrite_shard(
    dir: &Path,
    new_dir: &Path,
    entry: &ShardEntry,
    meta: &ShardMeta,
    lookup: &dyn LogitsLookup,
    sets: &[ClipSet],
) -> Result<(ShardEntry, u64, BTreeSet<String>), MaterializeError> {
    let src = dir.join(&entry.file);
    let dst = new_dir.join(&entry.file);
    let file = File::open(&src).map_err(io_err(&src))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq_err(&src))?;
    let rg_rows = builder
        .metadata()
        .row_groups()
        .first()
        .map_or(crate::shards::DEFAULT_ROW_GROUP_ROWS, |g| {
            g.num_rows().max(1) as usize
        });
    // The rewrite keeps the shard's codec.
    let codec =
        Codec::of_file(builder.metadata()).unwrap_or_else(|| ShardCompression::default().codec());
    let reader = builder
        .with_batch_size(rg_rows)
        .build()
        .map_err(pq_err(&src))?;
    let schema = meta.schema();
    let logits_idx = schema.index_of(col::TEACHER_LOGITS).expect("spec column");
    let id_idx = schema.index_of(col::CLIP_ID).expect("spec column");
    let set_idx = schema.index_of(col::SET).expect("spec column");
    let n_classes = meta.n_classes();
    let mut writer = ShardWriter::create(&dst, meta, rg_rows, codec, entry.partition)?;
    let mut with_logits = 0u64;
    let mut missing = BTreeSet::new();
    for batch in reader {
        let batch = batch.map_err(|e| pq_err(&src)(e.into()))?;
        let n = batch.num_rows();
        let ids = batch.column(id_idx).as_string::<i32>();
        let set_col = batch.column(set_idx).as_dictionary::<Int32Type>();
        let set_names = set_col.values().as_string::<i32>();
        let joined: Vec<bool> =
            sets.iter()
                .map(|s| s.as_str())
                .fold(vec![false; set_names.len()], |mut acc, s| {
                    for (i, v) in set_names.iter().enumerate() {
                        acc[i] |= v == Some(s);
                    }
                    acc
                });
        let mut b = FixedSizeListBuilder::with_capacity(
            Float32Builder::with_capacity(n * n_classes),
            n_classes as i32,
            n,
        )
        .with_field(Arc::new(Field::new("item", DataType::Float32, false)));
        for r in 0..n {
            let id = ids.value(r);
            let key = set_col.keys().value(r) as usize;
            let got = if joined[key] { lookup.logits(id) } else { None };
            match got {
                Some(v) if v.len() == n_classes => {
                    b.values().append_slice(v);
                    b.append(true);
                    with_logits += 1;
                }
                Some(v) => {
                    return Err(MaterializeError::Invalid {
                        path: src.display().to_string(),
                        problem: format!(
                            "logits of clip '{id}' have {} values, the label vocabulary has {n_classes}",
                            v.len()
                        ),
                    });
                }
                None => {
                    if joined[key] {
                        missing.insert(id.to_string());
                    }
                    b.values().append_slice(&vec![0.0; n_classes]);
                    b.append(false);
                }
            }
        }
        let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
        cols[logits_idx] = Arc::new(b.finish());
        let out =
            RecordBatch::try_new(schema.clone(), cols).map_err(|e| MaterializeError::Invalid {
                path: src.display().to_string(),
                problem: format!("rebuilding the batch: {e}"),
            })?;
        writer.write(&out)?;
    }
    let new_entry = writer.finish()?;
    // Verify what is on disk: schema and metadata, rows, checksum.
    let found = data_specs::read_shard_meta(&dst)?;
    let (_, rows) = check_shard(&dst, Some(meta))?;
    let sha = sha256_file(&dst)?;
    if found != *meta
        || rows != entry.rows
        || new_entry.rows != entry.rows
        || sha != new_entry.sha256
    {
        return Err(MaterializeError::Invalid {
            path: dst.display().to_string(),
            problem: format!(
                "verification failed: {rows} rows (expected {}), checksum {}",
                entry.rows,
                if sha == new_entry.sha256 {
                    "ok"
                } else {
                    "differs"
                }
            ),
        });
    }
    Ok((new_entry, with_logits, missing))
}

/// The light columns of the original rows of a shard set (no log-mel read).
#[derive(Debug, Clone, Default)]
pub struct OriginalRows {
    /// Clip ids.
    pub clip_id: Vec<String>,
    /// Label index (None when unknown).
    pub label: Vec<Option<usize>>,
    /// Set.
    pub set: Vec<ClipSet>,
    /// Smallest DCASE split containing the clip.
    pub split: Vec<Option<u8>>,
}

/// Reads clip id, label, set and split of every `original` row of the shard set in `dir`
/// (column projection: the log-mel column is never decoded). Returns the shard metadata too.
pub fn read_original_rows(dir: &Path) -> Result<(ShardMeta, OriginalRows), MaterializeError> {
    let manifest = Manifest::load(dir)?;
    let mut out = OriginalRows::default();
    let mut meta = None;
    for e in &manifest.shards {
        let path = dir.join(&e.file);
        let m = data_specs::read_shard_meta(&path)?;
        let file = File::open(&path).map_err(io_err(&path))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq_err(&path))?;
        let schema = m.schema();
        let wanted = [col::CLIP_ID, col::LABEL, col::SET, col::SPLIT, col::VARIANT];
        let idx: Vec<usize> = wanted
            .iter()
            .map(|c| schema.index_of(c).expect("spec column"))
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), idx);
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(pq_err(&path))?;
        for batch in reader {
            let batch = batch.map_err(|e| pq_err(&path)(e.into()))?;
            let c = |name: &str| batch.column(batch.schema().index_of(name).expect("projected"));
            let ids = c(col::CLIP_ID).as_string::<i32>().clone();
            let labels = c(col::LABEL).as_primitive::<Int32Type>().clone();
            let splits = c(col::SPLIT).as_primitive::<UInt8Type>().clone();
            let sets = dict_strings(c(col::SET));
            let variants = dict_strings(c(col::VARIANT));
            for r in 0..batch.num_rows() {
                if Variant::parse(&variants[r]) != Some(Variant::Original) {
                    continue;
                }
                out.clip_id.push(ids.value(r).to_string());
                out.label.push(
                    (!labels.is_null(r))
                        .then(|| labels.value(r))
                        .and_then(|l| usize::try_from(l).ok()),
                );
                out.set
                    .push(ClipSet::parse(&sets[r]).unwrap_or(ClipSet::Unused));
                out.split
                    .push((!splits.is_null(r)).then(|| splits.value(r)));
            }
        }
        meta.get_or_insert(m);
    }
    let meta = meta.ok_or_else(|| MaterializeError::Invalid {
        path: dir.join(MANIFEST_FILE).display().to_string(),
        problem: "the manifest lists no shards".into(),
    })?;
    Ok((meta, out))
}

fn dict_strings(a: &ArrayRef) -> Vec<String> {
    let d = a.as_dictionary::<Int32Type>();
    let v = d.values().as_string::<i32>();
    d.keys()
        .iter()
        .map(|k| {
            k.map(|k| v.value(k as usize).to_string())
                .unwrap_or_default()
        })
        .collect()
}
