//! Whole-pipeline benchmark: files/s of `pipeline features` on the demo dataset (1 s files: a
//! file is a clip), on all cores and on one core, in wall time and per CPU-second of the
//! process (less sensitive to other load on a shared machine), and the shard compression
//! measurement.
//!
//! `cargo bench -p pipeline --bench pipeline [-- [--scale S] [--dataset DIR] [--compression-only]]`
//!
//! The demo dataset is generated with `pipeline synth` at `--scale` (default 1: about 2,800
//! clips) into a temporary folder unless `--dataset` names one. The compression table writes
//! the first 2,048 rows of the all-core run with every candidate codec (in memory) and reads
//! them back.

use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pipeline::features::{FeaturesArgs, Summary, run_features};
use pipeline::shards::{Codec, writer_properties};

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// CPU seconds used by this process so far (every thread; `CLOCK_PROCESS_CPUTIME_ID`).
fn cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Runs `pipeline features` on `dataset`: (wall seconds, CPU seconds, summary).
fn run(dataset: &Path, out: &Path, threads: usize) -> anyhow::Result<(f64, f64, Summary)> {
    let args = FeaturesArgs::parse_args([
        "--dataset",
        dataset.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--threads",
        &threads.to_string(),
        "--quiet",
    ])?;
    let (t, c) = (Instant::now(), cpu_seconds());
    let s = run_features(&args)?;
    Ok((t.elapsed().as_secs_f64(), cpu_seconds() - c, s))
}

fn report(threads: usize, secs: f64, cpu: f64, s: &Summary) {
    println!(
        "features, {threads} thread(s): {} files ({} decoded again for their DIR copies) -> {} rows in {secs:.1} s: {:.1} files/s, {:.1} rows/s; {cpu:.1} CPU-s: {:.0} files per CPU-s ({:.2} ms of CPU per file)",
        s.files,
        s.dir_files,
        s.total_rows(),
        s.files as f64 / secs,
        s.total_rows() as f64 / secs,
        s.files as f64 / cpu,
        1e3 * cpu / s.files as f64
    );
}

fn read_batches(dir: &Path, max_rows: usize) -> anyhow::Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    let mut rows = 0;
    for name in pipeline::shards::list_shard_files(dir)? {
        let f = std::fs::File::open(dir.join(name))?;
        for b in ParquetRecordBatchReaderBuilder::try_new(f)?.build()? {
            let b = b?;
            rows += b.num_rows();
            out.push(b);
            if rows >= max_rows {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

fn compression_table(dir: &Path) -> anyhow::Result<()> {
    let first = pipeline::shards::list_shard_files(dir)?;
    let meta = data_specs::read_shard_meta(&dir.join(&first[0]))?;
    let batches = read_batches(dir, 2048)?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    println!("\ncompression of {rows} real demo rows (dcase2024 log-mel), one thread:");
    println!("| codec | BYTE_STREAM_SPLIT | size MB | ratio | write ms | read ms |");
    println!("|---|---|---|---|---|---|");
    let mut base = 0.0;
    for (name, codec) in Codec::candidates() {
        // Best of three (the build machine is shared).
        let (mut write_ms, mut read_ms, mut size) = (f64::MAX, f64::MAX, 0.0);
        for _ in 0..3 {
            let props = writer_properties(&meta, pipeline::shards::DEFAULT_ROW_GROUP_ROWS, codec);
            let t = Instant::now();
            let mut buf = Vec::new();
            let mut w = ArrowWriter::try_new(&mut buf, meta.schema(), Some(props))?;
            for b in &batches {
                w.write(b)?;
            }
            w.close()?;
            write_ms = write_ms.min(t.elapsed().as_secs_f64() * 1e3);
            let bytes = bytes::Bytes::from(buf);
            size = bytes.len() as f64 / 1e6;
            let t = Instant::now();
            let mut n = 0;
            for b in ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()? {
                n += b?.num_rows();
            }
            read_ms = read_ms.min(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(n, rows);
        }
        if base == 0.0 {
            base = size;
        }
        println!(
            "| {name} | {} | {size:.1} | {:.3} | {write_ms:.0} | {read_ms:.0} |",
            if codec.byte_stream_split { "yes" } else { "no" },
            size / base
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let scale: f64 = arg_value(&args, "--scale")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1.0);
    let tmp = tempfile::tempdir()?;
    let dataset: PathBuf = match arg_value(&args, "--dataset") {
        Some(d) => PathBuf::from(d),
        None => {
            let d = tmp.path().join("demo");
            let t = Instant::now();
            let s = pipeline::synth::generate(&pipeline::synth::SynthArgs {
                out: d.clone(),
                seed: 2024,
                scale,
                force: false,
                threads: None,
            })?;
            println!(
                "demo dataset: {} clips (scale {scale}) generated in {:.1} s",
                s.total_clips(),
                t.elapsed().as_secs_f64()
            );
            d
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all_out = tmp.path().join("out-all");
    let (secs, cpu, s) = run(&dataset, &all_out, cores)?;
    report(cores, secs, cpu, &s);
    if !args.iter().any(|a| a == "--compression-only") {
        let one_out = tmp.path().join("out-1");
        let (secs, cpu, s) = run(&dataset, &one_out, 1)?;
        report(1, secs, cpu, &s);
    }
    compression_table(&all_out)
}
