//! Stage 8, the shard writer: Parquet files of the `data-specs` schema, written atomically
//! (`*.parquet.tmp`, then rename), with the key-value metadata on the Arrow schema and in the
//! file footer, SHA-256 checksums and the manifest (`manifest.json`).
//!
//! # Layout choices
//!
//! - **Row groups of [`DEFAULT_ROW_GROUP_ROWS`] = 512 rows** (about 34 MB of log-mel before
//!   compression). The row group is the unit the training loader reads and shuffles: 512 rows
//!   are two batches of 256, large enough for sequential reads and a small footer, small enough
//!   that shuffling row groups mixes the data and a prefetch queue of a few groups stays in
//!   memory.
//! - **Compression chosen by measurement** (`cargo bench -p pipeline --bench pipeline --
//!   --dataset DIR --compression-only`): the first 2,524 rows (originals and their DIR
//!   copies, in shard order) of the demo dataset at scale 0.5, dcase2024 front end, the whole table
//!   (all 17 columns, 512-row groups) written to memory and read back on one thread, best of
//!   three, on the shared 2-core build machine (times are noisy; sizes are exact):
//!
//! | codec        | BYTE_STREAM_SPLIT | size MB | ratio | write ms | read ms |
//! |--------------|-------------------|---------|-------|----------|---------|
//! | uncompressed | no                | 168.2   | 1.000 | 749      | 526     |
//! | uncompressed | yes               | 168.2   | 1.000 | 894      | 471     |
//! | snappy       | no                | 168.1   | 0.999 | 924      | 604     |
//! | snappy       | yes               | 135.4   | 0.805 | 983      | 579     |
//! | lz4          | no                | 168.7   | 1.003 | 720      | 502     |
//! | lz4          | yes               | 136.4   | 0.811 | 922      | 558     |
//! | zstd-1       | no                | 151.7   | 0.902 | 951      | 713     |
//! | **zstd-1**   | **yes**           | 131.6   | 0.782 | 963      | 520     |
//! | zstd-3       | no                | 148.9   | 0.885 | 1083     | 637     |
//! | zstd-3       | yes               | 131.4   | 0.781 | 907      | 512     |
//!
//!   Log-mel values are noisy floats: without BYTE_STREAM_SPLIT, the fast codecs find nothing to
//!   compress (ratio 1.00) and zstd saves 10 %; splitting the bytes of each float into four
//!   streams exposes the low-entropy exponent/high-mantissa bytes and every codec then saves
//!   19-22 %, zstd-1 + BYTE_STREAM_SPLIT the most (22 %, as small as zstd-3).
//!
//!   The read column above decodes whole files; the training loader reads one row (of
//!   several variants) per clip in shuffled order, and there the codec decides its speed:
//!   `cargo bench -p train --bench loader` (batch 256, into burn tensors, idle 2-core
//!   machine) gave 32,800-37,700 samples/s on the demo shards uncompressed and 12,300 on the
//!   same shards with zstd-1 + BYTE_STREAM_SPLIT (6,000 synthetic clips: 41,600 vs 19,900),
//!   which decompresses every page it touches (whole pages of
//!   about 15 rows, also those of the variants not drawn) while uncompressed pages are
//!   slices of the memory map and only the drawn rows are copied. The target of
//!   20,000 samples/s needs uncompressed pages, so **uncompressed** (PLAIN floats) is the
//!   default ([`ShardCompression`]) and `--compression zstd` the choice when disk space
//!   matters more (22 % smaller). Rewrites (teacher-logits joins) keep a shard's codec.
//! - `BYTE_STREAM_SPLIT` is set **per column** on the log-mel leaf `["logmel", "list", "item"]`
//!   and the teacher-logits leaf (setting it globally would hit string columns), but not on a
//!   float16 log-mel (`--logmel-type float16`: a 2-byte `FIXED_LEN_BYTE_ARRAY`, whose
//!   byte-stream-split encoding DuckDB cannot read); dictionary encoding and statistics are off
//!   for those two float columns (a dictionary of 16,640-value random floats never pays, and
//!   min/max of log-mel values helps no query).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow_array::RecordBatch;
use data_specs::{LogmelType, Manifest, SPEC_VERSION, ShardEntry, ShardMeta, SpecError};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};

/// Rows per row group (see the module documentation).
pub const DEFAULT_ROW_GROUP_ROWS: usize = 512;

/// The compression measurement behind [`ShardCompression`], as printed by the bench (the module
/// documentation explains it): `codec, BYTE_STREAM_SPLIT, size ratio vs uncompressed`.
pub const COMPRESSION_TABLE: &str = "uncompressed 1.000 (default) | +BSS 1.000; snappy 0.999 | \
+BSS 0.805; lz4 1.003 | +BSS 0.811; zstd-1 0.902 | +BSS 0.782 (--compression zstd); zstd-3 \
0.885 | +BSS 0.781";

/// Errors of the shard writer; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// Reading or writing failed.
    #[error("{path}: {problem}")]
    Io {
        /// File.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// Parquet failed.
    #[error("{path}: parquet: {problem}")]
    Parquet {
        /// File.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The shard does not follow the spec.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The folder's lock is held by another process (or could not be taken).
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    /// The shard was written with another configuration than this run's.
    #[error("{path}: {problem}")]
    Mismatch {
        /// File.
        path: String,
        /// What differs.
        problem: String,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ShardError + '_ {
    move |e| ShardError::Io {
        path: path.display().to_string(),
        problem: e.to_string(),
    }
}

fn pq(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> ShardError + '_ {
    move |e| ShardError::Parquet {
        path: path.display().to_string(),
        problem: e.to_string(),
    }
}

/// A compression setting of the shards: codec plus `BYTE_STREAM_SPLIT` on the float leaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Codec {
    /// Parquet compression codec.
    pub compression: Compression,
    /// `BYTE_STREAM_SPLIT` encoding on the log-mel and teacher-logits leaves.
    pub byte_stream_split: bool,
}

/// The shard layouts `pipeline features --compression` offers (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ShardCompression {
    /// No compression, PLAIN floats: the loader copies each selected log-mel straight from the
    /// page cache and never decodes a page it does not need (the default: fastest to train from).
    #[default]
    Uncompressed,
    /// zstd level 1 with BYTE_STREAM_SPLIT floats: 22 % smaller files, but the loader
    /// decompresses every page it touches.
    Zstd,
}

impl ShardCompression {
    /// The codec of the preset.
    pub fn codec(self) -> Codec {
        match self {
            Self::Uncompressed => Codec {
                compression: Compression::UNCOMPRESSED,
                byte_stream_split: false,
            },
            Self::Zstd => Codec {
                compression: Compression::ZSTD(ZstdLevel::try_new(1).expect("zstd level 1")),
                byte_stream_split: true,
            },
        }
    }
}

impl Codec {
    /// The codec a shard was written with, read from its float column chunks (first row
    /// group): the log-mel chunk's compression, and `BYTE_STREAM_SPLIT` when the log-mel or
    /// teacher-logits chunk uses it (a float16 log-mel never does, see [`writer_properties`]):
    /// a rewrite of the shard keeps it. `None` for a file without row groups or log-mel
    /// column.
    pub fn of_file(md: &parquet::file::metadata::ParquetMetaData) -> Option<Codec> {
        let rg = md.row_groups().first()?;
        let root = |c: &&parquet::file::metadata::ColumnChunkMetaData| {
            c.column_path().parts().first().cloned().unwrap_or_default()
        };
        let chunk = rg.columns().iter().find(|c| root(c) == "logmel")?;
        let bss = rg
            .columns()
            .iter()
            .filter(|c| ["logmel", "teacher_logits"].contains(&root(c).as_str()))
            .any(|c| c.encodings().any(|e| e == Encoding::BYTE_STREAM_SPLIT));
        Some(Codec {
            compression: chunk.compression(),
            byte_stream_split: bss,
        })
    }

    /// The candidates of the measurement.
    pub fn candidates() -> Vec<(String, Codec)> {
        let mut out = Vec::new();
        let codecs = [
            ("uncompressed", Compression::UNCOMPRESSED),
            ("snappy", Compression::SNAPPY),
            ("lz4", Compression::LZ4_RAW),
            (
                "zstd-1",
                Compression::ZSTD(ZstdLevel::try_new(1).expect("zstd level 1")),
            ),
            (
                "zstd-3",
                Compression::ZSTD(ZstdLevel::try_new(3).expect("zstd level 3")),
            ),
        ];
        for (name, compression) in codecs {
            for bss in [false, true] {
                out.push((
                    name.to_string(),
                    Codec {
                        compression,
                        byte_stream_split: bss,
                    },
                ));
            }
        }
        out
    }
}

/// Writer properties of a shard with metadata `meta` written with `codec`: the one definition in
/// data-specs ([`data_specs::shard_writer_properties`]) given this shard's codec and log-mel type.
pub fn writer_properties(
    meta: &ShardMeta,
    row_group_rows: usize,
    codec: Codec,
) -> parquet::file::properties::WriterProperties {
    data_specs::shard_writer_properties(
        codec.compression,
        codec.byte_stream_split,
        row_group_rows,
        meta.logmel_type,
        Some(meta),
    )
}

/// File name of shard `k` of partition `i` of `n`: `shard-p{i}of{n}-{k:05}.parquet`.
pub fn shard_name(i: u32, n: u32, k: usize) -> String {
    format!("shard-p{i}of{n}-{k:05}.parquet")
}

/// Parses a shard file name into `(i, n, k)`.
pub fn parse_shard_name(name: &str) -> Option<(u32, u32, usize)> {
    let rest = name.strip_prefix("shard-p")?.strip_suffix(".parquet")?;
    let (i, rest) = rest.split_once("of")?;
    let (n, k) = rest.split_once('-')?;
    Some((i.parse().ok()?, n.parse().ok()?, k.parse().ok()?))
}

/// Lower-case hex SHA-256 of a file ([`data_specs::sha256_file`]).
pub fn sha256_file(path: &Path) -> Result<String, ShardError> {
    Ok(data_specs::sha256_file(path)?)
}

/// Writes one shard: rows go to `<name>.tmp`; [`ShardWriter::finish`] closes the file and
/// renames it. Dropping an unfinished writer deletes the temporary file, so no half-written
/// shard is ever left under the final name.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<ArrowWriter<File>>,
    rows: u64,
    partition: [u32; 2],
    /// Rows per call into the Parquet writer (see [`FLOAT16_WRITE_ROWS`]).
    write_rows: usize,
}

/// Rows handed to the Parquet writer at once for a float16 log-mel column: parquet's Arrow
/// writer turns every `Float16` value into its own `FixedLenByteArray` handle (32 bytes for a
/// 2-byte value) for the whole slice it is given, so a chunk's batch of, say, 512 DIR rows
/// would take about 290 MB for moments; slices of 16 rows take about 9 MB.
pub const FLOAT16_WRITE_ROWS: usize = 16;

impl ShardWriter {
    /// Starts writing shard `path` (partition `[i, n]`) with the given metadata and settings.
    pub fn create(
        path: &Path,
        meta: &ShardMeta,
        row_group_rows: usize,
        codec: Codec,
        partition: [u32; 2],
    ) -> Result<Self, ShardError> {
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let props = writer_properties(meta, row_group_rows, codec);
        let writer = ArrowWriter::try_new(file, meta.schema(), Some(props)).map_err(pq(&tmp))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            writer: Some(writer),
            rows: 0,
            partition,
            write_rows: match meta.logmel_type {
                LogmelType::Float16 => FLOAT16_WRITE_ROWS,
                LogmelType::Float32 => usize::MAX,
            },
        })
    }

    /// Appends a batch (of [`ShardMeta::schema`]).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ShardError> {
        let w = self.writer.as_mut().expect("writer open until finish");
        let n = batch.num_rows();
        if n <= self.write_rows {
            w.write(batch).map_err(pq(&self.tmp))?;
        } else {
            for start in (0..n).step_by(self.write_rows) {
                let len = self.write_rows.min(n - start);
                w.write(&batch.slice(start, len)).map_err(pq(&self.tmp))?;
            }
        }
        self.rows += n as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Closes the file, syncs it, renames it to its final name and returns its manifest entry.
    pub fn finish(mut self) -> Result<ShardEntry, ShardError> {
        self.close()?;
        let sha256 = sha256_file(&self.tmp)?;
        std::fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        Ok(ShardEntry {
            file: file_name(&self.path),
            rows: self.rows,
            sha256,
            partition: self.partition,
        })
    }

    /// Like [`ShardWriter::finish`] without the checksum (for a pass-1 shard written under
    /// its [`pending_path`], hashed once [`finalize_pending`] gave it its final metadata).
    /// Returns the rows written.
    pub fn finish_unhashed(mut self) -> Result<u64, ShardError> {
        self.close()?;
        std::fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        Ok(self.rows)
    }

    fn close(&mut self) -> Result<(), ShardError> {
        let w = self.writer.take().expect("writer open until finish");
        let file = w.into_inner().map_err(pq(&self.tmp))?;
        file.sync_all().map_err(io(&self.tmp))
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A temporary name for `path`, unique to this process and call (`<path>.<pid>-<seq>.tmp`,
/// see [`crate::lock::tmp_name`]): concurrent writers never share a temporary file.
pub fn tmp_path(path: &Path) -> PathBuf {
    crate::lock::tmp_name(path)
}

/// `<path>.pending`: a complete pass-1 shard of `pipeline features` written before the DIR
/// threshold was known (its `asc.energy_threshold` is `NaN`); [`finalize_pending`] turns it
/// into the shard `path`. Not a shard: readers and the manifest ignore it.
pub fn pending_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pending");
    PathBuf::from(s)
}

/// Turns the complete pending shard `pending` into the shard `path` with the metadata `meta`
/// (the pending metadata with the DIR threshold filled in), without touching its data: the
/// footer is replaced in place (the file is cut where the old footer starts and the new one
/// is written there: the same row groups, column statistics and page-index locations, with the
/// key-value metadata and the embedded Arrow schema as [`ShardWriter`] writes them for
/// `meta`), synced, checked and renamed. Only the deprecated min/max fields of the small
/// columns' statistics (kept by writers for old readers beside `min_value`/`max_value`) do not
/// survive the footer's round trip, so `pipeline features` makes every pass-1 shard this way
/// and the same inputs give the same bytes. An interruption leaves a pending file that fails
/// to parse, which the next run rewrites.
pub fn finalize_pending(
    pending: &Path,
    path: &Path,
    meta: &ShardMeta,
    partition: [u32; 2],
) -> Result<ShardEntry, ShardError> {
    use parquet::file::metadata::{
        FileMetaData, PageIndexPolicy, ParquetMetaDataBuilder, ParquetMetaDataOptions,
        ParquetMetaDataReader, ParquetMetaDataWriter,
    };
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(pending)
        .map_err(io(pending))?;
    let len = file.metadata().map_err(io(pending))?.len();
    // Everything of the old footer is kept as written (the page encoding statistics as a
    // list, not the reader's default summary bitmask).
    let old = ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Skip)
        .with_metadata_options(Some(
            ParquetMetaDataOptions::new().with_encoding_stats_as_mask(false),
        ))
        .parse_and_finish(&file)
        .map_err(pq(pending))?;
    // The footer: metadata, its length (4 bytes) and the magic (4 bytes) at the end.
    let mut tail = [0u8; 8];
    file.seek(SeekFrom::Start(len.saturating_sub(8)))
        .and_then(|_| std::io::Read::read_exact(&mut file, &mut tail))
        .map_err(io(pending))?;
    let footer_len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as u64;
    let footer_start = len
        .checked_sub(8 + footer_len)
        .ok_or_else(|| ShardError::Parquet {
            path: pending.display().to_string(),
            problem: "footer longer than the file".into(),
        })?;
    // The key-value metadata the writer stores for `meta`: the shard metadata sorted by key,
    // then the encoded Arrow schema.
    let mut props = writer_properties(meta, 1, ShardCompression::Uncompressed.codec());
    parquet::arrow::add_encoded_arrow_schema_to_metadata(&meta.schema(), &mut props);
    let kv = props.key_value_metadata().cloned();
    let fm = old.file_metadata();
    let new_fm = FileMetaData::new(
        fm.version(),
        fm.num_rows(),
        fm.created_by().map(str::to_string),
        kv,
        fm.schema_descr_ptr(),
        fm.column_orders().cloned(),
    );
    let rows = fm.num_rows() as u64;
    let row_groups = ParquetMetaDataBuilder::new_from_metadata(old).take_row_groups();
    let new = ParquetMetaDataBuilder::new(new_fm)
        .set_row_groups(row_groups)
        .build();
    let mut footer = Vec::new();
    ParquetMetaDataWriter::new(&mut footer, &new)
        .finish()
        .map_err(pq(pending))?;
    file.set_len(footer_start).map_err(io(pending))?;
    file.seek(SeekFrom::Start(footer_start))
        .map_err(io(pending))?;
    std::io::Write::write_all(&mut file, &footer).map_err(io(pending))?;
    file.sync_all().map_err(io(pending))?;
    drop(file);
    check_shard(pending, Some(meta))?;
    let sha256 = sha256_file(pending)?;
    std::fs::rename(pending, path).map_err(io(path))?;
    Ok(ShardEntry {
        file: file_name(path),
        rows,
        sha256,
        partition,
    })
}

/// `(source_file, energy)` of the `original` rows of a shard, in row order (the clip energies
/// that pass 1 of `pipeline features` wrote; read from the small columns only).
pub fn original_energies(path: &Path) -> Result<Vec<(String, f32)>, ShardError> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Int32Type};
    use data_specs::col;
    let file = File::open(path).map_err(io(path))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(pq(path))?;
    let schema = builder.schema().clone();
    let idx: Vec<usize> = [col::SOURCE_FILE, col::VARIANT, col::ENERGY]
        .iter()
        .map(|c| {
            schema.index_of(c).map_err(|_| ShardError::Parquet {
                path: path.display().to_string(),
                problem: format!("no column '{c}'"),
            })
        })
        .collect::<Result<_, _>>()?;
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), idx);
    let reader = builder.with_projection(mask).build().map_err(pq(path))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| ShardError::Parquet {
            path: path.display().to_string(),
            problem: e.to_string(),
        })?;
        let get = |c: &str| batch.column_by_name(c).expect("projected");
        let files = get(col::SOURCE_FILE).as_string::<i32>();
        let variants = get(col::VARIANT).as_dictionary::<Int32Type>();
        let names = variants.values().as_string::<i32>();
        let energy = get(col::ENERGY).as_primitive::<Float32Type>();
        for i in 0..batch.num_rows() {
            let v = variants.keys().value(i) as usize;
            if !variants.is_null(i) && names.value(v) == data_specs::Variant::Original.as_str() {
                out.push((files.value(i).to_string(), energy.value(i)));
            }
        }
    }
    Ok(out)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Opens a shard, validates its schema against the spec and checks that its metadata equals
/// `expected` (when given). Returns the metadata and the row count.
pub fn check_shard(
    path: &Path,
    expected: Option<&ShardMeta>,
) -> Result<(ShardMeta, u64), ShardError> {
    let file = File::open(path).map_err(io(path))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(pq(path))?;
    let meta = ShardMeta::validate(builder.schema(), &path.display().to_string())?;
    // Compared as key-value text, so that the NaN threshold of a pending shard equals itself.
    if let Some(e) = expected
        && meta.to_key_values() != e.to_key_values()
    {
        return Err(ShardError::Mismatch {
            path: path.display().to_string(),
            problem: describe_difference(&meta, e),
        });
    }
    let rows = builder.metadata().file_metadata().num_rows() as u64;
    Ok((meta, rows))
}

/// A human description of how two shard metadata differ.
pub fn describe_difference(found: &ShardMeta, expected: &ShardMeta) -> String {
    let a = found.to_key_values();
    let b = expected.to_key_values();
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let short = |v: Option<&String>| {
                let v = v.map(String::as_str).unwrap_or("<none>");
                if v.len() > 60 {
                    format!("{}...", &v[..60])
                } else {
                    v.to_string()
                }
            };
            format!(
                "{k}: shard has '{}', this run '{}'",
                short(a.get(k)),
                short(b.get(k))
            )
        })
        .collect();
    format!(
        "written with another configuration ({}); use another --out folder or delete the old shards",
        diffs.join("; ")
    )
}

/// Is shard `path` complete? It must be present, readable (a valid footer) and valid, with the
/// metadata of this run (a shard of another configuration is an error, never silently
/// reused); when the manifest lists it, its SHA-256 must also match (this catches damage
/// inside the file).
pub fn shard_is_complete(
    path: &Path,
    manifest: Option<&Manifest>,
    expected: &ShardMeta,
) -> Result<Option<ShardEntry>, ShardError> {
    if !path.is_file() {
        return Ok(None);
    }
    let name = file_name(path);
    let rows = match check_shard(path, Some(expected)) {
        Ok((_, rows)) => rows,
        Err(e @ ShardError::Mismatch { .. }) => return Err(e),
        // Unreadable or invalid: incomplete, it will be rewritten.
        Err(_) => return Ok(None),
    };
    let sha256 = sha256_file(path)?;
    if let Some(e) = manifest.and_then(|m| m.shards.iter().find(|s| s.file == name))
        && e.sha256 != sha256
    {
        return Ok(None);
    }
    let partition = parse_shard_name(&name)
        .map(|(i, n, _)| [i, n])
        .unwrap_or([0, 1]);
    Ok(Some(ShardEntry {
        file: name,
        rows,
        sha256,
        partition,
    }))
}

/// The codec of the shard file `path` (from its footer), see [`Codec::of_file`].
pub fn shard_codec(path: &Path) -> Result<Option<Codec>, ShardError> {
    let file = File::open(path).map_err(io(path))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(pq(path))?;
    Ok(Codec::of_file(builder.metadata()))
}

/// File name of the manifest lock inside a shard folder.
pub const MANIFEST_LOCK: &str = "manifest.json.lock";

/// How long a manifest rewrite waits for another process's (the lock is held for moments,
/// except by `pipeline teachers join-logits`, which holds it for the whole rewrite).
pub const MANIFEST_LOCK_WAIT: Duration = Duration::from_secs(120);

/// The lock on the manifest of a folder ([`crate::lock::FolderLock`] `manifest.json.lock`):
/// a stale lock of a killed run is taken over with a note, a live holder is waited for with
/// a message saying whom for; released on drop.
pub struct ManifestLock(crate::lock::FolderLock);

impl ManifestLock {
    /// Takes the lock for `purpose`, waiting up to [`MANIFEST_LOCK_WAIT`] for a live holder.
    pub fn acquire(dir: &Path, purpose: &str) -> Result<Self, ShardError> {
        Self::acquire_with(dir, purpose, crate::lock::Wait::UpTo(MANIFEST_LOCK_WAIT))
    }

    /// Takes the lock with the given waiting rule.
    pub fn acquire_with(
        dir: &Path,
        purpose: &str,
        wait: crate::lock::Wait,
    ) -> Result<Self, ShardError> {
        Ok(Self(crate::lock::FolderLock::acquire(
            dir,
            MANIFEST_LOCK,
            purpose,
            wait,
        )?))
    }

    /// Gives up the lock without deleting its file (see [`crate::lock::FolderLock::forget`]).
    pub fn forget(self) {
        self.0.forget();
    }
}

/// Rewrites `dir/manifest.json` from every complete shard in `dir`, under the manifest lock:
/// entries of `fresh` (just written), entries of the old manifest whose files are still present,
/// and shard files listed nowhere (written by a concurrent partition run) after validating
/// them against `expected` and hashing them. Returns the new manifest.
pub fn rewrite_manifest(
    dir: &Path,
    fresh: &[ShardEntry],
    expected: &ShardMeta,
) -> Result<Manifest, ShardError> {
    let _lock = ManifestLock::acquire(dir, "manifest rewrite")?;
    let old = Manifest::load(dir).ok();
    let mut entries: HashMap<String, ShardEntry> = HashMap::new();
    if let Some(old) = &old {
        for e in &old.shards {
            if dir.join(&e.file).is_file() {
                entries.insert(e.file.clone(), e.clone());
            }
        }
    }
    for e in fresh {
        entries.insert(e.file.clone(), e.clone());
    }
    for name in list_shard_files(dir)? {
        if entries.contains_key(&name) {
            continue;
        }
        let path = dir.join(&name);
        if let Some(e) = shard_is_complete(&path, None, expected)? {
            entries.insert(name, e);
        }
    }
    let mut shards: Vec<ShardEntry> = entries.into_values().collect();
    shards.sort_by(|a, b| a.file.cmp(&b.file));
    let m = Manifest {
        spec_version: SPEC_VERSION,
        shards,
    };
    m.store(dir)?;
    Ok(m)
}

/// Names of the `shard-*.parquet` files in `dir`, sorted.
pub fn list_shard_files(dir: &Path) -> Result<Vec<String>, ShardError> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("shard-") && n.ends_with(".parquet"))
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_round_trip() {
        let n = shard_name(3, 8, 42);
        assert_eq!(n, "shard-p3of8-00042.parquet");
        assert_eq!(parse_shard_name(&n), Some((3, 8, 42)));
        assert_eq!(parse_shard_name("manifest.json"), None);
        assert_eq!(parse_shard_name("shard-p1of2-00001.parquet.tmp"), None);
    }

    /// A float16 batch larger than [`FLOAT16_WRITE_ROWS`] goes to Parquet in slices: the file
    /// is byte-identical to one written by a plain `ArrowWriter` in a single call, and reads
    /// back as the values rounded to binary16.
    #[test]
    fn float16_batches_written_in_slices_equal_one_write() {
        use arrow_array::cast::AsArray;
        use data_specs::{ClipRecord, ClipSet, FrontEndConfig, Variant, Vocabulary};
        let mut meta = ShardMeta::new(
            FrontEndConfig::dcase2024(),
            Vocabulary::tau22_labels(),
            Vocabulary::tau22_devices(),
        );
        meta.logmel_type = LogmelType::Float16;
        let len = meta.frontend.logmel_len();
        let rows = 2 * FLOAT16_WRITE_ROWS + 5;
        let records: Vec<ClipRecord> = (0..rows)
            .map(|i| ClipRecord {
                clip_id: format!("park-lyon-1-{i}-0-a"),
                source_file: format!("audio/park-lyon-1-{i}-0-a.wav"),
                scene_label: Some("park".into()),
                label: Some(4),
                device: "a".into(),
                device_id: 0,
                city: "lyon".into(),
                identifier: "lyon-1".into(),
                segment_id: format!("park-lyon-1-{i}"),
                segment_index: 0,
                set: ClipSet::Train,
                split: Some(100),
                variant: Variant::Original,
                variant_source: None,
                energy: i as f32,
                teacher_logits: None,
                logmel: (0..len)
                    .map(|j| ((i * 7919 + j) % 4001) as f32 * 0.00617 - 12.3)
                    .collect(),
            })
            .collect();
        let batch = data_specs::records_to_batch(&meta, &records).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let codec = ShardCompression::Uncompressed.codec();
        let sliced = dir.path().join(shard_name(0, 1, 0));
        let mut w = ShardWriter::create(&sliced, &meta, 512, codec, [0, 1]).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        let mut one = Vec::new();
        let props = writer_properties(&meta, 512, codec);
        let mut aw = ArrowWriter::try_new(&mut one, meta.schema(), Some(props)).unwrap();
        aw.write(&batch).unwrap();
        aw.close().unwrap();
        assert!(std::fs::read(&sliced).unwrap() == one, "same bytes");
        let f = File::open(&sliced).unwrap();
        let mut back: Vec<f32> = Vec::new();
        for b in parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap()
        {
            let b = b.unwrap();
            let l = b.column_by_name("logmel").unwrap().as_fixed_size_list();
            let v = l.values().as_primitive::<arrow_array::types::Float16Type>();
            back.extend(v.values().iter().map(|x| x.to_f32()));
        }
        let want: Vec<f32> = records
            .iter()
            .flat_map(|r| r.logmel.iter().map(|&x| half::f16::from_f32(x).to_f32()))
            .collect();
        assert_eq!(back.len(), rows * len);
        assert!(back == want, "float16 values");
    }

    #[test]
    fn sha256_of_known_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"abc").unwrap();
        // FIPS 180-2 test vector.
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
