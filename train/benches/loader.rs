//! Throughput and memory of the shard loader.
//!
//! ```text
//! cargo bench -p train --bench loader                 # synthetic demo-sized set in a temp dir
//! cargo bench -p train --bench loader -- data/        # an existing shard set
//! LOADER_BENCH_CLIPS=6000 cargo bench -p train --bench loader
//! LOADER_BENCH_CODEC=zstd cargo bench -p train --bench loader   # zstd-1 + BSS shards
//! ```
//!
//! Builds (or opens) the shard set, then re-runs itself on it in a fresh process so that the
//! peak resident memory (`VmHWM` of `/proc/self/status`) covers the loader only. It iterates
//! three epochs of batch 256 (epoch 0 warms the page cache), converting each batch to burn
//! tensors on the Flex device, and reports batches/s, samples/s and memory against the set's
//! size on disk. A second part times the decode of every row group on one thread, split into
//! Parquet decode (decompression + FixedSizeList decode) and the copy into batch buffers.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use train::loader::synth::{SynthSpec, write_shard_set_with, writer_properties};
use train::loader::{Loader, LoaderConfig, Selection, ShardSet};

fn status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn measure(path: &Path) -> anyhow::Result<()> {
    let t = Instant::now();
    let set = ShardSet::open(path, None)?;
    let open_s = t.elapsed().as_secs_f64();
    let fe = &set.meta().frontend;
    println!(
        "shard set {}: {} rows, {} shards, {} row groups, {:.1} MB on disk, log-mel {}x{}; open {:.3} s",
        path.display(),
        set.n_rows(),
        set.n_shards(),
        set.n_row_groups(),
        mb(set.size_on_disk()),
        fe.n_mels,
        fe.n_frames(),
        open_s
    );
    let cfg = LoaderConfig {
        batch_size: 256,
        seed: 42,
        ..LoaderConfig::default()
    };
    let loader = Loader::new(&set, Selection::train(None), cfg)?;
    let device = Device::flex();
    println!(
        "selection: train, all splits, p_dir 0.6, replay on: {} rows/epoch, {} batches of 256",
        loader.epoch_len(),
        loader.batches_per_epoch()
    );
    for epoch in 0..3 {
        let t = Instant::now();
        let (mut batches, mut samples, mut checksum) = (0u64, 0u64, 0f64);
        for b in loader.epoch(epoch) {
            let b = b?;
            samples += b.len() as u64;
            let tb = b.into_tensors(&device);
            checksum += tb.teacher_mask.sum().into_scalar::<f32>() as f64;
            batches += 1;
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "epoch {epoch}{}: {batches} batches in {s:.2} s = {:.1} batches/s, {:.0} samples/s \
             (teacher rows {checksum})",
            if epoch == 0 {
                " (page cache warm-up)"
            } else {
                ""
            },
            batches as f64 / s,
            samples as f64 / s,
        );
    }
    // Host batches only (no tensor conversion), for comparison.
    let t = Instant::now();
    let mut samples = 0;
    for b in loader.epoch(3) {
        samples += b?.len();
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "epoch 3 without tensor conversion: {:.0} samples/s",
        samples as f64 / s
    );
    let hwm = status_kb("VmHWM:") * 1024;
    println!(
        "peak resident memory (VmHWM) {:.1} MB = {:.1}% of the set's {:.1} MB on disk \
         (now: anon {:.1} MB, file-backed {:.1} MB)",
        mb(hwm),
        100.0 * hwm as f64 / set.size_on_disk() as f64,
        mb(set.size_on_disk()),
        mb(status_kb("RssAnon:") * 1024),
        mb(status_kb("RssFile:") * 1024),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--measure") {
        return measure(Path::new(&args[1]));
    }
    let (_tmp, path): (Option<tempfile::TempDir>, PathBuf) = match args.first() {
        Some(p) => (None, PathBuf::from(p)),
        None => {
            let n_clips: usize = std::env::var("LOADER_BENCH_CLIPS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(6000);
            let tmp = tempfile::tempdir()?;
            let spec = SynthSpec {
                frontend: data_specs::FrontEndConfig::dcase2024(),
                n_clips,
                n_shards: 4,
                row_group_rows: 512,
                dir_per_clip: 3,
                replay_every: 6,
                test_every: 5,
                missing_teacher_every: 7,
            };
            let t = Instant::now();
            let zstd = std::env::var("LOADER_BENCH_CODEC").as_deref() == Ok("zstd");
            write_shard_set_with(tmp.path(), &spec, writer_properties(512, zstd))?;
            println!(
                "wrote a synthetic shard set of {n_clips} clips (dcase2024 256x65, {}, \
                 row groups of 512) in {:.1} s",
                if zstd { "zstd-1 + BSS" } else { "uncompressed" },
                t.elapsed().as_secs_f64()
            );
            let p = tmp.path().to_path_buf();
            (Some(tmp), p)
        }
    };
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("--measure")
        .arg(&path)
        .status()?;
    anyhow::ensure!(status.success(), "measurement failed");
    Ok(())
}
