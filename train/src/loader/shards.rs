//! Opening a shard set: memory maps, metadata validation and the row index.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, UInt8Type};
use arrow_array::{Array, RecordBatch};
use bytes::Bytes;
use data_specs::{ClipSet, FrontEndConfig, MANIFEST_FILE, Manifest, ShardMeta, Variant, col};
use memmap2::{Mmap, UncheckedAdvice};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::file::metadata::PageIndexPolicy;

use super::{Fold, LoaderError, LocationFolds, Result};

/// Owner of a memory map shared by the [`Bytes`] handed to Parquet and by the shard (which
/// releases decoded ranges from the process's page tables).
struct MapOwner(Arc<Mmap>);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// One memory-mapped shard.
pub(crate) struct Shard {
    /// Path of the file.
    pub path: PathBuf,
    /// The map itself (for `madvise`).
    pub(crate) map: Arc<Mmap>,
    /// The open file (positioned reads of uncompressed log-mel, see [`super::pages`]).
    pub(crate) file: File,
    /// The whole file as zero-copy bytes over the map.
    pub bytes: Bytes,
    /// Parsed footer (with offset index when present), reused for every row-group read.
    pub reader_meta: ArrowReaderMetadata,
    /// Projection of the `teacher_logits` column.
    pub logits_mask: ProjectionMask,
    /// Projection of the `logmel` column (Arrow fallback of [`super::pages`]).
    pub logmel_mask: ProjectionMask,
    /// Leaf column index of `logmel.list.item`.
    pub logmel_leaf: Option<usize>,
}

impl Shard {
    /// Drops the pages of row group `rg` (the byte ranges of its column chunks) from this
    /// process's page tables once they were decoded, so that resident memory does not grow to
    /// the size of the set during an epoch. The page cache keeps them: a later read refaults
    /// them without I/O when memory allows.
    pub fn release_row_group(&self, rg: usize) {
        let md = self.reader_meta.metadata().row_group(rg);
        for c in md.columns() {
            let (start, len) = c.byte_range();
            let (start, len) = (start as usize, len as usize);
            if len == 0 || start.saturating_add(len) > self.map.len() {
                continue;
            }
            // SAFETY: the map is a read-only shared file mapping; MADV_DONTNEED only unmaps
            // the pages from this process, and a later access refaults the same file contents,
            // so no live reference observes a change. (As for any map, the file must not be
            // modified while open; shards are written once under a temporary name, then
            // renamed, so an open file is never rewritten in place.)
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, start, len)
            };
        }
    }
}

/// One row of the set as seen by the index (all the small columns).
#[derive(Debug, Clone)]
struct RowEntry {
    clip_id: Box<str>,
    segment_id: Box<str>,
    /// [`super::Fold::key`] of the recording location (`identifier` column).
    location_key: u64,
    label: i32,
    device_id: i32,
    set: ClipSet,
    split: Option<u8>,
    variant: Variant,
    has_teacher: bool,
}

/// What the index knows about a row (for evaluation and predictions files).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowInfo<'a> {
    /// Global row id (rows numbered across shards in manifest order).
    pub row: u32,
    /// Clip id.
    pub clip_id: &'a str,
    /// 10 s segment id.
    pub segment_id: &'a str,
    /// Hash of the recording location (`identifier`), the key of [`super::Fold`].
    pub location_key: u64,
    /// Scene label index, `None` when unknown.
    pub label: Option<i32>,
    /// Device index into the device vocabulary.
    pub device_id: i32,
    /// Device name.
    pub device: &'a str,
    /// Set.
    pub set: ClipSet,
    /// Smallest DCASE training split containing the clip.
    pub split: Option<u8>,
    /// Variant.
    pub variant: Variant,
    /// True when the row carries teacher logits.
    pub has_teacher: bool,
    /// Shard file.
    pub shard: &'a Path,
}

pub(crate) struct Inner {
    pub meta: ShardMeta,
    pub shards: Vec<Shard>,
    rows: Vec<RowEntry>,
    /// For each global row, its row group id in `row_groups`.
    pub row_group_of: Vec<u32>,
    /// Every row group of the set: `(shard, row group in shard, first global row)`.
    pub row_groups: Vec<RowGroupRef>,
}

/// A row group of the set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowGroupRef {
    pub shard: u32,
    pub rg: u32,
    pub first_row: u32,
}

/// An open shard set: memory maps, validated metadata, and the row index. Cheap to clone.
#[derive(Clone)]
pub struct ShardSet {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ShardSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardSet")
            .field("shards", &self.inner.shards.len())
            .field("rows", &self.inner.rows.len())
            .field("row_groups", &self.inner.row_groups.len())
            .finish()
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> LoaderError {
    LoaderError::Io {
        path: path.display().to_string(),
        problem: e.to_string(),
    }
}

fn pq_err(path: &Path, e: impl std::fmt::Display) -> LoaderError {
    LoaderError::Parquet {
        path: path.display().to_string(),
        problem: e.to_string(),
    }
}

/// Short description of a front end for error messages.
fn describe(fe: &FrontEndConfig) -> String {
    format!(
        "{} {} mels x {} frames, {} Hz, n_fft {}, hop {}",
        fe.preset,
        fe.n_mels,
        fe.n_frames(),
        fe.sample_rate,
        fe.n_fft,
        fe.hop_length
    )
}

/// Name of the first field in which two metadata records differ.
fn first_difference(a: &ShardMeta, b: &ShardMeta) -> &'static str {
    if a.spec_version != b.spec_version {
        "spec_version"
    } else if a.frontend != b.frontend {
        "frontend"
    } else if a.labels != b.labels {
        "labels"
    } else if a.devices != b.devices {
        "devices"
    } else if a.energy_threshold.to_bits() != b.energy_threshold.to_bits() {
        "energy_threshold"
    } else if a.dir_set != b.dir_set {
        "dir_set"
    } else if a.teacher != b.teacher {
        "teacher"
    } else if a.logmel_type != b.logmel_type {
        "logmel_type"
    } else {
        "dataset"
    }
}

impl ShardSet {
    /// Opens a shard set: `path` is a folder (its `manifest.json` when present, otherwise every
    /// `*.parquet` in it, sorted by name) or a manifest file.
    ///
    /// Every shard is memory-mapped and its footer parsed; its spec version and columns are
    /// validated; all shards must carry the same metadata; when `expect_frontend` is given, the
    /// shards' front end must equal it. Only the small columns are read (to build the row
    /// index), never the log-mel.
    pub fn open(path: &Path, expect_frontend: Option<&FrontEndConfig>) -> Result<Self> {
        let files = list_shards(path)?;
        let mut shards = Vec::with_capacity(files.len());
        let mut rows = Vec::new();
        let mut row_group_of = Vec::new();
        let mut row_groups = Vec::new();
        let mut first_meta: Option<ShardMeta> = None;
        for (file, expected_rows) in files {
            let first_row = u32::try_from(rows.len())
                .map_err(|_| LoaderError::Config("more than 2^32 rows".into()))?;
            let (shard, meta) = open_shard(&file)?;
            if let Some(expect) = expect_frontend
                && &meta.frontend != expect
            {
                return Err(LoaderError::FrontEnd {
                    path: file.display().to_string(),
                    found: describe(&meta.frontend),
                    expected: describe(expect),
                });
            }
            match &first_meta {
                None => first_meta = Some(meta.clone()),
                Some(first) if *first != meta => {
                    return Err(LoaderError::Inconsistent {
                        path: file.display().to_string(),
                        first: shards
                            .first()
                            .map(|s: &Shard| s.path.display().to_string())
                            .unwrap_or_default(),
                        key: first_difference(first, &meta).to_string(),
                    });
                }
                Some(_) => {}
            }
            let n_before = rows.len();
            read_index(&shard, &meta, &mut rows)?;
            let found = (rows.len() - n_before) as u64;
            if let Some(expected) = expected_rows
                && expected != found
            {
                return Err(LoaderError::RowCount {
                    path: file.display().to_string(),
                    expected,
                    found,
                });
            }
            let shard_id = shards.len() as u32;
            let mut next = first_row;
            for (rg, md) in shard.reader_meta.metadata().row_groups().iter().enumerate() {
                let n = md.num_rows() as u32;
                let id = row_groups.len() as u32;
                row_groups.push(RowGroupRef {
                    shard: shard_id,
                    rg: rg as u32,
                    first_row: next,
                });
                row_group_of.extend(std::iter::repeat_n(id, n as usize));
                next += n;
            }
            if row_group_of.len() != rows.len() {
                return Err(pq_err(&file, "row groups disagree with the rows read"));
            }
            shards.push(shard);
        }
        let meta = first_meta.ok_or_else(|| LoaderError::NoShards {
            path: path.display().to_string(),
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                meta,
                shards,
                rows,
                row_group_of,
                row_groups,
            }),
        })
    }

    /// The metadata shared by every shard.
    pub fn meta(&self) -> &ShardMeta {
        &self.inner.meta
    }

    /// Number of rows in the set (all sets and variants).
    pub fn n_rows(&self) -> usize {
        self.inner.rows.len()
    }

    /// Number of shard files.
    pub fn n_shards(&self) -> usize {
        self.inner.shards.len()
    }

    /// Number of row groups across the shards.
    pub fn n_row_groups(&self) -> usize {
        self.inner.row_groups.len()
    }

    /// Total size of the shard files in bytes.
    pub fn size_on_disk(&self) -> u64 {
        self.inner.shards.iter().map(|s| s.bytes.len() as u64).sum()
    }

    /// The partition of the training locations of split `max_split` into `count` folds (the
    /// one `--holdout-fold k/K` and out-of-fold prediction use), see [`LocationFolds`].
    pub fn location_folds(&self, count: u32, max_split: Option<u8>) -> LocationFolds {
        self.inner.location_folds(count, max_split)
    }

    /// What the index knows about global row `row` (as found in [`super::HostBatch::rows`]).
    /// Panics when `row >= n_rows()`.
    pub fn row_info(&self, row: u32) -> RowInfo<'_> {
        let r = &self.inner.rows[row as usize];
        let rg = self.inner.row_groups[self.inner.row_group_of[row as usize] as usize];
        RowInfo {
            row,
            clip_id: &r.clip_id,
            segment_id: &r.segment_id,
            location_key: r.location_key,
            label: (r.label >= 0).then_some(r.label),
            device_id: r.device_id,
            device: self
                .inner
                .meta
                .devices
                .name(r.device_id as usize)
                .unwrap_or(""),
            set: r.set,
            split: r.split,
            variant: r.variant,
            has_teacher: r.has_teacher,
            shard: &self.inner.shards[rg.shard as usize].path,
        }
    }

    /// Iterates over every row's [`RowInfo`] in global order.
    pub fn rows(&self) -> impl Iterator<Item = RowInfo<'_>> + '_ {
        (0..self.inner.rows.len() as u32).map(|r| self.row_info(r))
    }
}

/// What a path given as a shard set is, when it is not one (for the error message).
fn not_a_shard_set(path: &Path, problem: &str) -> LoaderError {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let dataset = path.is_dir() && path.join("meta.csv").is_file();
    let hint = if name == "meta.csv" || name.ends_with(".csv") || dataset {
        "; this looks like a dataset (meta.csv): turn it into shards first with `pipeline \
         features --dataset DATASET --out data`, then pass --shards data/"
    } else {
        ""
    };
    LoaderError::NotAShardSet {
        path: path.display().to_string(),
        problem: format!("{problem}{hint}"),
    }
}

/// The shard files of a set with the row counts of the manifest (when there is one).
///
/// With a manifest, every listed shard is first verified against its SHA-256
/// ([`data_specs::verify_shards`]: hashed once, then trusted while its file is unchanged), so
/// damaged or replaced bytes are refused before any row is read.
fn list_shards(path: &Path) -> Result<Vec<(PathBuf, Option<u64>)>> {
    if !path.exists() {
        return Err(not_a_shard_set(path, "no such file or folder"));
    }
    let manifest_path = if path.is_dir() {
        let m = path.join(MANIFEST_FILE);
        m.is_file().then_some(m)
    } else {
        Some(path.to_path_buf())
    };
    if let Some(m) = manifest_path {
        let manifest = match Manifest::load(&m) {
            Ok(manifest) => manifest,
            Err(data_specs::SpecError::BadManifest { .. })
                if m.file_name().is_none_or(|n| n != MANIFEST_FILE) =>
            {
                return Err(not_a_shard_set(
                    &m,
                    "not a shard folder or manifest: expected the folder written by `pipeline \
                     features` (shard-*.parquet with manifest.json) or its manifest.json",
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let dir = m.parent().unwrap_or(Path::new("."));
        let files: Vec<_> = manifest
            .shards
            .iter()
            .map(|s| (dir.join(&s.file), Some(s.rows)))
            .collect();
        if files.is_empty() {
            return Err(LoaderError::NoShards {
                path: m.display().to_string(),
            });
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let report = data_specs::verify_shards(&m, &manifest, threads)?;
        if report.hashed > 0 || report.sidecar_problem.is_some() {
            eprintln!("{}: {report}", m.display());
        }
        return Ok(files);
    }
    let mut files: Vec<_> = std::fs::read_dir(path)
        .map_err(|e| io_err(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet") && p.is_file())
        .map(|p| (p, None))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(if path.join("meta.csv").is_file() {
            not_a_shard_set(path, "holds no shards (no manifest.json, no *.parquet)")
        } else {
            LoaderError::NoShards {
                path: path.display().to_string(),
            }
        });
    }
    Ok(files)
}

/// Maps one shard, parses its footer and validates its schema and metadata.
fn open_shard(path: &Path) -> Result<(Shard, ShardMeta)> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    if len == 0 {
        return Err(pq_err(path, "empty file"));
    }
    // SAFETY: the map is read-only; shards are immutable once written (written under a
    // temporary name, then renamed), so the mapped bytes do not change while the set is open.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, e))?);
    let bytes = Bytes::from_owner(MapOwner(Arc::clone(&map)));
    let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
    let reader_meta = ArrowReaderMetadata::load(&bytes, options).map_err(|e| pq_err(path, e))?;
    let source = path.display().to_string();
    let meta = ShardMeta::validate(reader_meta.schema(), &source)?;
    let schema = reader_meta.schema();
    let roots = |names: &[&str]| {
        let idx: Vec<usize> = names
            .iter()
            .map(|n| schema.index_of(n).expect("validated"))
            .collect();
        ProjectionMask::roots(reader_meta.parquet_schema(), idx)
    };
    let logits_mask = roots(&[col::TEACHER_LOGITS]);
    let logmel_mask = roots(&[col::LOGMEL]);
    let logmel_leaf = reader_meta
        .parquet_schema()
        .columns()
        .iter()
        .position(|c| c.path().parts() == [col::LOGMEL, "list", "item"]);
    Ok((
        Shard {
            path: path.to_path_buf(),
            map,
            file,
            bytes,
            reader_meta,
            logits_mask,
            logmel_mask,
            logmel_leaf,
        },
        meta,
    ))
}

/// Reads the small columns of a shard into `rows`.
fn read_index(shard: &Shard, meta: &ShardMeta, rows: &mut Vec<RowEntry>) -> Result<()> {
    let path = &shard.path;
    let schema = shard.reader_meta.schema();
    let names = [
        col::CLIP_ID,
        col::LABEL,
        col::DEVICE_ID,
        col::SEGMENT_ID,
        col::IDENTIFIER,
        col::SET,
        col::SPLIT,
        col::VARIANT,
        col::TEACHER_LOGITS,
    ];
    let idx: Vec<usize> = names
        .iter()
        .map(|n| schema.index_of(n).expect("validated"))
        .collect();
    let mask = ProjectionMask::roots(shard.reader_meta.parquet_schema(), idx);
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(
        shard.bytes.clone(),
        shard.reader_meta.clone(),
    )
    .with_projection(mask)
    .with_batch_size(8192)
    .build()
    .map_err(|e| pq_err(path, e))?;
    let n_devices = meta.devices.len() as i32;
    let n_labels = meta.labels.len() as i32;
    for batch in reader {
        let batch = batch.map_err(|e| pq_err(path, e))?;
        index_batch(path, &batch, n_labels, n_devices, rows)?;
    }
    Ok(())
}

fn bad(path: &Path, column: &str, problem: String) -> LoaderError {
    LoaderError::BadValue {
        path: path.display().to_string(),
        column: column.to_string(),
        problem,
    }
}

/// Decodes a dictionary column of names into per-row values through `parse`.
fn dict_values<T: Copy>(
    path: &Path,
    batch: &RecordBatch,
    column: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>> {
    let arr = batch
        .column_by_name(column)
        .expect("projected")
        .as_dictionary::<Int32Type>();
    let values = arr.values().as_string::<i32>();
    let mut lookup = HashMap::with_capacity(values.len());
    for (k, v) in values.iter().enumerate() {
        if let Some(p) = v.and_then(&parse) {
            lookup.insert(k as i32, p);
        }
    }
    let mut out = Vec::with_capacity(arr.len());
    for i in 0..arr.len() {
        let key = (!arr.is_null(i)).then(|| arr.keys().value(i));
        match key.and_then(|k| lookup.get(&k)) {
            Some(&p) => out.push(p),
            None => {
                let text = key
                    .map(|k| values.value(k as usize).to_string())
                    .unwrap_or_else(|| "null".into());
                return Err(bad(
                    path,
                    column,
                    format!("row {i}: unknown value '{text}'"),
                ));
            }
        }
    }
    Ok(out)
}

fn index_batch(
    path: &Path,
    batch: &RecordBatch,
    n_labels: i32,
    n_devices: i32,
    rows: &mut Vec<RowEntry>,
) -> Result<()> {
    let get = |name: &str| batch.column_by_name(name).expect("projected");
    let clip = get(col::CLIP_ID).as_string::<i32>();
    let segment = get(col::SEGMENT_ID).as_string::<i32>();
    let label = get(col::LABEL).as_primitive::<Int32Type>();
    let device = get(col::DEVICE_ID).as_primitive::<Int32Type>();
    let split = get(col::SPLIT).as_primitive::<UInt8Type>();
    let logits = get(col::TEACHER_LOGITS);
    let sets = dict_values(path, batch, col::SET, ClipSet::parse)?;
    let variants = dict_values(path, batch, col::VARIANT, Variant::parse)?;
    let locations = dict_values(path, batch, col::IDENTIFIER, |s| Some(Fold::key(s)))?;
    rows.reserve(batch.num_rows());
    for i in 0..batch.num_rows() {
        let label = if label.is_null(i) {
            -1
        } else {
            let l = label.value(i);
            if !(0..n_labels).contains(&l) {
                return Err(bad(
                    path,
                    col::LABEL,
                    format!("label {l} outside the vocabulary of {n_labels}"),
                ));
            }
            l
        };
        let device_id = device.value(i);
        if !(0..n_devices).contains(&device_id) {
            return Err(bad(
                path,
                col::DEVICE_ID,
                format!("device id {device_id} outside the vocabulary of {n_devices}"),
            ));
        }
        rows.push(RowEntry {
            clip_id: clip.value(i).into(),
            segment_id: segment.value(i).into(),
            location_key: locations[i],
            label,
            device_id,
            set: sets[i],
            split: (!split.is_null(i)).then(|| split.value(i)),
            variant: variants[i],
            has_teacher: logits.is_valid(i),
        });
    }
    Ok(())
}

impl Inner {
    /// Label index (`-1` when unknown), device id, set, split, variant of a row.
    pub fn row(&self, row: u32) -> (i32, i32, ClipSet, Option<u8>, Variant) {
        let r = &self.rows[row as usize];
        (r.label, r.device_id, r.set, r.split, r.variant)
    }

    /// [`Fold::key`] of a row's recording location.
    pub fn location_key(&self, row: u32) -> u64 {
        self.rows[row as usize].location_key
    }

    /// [`LocationFolds::balanced`] over the original training clips of split `max_split`
    /// (`None`: every training clip).
    pub fn location_folds(&self, count: u32, max_split: Option<u8>) -> LocationFolds {
        let mut clips: HashMap<u64, usize> = HashMap::new();
        for r in &self.rows {
            let in_split = max_split.is_none_or(|p| r.split.is_some_and(|s| s <= p));
            if r.set == ClipSet::Train && r.variant == Variant::Original && in_split {
                *clips.entry(r.location_key).or_default() += 1;
            }
        }
        LocationFolds::balanced(&clips, count)
    }

    /// Clip id of a row.
    pub fn clip_id(&self, row: u32) -> &str {
        &self.rows[row as usize].clip_id
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.rows.len()
    }
}
