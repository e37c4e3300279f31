//! `pipeline features`: the orchestration of the stages, dataset -> Parquet shards.
//!
//! 1. [ingest](crate::ingest): `meta.csv` and the lists -> rows with set and split.
//! 2. Decode, [resample](crate::resample) to 32 kHz, cut into 1 s clips.
//! 3. Energy ([`data_specs::clip_energy`]) and the DIR threshold: `--energy-threshold`, or the
//!    mean clip energy over **all** training clips (every device, not only `a`: the paper's
//!    "average energy of the training set"), computed in a first pass over the whole training
//!    set (not only this partition, so that every partition gates alike) and cached in
//!    `<out>/energy-threshold.json` (keyed by a hash of the training list).
//! 4. DIR variants: for device-`a` training clips with energy > threshold, `--dir-variants K`
//!    copies, each convolved with an impulse response drawn by
//!    [`choose_irs`](crate::dir::choose_irs). K = 4 by default: the trainer replaces a device-`a`
//!    clip by a DIR copy with p_DIR = 0.6, so with K = 4 a clip seen for 150 epochs meets each of
//!    its copies about 22 times instead of 90 (K = 1), which keeps most of the diversity of
//!    drawing a fresh IR out of 66 per epoch at 5x the storage of the originals of device `a`
//!    rather than 66x.
//! 5. Replay: `--replay-dir` (real re-recordings, aligned, variant `replay`) or `--replay-sim`
//!    (simulated chain, variant `replay-sim`). Off by default: the demo stays small; the paper
//!    replays all training audio, so pass one of them to reproduce it.
//! 6. Teacher logits ([`TeacherLogits`]) joined by clip id; every variant carries its clip's
//!    logits; missing logits are null.
//! 7. Log-mel ([`LogMel`]).
//! 8. Shards ([`crate::shards`]): the rows of `--files-per-shard` consecutive files of this
//!    partition go to one shard, processed in chunks (memory bounded), rayon-parallel over the
//!    files of a chunk, with deterministic output; complete shards are skipped on re-runs, and
//!    the manifest is rewritten from every complete shard of the folder at the end.
//!
//! Partitions: `--partition i/n` keeps the rows whose 10 s segment id hashes (FNV-1a 64) to
//! `i` modulo `n`, so the ten seconds and the parallel device recordings of a segment stay in
//! one partition. The union of the shards of `0/n .. n-1/n` holds exactly the rows of a `0/1`
//! run (in other shard files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use data_specs::hash::fnv1a64;
use data_specs::{
    ClipRecord, ClipSet, DirSet, FrontEndConfig, FrontEndPreset, Manifest, ShardEntry, ShardMeta,
    Variant, clip_energy, records_to_batch,
};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ingest::{
    Clips, Dataset, IngestError, IngestOptions, MetaRow, OnError, Skipped, clip_id, cut_clips,
    decode_wav,
};
use crate::logmel::LogMel;
use crate::shards::{self, ShardWriter};
use crate::teachers::TeacherLogits;

/// Arguments of `pipeline features`.
///
/// Example: `pipeline features --dataset TAU-urban-acoustic-scenes-2022-mobile-development
/// --out data --teacher-logits ensemble_logits.npy --replay-sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct FeaturesArgs {
    /// Dataset folder in the TAU22 layout: audio/*.wav, meta.csv (TAB-separated), and
    /// optionally evaluation_setup/fold1_{train,evaluate,test}.csv, split{5,10,25,50,100}.csv
    /// and test.csv (in the root, split_setup/ or evaluation_setup/).
    #[arg(long, value_name = "DIR")]
    pub dataset: PathBuf,

    /// Output folder of the shards (shard-p<i>of<n>-<k>.parquet, manifest.json, skipped.tsv).
    #[arg(long, value_name = "DIR", default_value = "data")]
    pub out: PathBuf,

    /// Extra folder to look for split{5,10,25,50,100}.csv and test.csv in (searched before the
    /// dataset root, split_setup/ and evaluation_setup/).
    #[arg(long, value_name = "DIR")]
    pub splits: Option<PathBuf>,

    /// Log-mel front end: dcase2024 (the official baseline's torchaudio MelSpectrogram, 256 x 65,
    /// log(x + 1e-5)) or cpjku (pre-emphasis, Kaldi mel banks, (log(x + 1e-5) + 4.5) / 5).
    #[arg(long, value_name = "PRESET", default_value = "dcase2024")]
    pub frontend: FrontEndPreset,

    /// DIR energy threshold (sum of squared 32 kHz samples of a 1 s clip; the paper's p_thd is
    /// 323). Default: the mean clip energy of all training clips, computed in a first pass.
    #[arg(long, value_name = "X", value_parser = crate::cli::finite_f32)]
    pub energy_threshold: Option<f32>,

    /// DIR copies per eligible clip (device-a training clips with energy above the threshold).
    /// 0 disables DIR variants. Four copies let the trainer draw a DIR with p_DIR = 0.6 without
    /// replaying the same one every time.
    #[arg(long, value_name = "K", default_value_t = 4)]
    pub dir_variants: usize,

    /// Folder of device impulse responses (WAV files). Default: the 66 MicIRP responses shipped
    /// in pipeline/dirs/micirp.
    #[arg(long, value_name = "DIR")]
    pub dirs: Option<PathBuf>,

    /// Folder of real re-recordings (replays), with the same relative file names as the
    /// dataset (e.g. audio/x.wav). Each is aligned to its original and cut like it (variant
    /// `replay`). Files without a replay get none.
    #[arg(long, value_name = "DIR")]
    pub replay_dir: Option<PathBuf>,

    /// Add a simulated replay (loudspeaker + room + microphone chain) of every training clip
    /// (variant `replay-sim`). Off by default to keep the demo small; ignored with --replay-dir.
    #[arg(long)]
    pub replay_sim: bool,

    /// Largest lag searched when aligning a replay to its original, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 200.0, value_parser = crate::cli::finite_f32)]
    pub replay_max_lag_ms: f32,

    /// Teacher logits to join: a .npy float32 [rows of meta.csv, n_classes] (CP-JKU's format,
    /// indexed by meta.csv row) or a Parquet table with `clip_id` (or `filename`) and `logits`
    /// (FixedSizeList or List of Float32). Clips without logits get null.
    #[arg(long, value_name = "FILE")]
    pub teacher_logits: Option<PathBuf>,

    /// Process only partition i of n (e.g. 3/8): a deterministic share of the 10 s segments, so
    /// that n machines can share the work; their shards combine into one set.
    #[arg(long, value_name = "I/N", default_value = "0/1", value_parser = parse_partition)]
    pub partition: (u32, u32),

    /// Source files per shard (a 1 s file gives 1 original row plus its variants).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub files_per_shard: usize,

    /// Rows per Parquet row group (the unit the training loader reads and shuffles).
    #[arg(long, value_name = "N", default_value_t = shards::DEFAULT_ROW_GROUP_ROWS)]
    pub row_group_rows: usize,

    /// Shard compression: uncompressed (fastest for the training loader) or zstd (zstd-1 with
    /// BYTE_STREAM_SPLIT floats, 22 % smaller).
    #[arg(long, value_enum, default_value = "uncompressed")]
    pub compression: shards::ShardCompression,

    /// Files decoded and featurized in parallel per step (bounds memory: a step holds the
    /// waveforms and log-mels of this many files).
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub chunk_files: usize,

    /// Seed of the DIR choice and of the simulated replays.
    #[arg(long, default_value_t = 2024)]
    pub seed: u64,

    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N", value_parser = crate::cli::positive_usize)]
    pub threads: Option<usize>,

    /// What to do with a bad input file (missing, truncated, not a WAV, unknown list entry):
    /// fail with an error naming it, or skip it and list it in <out>/skipped.tsv.
    #[arg(long, value_enum, default_value = "fail")]
    pub on_error: OnError,

    /// The scene label vocabulary in index order, comma-separated (e.g. for a dataset with other
    /// scenes than TAU22's). Default: the ten TAU22 scenes when most clips carry TAU22 labels,
    /// else the labels of the training clips. A label outside the vocabulary is an error.
    #[arg(long, value_name = "A,B,...", value_delimiter = ',')]
    pub labels: Option<Vec<String>>,

    /// Test and unused clips may have no scene label (an evaluation set); training clips
    /// always need one.
    #[arg(long)]
    pub allow_unlabelled: bool,

    /// Leave out clips that are in neither the training nor the test list.
    #[arg(long)]
    pub skip_unused: bool,

    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,

    /// Testing aid: stop after writing this many shards, as if the run were interrupted.
    #[arg(long, hide = true)]
    pub stop_after_shards: Option<usize>,

    /// Testing aid: sleep this many milliseconds after taking the run lock (concurrency tests).
    #[arg(long, hide = true)]
    pub pause_after_lock_ms: Option<u64>,
}

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    args: FeaturesArgs,
}

impl FeaturesArgs {
    /// Parses arguments as on the command line (without the program and subcommand names).
    pub fn parse_args<I, S>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        let all = std::iter::once(std::ffi::OsString::from("features"))
            .chain(args.into_iter().map(Into::into));
        Wrapper::try_parse_from(all).map(|w| w.args)
    }
}

/// Parses `i/n` with `i < n`.
pub fn parse_partition(s: &str) -> Result<(u32, u32), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("'{s}' is not of the form i/n (e.g. 0/4)"))?;
    let i: u32 = i
        .trim()
        .parse()
        .map_err(|_| format!("'{i}' is not a number"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("'{n}' is not a number"))?;
    if n == 0 || i >= n {
        return Err(format!("partition {i}/{n}: need 0 <= i < n"));
    }
    Ok((i, n))
}

/// Partition of a row: FNV-1a 64 ([`fnv1a64`], a stable hash) of its 10 s segment id
/// modulo `n`.
pub fn partition_of(row: &MetaRow, n: u32) -> u32 {
    (fnv1a64(row.segment_id.as_bytes()) % n as u64) as u32
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Rows written by this run, by (set, device, variant).
    pub rows: BTreeMap<(String, String, String), u64>,
    /// DIR energy threshold used.
    pub energy_threshold: f32,
    /// Where the threshold came from.
    pub threshold_source: String,
    /// Shards written by this run.
    pub shards_written: usize,
    /// Shards found complete and kept.
    pub shards_kept: usize,
    /// Shards of this partition.
    pub shards_total: usize,
    /// Source files processed by this run.
    pub files: usize,
    /// Files left out (with `--on-error skip`).
    pub skipped: Vec<Skipped>,
    /// Files skipped by the previous run that this run tried again.
    pub retried: usize,
    /// The manifest after the run (`None` when the run was stopped early).
    pub manifest: Option<Manifest>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl Summary {
    /// Total rows written by this run.
    pub fn total_rows(&self) -> u64 {
        self.rows.values().sum()
    }

    fn print(&self, out: &Path) {
        let by = |idx: usize| {
            let mut m: BTreeMap<&str, u64> = BTreeMap::new();
            for (k, v) in &self.rows {
                let key = match idx {
                    0 => k.0.as_str(),
                    1 => k.1.as_str(),
                    _ => k.2.as_str(),
                };
                *m.entry(key).or_default() += v;
            }
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (sets, devices, variants) = (by(0), by(1), by(2));
        println!("features -> {}", out.display());
        println!(
            "  shards: {} written, {} already complete, {} in this partition",
            self.shards_written, self.shards_kept, self.shards_total
        );
        println!(
            "  rows written: {} from {} files ({:.1} files/s, {:.1} s)",
            self.total_rows(),
            self.files,
            self.files as f64 / self.seconds.max(1e-9),
            self.seconds
        );
        if self.retried > 0 {
            println!(
                "  retried {} files the previous run skipped (listed in its skip report)",
                self.retried
            );
        }
        println!("  by set: {sets}");
        println!("  by device: {devices}");
        println!("  by variant: {variants}");
        println!(
            "  DIR energy threshold: {} ({})",
            self.energy_threshold, self.threshold_source
        );
        if let Some(m) = &self.manifest {
            println!(
                "  manifest: {} shards, {} rows in total",
                m.shards.len(),
                m.total_rows()
            );
        }
        if !self.skipped.is_empty() {
            println!("  skipped {} inputs (see skipped.tsv):", self.skipped.len());
            for s in self.skipped.iter().take(10) {
                println!("    {}: {}", s.file, s.reason);
            }
        }
    }
}

/// Runs `pipeline features` and prints the summary on stdout.
pub fn run(args: &FeaturesArgs) -> anyhow::Result<()> {
    let summary = run_features(args)?;
    summary.print(&args.out);
    Ok(())
}

/// Everything a worker needs to turn a row into records.
struct Ctx<'a> {
    ds: &'a Dataset,
    cfg: FrontEndConfig,
    logmel: LogMel,
    irs: Vec<crate::dir::ImpulseResponse>,
    dir_k: usize,
    seed: u64,
    threshold: f32,
    replay_dir: Option<PathBuf>,
    replay_sim: bool,
    max_lag: usize,
    teacher: Option<TeacherLogits>,
}

fn progress(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} clips ({{per_sec}}, ETA {{eta}}) {{msg}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb
}

/// Decodes a file, resamples it to the front end's rate and cuts it into 1 s clips.
fn load_clips(path: &Path, cfg: &FrontEndConfig) -> Result<(Vec<f32>, Clips), IngestError> {
    let audio = decode_wav(path)?;
    let wave = if audio.sample_rate == cfg.sample_rate {
        audio.samples
    } else {
        crate::resample::resample(&audio.samples, audio.sample_rate, cfg.sample_rate).map_err(
            |e| IngestError::BadWav {
                path: path.display().to_string(),
                problem: e.to_string(),
            },
        )?
    };
    let clips = cut_clips(&wave, cfg.clip_samples);
    if clips.is_empty() {
        return Err(IngestError::BadWav {
            path: path.display().to_string(),
            problem: format!(
                "too short: {:.3} s (a clip needs at least 0.5 s)",
                wave.len() as f64 / cfg.sample_rate as f64
            ),
        });
    }
    Ok((wave, clips))
}

impl Ctx<'_> {
    fn record(
        &self,
        row: &MetaRow,
        id: &str,
        segment_index: i32,
        variant: Variant,
        source: Option<String>,
        wave: &[f32],
    ) -> ClipRecord {
        let ds = self.ds;
        let label = row
            .scene_label
            .as_deref()
            .and_then(|l| ds.labels.index_of(l))
            .map(|i| i as i32);
        ClipRecord {
            clip_id: id.to_string(),
            source_file: row.filename.clone(),
            scene_label: row.scene_label.clone(),
            label,
            device: row.device.clone(),
            device_id: ds.devices.index_of(&row.device).map_or(-1, |i| i as i32),
            city: row.city.clone(),
            identifier: row.identifier.clone(),
            segment_id: row.segment_id.clone(),
            segment_index,
            set: ds.sets[row.row],
            split: ds.splits[row.row],
            variant,
            variant_source: source,
            energy: clip_energy(wave),
            teacher_logits: self
                .teacher
                .as_ref()
                .and_then(|t| t.get(id))
                .map(<[f32]>::to_vec),
            logmel: self.logmel.compute(wave),
        }
    }

    /// All records of one source file, in a deterministic order: per clip, the original, its DIR
    /// copies, its replay.
    fn process_row(&self, r: usize) -> Result<Vec<ClipRecord>, IngestError> {
        let row = &self.ds.rows[r];
        let (wave, clips) = load_clips(&self.ds.audio_path(r), &self.cfg)?;
        let is_train = self.ds.sets[r] == ClipSet::Train;
        // Real replay: align the whole recording, then cut it like the original.
        let replay: Option<(String, Clips)> = match &self.replay_dir {
            Some(dir) => {
                let path = dir.join(&row.filename);
                if path.is_file() {
                    let audio = decode_wav(&path)?;
                    let rec = if audio.sample_rate == self.cfg.sample_rate {
                        audio.samples
                    } else {
                        crate::resample::resample(
                            &audio.samples,
                            audio.sample_rate,
                            self.cfg.sample_rate,
                        )
                        .map_err(|e| IngestError::BadWav {
                            path: path.display().to_string(),
                            problem: e.to_string(),
                        })?
                    };
                    let (_lag, mut aligned) =
                        crate::replay::align_replay(&wave, &rec, self.max_lag);
                    aligned.resize(wave.len(), 0.0);
                    Some((
                        path.display().to_string(),
                        cut_clips(&aligned, self.cfg.clip_samples),
                    ))
                } else {
                    None
                }
            }
            None => None,
        };
        let mut out = Vec::new();
        for (ci, (k, clip)) in clips.iter().enumerate() {
            let id = clip_id(row.stem(), *k);
            let seg_index = match k {
                Some(k) if row.segment_index == 0 => *k as i32,
                _ => row.segment_index,
            };
            let original = self.record(row, &id, seg_index, Variant::Original, None, clip);
            let eligible = is_train
                && row.device == data_specs::REFERENCE_DEVICE
                && original.energy > self.threshold
                && self.dir_k > 0
                && !self.irs.is_empty();
            out.push(original);
            if eligible {
                let chosen = crate::dir::choose_irs(&id, self.seed, self.irs.len(), self.dir_k);
                for i in chosen {
                    let ir = &self.irs[i];
                    let mut conv = crate::dir::convolve_causal(clip, &ir.samples);
                    conv.resize(clip.len(), 0.0);
                    out.push(self.record(
                        row,
                        &id,
                        seg_index,
                        Variant::Dir,
                        Some(ir.name.clone()),
                        &conv,
                    ));
                }
            }
            if let Some((src, rclips)) = &replay {
                if let Some((_, rc)) = rclips.get(ci) {
                    out.push(self.record(
                        row,
                        &id,
                        seg_index,
                        Variant::Replay,
                        Some(src.clone()),
                        rc,
                    ));
                }
            } else if self.replay_sim && is_train {
                let seed = self.seed ^ fnv1a64(id.as_bytes());
                let mut sim = crate::replay::simulate_replay(clip, self.cfg.sample_rate, seed);
                sim.resize(clip.len(), 0.0);
                out.push(self.record(
                    row,
                    &id,
                    seg_index,
                    Variant::ReplaySim,
                    Some("simulated".into()),
                    &sim,
                ));
            }
        }
        Ok(out)
    }
}

/// The cached threshold of a shard folder.
#[derive(Debug, Serialize, Deserialize)]
struct ThresholdCache {
    fingerprint: String,
    training_clips: u64,
    threshold: f32,
}

/// Result of the energy pass: `(mean, clips)` when any clip was read, and the failed rows.
type EnergyPass = (Option<(f64, u64)>, Vec<(usize, IngestError)>);

/// Mean clip energy over every 1 s clip of the training files (row order, f64 sum), with the
/// files that failed.
fn mean_training_energy(
    ds: &Dataset,
    cfg: &FrontEndConfig,
    chunk: usize,
    quiet: bool,
) -> EnergyPass {
    let train: Vec<usize> = ds
        .usable
        .iter()
        .copied()
        .filter(|&r| ds.sets[r] == ClipSet::Train)
        .collect();
    let pb = progress(train.len() as u64, "energy pass", quiet);
    let mut sum = 0f64;
    let mut count = 0u64;
    let mut errors = Vec::new();
    for c in train.chunks(chunk.max(1)) {
        let res: Vec<Result<Vec<f32>, IngestError>> = c
            .par_iter()
            .map(|&r| {
                load_clips(&ds.audio_path(r), cfg)
                    .map(|(_, clips)| clips.iter().map(|(_, c)| clip_energy(c)).collect())
            })
            .collect();
        for (&r, e) in c.iter().zip(res) {
            match e {
                Ok(es) => {
                    for e in es {
                        sum += e as f64;
                        count += 1;
                    }
                }
                Err(err) => errors.push((r, err)),
            }
        }
        pb.inc(c.len() as u64);
    }
    pb.finish_and_clear();
    ((count > 0).then_some((sum / count as f64, count)), errors)
}

/// Runs the pipeline and returns what it did (the library entry point of `pipeline features`).
pub fn run_features(args: &FeaturesArgs) -> anyhow::Result<Summary> {
    let pool = {
        let mut b = rayon::ThreadPoolBuilder::new();
        if let Some(t) = args.threads {
            b = b.num_threads(t.max(1));
        }
        b.build().context("cannot start the worker threads")?
    };
    pool.install(|| run_in_pool(args))
}

fn run_in_pool(args: &FeaturesArgs) -> anyhow::Result<Summary> {
    let start = Instant::now();
    let (part_i, part_n) = args.partition;
    if args.files_per_shard == 0 || args.row_group_rows == 0 || args.chunk_files == 0 {
        bail!("--files-per-shard, --row-group-rows and --chunk-files must be at least 1");
    }
    let ds = Dataset::load(
        &args.dataset,
        &IngestOptions {
            splits_dir: args.splits.clone(),
            on_error: args.on_error,
            labels: args.labels.clone(),
            allow_unlabelled: args.allow_unlabelled,
        },
    )?;
    let mut skipped = ds.skipped.clone();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create the output folder", args.out.display()))?;
    // One lock for the whole run (of this partition): see crate::lock.
    let _run_lock = crate::lock::lock_features_run(&args.out, part_i, part_n)?;
    if let Some(ms) = args.pause_after_lock_ms {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }

    // Shards of another partitioning in the folder would duplicate rows.
    for name in shards::list_shard_files(&args.out)? {
        if let Some((_, n, _)) = shards::parse_shard_name(&name)
            && n != part_n
        {
            bail!(
                "{}: holds shards of a {n}-way partitioning ({name}); this run uses {part_n} partitions. Use another --out folder or the same partition count",
                args.out.display()
            );
        }
    }

    let cfg = FrontEndConfig::from_preset(args.frontend);
    let logmel = LogMel::new(&cfg);

    // DIRs.
    let (irs, dir_set) = if args.dir_variants > 0 {
        let folder = args
            .dirs
            .clone()
            .unwrap_or_else(crate::dir::default_dir_folder);
        let irs = crate::dir::load_dir_set(&folder, cfg.sample_rate)
            .with_context(|| format!("{}: cannot load the DIR set", folder.display()))?;
        if irs.is_empty() {
            bail!(
                "{}: no impulse responses (WAV files) found",
                folder.display()
            );
        }
        let set = DirSet {
            name: folder
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            irs: irs.iter().map(|ir| ir.name.clone()).collect(),
        };
        (irs, set)
    } else {
        (Vec::new(), DirSet::default())
    };

    // Teacher logits.
    let teacher = match &args.teacher_logits {
        Some(p) => Some(TeacherLogits::load(p, &ds.rows, ds.labels.len())?),
        None => None,
    };

    // Energy threshold.
    let (threshold, threshold_source) = match args.energy_threshold {
        Some(x) => (x, "--energy-threshold".to_string()),
        None => {
            let mut h = Sha256::new();
            for &r in &ds.usable {
                if ds.sets[r] == ClipSet::Train {
                    h.update(ds.rows[r].filename.as_bytes());
                    h.update(b"\n");
                }
            }
            h.update(serde_json::to_string(&cfg)?.as_bytes());
            let fingerprint: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            let cache_path = args.out.join("energy-threshold.json");
            let cached = std::fs::read_to_string(&cache_path)
                .ok()
                .and_then(|t| serde_json::from_str::<ThresholdCache>(&t).ok())
                .filter(|c| c.fingerprint == fingerprint);
            match cached {
                Some(c) => (
                    c.threshold,
                    format!(
                        "mean over {} training clips, cached in {}",
                        c.training_clips,
                        cache_path.display()
                    ),
                ),
                None => {
                    let (mean, errors) =
                        mean_training_energy(&ds, &cfg, args.chunk_files, args.quiet);
                    for (r, e) in errors {
                        if args.on_error == OnError::Fail {
                            return Err(e.into());
                        }
                        skipped.push(Skipped {
                            file: ds.audio_path(r).display().to_string(),
                            reason: e.to_string(),
                        });
                    }
                    let Some((mean, n)) = mean else {
                        bail!(
                            "{}: no training clips to compute the DIR energy threshold from (no fold1_train.csv or split*.csv found?); pass --energy-threshold",
                            args.dataset.display()
                        );
                    };
                    let c = ThresholdCache {
                        fingerprint,
                        training_clips: n,
                        threshold: mean as f32,
                    };
                    let tmp = shards::tmp_path(&cache_path);
                    std::fs::write(&tmp, serde_json::to_string_pretty(&c)?)
                        .and_then(|_| std::fs::rename(&tmp, &cache_path))
                        .with_context(|| format!("{}: cannot write", cache_path.display()))?;
                    (c.threshold, format!("mean over {n} training clips"))
                }
            }
        }
    };

    let mut meta = ShardMeta::new(cfg.clone(), ds.labels.clone(), ds.devices.clone());
    meta.energy_threshold = threshold;
    meta.dir_set = dir_set;
    meta.teacher = teacher
        .as_ref()
        .map(|t| t.description().to_string())
        .unwrap_or_default();
    meta.dataset = ds.name.clone();

    let ctx = Ctx {
        ds: &ds,
        cfg: cfg.clone(),
        logmel,
        irs,
        dir_k: args.dir_variants,
        seed: args.seed,
        threshold,
        replay_dir: args.replay_dir.clone(),
        replay_sim: args.replay_sim,
        max_lag: (args.replay_max_lag_ms.max(0.0) * cfg.sample_rate as f32 / 1000.0) as usize,
        teacher,
    };

    // This partition's rows, cut into shards in a seeded pseudo-random order (a stable hash of
    // the seed and the file name): meta.csv is sorted by scene, and shards or row groups holding
    // one scene each would leave the loader's row-group-windowed shuffle with label-poor
    // batches. The order is deterministic, so partitions and resumed runs stay reproducible.
    let mut plan: Vec<usize> = ds
        .usable
        .iter()
        .copied()
        .filter(|&r| partition_of(&ds.rows[r], part_n) == part_i)
        .filter(|&r| !(args.skip_unused && ds.sets[r] == ClipSet::Unused))
        .collect();
    plan.sort_by_key(|&r| {
        (
            fnv1a64(format!("{}:{}", args.seed, ds.rows[r].filename).as_bytes()),
            r,
        )
    });
    let shard_rows: Vec<&[usize]> = plan.chunks(args.files_per_shard).collect();
    let old_manifest = Manifest::load(&args.out).ok();

    let mut summary = Summary {
        energy_threshold: threshold,
        threshold_source,
        shards_total: shard_rows.len(),
        ..Summary::default()
    };
    // Files the previous run skipped are retried: their shards are rewritten (crate::skips).
    let report = crate::skips::report_path(&args.out, part_i, part_n);
    let previous = crate::skips::PreviousSkips::read(&report)?;
    let mut retried: std::collections::HashSet<String> = std::collections::HashSet::new();
    let pb = progress(plan.len() as u64, "features", args.quiet);
    let mut fresh: Vec<ShardEntry> = Vec::new();
    let mut stopped = false;
    for (k, rows) in shard_rows.iter().enumerate() {
        let path = args.out.join(shards::shard_name(part_i, part_n, k));
        // A complete shard is kept unless it holds a file the previous run skipped (retried) or
        // was written with another --compression.
        let audio: Vec<String> = rows
            .iter()
            .map(|&r| ds.audio_path(r).display().to_string())
            .collect();
        let retry = audio.iter().any(|f| previous.lists(f));
        if !retry
            && let Some(entry) = shards::shard_is_complete(&path, old_manifest.as_ref(), &meta)?
            && shards::shard_codec(&path)? == Some(args.compression.codec())
        {
            fresh.push(entry);
            summary.shards_kept += 1;
            pb.inc(rows.len() as u64);
            continue;
        }
        if args.stop_after_shards == Some(summary.shards_written) {
            stopped = true;
            break;
        }
        retried.extend(audio);
        let mut writer = ShardWriter::create(
            &path,
            &meta,
            args.row_group_rows,
            args.compression.codec(),
            [part_i, part_n],
        )?;
        for chunk in rows.chunks(args.chunk_files) {
            let results: Vec<Result<Vec<ClipRecord>, IngestError>> =
                chunk.par_iter().map(|&r| ctx.process_row(r)).collect();
            let mut records = Vec::new();
            for (&r, res) in chunk.iter().zip(results) {
                match res {
                    Ok(recs) => records.extend(recs),
                    Err(e) if args.on_error == OnError::Skip => skipped.push(Skipped {
                        file: ds.audio_path(r).display().to_string(),
                        reason: e.to_string(),
                    }),
                    Err(e) => return Err(e.into()),
                }
            }
            for rec in &records {
                *summary
                    .rows
                    .entry((
                        rec.set.as_str().to_string(),
                        rec.device.clone(),
                        rec.variant.as_str().to_string(),
                    ))
                    .or_default() += 1;
            }
            let batch = records_to_batch(&meta, &records)?;
            writer.write(&batch)?;
            summary.files += chunk.len();
            pb.inc(chunk.len() as u64);
            pb.set_message(format!("shard {}/{}", k + 1, shard_rows.len()));
        }
        fresh.push(writer.finish()?);
        summary.shards_written += 1;
    }
    pb.finish_and_clear();

    // Skip report: this run's entries, plus the previous ones of files not retried (deduplicated:
    // the energy pass and the shard pass may meet the same file).
    let in_plan: std::collections::HashSet<String> = plan
        .iter()
        .map(|&r| ds.audio_path(r).display().to_string())
        .collect();
    summary.retried = previous.still_pending(|f| retried.contains(f)).len();
    skipped.extend(previous.still_pending(|f| in_plan.contains(f) && !retried.contains(f)));
    crate::skips::write_report(&report, &mut skipped)?;
    summary.skipped = skipped;

    if !stopped {
        summary.manifest = Some(shards::rewrite_manifest(&args.out, &fresh, &meta)?);
    }
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_parse() {
        // (FNV-1a itself is tested against its reference values in data_specs::hash.)
        assert_eq!(parse_partition("1/4"), Ok((1, 4)));
        assert!(parse_partition("4/4").is_err());
        assert!(parse_partition("x").is_err());
    }

    #[test]
    fn args_parse_with_defaults() {
        let a = FeaturesArgs::parse_args(["--dataset", "x"]).unwrap();
        assert_eq!(a.out, PathBuf::from("data"));
        assert_eq!(a.dir_variants, 4);
        assert_eq!(a.partition, (0, 1));
        assert!(!a.replay_sim);
        let b = FeaturesArgs::parse_args(["--dataset", "x", "--partition", "2/3"]).unwrap();
        assert_eq!(b.partition, (2, 3));
    }
}
