//! Cost of the readers' shard verification ([`data_specs::verify_shards`]) on a shard set:
//! without the sidecar (every byte hashed) and with it (stamps only).
//!
//! `cargo bench -p data-specs --bench verify -- --shards DIR [--repeat N]`
//!
//! The files are read from the page cache when they were read recently (a first run after a
//! reboot also waits for the disk). The sidecar `manifest.verified.json` is removed before
//! each cold repetition and left as the last repetition wrote it.

use std::path::PathBuf;
use std::time::Instant;

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = arg_value(&args, "--shards").map(PathBuf::from) else {
        eprintln!("usage: cargo bench -p data-specs --bench verify -- --shards DIR [--repeat N]");
        return;
    };
    let repeat: usize = arg_value(&args, "--repeat")
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let manifest_file = dir.join(data_specs::MANIFEST_FILE);
    let manifest = data_specs::Manifest::load(&manifest_file).expect("a manifest");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sidecar = dir.join(data_specs::VERIFIED_FILE);
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut bytes = 0;
    for _ in 0..repeat {
        let _ = std::fs::remove_file(&sidecar);
        let t = Instant::now();
        let r = data_specs::verify_shards(&manifest_file, &manifest, threads).expect("verifies");
        cold.push(t.elapsed().as_secs_f64());
        bytes = r.hashed_bytes;
        let t = Instant::now();
        let r = data_specs::verify_shards(&manifest_file, &manifest, threads).expect("verifies");
        warm.push(t.elapsed().as_secs_f64());
        assert_eq!(r.hashed, 0, "the sidecar spares every hash");
    }
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        (lo, hi)
    };
    let (c0, c1) = range(&cold);
    let (w0, w1) = range(&warm);
    println!(
        "{}: {} shards, {:.1} MB, {threads} threads, {repeat} repetitions",
        dir.display(),
        manifest.shards.len(),
        bytes as f64 / 1e6
    );
    println!(
        "  no sidecar (hash every byte): {:.3}-{:.3} s ({:.0}-{:.0} MB/s)",
        c0,
        c1,
        bytes as f64 / 1e6 / c1,
        bytes as f64 / 1e6 / c0
    );
    println!(
        "  with sidecar (stamps only):   {:.2}-{:.2} ms",
        1e3 * w0,
        1e3 * w1
    );
}
