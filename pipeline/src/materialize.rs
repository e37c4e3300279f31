//! Teacher ensemble: fuse the logits of several teachers (the paper's equation (4)) and
//! materialize teacher logits into the `teacher_logits` column of an existing shard set.
//!
//! Two commands (`pipeline teachers ...`):
//! - `join-logits --shards data/ --logits FILE`: joins one logits table (Parquet
//!   `clip_id`/`filename` -> `logits`, or CP-JKU `.npy` with `--dataset`) into the shards. The
//!   table is read by [`TeacherLogits::load`], the very loader `pipeline features
//!   --teacher-logits` uses, and looked up by [`TeacherLogits::get`] (exact clip id, then without
//!   its `@k` suffix): imported and fused logits take the same path.
//! - `fuse-logits --shards data/ --logits t1.parquet t2.parquet ...`: fits
//!   `h = sum_k alpha_k * logits_k + beta` ([`Fusion::fit`]) on the labelled ORIGINAL rows of the
//!   training set, reports each teacher's, the averaged and the fused ensemble's accuracy and
//!   cross-entropy on the training and test clips, writes the fused logits as a Parquet table and
//!   joins them into the shards.
//!
//! ## Safe rewrite ([`join_teacher_logits`])
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

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, UInt8Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use data_specs::{ClipSet, MANIFEST_FILE, Manifest, ShardEntry, ShardMeta, Variant, col};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rayon::prelude::*;
use serde::Serialize;

use crate::fusion::Fusion;
use crate::ingest::MetaRow;
use crate::shards::{
    Codec, ManifestLock, ShardCompression, ShardError, ShardWriter, check_shard, sha256_file,
};
use crate::teacher::{TeacherError, TeacherLogits};

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
    Fusion(#[from] crate::fusion::FusionError),
    /// The inputs are inconsistent (class counts, missing clips, metadata).
    #[error("{path}: {problem}")]
    Invalid {
        /// File or folder.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> MaterializeError + '_ {
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
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
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

/// Writes a logits table (`clip_id: utf8`, `logits: fixed_size_list<float32>[n_classes]`, the
/// format [`TeacherLogits::load`] reads) to `path` via a temporary name.
pub fn write_logits_table(
    path: &Path,
    clip_ids: &[String],
    logits: &[f32],
    n_classes: usize,
) -> Result<(), MaterializeError> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("clip_id", DataType::Utf8, false),
        Field::new(
            "logits",
            DataType::FixedSizeList(item.clone(), n_classes as i32),
            false,
        ),
    ]));
    let mut ids = StringBuilder::new();
    let mut b = FixedSizeListBuilder::new(Float32Builder::new(), n_classes as i32).with_field(item);
    for (i, id) in clip_ids.iter().enumerate() {
        ids.append_value(id);
        b.values()
            .append_slice(&logits[i * n_classes..(i + 1) * n_classes]);
        b.append(true);
    }
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(ids.finish()), Arc::new(b.finish())],
    )
    .map_err(|e| MaterializeError::Invalid {
        path: path.display().to_string(),
        problem: e.to_string(),
    })?;
    let tmp = crate::shards::tmp_path(path);
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    let mut w = ArrowWriter::try_new(file, schema, None).map_err(pq_err(&tmp))?;
    w.write(&batch).map_err(pq_err(&tmp))?;
    w.close().map_err(pq_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Accuracy and cross-entropy of one ensemble (or teacher) on one set of clips.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    /// Clips scored.
    pub clips: usize,
    /// Fraction of clips whose argmax equals the label.
    pub accuracy: f64,
    /// Macro (class-wise mean) accuracy, the DCASE metric.
    pub macro_accuracy: f64,
    /// Mean cross-entropy of softmax(logits) against the labels (nats).
    pub cross_entropy: f64,
}

/// Scores `fusion` on clips whose teacher logits are `teachers[k]` (row-major) and `labels`.
pub fn score(fusion: &Fusion, teachers: &[Vec<f32>], labels: &[usize]) -> Scores {
    let c = fusion.beta.len();
    let mut hit = vec![0usize; c];
    let mut count = vec![0usize; c];
    let mut ce = 0.0;
    let mut rows: Vec<&[f32]> = Vec::with_capacity(teachers.len());
    for (i, &y) in labels.iter().enumerate() {
        rows.clear();
        rows.extend(teachers.iter().map(|t| &t[i * c..(i + 1) * c]));
        let h = fusion.apply(&rows);
        let m = h.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + h.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        ce += lse - h[y] as f64;
        let best = h
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv { (i, v) } else { (bi, bv) }
            })
            .0;
        count[y] += 1;
        if best == y {
            hit[y] += 1;
        }
    }
    let n = labels.len();
    let present: Vec<f64> = (0..c)
        .filter(|&k| count[k] > 0)
        .map(|k| hit[k] as f64 / count[k] as f64)
        .collect();
    Scores {
        clips: n,
        accuracy: hit.iter().sum::<usize>() as f64 / n.max(1) as f64,
        macro_accuracy: present.iter().sum::<f64>() / present.len().max(1) as f64,
        cross_entropy: ce / n.max(1) as f64,
    }
}

/// Options of [`fuse_logits`].
#[derive(Debug, Clone)]
pub struct FuseOptions {
    /// Plain averaging (`alpha = 1/K`, `beta = 0`) instead of the fitted fusion.
    pub average: bool,
    /// Ridge on `beta` of the fit.
    pub ridge: f64,
    /// Ridge shrinking `alpha` toward plain averaging (`alpha_ridge * sum (alpha_k - 1/K)^2`).
    pub alpha_ridge: f64,
    /// Fit only on training clips of this DCASE split (split column <= P); None: every
    /// training clip with logits from every teacher.
    pub split: Option<u8>,
}

/// Report of [`fuse_logits`] (written as JSON by `--out-report`).
#[derive(Debug, Clone, Serialize)]
pub struct FuseReport {
    /// The teacher logits files, in order.
    pub teachers: Vec<String>,
    /// The fusion used (fitted, or the average with `--average`).
    pub fusion: Fusion,
    /// Newton iterations, initial and final training loss of the fit (None with `--average`).
    pub fit: Option<crate::fusion::FitReport>,
    /// Split the fit was restricted to.
    pub split: Option<u8>,
    /// Per teacher: scores on the training clips used by the fit and on the test clips.
    pub teacher_scores: Vec<SetScores>,
    /// Averaged ensemble.
    pub averaged: SetScores,
    /// Fused ensemble.
    pub fused: SetScores,
    /// Clips written to the fused logits table.
    pub fused_clips: usize,
}

/// Scores on training and test clips.
#[derive(Debug, Clone, Serialize)]
pub struct SetScores {
    /// Training clips of the fit.
    pub train: Scores,
    /// Test clips (those with logits from every teacher); None when there are none.
    pub test: Option<Scores>,
}

/// Gathers the logits of `ids` (row-major per teacher).
fn gather(teachers: &[TeacherLogits], ids: &[&str]) -> Vec<Vec<f32>> {
    teachers
        .iter()
        .map(|t| {
            ids.iter()
                .flat_map(|id| t.get(id).expect("filtered").iter().copied())
                .collect()
        })
        .collect()
}

/// Fits (or averages) the teachers on the labelled original training rows of `rows`, scores
/// every teacher and both ensembles, and returns the report with the fused logits of every
/// original clip id that has logits from every teacher (`(ids, row-major logits)`).
pub fn fuse_logits(
    rows: &OriginalRows,
    n_classes: usize,
    teachers: &[TeacherLogits],
    names: &[String],
    opts: &FuseOptions,
) -> Result<(FuseReport, Vec<String>, Vec<f32>), MaterializeError> {
    let has_all = |id: &str| teachers.iter().all(|t| t.get(id).is_some());
    let pick = |set: ClipSet, split: Option<u8>| -> (Vec<&str>, Vec<usize>) {
        let mut seen = BTreeSet::new();
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        for i in 0..rows.clip_id.len() {
            let id = rows.clip_id[i].as_str();
            let in_split = match split {
                None => true,
                Some(p) => rows.split[i].is_some_and(|s| s <= p),
            };
            if rows.set[i] == set
                && in_split
                && has_all(id)
                && seen.insert(id)
                && let Some(y) = rows.label[i].filter(|&y| y < n_classes)
            {
                ids.push(id);
                labels.push(y);
            }
        }
        (ids, labels)
    };
    let (train_ids, train_y) = pick(ClipSet::Train, opts.split);
    if train_ids.is_empty() {
        return Err(MaterializeError::Invalid {
            path: names.join(", "),
            problem: "no labelled training clip has logits from every teacher".into(),
        });
    }
    let (test_ids, test_y) = pick(ClipSet::Test, None);
    let train_l = gather(teachers, &train_ids);
    let test_l = gather(teachers, &test_ids);
    let k = teachers.len();
    let averaged = Fusion::average(k, n_classes);
    let (fusion, fit) = if opts.average {
        (averaged.clone(), None)
    } else {
        let (f, r) =
            Fusion::fit_shrunk(&train_l, &train_y, n_classes, opts.ridge, opts.alpha_ridge)?;
        (f, Some(r))
    };
    // Scores of `f` over all teachers (`only = None`) or over teacher j alone.
    let scores = |f: &Fusion, only: Option<usize>| {
        let sel = |l: &[Vec<f32>]| match only {
            Some(j) => vec![l[j].clone()],
            None => l.to_vec(),
        };
        SetScores {
            train: score(f, &sel(&train_l), &train_y),
            test: (!test_y.is_empty()).then(|| score(f, &sel(&test_l), &test_y)),
        }
    };
    let single = Fusion {
        alpha: vec![1.0],
        beta: vec![0.0; n_classes],
    };
    let teacher_scores = (0..k).map(|j| scores(&single, Some(j))).collect();
    // Fused logits of every original clip id with logits from every teacher.
    let mut seen = BTreeSet::new();
    let mut ids = Vec::new();
    let mut values = Vec::new();
    let mut row: Vec<&[f32]> = Vec::with_capacity(k);
    for id in &rows.clip_id {
        if !seen.insert(id.as_str()) || !has_all(id) {
            continue;
        }
        row.clear();
        row.extend(teachers.iter().map(|t| t.get(id).expect("checked")));
        values.extend(fusion.apply(&row));
        ids.push(id.clone());
    }
    let report = FuseReport {
        teachers: names.to_vec(),
        averaged: scores(&averaged, None),
        fused: scores(&fusion, None),
        fusion,
        fit,
        split: opts.split,
        teacher_scores,
        fused_clips: ids.len(),
    };
    Ok((report, ids, values))
}

/// The `asc.teacher` description of a fused ensemble: teachers and weights.
pub fn fused_description(report: &FuseReport) -> String {
    let kind = if report.fit.is_some() {
        "fused (eq. 4, fitted)"
    } else {
        "averaged"
    };
    let f = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "teacher ensemble, {kind}, of {} teacher(s): {}; alpha = [{}]; beta = [{}]; split {}",
        report.teachers.len(),
        report.teachers.join(", "),
        f(&report.fusion.alpha),
        f(&report.fusion.beta),
        report
            .split
            .map_or_else(|| "all training clips".to_string(), |p| p.to_string())
    )
}

/// `pipeline teachers`: fuse teacher logits and materialize them into the shards.
#[derive(clap::Args, Debug)]
pub struct TeachersArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TeachersCommand,
}

/// The `pipeline teachers` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum TeachersCommand {
    /// Fit eq. 4 (h = sum_k alpha_k logits_k + beta) on the training clips, report teacher and
    /// ensemble accuracy, write the fused logits and join them into the shards.
    FuseLogits(FuseArgs),
    /// Join one logits table into the shards' teacher_logits column (safe rewrite).
    JoinLogits(JoinArgs),
}

/// Which rows receive logits.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinSet {
    /// Rows of the training set (what knowledge distillation uses).
    Train,
    /// Rows of every set.
    All,
}

impl JoinSet {
    fn sets(self) -> Vec<ClipSet> {
        match self {
            Self::Train => vec![ClipSet::Train],
            Self::All => vec![ClipSet::Train, ClipSet::Test, ClipSet::Unused],
        }
    }
}

/// Options of `pipeline teachers fuse-logits`.
#[derive(clap::Args, Debug)]
pub struct FuseArgs {
    /// Shard folder (rewritten in place, safely).
    #[arg(long, value_name = "DIR")]
    pub shards: PathBuf,
    /// Teacher logits tables (Parquet clip_id -> logits, as `train predict` writes).
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    pub logits: Vec<PathBuf>,
    /// Plain averaging instead of the fitted fusion.
    #[arg(long)]
    pub average: bool,
    /// Fit only on the training clips of this DCASE split (5, 10, 25, 50, 100).
    #[arg(long, value_name = "P")]
    pub split: Option<u8>,
    /// Ridge on beta.
    #[arg(long, default_value_t = 1e-4, value_parser = crate::cli::finite_f64)]
    pub ridge: f64,
    /// Ridge shrinking the teacher weights alpha toward plain averaging, `r * sum (alpha_k -
    /// 1/K)^2` (0: the paper's unpenalised eq. 4). Useful with in-sample teacher logits, whose
    /// confidence can drive the fitted alpha large.
    #[arg(long, default_value_t = 0.0, value_parser = crate::cli::finite_f64)]
    pub alpha_ridge: f64,
    /// Report (JSON).
    #[arg(long, value_name = "FILE")]
    pub out_report: Option<PathBuf>,
    /// Fused logits table [default: <shards>.fused-logits.parquet beside the shard folder].
    #[arg(long, value_name = "FILE")]
    pub out_logits: Option<PathBuf>,
    /// Rows that receive the fused logits.
    #[arg(long, value_enum, default_value = "train")]
    pub join_set: JoinSet,
    /// Fit and report only; leave the shards as they are.
    #[arg(long)]
    pub no_join: bool,
}

/// Options of `pipeline teachers join-logits`.
#[derive(clap::Args, Debug)]
pub struct JoinArgs {
    /// Shard folder (rewritten in place, safely).
    #[arg(long, value_name = "DIR")]
    pub shards: PathBuf,
    /// Logits table: Parquet (clip_id or filename -> logits) or CP-JKU .npy (needs --dataset).
    #[arg(long, value_name = "FILE")]
    pub logits: PathBuf,
    /// Dataset folder whose meta.csv indexes the rows of a .npy.
    #[arg(long, value_name = "DIR")]
    pub dataset: Option<PathBuf>,
    /// Rows that receive the logits.
    #[arg(long, value_enum, default_value = "train")]
    pub join_set: JoinSet,
    /// Test hook: fail after writing this many new shards.
    #[arg(long, hide = true)]
    pub fail_after_shards: Option<usize>,
}

/// Runs `pipeline teachers ...`.
pub fn run(args: &TeachersArgs) -> anyhow::Result<()> {
    match &args.command {
        TeachersCommand::FuseLogits(a) => run_fuse(a).map(|_| ()),
        TeachersCommand::JoinLogits(a) => run_join(a).map(|_| ()),
    }
}

/// `join-logits`.
pub fn run_join(a: &JoinArgs) -> anyhow::Result<JoinReport> {
    recover_interrupted_swap(&a.shards)?;
    let (meta, _) = read_original_rows(&a.shards)?;
    let meta_rows: Vec<MetaRow> = match &a.dataset {
        Some(ds) => crate::ingest::read_meta(&ds.join("meta.csv"))?,
        None => Vec::new(),
    };
    let t = TeacherLogits::load(&a.logits, &meta_rows, meta.n_classes())?;
    let opts = JoinOptions {
        sets: a.join_set.sets(),
        description: t.description().to_string(),
        fail_after_shards: a.fail_after_shards,
    };
    let r = join_teacher_logits(&a.shards, &t, &opts)?;
    println!(
        "joined {} into {}: {} shards, {} of {} rows with logits, {} clips without logits (null)",
        a.logits.display(),
        a.shards.display(),
        r.shards,
        r.rows_with_logits,
        r.rows,
        r.clips_without_logits
    );
    Ok(r)
}

/// `fuse-logits`.
pub fn run_fuse(a: &FuseArgs) -> anyhow::Result<FuseReport> {
    recover_interrupted_swap(&a.shards)?;
    let (meta, rows) = read_original_rows(&a.shards)?;
    let n_classes = meta.n_classes();
    let teachers = a
        .logits
        .iter()
        .map(|p| TeacherLogits::load(p, &[], n_classes))
        .collect::<Result<Vec<_>, _>>()?;
    // Teachers are named by the path given (`train predict` writes every teacher's table as
    // `<run>/logits.parquet`, so the file name alone does not tell them apart).
    let names: Vec<String> = a.logits.iter().map(|p| p.display().to_string()).collect();
    let opts = FuseOptions {
        average: a.average,
        ridge: a.ridge,
        alpha_ridge: a.alpha_ridge,
        split: a.split,
    };
    let (report, ids, values) = fuse_logits(&rows, n_classes, &teachers, &names, &opts)?;
    print_report(&report);
    if let Some(p) = &a.out_report {
        let text = serde_json::to_string_pretty(&report)?;
        let tmp = crate::shards::tmp_path(p);
        std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, p).map_err(io_err(p))?;
    }
    let out_logits = a
        .out_logits
        .clone()
        .unwrap_or_else(|| sibling(&a.shards, ".fused-logits.parquet"));
    write_logits_table(&out_logits, &ids, &values, n_classes)?;
    println!(
        "fused logits of {} clips -> {}",
        ids.len(),
        out_logits.display()
    );
    if !a.no_join {
        // The same path as imported logits: load the table, then join.
        let fused = TeacherLogits::load(&out_logits, &[], n_classes)?;
        let opts = JoinOptions {
            sets: a.join_set.sets(),
            description: fused_description(&report),
            fail_after_shards: None,
        };
        let r = join_teacher_logits(&a.shards, &fused, &opts)?;
        println!(
            "joined into {}: {} shards, {} of {} rows with logits, {} clips without logits (null)",
            a.shards.display(),
            r.shards,
            r.rows_with_logits,
            r.rows,
            r.clips_without_logits
        );
    }
    Ok(report)
}

fn print_report(r: &FuseReport) {
    let line = |name: &str, s: &SetScores| {
        let t = s.test.as_ref();
        println!(
            "{name:<28} train acc {:6.2} % macro {:6.2} % CE {:.4} | test acc {} macro {} CE {}",
            100.0 * s.train.accuracy,
            100.0 * s.train.macro_accuracy,
            s.train.cross_entropy,
            t.map_or("-".into(), |t| format!("{:6.2} %", 100.0 * t.accuracy)),
            t.map_or("-".into(), |t| format!(
                "{:6.2} %",
                100.0 * t.macro_accuracy
            )),
            t.map_or("-".into(), |t| format!("{:.4}", t.cross_entropy)),
        );
    };
    println!(
        "{} training clips, {} test clips",
        r.fused.train.clips,
        r.fused.test.as_ref().map_or(0, |t| t.clips)
    );
    for (name, s) in r.teachers.iter().zip(&r.teacher_scores) {
        line(name, s);
    }
    line("averaged ensemble", &r.averaged);
    let used = if r.fit.is_some() {
        "fused ensemble (eq. 4)"
    } else {
        "ensemble used (average)"
    };
    line(used, &r.fused);
    println!("alpha = {:?}", r.fusion.alpha);
    println!("beta  = {:?}", r.fusion.beta);
    if let Some(f) = &r.fit {
        println!(
            "fit: {} Newton iterations, training CE {:.4} -> {:.4}",
            f.iterations, f.initial_loss, f.final_loss
        );
    }
}
