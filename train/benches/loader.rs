//! Throughput and memory of the shard loader.
//!
//! ```text
//! cargo bench -p train --bench loader                 # synthetic demo-sized set in a temp dir
//! cargo bench -p train --bench loader -- data/        # an existing shard set
//! LOADER_BENCH_CLIPS=6000 cargo bench -p train --bench loader
//! LOADER_BENCH_CODEC=zstd cargo bench -p train --bench loader   # zstd-1 + BSS shards
//! LOADER_BENCH_LOGMEL=float16 cargo bench -p train --bench loader   # float16 log-mel column
//! ```
//!
//! Builds (or opens) the shard set, then re-runs itself on it in a fresh process so that the
//! peak resident memory (`VmHWM` of `/proc/self/status`) covers the loader only. After one
//! epoch that warms the page cache, it iterates epochs of batch 256 back to back for at least
//! 3 s (as the trainer does, with the next epoch prefetched), moving each batch into burn
//! tensors on the Flex device, then as many epochs of host batches only, and reports
//! batches/s, samples/s and memory against the set's size on disk.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use train::loader::synth::{SynthSpec, write_shard_set_typed, writer_properties_typed};
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
        "shard set {}: {} rows, {} shards, {} row groups, {:.1} MB on disk, log-mel {}x{} {}; open {:.3} s",
        path.display(),
        set.n_rows(),
        set.n_shards(),
        set.n_row_groups(),
        mb(set.size_on_disk()),
        fe.n_mels,
        fe.n_frames(),
        set.meta().logmel_type,
        open_s
    );
    let cfg = LoaderConfig {
        batch_size: 256,
        seed: 42,
        prefetch_next_epoch: true, // as the trainer
        ..LoaderConfig::default()
    };
    let loader = Loader::new(&set, Selection::train(None), cfg)?;
    let device = Device::flex();
    println!(
        "selection: train, all splits, p_dir 0.6, replay on: {} rows/epoch, {} batches of 256",
        loader.epoch_len(),
        loader.batches_per_epoch()
    );
    // Epoch 0 warms the page cache; then epochs back to back (as the trainer iterates them)
    // until at least 3 s and 3 epochs have passed.
    let run = |convert: bool, first_epoch: u64| -> anyhow::Result<(u64, u64, f64, u64)> {
        let t = Instant::now();
        let (mut epochs, mut batches, mut samples, mut checksum) = (0u64, 0u64, 0u64, 0u64);
        while epochs < 3 || t.elapsed().as_secs_f64() < 3.0 {
            for b in loader.epoch(first_epoch + epochs) {
                let b = b?;
                samples += b.len() as u64;
                batches += 1;
                if convert {
                    let tb = b.into_tensors(&device);
                    checksum += tb.teacher_mask.sum().into_scalar::<f32>() as u64;
                }
            }
            epochs += 1;
            if first_epoch == 0 {
                break;
            }
        }
        if convert {
            // Rows with teacher logits, summed from the tensors (keeps the conversion alive).
            println!("  ({checksum} rows with teacher logits)");
        }
        Ok((epochs, batches, t.elapsed().as_secs_f64(), samples))
    };
    let (_, b0, s0, n0) = run(true, 0)?;
    println!(
        "epoch 0 (page cache warm-up): {b0} batches in {s0:.2} s = {:.0} samples/s",
        n0 as f64 / s0
    );
    let (e, b, s, n) = run(true, 1)?;
    println!(
        "epochs 1-{e}, into burn tensors: {b} batches in {s:.2} s = {:.1} batches/s, {:.0} samples/s",
        b as f64 / s,
        n as f64 / s
    );
    let (e2, _, s2, n2) = run(false, 1 + e)?;
    println!(
        "epochs {}-{}, host batches only: {:.0} samples/s",
        1 + e,
        e + e2,
        n2 as f64 / s2
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
            let logmel_type: data_specs::LogmelType = std::env::var("LOADER_BENCH_LOGMEL")
                .unwrap_or_else(|_| "float32".into())
                .parse()
                .map_err(anyhow::Error::msg)?;
            write_shard_set_typed(
                tmp.path(),
                &spec,
                writer_properties_typed(512, zstd, logmel_type),
                logmel_type,
            )?;
            println!(
                "wrote a synthetic shard set of {n_clips} clips (dcase2024 256x65 {logmel_type}, {}, \
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
