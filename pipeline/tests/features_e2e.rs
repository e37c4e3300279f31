//! End-to-end tests of `pipeline features` on a tiny generated dataset: shard validity, sets,
//! splits, DIR gating, teacher logits, partitions, resume, bad input, and the Python readers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type, UInt8Type};
use arrow_array::{Array, RecordBatch};
use data_specs::{Manifest, clip_energy};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pipeline::features::{FeaturesArgs, Summary, run_features};
use pipeline::teachers::logits::write_npy_f32;

const SR: u32 = 44_100;
const N_CLASSES: usize = 10;

/// Deterministic white noise in [-1, 1) (xorshift).
fn noise(seed: u64, n: usize, amp: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Fmt {
    I16,
    I24,
    I8,
    F32,
    Stereo16,
}

fn write_wav(path: &Path, samples: &[f32], fmt: Fmt) {
    let (channels, bits, float) = match fmt {
        Fmt::I16 => (1, 16, false),
        Fmt::I24 => (1, 24, false),
        Fmt::I8 => (1, 8, false),
        Fmt::F32 => (1, 32, true),
        Fmt::Stereo16 => (2, 16, false),
    };
    let spec = hound::WavSpec {
        channels,
        sample_rate: SR,
        bits_per_sample: bits,
        sample_format: if float {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &x in samples {
        for _ in 0..channels {
            if float {
                w.write_sample(x).unwrap();
            } else {
                let max = (1i64 << (bits - 1)) as f32 - 1.0;
                w.write_sample((x * max).round() as i32).unwrap();
            }
        }
    }
    w.finalize().unwrap();
}

/// A tiny dataset: segments 0-4 of scenes airport/bus/park, seconds 0-2, devices a and b
/// (segment 3 also s4); a 3.6 s recording with a TAU-2020-style name; lists:
/// train = segments 0-2 (and the long file), test = segment 3, unused = segment 4.
struct Tiny {
    dir: tempfile::TempDir,
    files: Vec<String>,
}

impl Tiny {
    fn root(&self) -> &Path {
        self.dir.path()
    }
}

fn seg_name(seg: usize) -> (String, &'static str) {
    let scene = ["airport", "bus", "park", "airport", "bus"][seg];
    (format!("{scene}-lisbon-10{seg}-{}", 500 + seg), scene)
}

fn tiny_dataset() -> Tiny {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("audio")).unwrap();
    std::fs::create_dir_all(root.join("evaluation_setup")).unwrap();
    std::fs::create_dir_all(root.join("split_setup")).unwrap();
    let mut meta = String::from("filename\tscene_label\tidentifier\tsource_label\n");
    let mut files = Vec::new();
    let mut train = vec![];
    let mut test = vec![];
    let fmts = [Fmt::I24, Fmt::I16, Fmt::F32, Fmt::Stereo16, Fmt::I8];
    let mut n = 0usize;
    for seg in 0..5 {
        let (sid, scene) = seg_name(seg);
        let devices: &[&str] = if seg == 3 {
            &["a", "b", "s4"]
        } else {
            &["a", "b"]
        };
        for idx in 0..3 {
            for dev in devices {
                let f = format!("audio/{sid}-{idx}-{dev}.wav");
                // Amplitudes spread so that some device-a clips fall below the mean energy.
                let amp = [0.02, 0.3, 0.08, 0.5, 0.15][(seg + idx + n) % 5];
                write_wav(
                    &root.join(&f),
                    &noise(n as u64 + 1, SR as usize, amp),
                    fmts[n % 5],
                );
                meta.push_str(&format!("{f}\t{scene}\tlisbon-10{seg}\t{dev}\n"));
                if seg < 3 {
                    train.push(f.clone());
                } else if seg == 3 {
                    test.push(f.clone());
                }
                files.push(f);
                n += 1;
            }
        }
    }
    // A 3.6 s recording, TAU 2020 style name (no second index): 4 clips, the last padded.
    let long = "audio/park-paris-7-77-a.wav".to_string();
    write_wav(
        &root.join(&long),
        &noise(999, SR as usize * 36 / 10, 0.4),
        Fmt::I16,
    );
    meta.push_str(&format!("{long}\tpark\tparis-7\ta\n"));
    train.push(long.clone());
    files.push(long);
    std::fs::write(root.join("meta.csv"), meta).unwrap();
    let list = |names: &[String], labelled: bool| {
        let mut s = if labelled {
            String::from("filename\tscene_label\n")
        } else {
            String::from("filename\n")
        };
        for f in names {
            if labelled {
                s.push_str(&format!("{f}\t{}\n", scene_of(f)));
            } else {
                s.push_str(&format!("{f}\n"));
            }
        }
        s
    };
    let ev = root.join("evaluation_setup");
    std::fs::write(ev.join("fold1_train.csv"), list(&train, true)).unwrap();
    std::fs::write(ev.join("fold1_evaluate.csv"), list(&test, true)).unwrap();
    std::fs::write(ev.join("fold1_test.csv"), list(&test, false)).unwrap();
    let by_seg = |segs: &[usize]| -> Vec<String> {
        train
            .iter()
            .filter(|f| segs.iter().any(|&s| f.contains(&seg_name(s).0)))
            .cloned()
            .collect()
    };
    let sp = root.join("split_setup");
    std::fs::write(sp.join("split5.csv"), list(&by_seg(&[0]), true)).unwrap();
    std::fs::write(sp.join("split10.csv"), list(&by_seg(&[0]), true)).unwrap();
    std::fs::write(sp.join("split25.csv"), list(&by_seg(&[0, 1]), true)).unwrap();
    std::fs::write(sp.join("split50.csv"), list(&by_seg(&[0, 1]), true)).unwrap();
    std::fs::write(sp.join("split100.csv"), list(&train, true)).unwrap();
    std::fs::write(sp.join("test.csv"), list(&test, true)).unwrap();
    Tiny { dir, files }
}

/// Three short decaying-noise impulse responses.
fn tiny_irs(dir: &Path) -> PathBuf {
    let d = dir.join("irs");
    std::fs::create_dir_all(&d).unwrap();
    for (i, name) in ["MicA", "MicB", "MicC"].iter().enumerate() {
        let mut h = noise(100 + i as u64, 400, 0.3);
        for (n, x) in h.iter_mut().enumerate() {
            *x *= (-(n as f32) / 60.0).exp();
        }
        h[0] = 1.0;
        write_wav(&d.join(format!("{name}.wav")), &h, Fmt::F32);
    }
    d
}

fn args(ds: &Path, out: &Path, irs: &Path, extra: &[&str]) -> FeaturesArgs {
    let mut v: Vec<String> = vec![
        "--dataset".into(),
        ds.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--dirs".into(),
        irs.display().to_string(),
        "--files-per-shard".into(),
        "8".into(),
        "--chunk-files".into(),
        "3".into(),
        "--row-group-rows".into(),
        "16".into(),
        "--quiet".into(),
    ];
    if !extra.contains(&"--dir-variants") {
        v.extend(["--dir-variants".into(), "2".into()]);
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    FeaturesArgs::parse_args(v).unwrap()
}

#[derive(Debug, Clone, PartialEq)]
struct Row {
    clip_id: String,
    source_file: String,
    device: String,
    set: String,
    split: Option<u8>,
    variant: String,
    variant_source: Option<String>,
    energy: f32,
    logits: Option<Vec<f32>>,
    logmel: Vec<f32>,
}

fn dict(b: &RecordBatch, name: &str, i: usize) -> String {
    let d = b.column_by_name(name).unwrap().as_dictionary::<Int32Type>();
    let k = d.keys().value(i) as usize;
    d.values().as_string::<i32>().value(k).to_string()
}

fn read_rows(path: &Path) -> Vec<Row> {
    let f = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        let (cid, src, vs) = (s("clip_id"), s("source_file"), s("variant_source"));
        let split = b
            .column_by_name("split")
            .unwrap()
            .as_primitive::<UInt8Type>()
            .clone();
        let energy = b
            .column_by_name("energy")
            .unwrap()
            .as_primitive::<Float32Type>()
            .clone();
        let logits = b
            .column_by_name("teacher_logits")
            .unwrap()
            .as_fixed_size_list()
            .clone();
        let logmel = b
            .column_by_name("logmel")
            .unwrap()
            .as_fixed_size_list()
            .clone();
        for i in 0..b.num_rows() {
            // Float32 values as they are, float16 log-mel widened (exactly) to f32.
            let fl = |a: &arrow_array::FixedSizeListArray| {
                let v = a.value(i);
                match v.data_type() {
                    arrow_schema::DataType::Float16 => v
                        .as_primitive::<arrow_array::types::Float16Type>()
                        .values()
                        .iter()
                        .map(|x| x.to_f32())
                        .collect(),
                    _ => v.as_primitive::<Float32Type>().values().to_vec(),
                }
            };
            out.push(Row {
                clip_id: cid.value(i).into(),
                source_file: src.value(i).into(),
                device: dict(&b, "device", i),
                set: dict(&b, "set", i),
                split: (!split.is_null(i)).then(|| split.value(i)),
                variant: dict(&b, "variant", i),
                variant_source: (!vs.is_null(i)).then(|| vs.value(i).to_string()),
                energy: energy.value(i),
                logits: (!logits.is_null(i)).then(|| fl(&logits)),
                logmel: fl(&logmel),
            });
        }
    }
    out
}

/// Every row of a shard folder, validating each shard and the manifest checksums.
fn read_set(out: &Path) -> Vec<Row> {
    let m = Manifest::load(out).unwrap();
    let mut rows = Vec::new();
    for e in &m.shards {
        let p = out.join(&e.file);
        data_specs::read_shard_meta(&p).unwrap();
        assert_eq!(
            pipeline::shards::sha256_file(&p).unwrap(),
            e.sha256,
            "{}",
            e.file
        );
        let r = read_rows(&p);
        assert_eq!(r.len() as u64, e.rows, "{}", e.file);
        rows.extend(r);
    }
    let on_disk = pipeline::shards::list_shard_files(out).unwrap();
    let listed: Vec<String> = m.shards.iter().map(|s| s.file.clone()).collect();
    assert_eq!(on_disk, listed, "manifest lists exactly the shard files");
    rows
}

fn stem(f: &str) -> String {
    pipeline::ingest::file_stem(f).to_string()
}

#[test]
fn end_to_end_sets_splits_dir_gating_and_npy_logits() {
    let t = tiny_dataset();
    let out = t.root().join("out");
    let irs = tiny_irs(t.root());
    // Logits row i = [i, i + 0.1, ...], indexed by meta.csv row.
    let n = t.files.len();
    let logits: Vec<f32> = (0..n * N_CLASSES)
        .map(|j| (j / N_CLASSES) as f32 + (j % N_CLASSES) as f32 * 0.1)
        .collect();
    let npy = t.root().join("teacher.npy");
    write_npy_f32(&npy, n, N_CLASSES, &logits).unwrap();
    let s: Summary = run_features(&args(
        t.root(),
        &out,
        &irs,
        &["--teacher-logits", npy.to_str().unwrap()],
    ))
    .unwrap();
    let rows = read_set(&out);
    assert_eq!(s.total_rows(), rows.len() as u64);

    let originals: Vec<&Row> = rows.iter().filter(|r| r.variant == "original").collect();
    // 5 segments x 3 seconds x 2 devices + 3 s4 test clips + 4 clips of the long file.
    assert_eq!(originals.len(), 30 + 3 + 4);
    let ids: BTreeSet<&str> = originals.iter().map(|r| r.clip_id.as_str()).collect();
    assert_eq!(ids.len(), originals.len(), "clip ids are unique");
    for k in 0..4 {
        assert!(ids.contains(format!("park-paris-7-77-a@{k}").as_str()));
    }

    // Sets and splits, from the lists written above.
    let set_of = |r: &Row| r.set.clone();
    let count = |set: &str| originals.iter().filter(|r| set_of(r) == set).count();
    assert_eq!(count("train"), 18 + 4);
    assert_eq!(count("test"), 9);
    assert_eq!(count("unused"), 6);
    for r in &originals {
        let seg = (0..5).find(|&s| r.clip_id.contains(&seg_name(s).0));
        let expected = match seg {
            Some(0) => Some(5),
            Some(1) => Some(25),
            Some(2) => Some(100),
            None => Some(100), // the long training file
            _ => None,
        };
        assert_eq!(r.split, expected, "split of {}", r.clip_id);
    }

    // The threshold is the mean energy of the training originals (independent recomputation).
    let train_e: Vec<f64> = originals
        .iter()
        .filter(|r| r.set == "train")
        .map(|r| r.energy as f64)
        .collect();
    let mean = train_e.iter().sum::<f64>() / train_e.len() as f64;
    let thr = s.energy_threshold;
    assert!(
        (thr as f64 - mean).abs() < 1e-3 * mean,
        "threshold {thr} vs mean {mean}"
    );
    let meta =
        data_specs::read_shard_meta(&out.join(&Manifest::load(&out).unwrap().shards[0].file))
            .unwrap();
    assert_eq!(meta.energy_threshold, thr);
    assert_eq!(meta.dir_set.irs, vec!["MicA", "MicB", "MicC"]);

    // Energy column = energy of the original waveform: check one 16-bit file against a decode.
    // DIR rows: exactly 2 per eligible clip, none otherwise.
    let mut dir_count: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in rows.iter().filter(|r| r.variant == "dir") {
        dir_count
            .entry(&r.clip_id)
            .or_default()
            .push(r.variant_source.as_deref().unwrap());
    }
    let mut eligible = 0;
    for o in &originals {
        let want = o.set == "train" && o.device == "a" && o.energy > thr;
        let got = dir_count.get(o.clip_id.as_str());
        if want {
            eligible += 1;
            let srcs = got.unwrap_or_else(|| panic!("no DIR rows for {}", o.clip_id));
            assert_eq!(srcs.len(), 2);
            assert_ne!(srcs[0], srcs[1], "two different IRs");
        } else {
            assert!(got.is_none(), "unexpected DIR rows for {}", o.clip_id);
        }
    }
    assert!(
        eligible >= 2,
        "the dataset must exercise DIR ({eligible} eligible)"
    );
    assert!(
        originals
            .iter()
            .any(|o| o.set == "train" && o.device == "a" && o.energy <= thr),
        "the dataset must exercise the energy gate"
    );
    assert!(
        !rows.iter().any(|r| r.variant.starts_with("replay")),
        "replay is off by default"
    );

    // Teacher logits: every row (every variant) carries its file's meta.csv row.
    for r in &rows {
        let row = t.files.iter().position(|f| *f == r.source_file).unwrap();
        let want: Vec<f32> = logits[row * N_CLASSES..(row + 1) * N_CLASSES].to_vec();
        assert_eq!(
            r.logits.as_ref(),
            Some(&want),
            "logits of {} ({})",
            r.clip_id,
            r.variant
        );
    }

    // Original log-mel = LogMel of the decoded, resampled clip (library path, independent of
    // the orchestration).
    let f0 = &t.files[1];
    let audio = pipeline::ingest::decode_wav(&t.root().join(f0)).unwrap();
    let wave = pipeline::resample::resample(&audio.samples, audio.sample_rate, 32_000).unwrap();
    let mut clip = wave.clone();
    clip.resize(32_000, 0.0);
    let lm = pipeline::logmel::LogMel::new(&data_specs::FrontEndConfig::dcase2024()).compute(&clip);
    let r0 = originals.iter().find(|r| r.clip_id == stem(f0)).unwrap();
    assert_eq!(r0.logmel, lm);
    assert!((r0.energy - clip_energy(&clip)).abs() <= 1e-4 * r0.energy.max(1.0));
    // A DIR row differs from its original.
    let d = rows.iter().find(|r| r.variant == "dir").unwrap();
    let o = originals.iter().find(|r| r.clip_id == d.clip_id).unwrap();
    assert_ne!(d.logmel, o.logmel);
}

#[test]
fn parquet_teacher_logits_by_filename_and_missing_is_null() {
    use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, ListBuilder};
    use arrow_array::{ArrayRef, StringArray};
    use std::sync::Arc;
    let t = tiny_dataset();
    let irs = tiny_irs(t.root());
    // Logits for the first half of the files only; keys as `filename`, type List<Float32>.
    let half: Vec<&String> = t.files.iter().take(t.files.len() / 2).collect();
    let mut lb = ListBuilder::new(Float32Builder::new());
    for (i, _) in half.iter().enumerate() {
        for c in 0..N_CLASSES {
            lb.values().append_value(-(i as f32) - c as f32);
        }
        lb.append(true);
    }
    let names: ArrayRef = Arc::new(StringArray::from(
        half.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_from_iter([
        ("filename", names.clone()),
        ("logits", Arc::new(lb.finish()) as ArrayRef),
    ])
    .unwrap();
    let pq = t.root().join("teacher.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&pq).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let out = t.root().join("out");
    run_features(&args(
        t.root(),
        &out,
        &irs,
        &["--teacher-logits", pq.to_str().unwrap()],
    ))
    .unwrap();
    let rows = read_set(&out);
    for r in &rows {
        match half.iter().position(|f| **f == r.source_file) {
            Some(i) => {
                let want: Vec<f32> = (0..N_CLASSES).map(|c| -(i as f32) - c as f32).collect();
                assert_eq!(r.logits.as_ref(), Some(&want), "{}", r.clip_id);
            }
            None => assert_eq!(r.logits, None, "{} must have null logits", r.clip_id),
        }
    }

    // Same by clip_id with FixedSizeList; a wrong width is an error naming the file.
    let mut fb = FixedSizeListBuilder::new(Float32Builder::new(), 3);
    fb.values().append_slice(&[1.0, 2.0, 3.0]);
    fb.append(true);
    let ids: ArrayRef = Arc::new(StringArray::from(vec![stem(&t.files[0])]));
    let batch = RecordBatch::try_from_iter([
        ("clip_id", ids),
        ("logits", Arc::new(fb.finish()) as ArrayRef),
    ])
    .unwrap();
    let bad = t.root().join("bad_teacher.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&bad).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let e = run_features(&args(
        t.root(),
        &t.root().join("out2"),
        &irs,
        &["--teacher-logits", bad.to_str().unwrap()],
    ))
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("bad_teacher.parquet") && msg.contains("3 values"),
        "{msg}"
    );
}

type Key = (String, String, Option<String>);

fn keyed(rows: Vec<Row>) -> BTreeMap<Key, Row> {
    let mut m = BTreeMap::new();
    for r in rows {
        let k = (
            r.clip_id.clone(),
            r.variant.clone(),
            r.variant_source.clone(),
        );
        assert!(m.insert(k.clone(), r).is_none(), "duplicate row {k:?}");
    }
    m
}

#[test]
fn partition_union_equals_whole() {
    let t = tiny_dataset();
    let irs = tiny_irs(t.root());
    let whole = t.root().join("whole");
    let parts = t.root().join("parts");
    run_features(&args(t.root(), &whole, &irs, &[])).unwrap();
    let s0 = run_features(&args(t.root(), &parts, &irs, &["--partition", "0/2"])).unwrap();
    let s1 = run_features(&args(t.root(), &parts, &irs, &["--partition", "1/2"])).unwrap();
    assert!(
        s0.total_rows() > 0 && s1.total_rows() > 0,
        "both partitions get work"
    );
    let a = keyed(read_set(&whole));
    let b = keyed(read_set(&parts));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, ra) in &a {
        assert_eq!(ra, &b[k], "row {k:?} differs");
    }
    // A run with another partition count into the same folder is refused.
    let e = run_features(&args(t.root(), &parts, &irs, &["--partition", "0/3"])).unwrap_err();
    assert!(format!("{e:#}").contains("2-way"), "{e:#}");
}

fn shard_bytes(out: &Path) -> BTreeMap<String, Vec<u8>> {
    pipeline::shards::list_shard_files(out)
        .unwrap()
        .into_iter()
        .map(|n| {
            let b = std::fs::read(out.join(&n)).unwrap();
            (n, b)
        })
        .collect()
}

#[test]
fn resume_after_interruption_gives_identical_shards() {
    let t = tiny_dataset();
    let irs = tiny_irs(t.root());
    let full = t.root().join("full");
    let s = run_features(&args(t.root(), &full, &irs, &["--replay-sim"])).unwrap();
    assert!(
        s.shards_written >= 4,
        "need several shards, got {}",
        s.shards_written
    );
    let reference = shard_bytes(&full);
    let manifest = Manifest::load(&full).unwrap();

    // Interrupted after 2 shards, with a stale half-written file left behind.
    let res = t.root().join("resumed");
    let s1 = run_features(&args(
        t.root(),
        &res,
        &irs,
        &["--replay-sim", "--stop-after-shards", "2"],
    ))
    .unwrap();
    assert_eq!(s1.shards_written, 2);
    assert!(s1.manifest.is_none());
    let stale = res.join("shard-p0of1-00002.parquet.tmp");
    std::fs::write(&stale, b"half a shard").unwrap();
    // ... and a corrupt (truncated) final-named shard.
    let names: Vec<String> = reference.keys().cloned().collect();
    std::fs::write(res.join(&names[3]), &reference[&names[3]][..100]).unwrap();
    let s2 = run_features(&args(t.root(), &res, &irs, &["--replay-sim"])).unwrap();
    assert_eq!(s2.shards_kept, 2);
    assert_eq!(s2.shards_written, s.shards_written - 2);
    assert!(!stale.exists());
    assert_eq!(
        shard_bytes(&res),
        reference,
        "resumed shards are byte-identical"
    );
    assert_eq!(Manifest::load(&res).unwrap(), manifest);

    // Delete one shard of a finished set: the re-run rewrites only it, identically.
    std::fs::remove_file(full.join(&names[1])).unwrap();
    let s3 = run_features(&args(t.root(), &full, &irs, &["--replay-sim"])).unwrap();
    assert_eq!(s3.shards_written, 1);
    assert_eq!(shard_bytes(&full), reference);
    let rows = read_set(&full);
    let sims = rows.iter().filter(|r| r.variant == "replay-sim").count();
    let train = rows
        .iter()
        .filter(|r| r.variant == "original" && r.set == "train")
        .count();
    assert_eq!(sims, train, "one simulated replay per training clip");
    assert!(
        rows.iter()
            .all(|r| r.variant != "replay-sim" || r.set == "train")
    );

    // Another --compression rewrites every shard in that layout, with the same rows; asked
    // again, it keeps them.
    let zstd = ["--replay-sim", "--compression", "zstd"];
    let s4 = run_features(&args(t.root(), &full, &irs, &zstd)).unwrap();
    assert_eq!((s4.shards_kept, s4.shards_written), (0, s.shards_written));
    let want = Some(pipeline::shards::ShardCompression::Zstd.codec());
    for name in &names {
        assert_eq!(
            pipeline::shards::shard_codec(&full.join(name)).unwrap(),
            want
        );
    }
    assert_eq!(read_set(&full), rows);
    let s5 = run_features(&args(t.root(), &full, &irs, &zstd)).unwrap();
    assert_eq!((s5.shards_kept, s5.shards_written), (s.shards_written, 0));
}

/// A file the previous `--on-error skip` run left out is retried; once fixed, it gets its DIR
/// copies and the DIR shards (whose files it shifts) are written again: the folder then holds
/// the rows of a clean run, none twice, none missing.
#[test]
fn a_fixed_skipped_file_gets_its_dir_copies_as_in_a_clean_run() {
    let t = tiny_dataset();
    let irs = tiny_irs(t.root());
    // files[0]: a device-a training file; threshold 0 makes its clip eligible for DIR.
    let p = t.root().join(&t.files[0]);
    let good = std::fs::read(&p).unwrap();
    std::fs::write(&p, &good[..good.len() / 2]).unwrap();
    let extra = ["--energy-threshold", "0", "--on-error", "skip"];
    let out = t.root().join("out");
    let s = run_features(&args(t.root(), &out, &irs, &extra)).unwrap();
    assert_eq!(s.skipped.len(), 1);
    std::fs::write(&p, &good).unwrap();
    let s = run_features(&args(t.root(), &out, &irs, &extra)).unwrap();
    assert_eq!(s.retried, 1);
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    let clean = t.root().join("clean");
    run_features(&args(t.root(), &clean, &irs, &extra)).unwrap();
    let rows = keyed(read_set(&out));
    assert!(
        rows.values()
            .any(|r| r.variant == "dir" && r.source_file == t.files[0]),
        "DIR rows of the fixed file"
    );
    assert_eq!(rows, keyed(read_set(&clean)));
}

/// The one-pass design against the two-pass one it replaces (an energy pass over every
/// training file, then the shard pass), on a small demo dataset with the default MicIRP set:
/// the threshold is bit-identical to the mean clip energy of all training files computed by a
/// separate pass of the library's decode, resample and energy (f64 sum in meta.csv order); DIR
/// rows exist exactly for the device-`a` training clips above it, each with the `--dir-variants`
/// responses `choose_irs` draws, in that order; and a run given that threshold upfront writes
/// byte-identical shards.
#[test]
fn one_pass_threshold_and_variants_equal_two_pass_on_demo() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("demo");
    pipeline::synth::generate(&pipeline::synth::SynthArgs {
        out: root.clone(),
        seed: 7,
        scale: 0.01,
        force: false,
        threads: None,
    })
    .unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "--dataset".to_string(),
            root.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--files-per-shard".into(),
            "64".into(),
            "--quiet".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        run_features(&FeaturesArgs::parse_args(a).unwrap()).unwrap()
    };
    let out = dir.path().join("one-pass");
    let s = run(&out, &[]);

    // The two-pass reference threshold.
    let ds = pipeline::ingest::Dataset::load(
        &root,
        &pipeline::ingest::IngestOptions {
            splits_dir: None,
            on_error: pipeline::ingest::OnError::Fail,
            ..Default::default()
        },
    )
    .unwrap();
    let (mut sum, mut n) = (0f64, 0u64);
    for &r in &ds.usable {
        if ds.sets[r] != data_specs::ClipSet::Train {
            continue;
        }
        let a = pipeline::ingest::decode_wav(&ds.audio_path(r)).unwrap();
        let wave = pipeline::resample::resample(&a.samples, a.sample_rate, 32_000).unwrap();
        for (_, c) in pipeline::ingest::cut_clips(&wave, 32_000) {
            sum += clip_energy(&c) as f64;
            n += 1;
        }
    }
    let thr = (sum / n as f64) as f32;
    assert_eq!(s.energy_threshold.to_bits(), thr.to_bits(), "threshold");
    assert!(n > 50, "{n} training clips");

    // Variants: DIR rows exactly for the eligible clips, with the drawn responses.
    let rows = read_set(&out);
    let irs = pipeline::dir::load_dir_set(&pipeline::dir::default_dir_folder(), 32_000).unwrap();
    let mut dirs: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in rows.iter().filter(|r| r.variant == "dir") {
        dirs.entry(&r.clip_id)
            .or_default()
            .push(r.variant_source.as_deref().unwrap());
    }
    let mut eligible = 0;
    for o in rows.iter().filter(|r| r.variant == "original") {
        let got = dirs.remove(o.clip_id.as_str());
        if o.set == "train" && o.device == "a" && o.energy > thr {
            eligible += 1;
            let want: Vec<&str> = pipeline::dir::choose_irs(&o.clip_id, 2024, irs.len(), 4)
                .into_iter()
                .map(|i| irs[i].name.as_str())
                .collect();
            assert_eq!(got, Some(want), "DIR rows of {}", o.clip_id);
        } else {
            assert_eq!(got, None, "DIR rows of {}", o.clip_id);
        }
    }
    assert!(dirs.is_empty(), "DIR rows without an original: {dirs:?}");
    let below = rows
        .iter()
        .filter(|r| r.variant == "original" && r.set == "train" && r.device == "a")
        .count()
        - eligible;
    assert!(
        eligible > 5 && below > 5,
        "{eligible} eligible, {below} below"
    );
    assert_eq!(
        s.dir_files, eligible,
        "pass 2 decodes the eligible files only"
    );

    // The threshold given upfront: the same shards, byte for byte.
    let given = dir.path().join("given");
    let s2 = run(&given, &["--energy-threshold", &thr.to_string()]);
    assert_eq!(s2.energy_threshold.to_bits(), thr.to_bits());
    assert_eq!(shard_bytes(&given), shard_bytes(&out));
}

#[test]
fn real_replays_are_aligned_and_cut() {
    let t = tiny_dataset();
    let irs = tiny_irs(t.root());
    // Replays of two files: the original delayed by 300 samples (44.1 kHz) and attenuated.
    let rep = t.root().join("replays");
    std::fs::create_dir_all(rep.join("audio")).unwrap();
    for f in &t.files[..2] {
        let a = pipeline::ingest::decode_wav(&t.root().join(f)).unwrap();
        let mut d = vec![0.0f32; 300];
        d.extend(a.samples.iter().map(|x| x * 0.5));
        write_wav(&rep.join(f), &d, Fmt::F32);
    }
    let out = t.root().join("out");
    run_features(&args(
        t.root(),
        &out,
        &irs,
        &["--replay-dir", rep.to_str().unwrap(), "--dir-variants", "0"],
    ))
    .unwrap();
    let rows = read_set(&out);
    let replays: Vec<&Row> = rows.iter().filter(|r| r.variant == "replay").collect();
    assert_eq!(replays.len(), 2);
    for r in replays {
        let o = rows
            .iter()
            .find(|o| o.clip_id == r.clip_id && o.variant == "original")
            .unwrap();
        // Aligned and halved: energy a quarter of the original's (up to edge samples).
        let ratio = r.energy / o.energy;
        assert!((ratio - 0.25).abs() < 0.02, "energy ratio {ratio}");
        assert!(
            r.variant_source
                .as_deref()
                .unwrap()
                .ends_with(&r.source_file)
        );
    }
    assert!(!rows.iter().any(|r| r.variant == "dir"));
}

fn expect_error(t: &Tiny, needle: &str, skip_reason: &str) {
    let irs = tiny_irs(t.root());
    let out = t.root().join("out-err");
    let e = run_features(&args(t.root(), &out, &irs, &[])).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains(needle), "error '{msg}' must name '{needle}'");
    assert!(
        pipeline::shards::list_shard_files(&out)
            .map(|v| v.is_empty())
            .unwrap_or(true)
            || !std::fs::read_dir(&out).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")),
        "no half-written shard"
    );
    // With --on-error skip: the run succeeds and the report names the file.
    let out = t.root().join("out-skip");
    let s = run_features(&args(t.root(), &out, &irs, &["--on-error", "skip"])).unwrap();
    assert!(
        s.skipped
            .iter()
            .any(|k| k.file.contains(needle) && k.reason.contains(skip_reason)),
        "{:?}",
        s.skipped
    );
    let report = std::fs::read_to_string(out.join("skipped.tsv")).unwrap();
    assert!(report.contains(needle), "{report}");
    for e in std::fs::read_dir(&out).unwrap() {
        assert!(!e.unwrap().file_name().to_string_lossy().ends_with(".tmp"));
    }
    read_set(&out);
}

#[test]
fn missing_audio_file_is_named() {
    let t = tiny_dataset();
    std::fs::remove_file(t.root().join(&t.files[4])).unwrap();
    expect_error(&t, &stem(&t.files[4]), "missing");
}

#[test]
fn truncated_wav_is_named() {
    let t = tiny_dataset();
    let p = t.root().join(&t.files[7]);
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() / 2]).unwrap();
    expect_error(&t, &stem(&t.files[7]), "decode");
}

#[test]
fn non_wav_file_is_named() {
    let t = tiny_dataset();
    std::fs::write(t.root().join(&t.files[2]), b"this is not audio").unwrap();
    expect_error(&t, &stem(&t.files[2]), "decode");
}

#[test]
fn unsupported_sample_format_is_named() {
    let t = tiny_dataset();
    // A-law (format tag 6), 8 bits: a valid RIFF/WAVE header hound does not decode.
    let mut b = Vec::new();
    let data = vec![0u8; 8000];
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&6u16.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&8000u32.to_le_bytes());
    b.extend_from_slice(&8000u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&8u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&data);
    std::fs::write(t.root().join(&t.files[5]), b).unwrap();
    expect_error(&t, &stem(&t.files[5]), "decode");
}

#[test]
fn split_file_with_unknown_clip_is_named() {
    let t = tiny_dataset();
    let p = t.root().join("split_setup/split25.csv");
    let mut s = std::fs::read_to_string(&p).unwrap();
    s.push_str("audio/tram-nowhere-1-1-0-a.wav\ttram\n");
    std::fs::write(&p, s).unwrap();
    expect_error(&t, "split25.csv", "not in meta.csv");
}

#[test]
fn empty_folder_and_cli_errors_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let e = run_features(
        &FeaturesArgs::parse_args([
            "--dataset",
            dir.path().to_str().unwrap(),
            "--out",
            dir.path().join("o").to_str().unwrap(),
            "-q",
        ])
        .unwrap(),
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains(dir.path().to_str().unwrap()) && msg.contains("meta.csv"),
        "{msg}"
    );
    // The binary: exit code 1 with the message on stderr, no panic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args([
            "features",
            "--dataset",
            dir.path().to_str().unwrap(),
            "--out",
        ])
        .arg(dir.path().join("o"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("meta.csv") && !err.contains("panicked"),
        "{err}"
    );
    // `inspect` on a folder without shards.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["inspect"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no shard"));
}

#[test]
fn inspect_prints_schema_metadata_and_counts() {
    let t = tiny_dataset();
    let irs = tiny_irs(t.root());
    let out = t.root().join("out");
    run_features(&args(t.root(), &out, &irs, &[])).unwrap();
    let rows = read_set(&out);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["inspect", "--verify"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("logmel") && text.contains("FixedSizeList"),
        "{text}"
    );
    assert!(text.contains("asc.energy_threshold"), "{text}");
    assert!(text.contains(&format!("rows: {}", rows.len())), "{text}");
    let n_dir = rows.iter().filter(|r| r.variant == "dir").count();
    assert!(text.contains(&format!("dir: {n_dir}")), "{text}");
    assert!(text.contains("teacher logits: 0 of"), "{text}");
    assert!(text.contains("checksums verified"), "{text}");
}

/// Opens the shards with pyarrow and DuckDB (pipeline/tests/python/check_shards.py). Fails when
/// they are missing unless ASC_SKIP_PYTHON=1.
#[test]
fn python_readers_accept_the_shards() {
    if std::env::var("ASC_SKIP_PYTHON").is_ok_and(|v| v == "1") {
        eprintln!("ASC_SKIP_PYTHON=1: skipping the pyarrow/DuckDB check");
        return;
    }
    let python = std::env::var("ASC_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_shards.py");
    let probe = std::process::Command::new(&python)
        .args(["-c", "import pyarrow, duckdb"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        other => panic!(
            "{python} cannot import pyarrow and duckdb ({other:?}).\nInstall them: {python} -m pip install -r pipeline/tests/python/requirements.txt\n(or set ASC_PYTHON to an interpreter that has them, or ASC_SKIP_PYTHON=1 to skip)"
        ),
    }
    let t = tiny_dataset();
    let irs = tiny_irs(t.root());
    let n = t.files.len();
    let npy = t.root().join("teacher.npy");
    write_npy_f32(&npy, n, N_CLASSES, &vec![0.5; n * N_CLASSES]).unwrap();
    // float32 uncompressed (the default) and float16 with zstd + BYTE_STREAM_SPLIT.
    for (name, extra) in [
        ("f32", &[][..]),
        (
            "f16-zstd",
            &["--logmel-type", "float16", "--compression", "zstd"][..],
        ),
    ] {
        let out = t.root().join(name);
        let mut a = vec!["--teacher-logits", npy.to_str().unwrap(), "--replay-sim"];
        a.extend(extra);
        run_features(&args(t.root(), &out, &irs, &a)).unwrap();
        let rows = read_set(&out);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &rows {
            *counts.entry(r.variant.as_str()).or_default() += 1;
        }
        let expected: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let o = std::process::Command::new(&python)
            .arg(&script)
            .arg(&out)
            .arg(expected.join(","))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "check_shards.py failed on the {name} shards:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        println!("{name}: {}", String::from_utf8_lossy(&o.stdout).trim());
    }
}

/// `--logmel-type float16`: the same rows as float32, every log-mel value the float32 value
/// rounded to nearest binary16, the metadata says so, and the set is about half the size.
#[test]
fn float16_logmel_rounds_the_float32_values_and_halves_the_set() {
    let t = tiny_dataset();
    let irs = tiny_irs(t.root());
    let (a, b) = (t.root().join("f32"), t.root().join("f16"));
    run_features(&args(t.root(), &a, &irs, &[])).unwrap();
    run_features(&args(t.root(), &b, &irs, &["--logmel-type", "float16"])).unwrap();
    let first = |d: &Path| d.join(&Manifest::load(d).unwrap().shards[0].file);
    let meta = data_specs::read_shard_meta(&first(&b)).unwrap();
    assert_eq!(meta.logmel_type, data_specs::LogmelType::Float16);
    assert_eq!(meta.spec_version, data_specs::SPEC_VERSION);
    let (ra, rb) = (keyed(read_set(&a)), keyed(read_set(&b)));
    assert_eq!(ra.keys().collect::<Vec<_>>(), rb.keys().collect::<Vec<_>>());
    for (k, x) in &ra {
        let y = &rb[k];
        let rounded: Vec<f32> = x
            .logmel
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect();
        assert_eq!(y.logmel, rounded, "log-mel of {k:?}");
        let strip = |r: &Row| Row {
            logmel: Vec::new(),
            ..r.clone()
        };
        assert_eq!(strip(x), strip(y), "{k:?}");
    }
    let size = |d: &Path| -> u64 {
        pipeline::shards::list_shard_files(d)
            .unwrap()
            .iter()
            .map(|n| std::fs::metadata(d.join(n)).unwrap().len())
            .sum()
    };
    let ratio = size(&b) as f64 / size(&a) as f64;
    println!("float16 / float32 shard bytes: {ratio:.3}");
    assert!((0.45..0.55).contains(&ratio), "{ratio}");
}

/// The scene of a TAU-style file name (`audio/<scene>-...`): the label a labelled list gives.
fn scene_of(f: &str) -> &str {
    f.trim_start_matches("audio/")
        .split('-')
        .next()
        .unwrap_or("")
}
