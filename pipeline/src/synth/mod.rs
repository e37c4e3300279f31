//! `pipeline synth`: the embedded demo dataset, a synthetic stand-in for TAU Urban Acoustic
//! Scenes 2022 Mobile (development set) with exactly its layout.
//!
//! Every 10 s segment is a soundscape rendered from physically motivated components
//! ([`scene`]), with parameters drawn per scene and city, perturbed per location and per
//! segment. Each device that "was there" records the same soundscape through its own transfer
//! chain ([`device`]), as the TAU devices recorded simultaneously; the recording is cut into ten
//! one-second, 44.1 kHz, 24-bit mono WAV files. The output is a pure function of the seed and
//! the scale: every segment and device draws from its own random stream ([`rng`]), so the bytes
//! do not depend on the number of threads.
//!
//! Layout written (see `shared/reference/dcase2024-task1.md`):
//! `audio/<scene>-<city>-<location>-<segment>-<index>-<device>.wav`, `meta.csv`,
//! `evaluation_setup/fold1_{train,evaluate,test}.csv`, `split_setup/split{5,10,25,50,100}.csv`,
//! `split_setup/test.csv`, `README.txt`.

pub mod device;
pub mod dsp;
pub mod rng;
pub mod scene;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use data_specs::{TAU22_DEVICES, TAU22_LABELS, TauFileName};
use rayon::prelude::*;

use rng::Rng;
use scene::{LocationVoice, Profile};

/// Cities of the demo set (TAU22 cities).
pub const CITIES: [&str; 8] = [
    "barcelona",
    "helsinki",
    "lisbon",
    "london",
    "lyon",
    "milan",
    "paris",
    "prague",
];

/// Devices with a few training clips per class besides the reference device `a`.
pub const SEEN_DEVICES: [&str; 5] = ["b", "c", "s1", "s2", "s3"];

/// The DCASE2024 training-split percentages.
pub const SPLIT_PERCENTS: [u32; 5] = [5, 10, 25, 50, 100];

/// Clips per 10 s segment and samples per clip.
const CLIPS_PER_SEGMENT: usize = 10;
const CLIP_SAMPLES: usize = 44_100;
/// Pre-roll rendered and discarded so filters and reverberation are settled at second 0.
const PREROLL: usize = 22_050;

/// Name of the marker file that identifies a `pipeline synth` output folder.
pub const MARKER_FILE: &str = ".pipeline-synth";

/// Per-class segment counts at scale 1 (multiplied by `--scale`, at least 1 each).
const TRAIN_A_SEGMENTS: f64 = 12.0;
const TRAIN_SEEN_SEGMENTS: f64 = 1.0;
const TEST_A_SEGMENTS: f64 = 3.0;
const TEST_OTHER_SEGMENTS: f64 = 1.0;

/// Arguments of `pipeline synth`.
#[derive(clap::Args, Debug, Clone)]
pub struct SynthArgs {
    /// Output folder (created; must be empty or a previous `pipeline synth` output).
    #[arg(long)]
    pub out: PathBuf,
    /// Random seed: the same seed and scale give byte-identical files.
    #[arg(long, default_value_t = 2024)]
    pub seed: u64,
    /// Multiplies the number of 10 s segments (1 => about 2,800 clips; 10 => about 28,000).
    /// Fractions are allowed; every class keeps at least one segment per set and device.
    #[arg(long, default_value_t = 1.0, value_parser = crate::cli::finite_f64)]
    pub scale: f64,
    /// Write into a non-empty folder that is not a previous synth output; files of the
    /// TAU layout already there (audio/*.wav with TAU names, the CSV lists) are deleted first.
    #[arg(long)]
    pub force: bool,
    /// Worker threads (default: all cores). The output does not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Errors of the demo dataset generator.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The output folder holds files that `pipeline synth` did not write.
    #[error(
        "{0}: folder is not empty and is not a previous `pipeline synth` output (no {MARKER_FILE}); use --force to write into it"
    )]
    OutNotEmpty(PathBuf),
    /// The scale is not a positive finite number.
    #[error("--scale must be a positive number, got {0}")]
    BadScale(f64),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A WAV file could not be written.
    #[error("{path}: cannot write WAV: {problem}")]
    Wav {
        /// File.
        path: PathBuf,
        /// Cause.
        problem: String,
    },
    /// The thread pool could not be built.
    #[error("thread pool: {0}")]
    Threads(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One 10 s segment of the plan and the devices that recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentPlan {
    /// Scene label index into `TAU22_LABELS`.
    pub scene: usize,
    /// City.
    pub city: &'static str,
    /// Location id (unique in the dataset).
    pub location: u32,
    /// Segment id (unique in the dataset).
    pub segment: u32,
    /// True for the training set (fold1 train), false for the test set.
    pub train: bool,
    /// Devices that recorded this segment, in `TAU22_DEVICES` order.
    pub devices: Vec<&'static str>,
}

impl SegmentPlan {
    /// `<scene>-<city>-<location>-<segment>`.
    pub fn segment_id(&self) -> String {
        format!(
            "{}-{}-{}-{}",
            TAU22_LABELS[self.scene], self.city, self.location, self.segment
        )
    }

    /// `audio/<scene>-<city>-<location>-<segment>-<index>-<device>.wav`.
    pub fn filename(&self, index: usize, device: &str) -> String {
        format!("audio/{}-{index}-{device}.wav", self.segment_id())
    }
}

/// Per-class count at a scale: `max(1, round(base * scale))`.
fn scaled(base: f64, scale: f64) -> usize {
    ((base * scale).round() as usize).max(1)
}

/// Draws a unique id in `[lo, hi)`.
fn unique_id(rng: &mut Rng, used: &mut HashSet<u32>, lo: u32, hi: u32) -> u32 {
    loop {
        let id = lo + rng.below((hi - lo) as usize) as u32;
        if used.insert(id) {
            return id;
        }
    }
}

/// The dataset plan: which segments exist, at which location, in which set, recorded by which
/// devices. Training and test locations are disjoint (as in TAU fold1); device `a` records
/// every segment; each of `b, c, s1-s3` records a few training segments per class; every
/// non-reference device records a few test segments per class (`s4-s6` only there).
pub fn plan(seed: u64, scale: f64) -> Vec<SegmentPlan> {
    let mut rng = Rng::derive(seed, "plan");
    let mut used_loc = HashSet::new();
    let mut used_seg = HashSet::new();
    let mut out = Vec::new();
    for scene in 0..TAU22_LABELS.len() {
        let mut cities = CITIES.to_vec();
        rng.shuffle(&mut cities);
        let mut city_i = 0;
        for train in [true, false] {
            let n = scaled(
                if train {
                    TRAIN_A_SEGMENTS
                } else {
                    TEST_A_SEGMENTS
                },
                scale,
            );
            let first = out.len();
            while out.len() - first < n {
                let city = cities[city_i % cities.len()];
                city_i += 1;
                let location = unique_id(&mut rng, &mut used_loc, 100, 10_000);
                let here = (1 + rng.below(3)).min(n - (out.len() - first));
                for _ in 0..here {
                    out.push(SegmentPlan {
                        scene,
                        city,
                        location,
                        segment: unique_id(&mut rng, &mut used_seg, 1_000, 100_000),
                        train,
                        devices: vec!["a"],
                    });
                }
            }
            // Other devices record some of these segments, spread over the segments.
            let others: &[&'static str] = if train {
                &SEEN_DEVICES
            } else {
                &TAU22_DEVICES[1..]
            };
            let per_device = scaled(
                if train {
                    TRAIN_SEEN_SEGMENTS
                } else {
                    TEST_OTHER_SEGMENTS
                },
                scale,
            )
            .min(n);
            let mut order: Vec<usize> = (first..out.len()).collect();
            rng.shuffle(&mut order);
            let mut k = 0;
            for &dev in others {
                for _ in 0..per_device {
                    let seg = &mut out[order[k % order.len()]];
                    k += 1;
                    if !seg.devices.contains(&dev) {
                        seg.devices.push(dev);
                    }
                }
            }
        }
    }
    for seg in &mut out {
        seg.devices
            .sort_by_key(|d| TAU22_DEVICES.iter().position(|x| x == d));
    }
    out
}

/// The nested DCASE2024 training splits: for each percentage, the segment ids it holds.
///
/// Training segments are ordered by a seeded round-robin over the classes (each round a
/// shuffled class order, each class its own shuffled segment list), and split `p` is the
/// shortest prefix with at least `p %` of the training clips, and at least one segment per
/// class. Prefixes make the splits nested; whole segments (all devices) stay together.
pub fn splits(seed: u64, plan: &[SegmentPlan]) -> Vec<(u32, HashSet<String>)> {
    let mut rng = Rng::derive(seed, "splits");
    let mut per_class: Vec<Vec<&SegmentPlan>> = vec![Vec::new(); TAU22_LABELS.len()];
    for s in plan.iter().filter(|s| s.train) {
        per_class[s.scene].push(s);
    }
    for v in per_class.iter_mut() {
        rng.shuffle(v);
        // Lead with a reference-only segment, so the smallest split stays near 5 % at small
        // scales (where it must hold one segment per class).
        if let Some(i) = v.iter().position(|s| s.devices.len() == 1) {
            v.swap(0, i);
        }
    }
    let mut order: Vec<&SegmentPlan> = Vec::new();
    let mut round = 0;
    loop {
        let mut classes: Vec<usize> = (0..TAU22_LABELS.len()).collect();
        rng.shuffle(&mut classes);
        let mut any = false;
        for c in classes {
            if let Some(s) = per_class[c].get(round) {
                order.push(s);
                any = true;
            }
        }
        if !any {
            break;
        }
        round += 1;
    }
    let total: usize = order
        .iter()
        .map(|s| s.devices.len() * CLIPS_PER_SEGMENT)
        .sum();
    let min_segments = per_class.iter().filter(|v| !v.is_empty()).count();
    SPLIT_PERCENTS
        .iter()
        .map(|&p| {
            let target = (total * p as usize).div_ceil(100);
            let mut set = HashSet::new();
            let mut clips = 0;
            for (i, s) in order.iter().enumerate() {
                if clips >= target && i >= min_segments {
                    break;
                }
                clips += s.devices.len() * CLIPS_PER_SEGMENT;
                set.insert(s.segment_id());
            }
            (p, set)
        })
        .collect()
}

/// Counts of the generated dataset.
#[derive(Debug, Clone, Default)]
pub struct SynthSummary {
    /// Training clips per device.
    pub train_clips: BTreeMap<String, usize>,
    /// Test clips per device.
    pub test_clips: BTreeMap<String, usize>,
    /// Clips per training split percentage.
    pub split_clips: Vec<(u32, usize)>,
    /// Segments rendered.
    pub segments: usize,
    /// Wall time in seconds.
    pub seconds: f64,
}

impl SynthSummary {
    /// Total number of clips.
    pub fn total_clips(&self) -> usize {
        self.train_clips.values().sum::<usize>() + self.test_clips.values().sum::<usize>()
    }
}

/// Renders one segment for all its devices: a list of (file name, 44.1 kHz samples).
pub fn render_segment(seed: u64, seg: &SegmentPlan) -> Vec<(String, Vec<f64>)> {
    let label = TAU22_LABELS[seg.scene];
    // Hierarchy: archetype -> city -> location -> segment.
    let mut rc = Rng::derive(seed, &format!("city/{label}/{}", seg.city));
    let city = Profile::archetype(label).perturb(&mut rc, 0.4, 0.12);
    let mut rl = Rng::derive(seed, &format!("location/{}", seg.location));
    let loc = city.perturb(&mut rl, 0.35, 0.12);
    let voice = LocationVoice::draw(&mut rl);
    let mut rs = Rng::derive(seed, &format!("segment/{}", seg.segment));
    let prof = loc.perturb(&mut rs, 0.3, 0.05);
    let n = CLIPS_PER_SEGMENT * CLIP_SAMPLES + PREROLL;
    let sound = scene::render(&mut rs, &prof, &voice, n);
    let mut out = Vec::new();
    for &dev in &seg.devices {
        let model = device::device(dev).expect("plan uses TAU22 devices");
        let mut rd = Rng::derive(seed, &format!("device/{}/{dev}", seg.segment));
        let rec = model.record(&sound, &mut rd);
        for i in 0..CLIPS_PER_SEGMENT {
            let a = PREROLL + i * CLIP_SAMPLES;
            out.push((seg.filename(i, dev), rec[a..a + CLIP_SAMPLES].to_vec()));
        }
    }
    out
}

/// Writes a 1 s, 44.1 kHz, 24-bit mono WAV atomically (temporary name, then rename).
fn write_wav(path: &Path, samples: &[f64]) -> Result<(), SynthError> {
    let tmp = tmp_path(path);
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 44_100,
        bits_per_sample: 24,
        sample_format: hound::SampleFormat::Int,
    };
    let wav_err = |e: hound::Error| SynthError::Wav {
        path: path.to_path_buf(),
        problem: e.to_string(),
    };
    let mut w = hound::WavWriter::create(&tmp, spec).map_err(wav_err)?;
    for &x in samples {
        let q = (x * 8_388_607.0).round().clamp(-8_388_608.0, 8_388_607.0) as i32;
        w.write_sample(q).map_err(wav_err)?;
    }
    w.finalize().map_err(wav_err)?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// `dir/.name.tmp` beside `path`.
fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes a text file atomically.
fn write_text(path: &Path, text: &str) -> Result<(), SynthError> {
    let tmp = tmp_path(path);
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Checks the output folder: absent, empty, a previous synth output, or `force`. Deletes the
/// files of a previous dataset (TAU-named WAVs, lists, temporaries) so no stale clip remains.
fn prepare_out(out: &Path, force: bool) -> Result<(), SynthError> {
    if out.exists() {
        let mut entries = std::fs::read_dir(out).map_err(io_err(out))?;
        let non_empty = entries.next().is_some();
        if non_empty && !out.join(MARKER_FILE).exists() && !force {
            return Err(SynthError::OutNotEmpty(out.to_path_buf()));
        }
        let audio = out.join("audio");
        if audio.is_dir() {
            for e in std::fs::read_dir(&audio).map_err(io_err(&audio))? {
                let p = e.map_err(io_err(&audio))?.path();
                let name = p.file_name().map(|n| n.to_string_lossy().to_string());
                let ours = name.as_deref().is_some_and(|n| {
                    (n.ends_with(".wav") && TauFileName::parse(n).is_some())
                        || (n.starts_with('.') && n.ends_with(".tmp"))
                });
                if ours && p.is_file() {
                    std::fs::remove_file(&p).map_err(io_err(&p))?;
                }
            }
        }
        let lists = [
            "meta.csv",
            "README.txt",
            "evaluation_setup/fold1_train.csv",
            "evaluation_setup/fold1_evaluate.csv",
            "evaluation_setup/fold1_test.csv",
            "split_setup/split5.csv",
            "split_setup/split10.csv",
            "split_setup/split25.csv",
            "split_setup/split50.csv",
            "split_setup/split100.csv",
            "split_setup/test.csv",
        ];
        for l in lists {
            let p = out.join(l);
            if p.is_file() {
                std::fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
    }
    for d in ["audio", "evaluation_setup", "split_setup"] {
        let p = out.join(d);
        std::fs::create_dir_all(&p).map_err(io_err(&p))?;
    }
    write_text(
        &out.join(MARKER_FILE),
        "written by `pipeline synth`; this folder may be overwritten by it\n",
    )
}

/// Generates the demo dataset into `args.out` and returns its counts.
pub fn generate(args: &SynthArgs) -> Result<SynthSummary, SynthError> {
    if !(args.scale.is_finite() && args.scale > 0.0) {
        return Err(SynthError::BadScale(args.scale));
    }
    let start = Instant::now();
    let out = args.out.as_path();
    prepare_out(out, args.force)?;
    let segments = plan(args.seed, args.scale);
    let n_clips: usize = segments
        .iter()
        .map(|s| s.devices.len() * CLIPS_PER_SEGMENT)
        .sum();

    let bar = indicatif::ProgressBar::new(n_clips as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "synth {bar:40} {pos}/{len} clips [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let work = || -> Result<(), SynthError> {
        segments.par_iter().try_for_each(|seg| {
            for (name, samples) in render_segment(args.seed, seg) {
                write_wav(&out.join(&name), &samples)?;
                bar.inc(1);
            }
            Ok(())
        })
    };
    match args.threads {
        Some(t) => rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build()
            .map_err(|e| SynthError::Threads(e.to_string()))?
            .install(work)?,
        None => work()?,
    }
    bar.finish_and_clear();

    // Lists, sorted by file name.
    let mut train: Vec<(String, &str)> = Vec::new();
    let mut test: Vec<(String, &str)> = Vec::new();
    let mut meta: Vec<(String, &str, String, &str)> = Vec::new();
    let mut summary = SynthSummary {
        segments: segments.len(),
        ..Default::default()
    };
    for s in &segments {
        let label = TAU22_LABELS[s.scene];
        for &d in &s.devices {
            for i in 0..CLIPS_PER_SEGMENT {
                let f = s.filename(i, d);
                meta.push((f.clone(), label, format!("{}-{}", s.city, s.location), d));
                if s.train {
                    train.push((f, label));
                    *summary.train_clips.entry(d.to_string()).or_default() += 1;
                } else {
                    test.push((f, label));
                    *summary.test_clips.entry(d.to_string()).or_default() += 1;
                }
            }
        }
    }
    meta.sort();
    train.sort();
    test.sort();
    let mut text = String::from("filename\tscene_label\tidentifier\tsource_label\n");
    for (f, l, id, d) in &meta {
        text.push_str(&format!("{f}\t{l}\t{id}\t{d}\n"));
    }
    write_text(&out.join("meta.csv"), &text)?;
    let labelled = |rows: &[(String, &str)]| {
        let mut t = String::from("filename\tscene_label\n");
        for (f, l) in rows {
            t.push_str(&format!("{f}\t{l}\n"));
        }
        t
    };
    write_text(
        &out.join("evaluation_setup/fold1_train.csv"),
        &labelled(&train),
    )?;
    write_text(
        &out.join("evaluation_setup/fold1_evaluate.csv"),
        &labelled(&test),
    )?;
    let mut t = String::from("filename\n");
    for (f, _) in &test {
        t.push_str(f);
        t.push('\n');
    }
    write_text(&out.join("evaluation_setup/fold1_test.csv"), &t)?;
    write_text(&out.join("split_setup/test.csv"), &labelled(&test))?;
    for (p, set) in splits(args.seed, &segments) {
        let rows: Vec<(String, &str)> = train
            .iter()
            .filter(|(f, _)| TauFileName::parse(f).is_some_and(|n| set.contains(&n.segment_id())))
            .cloned()
            .collect();
        summary.split_clips.push((p, rows.len()));
        write_text(
            &out.join(format!("split_setup/split{p}.csv")),
            &labelled(&rows),
        )?;
    }
    summary.seconds = start.elapsed().as_secs_f64();
    let readme = format!(
        "Synthetic demo dataset: a stand-in for TAU Urban Acoustic Scenes 2022 Mobile (development\n\
         set), generated by `pipeline synth --seed {seed} --scale {scale}`. Same layout as TAU22:\n\
         audio/<scene>-<city>-<location>-<segment>-<index>-<device>.wav (1 s, mono, 44.1 kHz,\n\
         24-bit), meta.csv, evaluation_setup/fold1_*.csv, split_setup/split{{5,10,25,50,100}}.csv\n\
         and split_setup/test.csv. The soundscapes are synthesised from physically motivated\n\
         components (noise, engines, rails, babble, birds, footsteps, chimes, announcements,\n\
         traffic, wind, reverberation) and recorded by nine simulated devices; they are not\n\
         real recordings. Seed: {seed}. Scale: {scale}. Clips: {clips} ({train} training, {test} test).\n",
        seed = args.seed,
        scale = args.scale,
        clips = summary.total_clips(),
        train = train.len(),
        test = test.len(),
    );
    write_text(&out.join("README.txt"), &readme)?;
    Ok(summary)
}

/// Runs `pipeline synth`: generates the dataset and prints a summary on stdout.
pub fn run(args: &SynthArgs) -> anyhow::Result<()> {
    let s = generate(args)?;
    println!(
        "pipeline synth: {} clips ({} segments) in {} (seed {}, scale {}) in {:.1} s",
        s.total_clips(),
        s.segments,
        args.out.display(),
        args.seed,
        args.scale,
        s.seconds
    );
    println!("{:<8}{:>8}{:>8}", "device", "train", "test");
    for d in TAU22_DEVICES {
        println!(
            "{:<8}{:>8}{:>8}",
            d,
            s.train_clips.get(d).copied().unwrap_or(0),
            s.test_clips.get(d).copied().unwrap_or(0)
        );
    }
    let total_train: usize = s.train_clips.values().sum();
    for (p, n) in &s.split_clips {
        println!(
            "split{p:<4} {n:>7} clips ({:.1} % of training)",
            100.0 * *n as f64 / total_train.max(1) as f64
        );
    }
    Ok(())
}
