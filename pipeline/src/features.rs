//! `pipeline features`: the orchestration of the stages, dataset -> Parquet shards.
//!
//! 1. [ingest](crate::ingest): `meta.csv` and the lists -> rows with set and split.
//! 2. Decode, [resample](crate::resample) to 32 kHz, cut into 1 s clips.
//! 3. Energy ([`data_specs::clip_energy`]) and the DIR threshold: `--energy-threshold`, or the
//!    mean clip energy over **all** training clips (every device, not only `a`: the paper's
//!    "average energy of the training set"), over the whole training set (not only this
//!    partition, so that every partition gates alike), cached in
//!    `<out>/energy-threshold.json` (keyed by a hash of the training list and the front end).
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
//! 8. Shards ([`crate::shards`]), processed in chunks of `--chunk-files` files (memory
//!    bounded), rayon-parallel over the files of a chunk, with deterministic output; complete
//!    shards are skipped on re-runs, and the manifest is rewritten from every complete shard of
//!    the folder at the end.
//!
//! # Two passes, one decode per file
//!
//! The threshold depends on every training clip, and DIR variants (and every shard's
//! `asc.energy_threshold`) depend on the threshold. Rather than decoding and resampling the
//! training set twice (an energy pass, then the shard pass), the work is split by what depends
//! on the threshold:
//!
//! - **Pass 1** decodes and resamples every file of the partition once and writes everything
//!   that does not depend on the threshold: the original rows and their replays, in shards of
//!   `--files-per-shard` files (`shard-p<i>of<n>-<k>`, k = 0 .. K-1). Their `energy` column
//!   holds every clip's energy, so the threshold follows from pass 1 alone: the mean in
//!   dataset row order and clip order, summed in f64, the same numbers in the same order as a
//!   separate energy pass, hence bit-identical. Until the threshold is known, each shard is
//!   written as `<shard>.pending` with `asc.energy_threshold = NaN`; once it is known,
//!   [`shards::finalize_pending`] rewrites only the footer (the data pages stay in place) and
//!   renames it. With `--energy-threshold` or a cached threshold each shard is finalized as
//!   soon as it is written; every pass-1 shard goes through the same steps, so the bytes do not
//!   depend on when the threshold became known.
//! - **Pass 2** writes the DIR copies of the eligible clips (device `a`, training, energy above
//!   the threshold, taken from pass 1) into shards of their own (k = K, K+1, ...; about
//!   `--files-per-shard` rows each), in the plan's file order. It decodes only the files of
//!   eligible clips a second time (on the demo set 540 of 2,800 files); every other file is
//!   decoded once. One forward FFT of a clip serves its K copies
//!   ([`DirBank`](crate::dir::DirBank)).
//!
//! The rows and their values are the same as with an energy pass followed by a single shard
//! pass, given the same threshold; only their placement differs (DIR copies in their own
//! shards; the loader groups rows by clip id across shards). A run interrupted in either pass
//! resumes: complete and pending shards are kept, and their energies read back from the
//! `energy` column.
//!
//! With `--partition i/n` the training files of the other partitions still need their
//! energies for the threshold: they go through an energy-only pass (decode, resample, energy),
//! unless the threshold is given or cached.
//!
//! Partitions: `--partition i/n` keeps the rows whose 10 s segment id hashes (FNV-1a 64) to
//! `i` modulo `n`, so the ten seconds and the parallel device recordings of a segment stay in
//! one partition. The union of the shards of `0/n .. n-1/n` holds exactly the rows of a `0/1`
//! run (in other shard files).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use data_specs::hash::fnv1a64;
use data_specs::{
    ClipRecord, ClipSet, DirSet, FrontEndConfig, FrontEndPreset, LogmelType, Manifest, ShardEntry,
    ShardMeta, Variant, clip_energy, records_to_batch,
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

    /// Element type of the log-mel column: float32, or float16 (half the size on disk and in
    /// the page cache; values rounded to nearest binary16, a relative error of at most 2^-11;
    /// see data-specs/README.md). The trainer reads both.
    #[arg(long, value_name = "TYPE", default_value = "float32")]
    pub logmel_type: LogmelType,

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
    /// Source files processed by this run (pass 1: decoded once each).
    pub files: usize,
    /// Files decoded again by this run for their DIR copies (pass 2).
    pub dir_files: usize,
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
        if self.dir_files > 0 {
            println!(
                "  DIR variants: {} files decoded again for their DIR copies",
                self.dir_files
            );
        }
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
    /// The DIR set's spectra at the clip length (`None` without DIR variants).
    bank: Option<crate::dir::DirBank>,
    dir_k: usize,
    seed: u64,
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

    /// Pass 1: the records of one source file that do not depend on the DIR threshold, in a
    /// deterministic order: per clip, the original, then its replay.
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
            let seg_index = self.segment_index(row, *k);
            out.push(self.record(row, &id, seg_index, Variant::Original, None, clip));
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

    /// `segment_index` of clip `k` of a row: the clip index for a long recording whose name
    /// does not carry one, the name's index otherwise.
    fn segment_index(&self, row: &MetaRow, k: Option<usize>) -> i32 {
        match k {
            Some(k) if row.segment_index == 0 => k as i32,
            _ => row.segment_index,
        }
    }

    /// True when DIR variants can apply to the clips of row `r`: a device-`a` training file,
    /// with DIR variants on.
    fn dir_applies(&self, r: usize) -> bool {
        self.ds.sets[r] == ClipSet::Train
            && self.ds.rows[r].device == data_specs::REFERENCE_DEVICE
            && self.dir_k > 0
            && self.bank.as_ref().is_some_and(|b| !b.is_empty())
    }

    /// Pass 2: the DIR copies of the clips of row `r` whose original energy (`energies`, per
    /// clip in clip order, as pass 1 wrote them) is above `threshold`, in a deterministic
    /// order: per clip, its `dir_k` copies in the order [`choose_irs`](crate::dir::choose_irs)
    /// draws the responses.
    fn dir_rows(
        &self,
        r: usize,
        energies: &[f32],
        threshold: f32,
    ) -> Result<Vec<ClipRecord>, IngestError> {
        let Some(bank) = &self.bank else {
            return Ok(Vec::new());
        };
        let row = &self.ds.rows[r];
        let (_, clips) = load_clips(&self.ds.audio_path(r), &self.cfg)?;
        let mut out = Vec::new();
        for (ci, (k, clip)) in clips.iter().enumerate() {
            if !energies.get(ci).is_some_and(|&e| e > threshold) {
                continue;
            }
            let id = clip_id(row.stem(), *k);
            let seg_index = self.segment_index(row, *k);
            let chosen = crate::dir::choose_irs(&id, self.seed, self.irs.len(), self.dir_k);
            for (i, conv) in chosen.iter().zip(bank.convolve(clip, &chosen)) {
                out.push(self.record(
                    row,
                    &id,
                    seg_index,
                    Variant::Dir,
                    Some(self.irs[*i].name.clone()),
                    &conv,
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

/// Clip energies of files: `energies[r]` holds the energies of row `r`'s clips in clip order,
/// for the rows read so far (`None`: not read, or failed).
type Energies = Vec<Option<Vec<f32>>>;

/// Energy-only pass (decode, resample, energy) over `rows`, for the training files of other
/// partitions: fills `energies` and returns the files that failed.
fn energy_pass(
    ds: &Dataset,
    cfg: &FrontEndConfig,
    rows: &[usize],
    chunk: usize,
    quiet: bool,
    energies: &mut Energies,
) -> Vec<(usize, IngestError)> {
    let pb = progress(rows.len() as u64, "energy pass (other partitions)", quiet);
    let mut errors = Vec::new();
    for c in rows.chunks(chunk.max(1)) {
        let res: Vec<Result<Vec<f32>, IngestError>> = c
            .par_iter()
            .map(|&r| {
                load_clips(&ds.audio_path(r), cfg)
                    .map(|(_, clips)| clips.iter().map(|(_, c)| clip_energy(c)).collect())
            })
            .collect();
        for (&r, e) in c.iter().zip(res) {
            match e {
                Ok(es) => energies[r] = Some(es),
                Err(err) => errors.push((r, err)),
            }
        }
        pb.inc(c.len() as u64);
    }
    pb.finish_and_clear();
    errors
}

/// The DIR threshold: the mean energy of every clip of the training files (every device), as
/// an f64 sum in dataset row order and clip order, rounded to f32; with the number of clips.
fn mean_training_energy(ds: &Dataset, energies: &Energies) -> Option<(f32, u64)> {
    let (mut sum, mut count) = (0f64, 0u64);
    for &r in &ds.usable {
        if ds.sets[r] != ClipSet::Train {
            continue;
        }
        for &e in energies[r].iter().flatten() {
            sum += e as f64;
            count += 1;
        }
    }
    (count > 0).then(|| ((sum / count as f64) as f32, count))
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

/// What the shard loops share: the run's settings and what it has done so far.
struct Run<'a> {
    args: &'a FeaturesArgs,
    ds: &'a Dataset,
    summary: Summary,
    skipped: Vec<Skipped>,
    pb: ProgressBar,
    /// The previous run's skip report (its files are retried: crate::skips).
    previous: crate::skips::PreviousSkips,
    /// Files of the shards this run wrote in pass 1 (each retried if the previous run skipped it).
    retried: HashSet<String>,
}

impl Run<'_> {
    /// Processes `rows` in chunks of `--chunk-files` files (rayon-parallel within a chunk)
    /// with `work` and appends their records to `writer` in row order; `seen` gets each file's
    /// records. The records of a chunk are converted and written while the next chunk is
    /// processed. A failed file is an error, or a skip with `--on-error skip`.
    fn write_rows(
        &mut self,
        writer: &mut ShardWriter,
        meta: &ShardMeta,
        rows: &[usize],
        work: &(dyn Fn(usize) -> Result<Vec<ClipRecord>, IngestError> + Sync),
        seen: &mut dyn FnMut(usize, &[ClipRecord]),
    ) -> anyhow::Result<()> {
        let write = |writer: &mut ShardWriter, records: Vec<ClipRecord>| -> anyhow::Result<()> {
            if !records.is_empty() {
                writer.write(&records_to_batch(meta, &records)?)?;
            }
            Ok(())
        };
        let mut ready: Vec<ClipRecord> = Vec::new();
        for chunk in rows.chunks(self.args.chunk_files) {
            let previous = std::mem::take(&mut ready);
            let (wrote, results) = rayon::join(
                || write(writer, previous),
                || {
                    chunk
                        .par_iter()
                        .map(|&r| work(r))
                        .collect::<Vec<Result<Vec<ClipRecord>, IngestError>>>()
                },
            );
            wrote?;
            for (&r, res) in chunk.iter().zip(results) {
                match res {
                    Ok(recs) => {
                        seen(r, &recs);
                        ready.extend(recs);
                    }
                    Err(e) if self.args.on_error == OnError::Skip => self.skipped.push(Skipped {
                        file: self.ds.audio_path(r).display().to_string(),
                        reason: e.to_string(),
                    }),
                    Err(e) => return Err(e.into()),
                }
            }
            for rec in &ready {
                *self
                    .summary
                    .rows
                    .entry((
                        rec.set.as_str().to_string(),
                        rec.device.clone(),
                        rec.variant.as_str().to_string(),
                    ))
                    .or_default() += 1;
            }
            self.pb.inc(chunk.len() as u64);
        }
        write(writer, ready)
    }

    /// True when `--stop-after-shards` is reached (the testing aid that simulates an
    /// interruption).
    fn stop_here(&self) -> bool {
        self.args.stop_after_shards == Some(self.summary.shards_written)
    }
}

/// The energies of the original rows of a shard written by pass 1, into `energies`.
fn read_energies(ds: &Dataset, path: &Path, energies: &mut Energies) -> anyhow::Result<()> {
    let by_file: HashMap<&str, usize> = ds
        .rows
        .iter()
        .enumerate()
        .map(|(r, row)| (row.filename.as_str(), r))
        .collect();
    let mut seen: Vec<usize> = Vec::new();
    for (file, energy) in shards::original_energies(path)? {
        let Some(&r) = by_file.get(file.as_str()) else {
            bail!(
                "{}: holds clips of {file}, which is not in this dataset's meta.csv; use another --out folder",
                path.display()
            );
        };
        if seen.last() != Some(&r) {
            seen.push(r);
            energies[r] = Some(Vec::new());
        }
        energies[r].get_or_insert_with(Vec::new).push(energy);
    }
    Ok(())
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

    // The DIR threshold, when known before pass 1: given, or cached by an earlier run (keyed
    // by the training list and the front end).
    let fingerprint = {
        let mut h = Sha256::new();
        for &r in &ds.usable {
            if ds.sets[r] == ClipSet::Train {
                h.update(ds.rows[r].filename.as_bytes());
                h.update(b"\n");
            }
        }
        h.update(serde_json::to_string(&cfg)?.as_bytes());
        h.finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let cache_path = args.out.join("energy-threshold.json");
    let known: Option<(f32, String)> = match args.energy_threshold {
        Some(x) => Some((x, "--energy-threshold".to_string())),
        None => std::fs::read_to_string(&cache_path)
            .ok()
            .and_then(|t| serde_json::from_str::<ThresholdCache>(&t).ok())
            .filter(|c| c.fingerprint == fingerprint)
            .map(|c| {
                (
                    c.threshold,
                    format!(
                        "mean over {} training clips, cached in {}",
                        c.training_clips,
                        cache_path.display()
                    ),
                )
            }),
    };

    let mut meta = ShardMeta::new(cfg.clone(), ds.labels.clone(), ds.devices.clone());
    meta.dir_set = dir_set;
    meta.teacher = teacher
        .as_ref()
        .map(|t| t.description().to_string())
        .unwrap_or_default();
    meta.dataset = ds.name.clone();
    meta.logmel_type = args.logmel_type;
    // Pass 1 shards written before the threshold is known carry NaN until finalized.
    let mut pending_meta = meta.clone();
    pending_meta.energy_threshold = f32::NAN;
    if let Some((x, _)) = &known {
        meta.energy_threshold = *x;
    }

    let bank = (!irs.is_empty()).then(|| crate::dir::DirBank::new(&irs, cfg.clip_samples));
    let ctx = Ctx {
        ds: &ds,
        cfg: cfg.clone(),
        logmel,
        irs,
        bank,
        dir_k: args.dir_variants,
        seed: args.seed,
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
    let codec = args.compression.codec();

    let mut run = Run {
        args,
        ds: &ds,
        summary: Summary {
            shards_total: shard_rows.len(),
            ..Summary::default()
        },
        skipped: ds.skipped.clone(),
        pb: progress(plan.len() as u64, "features", args.quiet),
        previous: crate::skips::PreviousSkips::read(&crate::skips::report_path(
            &args.out, part_i, part_n,
        ))?,
        retried: HashSet::new(),
    };
    let mut energies: Energies = vec![None; ds.rows.len()];
    let mut fresh: Vec<ShardEntry> = Vec::new();
    // Pass 1 shards to finalize once the threshold is known, and the thresholds of the final
    // shards kept from an earlier run whose threshold this run recomputes.
    let mut pending: Vec<usize> = Vec::new();
    let mut kept_thresholds: Vec<(PathBuf, f32)> = Vec::new();
    let mut stopped = false;

    // Pass 1: originals (and replays) of every file of the partition, one decode each.
    for (k, rows) in shard_rows.iter().enumerate() {
        let path = args.out.join(shards::shard_name(part_i, part_n, k));
        let pending_path = shards::pending_path(&path);
        // A complete (or pending) shard is kept unless it holds a file the previous run
        // skipped (retried) or was written with another --compression.
        let audio: Vec<String> = rows
            .iter()
            .map(|&r| ds.audio_path(r).display().to_string())
            .collect();
        let retry = audio.iter().any(|f| run.previous.lists(f));
        let same_codec = |p: &Path| -> anyhow::Result<bool> {
            Ok(shards::shard_codec(p).ok().flatten() == Some(codec))
        };
        if !retry
            && path.is_file()
            && let Ok((found, _)) = shards::check_shard(&path, None)
        {
            // The expected metadata, with this run's threshold or, before it is known, the
            // file's (checked against the computed one below).
            let mut expected = pending_meta.clone();
            expected.energy_threshold = known.as_ref().map_or(found.energy_threshold, |k| k.0);
            if let Some(entry) = shards::shard_is_complete(&path, old_manifest.as_ref(), &expected)?
                && same_codec(&path)?
            {
                read_energies(&ds, &path, &mut energies)?;
                if known.is_none() {
                    kept_thresholds.push((path.clone(), found.energy_threshold));
                }
                if pending_path.exists() {
                    std::fs::remove_file(&pending_path)
                        .with_context(|| format!("{}: cannot remove", pending_path.display()))?;
                }
                fresh.push(entry);
                run.summary.shards_kept += 1;
                run.pb.inc(rows.len() as u64);
                continue;
            }
        }
        if !retry && pending_path.is_file() {
            match shards::check_shard(&pending_path, Some(&pending_meta)) {
                Ok(_) if same_codec(&pending_path)? => {
                    read_energies(&ds, &pending_path, &mut energies)?;
                    pending.push(k);
                    run.summary.shards_kept += 1;
                    run.pb.inc(rows.len() as u64);
                    continue;
                }
                Err(e @ shards::ShardError::Mismatch { .. }) => return Err(e.into()),
                _ => std::fs::remove_file(&pending_path)
                    .with_context(|| format!("{}: cannot remove", pending_path.display()))?,
            }
        }
        if run.stop_here() {
            stopped = true;
            break;
        }
        // Written under the pending name with the pending metadata, then finalized (now when
        // the threshold is known, else after the pass), so that every pass-1 shard is made
        // the same way, byte for byte.
        run.retried.extend(audio);
        let mut writer = ShardWriter::create(
            &pending_path,
            &pending_meta,
            args.row_group_rows,
            codec,
            [part_i, part_n],
        )?;
        run.pb
            .set_message(format!("shard {}/{}", k + 1, shard_rows.len()));
        run.write_rows(
            &mut writer,
            &pending_meta,
            rows,
            &|r| ctx.process_row(r),
            &mut |r, recs| {
                energies[r] = Some(
                    recs.iter()
                        .filter(|x| x.variant == Variant::Original)
                        .map(|x| x.energy)
                        .collect(),
                );
            },
        )?;
        run.summary.files += rows.len();
        writer.finish_unhashed()?;
        if known.is_some() {
            fresh.push(shards::finalize_pending(
                &pending_path,
                &path,
                &meta,
                [part_i, part_n],
            )?);
        } else {
            pending.push(k);
        }
        run.summary.shards_written += 1;
    }
    run.pb.finish_and_clear();
    if stopped {
        return finish(run, &plan, &fresh, &meta, true, start);
    }

    // The threshold: known, or the mean over every training clip (pass 1's energies, plus an
    // energy-only pass over the training files of the other partitions).
    let (threshold, threshold_source) = match known {
        Some(k) => k,
        None => {
            let others: Vec<usize> = ds
                .usable
                .iter()
                .copied()
                .filter(|&r| ds.sets[r] == ClipSet::Train && energies[r].is_none())
                .filter(|&r| partition_of(&ds.rows[r], part_n) != part_i)
                .collect();
            for (r, e) in energy_pass(
                &ds,
                &cfg,
                &others,
                args.chunk_files,
                args.quiet,
                &mut energies,
            ) {
                if args.on_error == OnError::Fail {
                    return Err(e.into());
                }
                run.skipped.push(Skipped {
                    file: ds.audio_path(r).display().to_string(),
                    reason: e.to_string(),
                });
            }
            let Some((mean, n)) = mean_training_energy(&ds, &energies) else {
                bail!(
                    "{}: no training clips to compute the DIR energy threshold from (no fold1_train.csv or split*.csv found?); pass --energy-threshold",
                    args.dataset.display()
                );
            };
            let c = ThresholdCache {
                fingerprint,
                training_clips: n,
                threshold: mean,
            };
            let tmp = shards::tmp_path(&cache_path);
            std::fs::write(&tmp, serde_json::to_string_pretty(&c)?)
                .and_then(|_| std::fs::rename(&tmp, &cache_path))
                .with_context(|| format!("{}: cannot write", cache_path.display()))?;
            (mean, format!("mean over {n} training clips"))
        }
    };
    meta.energy_threshold = threshold;
    for (path, found) in &kept_thresholds {
        if found.to_bits() != threshold.to_bits() {
            bail!(
                "{}: written with DIR energy threshold {found}, but this run's is {threshold}; use another --out folder or delete the old shards",
                path.display()
            );
        }
    }
    // Pass 1 shards written before the threshold was known get their final metadata.
    for k in pending {
        let path = args.out.join(shards::shard_name(part_i, part_n, k));
        fresh.push(shards::finalize_pending(
            &shards::pending_path(&path),
            &path,
            &meta,
            [part_i, part_n],
        )?);
    }
    run.summary.energy_threshold = threshold;
    run.summary.threshold_source = threshold_source;

    // Pass 2: DIR copies of the eligible clips (device-a training clips with energy above the
    // threshold), decoding only their files again, into shards of their own.
    let eligible: Vec<usize> = plan
        .iter()
        .copied()
        .filter(|&r| {
            ctx.dir_applies(r)
                && energies[r]
                    .as_ref()
                    .is_some_and(|es| es.iter().any(|&e| e > threshold))
        })
        .collect();
    let per_shard = (args.files_per_shard / args.dir_variants.max(1)).max(1);
    let dir_shards: Vec<&[usize]> = eligible.chunks(per_shard).collect();
    run.summary.shards_total += dir_shards.len();
    run.pb = progress(eligible.len() as u64, "DIR variants", args.quiet);
    // A file of the previous skip report retried in pass 1 may have become eligible, which
    // moves the others between DIR shards: then every DIR shard is written again.
    let redo_dir = run.retried.iter().any(|f| run.previous.lists(f));
    for (j, rows) in dir_shards.iter().enumerate() {
        let k = shard_rows.len() + j;
        let path = args.out.join(shards::shard_name(part_i, part_n, k));
        if !redo_dir
            && let Some(entry) = shards::shard_is_complete(&path, old_manifest.as_ref(), &meta)?
            && shards::shard_codec(&path)? == Some(codec)
        {
            fresh.push(entry);
            run.summary.shards_kept += 1;
            run.pb.inc(rows.len() as u64);
            continue;
        }
        if run.stop_here() {
            stopped = true;
            break;
        }
        let mut writer =
            ShardWriter::create(&path, &meta, args.row_group_rows, codec, [part_i, part_n])?;
        run.pb
            .set_message(format!("DIR shard {}/{}", j + 1, dir_shards.len()));
        run.write_rows(
            &mut writer,
            &meta,
            rows,
            &|r| {
                let es = energies[r].as_deref().unwrap_or_default();
                ctx.dir_rows(r, es, threshold)
            },
            &mut |_, _| {},
        )?;
        run.summary.dir_files += rows.len();
        fresh.push(writer.finish()?);
        run.summary.shards_written += 1;
    }
    run.pb.finish_and_clear();
    finish(run, &plan, &fresh, &meta, stopped, start)
}

/// Writes the skip report (this run's entries, plus the previous ones of files of `plan` not
/// retried), then (unless the run was stopped early) the manifest, and completes the summary.
fn finish(
    run: Run<'_>,
    plan: &[usize],
    fresh: &[ShardEntry],
    meta: &ShardMeta,
    stopped: bool,
    start: Instant,
) -> anyhow::Result<Summary> {
    let Run {
        args,
        ds,
        mut summary,
        mut skipped,
        previous,
        retried,
        ..
    } = run;
    let (part_i, part_n) = args.partition;
    let report = crate::skips::report_path(&args.out, part_i, part_n);
    let in_plan: HashSet<String> = plan
        .iter()
        .map(|&r| ds.audio_path(r).display().to_string())
        .collect();
    summary.retried = previous.still_pending(|f| retried.contains(f)).len();
    skipped.extend(previous.still_pending(|f| in_plan.contains(f) && !retried.contains(f)));
    crate::skips::write_report(&report, &mut skipped)?;
    summary.skipped = skipped;
    if !stopped {
        summary.manifest = Some(shards::rewrite_manifest(&args.out, fresh, meta)?);
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
