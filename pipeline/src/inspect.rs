//! `pipeline inspect`: prints the schema, the metadata and row counts of a shard set
//! (rows per set, device, variant and split; how many rows carry teacher logits), and checks
//! the manifest against the files (`--verify` also recomputes every checksum).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, UInt8Type};
use arrow_array::{Array, RecordBatch};
use data_specs::{Manifest, ShardMeta, col};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::shards;

/// Arguments of `pipeline inspect`.
///
/// Example: `pipeline inspect data/` or `pipeline inspect data/shard-p0of1-00000.parquet`.
#[derive(clap::Args, Debug, Clone)]
pub struct InspectArgs {
    /// Shard folder (every `shard-*.parquet` in it) or a single shard file.
    #[arg(value_name = "PATH", default_value = "data")]
    pub path: PathBuf,

    /// Recompute the SHA-256 of every shard and compare it with the manifest.
    #[arg(long)]
    pub verify: bool,
}

/// Row counts of a shard set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Total rows.
    pub rows: u64,
    /// Rows per `set`.
    pub by_set: BTreeMap<String, u64>,
    /// Rows per `device`.
    pub by_device: BTreeMap<String, u64>,
    /// Rows per `variant`.
    pub by_variant: BTreeMap<String, u64>,
    /// Rows per `split` (`-` for null).
    pub by_split: BTreeMap<String, u64>,
    /// Rows whose `teacher_logits` is not null.
    pub with_teacher_logits: u64,
}

fn dict_strings(batch: &RecordBatch, name: &str) -> anyhow::Result<Vec<Option<String>>> {
    let a = batch
        .column_by_name(name)
        .with_context(|| format!("column '{name}' missing"))?;
    let d = a
        .as_dictionary_opt::<Int32Type>()
        .with_context(|| format!("column '{name}' is not a dictionary"))?;
    let values = d.values().as_string::<i32>();
    Ok(d.keys()
        .iter()
        .map(|k| k.map(|k| values.value(k as usize).to_string()))
        .collect())
}

/// Counts the rows of one shard (reads only the small columns).
pub fn count_shard(path: &Path, counts: &mut Counts) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
    let schema = builder.schema().clone();
    let wanted = [
        col::SET,
        col::DEVICE,
        col::VARIANT,
        col::SPLIT,
        col::TEACHER_LOGITS,
    ];
    let roots: Vec<usize> = wanted
        .iter()
        .map(|n| schema.index_of(n))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a shard", path.display()))?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()
        .with_context(|| format!("{}: cannot read", path.display()))?;
    for batch in reader {
        let batch = batch.with_context(|| format!("{}: cannot read", path.display()))?;
        counts.rows += batch.num_rows() as u64;
        for (name, map) in [
            (col::SET, &mut counts.by_set),
            (col::DEVICE, &mut counts.by_device),
            (col::VARIANT, &mut counts.by_variant),
        ] {
            for v in dict_strings(&batch, name).with_context(|| path.display().to_string())? {
                *map.entry(v.unwrap_or_else(|| "-".into())).or_default() += 1;
            }
        }
        let split = batch
            .column_by_name(col::SPLIT)
            .and_then(|a| a.as_primitive_opt::<UInt8Type>())
            .with_context(|| format!("{}: column 'split' is not UInt8", path.display()))?;
        for v in split.iter() {
            *counts
                .by_split
                .entry(v.map_or_else(|| "-".to_string(), |s| s.to_string()))
                .or_default() += 1;
        }
        let logits = batch
            .column_by_name(col::TEACHER_LOGITS)
            .with_context(|| format!("{}: no teacher_logits", path.display()))?;
        counts.with_teacher_logits += (logits.len() - logits.null_count()) as u64;
    }
    Ok(())
}

/// The shard files of `path` (a folder or one file), sorted.
pub fn shard_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        bail!("{}: no such file or folder", path.display());
    }
    let files: Vec<PathBuf> = shards::list_shard_files(path)?
        .into_iter()
        .map(|n| path.join(n))
        .collect();
    if files.is_empty() {
        bail!(
            "{}: no shard-*.parquet files here; make them with `pipeline features --out {}`",
            path.display(),
            path.display()
        );
    }
    Ok(files)
}

fn print_map(title: &str, m: &BTreeMap<String, u64>) {
    let items: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("  {title:<10} {}", items.join(", "));
}

/// Runs `pipeline inspect`.
pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let files = shard_files(&args.path)?;
    let first = &files[0];
    let meta = data_specs::read_shard_meta(first)?;
    let schema = meta.schema();
    println!("{} shard file(s) in {}", files.len(), args.path.display());
    println!("schema:");
    for f in schema.fields() {
        println!(
            "  {:<15} {}{}",
            f.name(),
            f.data_type(),
            if f.is_nullable() { " (nullable)" } else { "" }
        );
    }
    println!("metadata:");
    let mut kv: Vec<(String, String)> = meta.to_key_values().into_iter().collect();
    kv.sort();
    for (k, v) in kv {
        println!("  {k} = {v}");
    }
    let mut counts = Counts::default();
    for f in &files {
        let m: ShardMeta = data_specs::read_shard_meta(f)?;
        if m != meta {
            bail!(
                "{}: {}",
                f.display(),
                shards::describe_difference(&m, &meta)
            );
        }
        count_shard(f, &mut counts)?;
    }
    println!("rows: {}", counts.rows);
    print_map("set", &counts.by_set);
    print_map("device", &counts.by_device);
    print_map("variant", &counts.by_variant);
    print_map("split", &counts.by_split);
    println!(
        "  teacher logits: {} of {} rows{}",
        counts.with_teacher_logits,
        counts.rows,
        if counts.with_teacher_logits == 0 {
            " (none: distillation needs --teacher-logits)"
        } else {
            ""
        }
    );
    if args.path.is_dir() {
        match Manifest::load(&args.path) {
            Ok(m) => {
                let listed: Vec<&str> = m.shards.iter().map(|s| s.file.as_str()).collect();
                let present: Vec<String> = files
                    .iter()
                    .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect();
                let missing: Vec<&&str> = listed
                    .iter()
                    .filter(|l| !present.iter().any(|p| p == **l))
                    .collect();
                let unlisted: Vec<&String> = present
                    .iter()
                    .filter(|p| !listed.contains(&p.as_str()))
                    .collect();
                println!(
                    "manifest: {} shards, {} rows; missing files: {missing:?}; unlisted files: {unlisted:?}",
                    m.shards.len(),
                    m.total_rows()
                );
                if args.verify {
                    let mut bad = 0;
                    for e in &m.shards {
                        let p = args.path.join(&e.file);
                        if p.is_file() && shards::sha256_file(&p)? != e.sha256 {
                            println!("  checksum mismatch: {}", e.file);
                            bad += 1;
                        }
                    }
                    if bad > 0 {
                        bail!("{bad} shard(s) do not match the manifest's checksums");
                    }
                    println!("  checksums verified");
                }
            }
            Err(e) => println!("manifest: {e}"),
        }
    }
    Ok(())
}
