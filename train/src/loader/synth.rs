//! Synthetic shard sets for tests and benchmarks: real shards of the `data-specs` schema
//! (written with [`records_to_batch`] and [`ArrowWriter`], zstd-1 and `BYTE_STREAM_SPLIT` on
//! the float leaves as the pipeline writes them, a [`Manifest`]), whose log-mel and teacher
//! values are closed-form functions of the global row id, so that a reader can be checked
//! value by value ([`synth_logmel`], [`synth_logits`]).

use std::fs::File;
use std::path::Path;

use data_specs::{
    ClipRecord, ClipSet, FrontEndConfig, LogmelType, Manifest, SPEC_VERSION, SPLITS, ShardEntry,
    ShardMeta, Variant, Vocabulary, records_to_batch,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::{LoaderError, Result};

/// Shape of a synthetic shard set.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    /// Front end (sets the log-mel length; a small one for tests).
    pub frontend: FrontEndConfig,
    /// Number of distinct clips.
    pub n_clips: usize,
    /// Number of shard files.
    pub n_shards: usize,
    /// Rows per row group.
    pub row_group_rows: usize,
    /// DIR rows per training clip of device `a`.
    pub dir_per_clip: usize,
    /// Every `replay_every`-th training clip gets a `replay-sim` row and every
    /// `2 * replay_every`-th also a `replay` row (0: none).
    pub replay_every: usize,
    /// Every `test_every`-th clip is in the test set, the others in the training set.
    pub test_every: usize,
    /// Every `missing_teacher_every`-th row has no teacher logits (0: all have them).
    pub missing_teacher_every: usize,
}

impl SynthSpec {
    /// A tiny set for unit tests: 8 mels x 7 frames, 3 shards, row groups of 16 rows.
    pub fn tiny(n_clips: usize) -> Self {
        Self {
            frontend: tiny_frontend(),
            n_clips,
            n_shards: 3,
            row_group_rows: 16,
            dir_per_clip: 2,
            replay_every: 3,
            test_every: 5,
            missing_teacher_every: 7,
        }
    }
}

/// A small front end for tests: 8 mels, 3,200 samples with hop 500 -> 7 frames.
pub fn tiny_frontend() -> FrontEndConfig {
    FrontEndConfig {
        n_mels: 8,
        clip_samples: 3_200,
        ..FrontEndConfig::dcase2024()
    }
}

/// Cheap 32-bit integer hash (lowbias32) for pseudo-noise.
fn hash(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// Log-mel value `k` of global row `row`: a smooth spectral shape plus pseudo-noise
/// (compresses like real log-mel rather than like a constant). Value 0 is the row id itself.
pub fn synth_logmel(row: u32, k: usize) -> f32 {
    if k == 0 {
        return row as f32;
    }
    let noise = (hash(row.wrapping_mul(2_654_435_761) ^ k as u32) >> 8) as f32 / (1 << 24) as f32;
    -8.0 + 3.0 * ((k as f32) * 0.013 + row as f32 * 0.1).sin() + noise
}

/// Teacher logit `c` of global row `row`.
pub fn synth_logits(row: u32, c: usize) -> f32 {
    row as f32 * 0.01 + c as f32
}

/// Writer properties like the pipeline's (`pipeline features --compression`): uncompressed
/// PLAIN floats (the default), or with `zstd` zstd-1 and `BYTE_STREAM_SPLIT` on the two float
/// leaves; no dictionary or statistics on those leaves, `row_group_rows` rows per row group.
pub fn writer_properties(row_group_rows: usize, zstd: bool) -> WriterProperties {
    writer_properties_typed(row_group_rows, zstd, LogmelType::Float32)
}

/// [`writer_properties`] for a log-mel column of `logmel_type`: as the pipeline, a float16
/// log-mel gets no `BYTE_STREAM_SPLIT` (DuckDB cannot read it on 2-byte values).
pub fn writer_properties_typed(
    row_group_rows: usize,
    zstd: bool,
    logmel_type: LogmelType,
) -> WriterProperties {
    let compression = if zstd {
        Compression::ZSTD(ZstdLevel::try_new(1).expect("valid level"))
    } else {
        Compression::UNCOMPRESSED
    };
    data_specs::shard_writer_properties(compression, zstd, row_group_rows, logmel_type, None)
}

/// A row of a synthetic set before its values are made.
#[derive(Debug, Clone)]
struct RowDesc {
    clip: usize,
    variant: Variant,
    source: Option<String>,
}

/// The rows of a synthetic set in global row order.
fn synth_rows(spec: &SynthSpec) -> Vec<RowDesc> {
    let mut out = Vec::new();
    for clip in 0..spec.n_clips {
        let test = is_test(spec, clip);
        let mut push = |variant, source: Option<&str>| {
            out.push(RowDesc {
                clip,
                variant,
                source: source.map(str::to_string),
            })
        };
        push(Variant::Original, None);
        if !test && clip % 6 == 0 {
            for d in 0..spec.dir_per_clip {
                push(Variant::Dir, Some(&format!("IR_{d}")));
            }
        }
        if !test && spec.replay_every > 0 && clip % spec.replay_every == 0 {
            push(Variant::ReplaySim, Some("sim"));
            if clip % (2 * spec.replay_every) == 0 {
                push(Variant::Replay, Some("replay.wav"));
            }
        }
    }
    out
}

fn is_test(spec: &SynthSpec, clip: usize) -> bool {
    spec.test_every > 0 && clip % spec.test_every == spec.test_every - 1
}

/// The record of global row `row`.
fn make_record(spec: &SynthSpec, meta: &ShardMeta, row: u32, d: &RowDesc) -> ClipRecord {
    let i = d.clip;
    let test = is_test(spec, i);
    let n_classes = meta.n_classes();
    // Devices a, b, c, s1, s2, s3 in turn (device a: clip % 6 == 0, the DIR clips).
    let device_id = (i % meta.devices.len().min(6)) as i32;
    let device = meta
        .devices
        .name(device_id as usize)
        .unwrap_or("a")
        .to_string();
    let label = (i % n_classes) as i32;
    let scene = meta.labels.name(label as usize).unwrap_or("x").to_string();
    let clip_id = format!("{scene}-lyon-{}-{i}-0-{device}", i % 13);
    let teacher = !(spec.missing_teacher_every > 0
        && row as usize % spec.missing_teacher_every == spec.missing_teacher_every - 1);
    ClipRecord {
        source_file: format!("audio/{clip_id}.wav"),
        clip_id,
        scene_label: Some(scene.clone()),
        label: Some(label),
        device,
        device_id,
        city: "lyon".into(),
        identifier: format!("lyon-{}", i % 13),
        segment_id: format!("{scene}-lyon-{}-{i}", i % 13),
        segment_index: 0,
        set: if test { ClipSet::Test } else { ClipSet::Train },
        split: (!test).then(|| SPLITS[(hash(i as u32) % 5) as usize]),
        variant: d.variant,
        variant_source: d.source.clone(),
        energy: 400.0,
        teacher_logits: teacher.then(|| (0..n_classes).map(|c| synth_logits(row, c)).collect()),
        logmel: (0..meta.frontend.logmel_len())
            .map(|k| synth_logmel(row, k))
            .collect(),
    }
}

/// The records of a synthetic set in global row order (row `i` of the result is global row
/// `i` once written by [`write_shard_set`]). Holds the whole set in memory: for small sets.
pub fn synth_records(spec: &SynthSpec, meta: &ShardMeta) -> Vec<ClipRecord> {
    synth_rows(spec)
        .iter()
        .enumerate()
        .map(|(row, d)| make_record(spec, meta, row as u32, d))
        .collect()
}

/// The metadata of a synthetic set.
pub fn synth_meta(frontend: FrontEndConfig) -> ShardMeta {
    let mut meta = ShardMeta::new(
        frontend,
        Vocabulary::tau22_labels(),
        Vocabulary::tau22_devices(),
    );
    meta.dataset = "synthetic".into();
    meta
}

/// Writes a synthetic shard set into `dir` (`shard-00000.parquet`, ... and `manifest.json`);
/// returns its manifest. Rows are spread over the shards in order and made one row group at a
/// time (bounded memory, whatever the set's size).
pub fn write_shard_set(dir: &Path, spec: &SynthSpec) -> Result<Manifest> {
    write_shard_set_with(dir, spec, writer_properties(spec.row_group_rows, false))
}

/// [`write_shard_set`] with other writer properties (e.g. [`writer_properties`] with zstd).
pub fn write_shard_set_with(
    dir: &Path,
    spec: &SynthSpec,
    props: WriterProperties,
) -> Result<Manifest> {
    write_shard_set_typed(dir, spec, props, LogmelType::Float32)
}

/// [`write_shard_set_with`] with a log-mel column of `logmel_type` (float16 rounds the values
/// of [`synth_logmel`] to nearest).
pub fn write_shard_set_typed(
    dir: &Path,
    spec: &SynthSpec,
    props: WriterProperties,
    logmel_type: LogmelType,
) -> Result<Manifest> {
    let mut meta = synth_meta(spec.frontend.clone());
    meta.logmel_type = logmel_type;
    let rows = synth_rows(spec);
    write_with(dir, &meta, rows.len(), spec.n_shards, props, |range| {
        range
            .map(|row| make_record(spec, &meta, row as u32, &rows[row]))
            .collect()
    })
}

/// Writes `records` as `n_shards` shards into `dir` with a manifest.
pub fn write_records(
    dir: &Path,
    meta: &ShardMeta,
    records: &[ClipRecord],
    n_shards: usize,
    row_group_rows: usize,
) -> Result<Manifest> {
    write_with(
        dir,
        meta,
        records.len(),
        n_shards,
        writer_properties(row_group_rows, false),
        |range| records[range].to_vec(),
    )
}

/// Writes `n_rows` rows, made by `make(range of global rows)`, as `n_shards` shards.
fn write_with(
    dir: &Path,
    meta: &ShardMeta,
    n_rows: usize,
    n_shards: usize,
    props: WriterProperties,
    make: impl Fn(std::ops::Range<usize>) -> Vec<ClipRecord>,
) -> Result<Manifest> {
    let io = |p: &Path, e: &dyn std::fmt::Display| LoaderError::Io {
        path: p.display().to_string(),
        problem: e.to_string(),
    };
    let per_shard = n_rows.div_ceil(n_shards.max(1)).max(1);
    let rg = props.max_row_group_row_count().unwrap_or(1024).max(1);
    let mut shards = Vec::new();
    for (s, first) in (0..n_rows).step_by(per_shard).enumerate() {
        let last = (first + per_shard).min(n_rows);
        let name = format!("shard-{s:05}.parquet");
        let path = dir.join(&name);
        let tmp = dir.join(format!("{name}.tmp"));
        let file = File::create(&tmp).map_err(|e| io(&tmp, &e))?;
        let mut w = ArrowWriter::try_new(file, meta.schema(), Some(props.clone()))
            .map_err(|e| io(&tmp, &e))?;
        for start in (first..last).step_by(rg) {
            let records = make(start..(start + rg).min(last));
            let batch = records_to_batch(meta, &records)?;
            w.write(&batch).map_err(|e| io(&tmp, &e))?;
            w.flush().map_err(|e| io(&tmp, &e))?;
        }
        w.close().map_err(|e| io(&tmp, &e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, &e))?;
        shards.push(ShardEntry {
            file: name,
            rows: (last - first) as u64,
            sha256: data_specs::sha256_file(&path)?,
            partition: [0, 1],
        });
    }
    let manifest = Manifest {
        spec_version: SPEC_VERSION,
        shards,
    };
    manifest.store(dir)?;
    Ok(manifest)
}
