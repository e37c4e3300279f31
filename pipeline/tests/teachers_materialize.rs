//! Tests of `pipeline teachers`: joining teacher logits into a shard set made by `pipeline
//! features` on a tiny generated dataset (every row kept, every variant gets its clip's logits,
//! null when missing), crash safety of the rewrite (injected failures leave the previous set
//! byte-identical), swap recovery, and fuse-logits end to end against a naive reference.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type};
use arrow_array::{Array, RecordBatch};
use data_specs::{ClipSet, Manifest, col};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pipeline::features::{FeaturesArgs, run_features};
use pipeline::materialize::{
    FuseArgs, JoinOptions, JoinSet, LogitsLookup, join_teacher_logits, recover_interrupted_swap,
    run_fuse, write_logits_table,
};
use pipeline::shards::{Codec, ShardCompression};
use pipeline::teacher::TeacherLogits;

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

fn write_wav(path: &Path, samples: &[f32]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SR,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &x in samples {
        w.write_sample((x * 32767.0).round() as i16).unwrap();
    }
    w.finalize().unwrap();
}

/// A tiny TAU-layout dataset (3 scenes x 4 segments x 2 seconds x devices a, b; segments 0-2
/// train, segment 3 test; plus a 2.5 s recording cut into 3 clips `@0..@2`), three impulse
/// responses, and its shards (4 files per shard, 2 DIR variants per clip) in `<tmp>/data`.
struct Tiny {
    tmp: tempfile::TempDir,
}

impl Tiny {
    fn new() -> Self {
        Self::with_flags(&[])
    }

    /// The tiny dataset featurized with extra `pipeline features` flags.
    fn with_flags(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ds");
        for d in ["audio", "evaluation_setup", "split_setup"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let mut meta = String::from("filename\tscene_label\tidentifier\tsource_label\n");
        let (mut train, mut test) = (Vec::new(), Vec::new());
        let mut n = 0u64;
        for (s, scene) in ["airport", "bus", "park"].iter().enumerate() {
            for seg in 0..4 {
                for idx in 0..2 {
                    for dev in ["a", "b"] {
                        let f = format!("audio/{scene}-lisbon-1{s}{seg}-50{seg}-{idx}-{dev}.wav");
                        let amp = [0.05, 0.3, 0.12, 0.5][(n % 4) as usize];
                        write_wav(&root.join(&f), &noise(n + 1, SR as usize, amp));
                        meta.push_str(&format!("{f}\t{scene}\tlisbon-1{s}{seg}\t{dev}\n"));
                        if seg < 3 { &mut train } else { &mut test }.push(f);
                        n += 1;
                    }
                }
            }
        }
        let long = "audio/park-paris-7-77-a.wav".to_string();
        write_wav(&root.join(&long), &noise(999, SR as usize * 5 / 2, 0.4));
        meta.push_str(&format!("{long}\tpark\tparis-7\ta\n"));
        train.push(long);
        std::fs::write(root.join("meta.csv"), meta).unwrap();
        let list = |names: &[String]| {
            let mut s = String::from("filename\tscene_label\n");
            for f in names {
                s.push_str(&format!("{f}\t{}\n", scene_of(f)));
            }
            s
        };
        let ev = root.join("evaluation_setup");
        std::fs::write(ev.join("fold1_train.csv"), list(&train)).unwrap();
        std::fs::write(ev.join("fold1_evaluate.csv"), list(&test)).unwrap();
        let first: Vec<String> = train
            .iter()
            .filter(|f| f.contains("-500-"))
            .cloned()
            .collect();
        let sp = root.join("split_setup");
        for p in [5, 10, 25, 50] {
            std::fs::write(sp.join(format!("split{p}.csv")), list(&first)).unwrap();
        }
        std::fs::write(sp.join("split100.csv"), list(&train)).unwrap();
        std::fs::write(sp.join("test.csv"), list(&test)).unwrap();
        let irs = tmp.path().join("irs");
        std::fs::create_dir_all(&irs).unwrap();
        for (i, name) in ["MicA", "MicB", "MicC"].iter().enumerate() {
            let mut h = noise(100 + i as u64, 400, 0.3);
            for (k, x) in h.iter_mut().enumerate() {
                *x *= (-(k as f32) / 60.0).exp();
            }
            h[0] = 1.0;
            write_wav(&irs.join(format!("{name}.wav")), &h);
        }
        let out = tmp.path().join("data");
        let mut flags = vec![
            "--dataset",
            root.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--dirs",
            irs.to_str().unwrap(),
            "--dir-variants",
            "2",
            "--files-per-shard",
            "12",
            "--row-group-rows",
            "16",
            "--quiet",
        ];
        flags.extend_from_slice(extra);
        let args = FeaturesArgs::parse_args(flags).unwrap();
        run_features(&args).unwrap();
        Tiny { tmp }
    }

    fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }
}

/// Every batch of every shard, in manifest order, with the shard's file-level metadata.
fn read_set(dir: &Path) -> Vec<(String, Vec<RecordBatch>, HashMap<String, String>)> {
    let m = Manifest::load(dir).unwrap();
    m.shards
        .iter()
        .map(|e| {
            let f = std::fs::File::open(dir.join(&e.file)).unwrap();
            let b = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
            let kv = HashMap::from(b.schema().metadata());
            let batches = b.build().unwrap().map(|r| r.unwrap()).collect();
            (e.file.clone(), batches, kv)
        })
        .collect()
}

fn strings(b: &RecordBatch, name: &str) -> Vec<String> {
    let a = b.column(b.schema().index_of(name).unwrap());
    match a.as_dictionary_opt::<Int32Type>() {
        Some(d) => {
            let v = d.values().as_string::<i32>();
            d.keys()
                .iter()
                .map(|k| v.value(k.unwrap() as usize).to_string())
                .collect()
        }
        None => a
            .as_string::<i32>()
            .iter()
            .map(|s| s.unwrap().to_string())
            .collect(),
    }
}

fn logits_of(b: &RecordBatch) -> Vec<Option<Vec<f32>>> {
    let a = b
        .column(b.schema().index_of(col::TEACHER_LOGITS).unwrap())
        .as_fixed_size_list();
    (0..a.len())
        .map(|r| {
            (!a.is_null(r)).then(|| a.value(r).as_primitive::<Float32Type>().values().to_vec())
        })
        .collect()
}

/// File name -> bytes of every file in a folder.
fn folder_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Teacher `t`'s made-up logits for a recording stem: distinct per stem, class and teacher.
fn fake_logits(stem: &str, t: usize) -> Vec<f32> {
    let h = stem
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    (0..N_CLASSES)
        .map(|c| ((h % 97) as f32 * 0.01 + c as f32 * 0.3 - t as f32 * 0.7).sin() * 3.0)
        .collect()
}

fn stem_of(clip_id: &str) -> &str {
    clip_id.split('@').next().unwrap()
}

fn no_leftovers(dir: &Path) {
    for suffix in [".teachers-new", ".teachers-old"] {
        let mut s = dir.as_os_str().to_owned();
        s.push(suffix);
        assert!(!PathBuf::from(s).exists(), "leftover {suffix} folder");
    }
    assert!(!dir.join("manifest.json.lock").exists(), "leftover lock");
}

#[test]
fn join_keeps_every_row_and_every_variant_gets_its_clips_logits() {
    // zstd shards (not the default): the rewrite must keep the shards' codec.
    let t = Tiny::with_flags(&["--compression", "zstd"]);
    let data = t.data();
    let before = read_set(&data);
    let codecs = |dir: &Path| -> Vec<Option<Codec>> {
        let m = Manifest::load(dir).unwrap();
        m.shards
            .iter()
            .map(|e| {
                let file = std::fs::File::open(dir.join(&e.file)).unwrap();
                let b = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
                Codec::of_file(b.metadata())
            })
            .collect()
    };
    let zstd = Some(ShardCompression::Zstd.codec());
    assert!(codecs(&data).iter().all(|c| *c == zstd));
    assert!(
        before.len() >= 3,
        "want several shards, got {}",
        before.len()
    );
    // A logits table keyed by recording stem (so `@k` clips resolve), for every clip of every
    // set except one training clip and one test clip.
    let mut ids = Vec::new();
    let mut stems = std::collections::BTreeSet::new();
    for (_, batches, _) in &before {
        for b in batches {
            stems.extend(
                strings(b, col::CLIP_ID)
                    .iter()
                    .map(|c| stem_of(c).to_string()),
            );
        }
    }
    let missing_train = "airport-lisbon-100-500-1-b";
    let missing_test = "bus-lisbon-113-503-0-a";
    assert!(stems.contains(missing_train) && stems.contains(missing_test));
    let mut values = Vec::new();
    for s in &stems {
        if s == missing_train || s == missing_test {
            continue;
        }
        ids.push(s.clone());
        values.extend(fake_logits(s, 0));
    }
    let table = t.tmp.path().join("t0.parquet");
    write_logits_table(&table, &ids, &values, N_CLASSES).unwrap();
    let lookup = TeacherLogits::load(&table, &[], N_CLASSES).unwrap();
    let opts = JoinOptions {
        sets: vec![ClipSet::Train],
        description: "test teacher t0".into(),
        fail_after_shards: None,
    };
    let report = join_teacher_logits(&data, &lookup, &opts).unwrap();
    no_leftovers(&data);
    let after = read_set(&data);
    assert_eq!(before.len(), after.len());
    let mut rows = 0u64;
    let mut with = 0u64;
    let mut variants_seen = std::collections::BTreeSet::new();
    for ((fa, ba, _), (fb, bb, kv)) in before.iter().zip(&after) {
        assert_eq!(fa, fb);
        assert_eq!(
            kv.get("asc.teacher").map(String::as_str),
            Some("test teacher t0")
        );
        assert_eq!(ba.len(), bb.len());
        for (a, b) in ba.iter().zip(bb) {
            assert_eq!(a.num_rows(), b.num_rows());
            // Every other column is identical, value for value (floats compared bitwise).
            for (i, field) in a.schema().fields().iter().enumerate() {
                if field.name() == col::TEACHER_LOGITS {
                    continue;
                }
                assert_eq!(
                    a.column(i).to_data(),
                    b.column(i).to_data(),
                    "column {}",
                    field.name()
                );
            }
        }
        for b in bb {
            let ids = strings(b, col::CLIP_ID);
            let sets = strings(b, col::SET);
            let vars = strings(b, col::VARIANT);
            for ((id, set), (v, got)) in ids.iter().zip(&sets).zip(vars.iter().zip(logits_of(b))) {
                rows += 1;
                variants_seen.insert(v.clone());
                let stem = stem_of(id);
                let expected =
                    (set == "train" && stem != missing_train).then(|| fake_logits(stem, 0));
                assert_eq!(got, expected, "row {id} ({set}, {v})");
                with += u64::from(got.is_some());
            }
        }
    }
    assert!(variants_seen.contains("dir") && variants_seen.contains("original"));
    assert_eq!(report.rows, rows);
    assert_eq!(report.rows_with_logits, with);
    // The training clip without logits (its original and DIR rows: one clip id).
    assert_eq!(report.clips_without_logits, 1);
    // The manifest lists the new files with their true checksums.
    let m = Manifest::load(&data).unwrap();
    for e in &m.shards {
        assert_eq!(
            pipeline::shards::sha256_file(&data.join(&e.file)).unwrap(),
            e.sha256
        );
    }
    // The other files of the folder came along, and the codec stayed.
    assert!(data.join("energy-threshold.json").is_file());
    assert!(codecs(&data).iter().all(|c| *c == zstd));
}

/// A lookup that gives 9 values for one clip: the class mismatch is found midway.
struct BadRow<'a> {
    inner: &'a TeacherLogits,
    bad: String,
    short: Vec<f32>,
}

impl LogitsLookup for BadRow<'_> {
    fn n_classes(&self) -> usize {
        N_CLASSES
    }
    fn logits(&self, clip_id: &str) -> Option<&[f32]> {
        if clip_id == self.bad {
            Some(&self.short)
        } else {
            self.inner.get(clip_id)
        }
    }
}

#[test]
fn failed_rewrite_leaves_the_previous_set_intact() {
    let t = Tiny::new();
    let data = t.data();
    let original = folder_bytes(&data);
    let ids: Vec<String> = vec!["park-paris-7-77-a".into(), "bus-lisbon-112-502-1-b".into()];
    let values: Vec<f32> = ids.iter().flat_map(|s| fake_logits(s, 1)).collect();
    let table = t.tmp.path().join("t1.parquet");
    write_logits_table(&table, &ids, &values, N_CLASSES).unwrap();
    let lookup = TeacherLogits::load(&table, &[], N_CLASSES).unwrap();
    let opts = |k| JoinOptions {
        sets: vec![ClipSet::Train],
        description: "x".into(),
        fail_after_shards: k,
    };
    // 1. Failure after one new shard was written and verified.
    let err = join_teacher_logits(&data, &lookup, &opts(Some(1))).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(folder_bytes(&data), original);
    no_leftovers(&data);
    // 2. A row with the wrong number of classes, in the LAST shard.
    let last = Manifest::load(&data)
        .unwrap()
        .shards
        .last()
        .unwrap()
        .file
        .clone();
    let f = std::fs::File::open(data.join(&last)).unwrap();
    let b = ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let bad_id = b
        .flat_map(|r| {
            let r = r.unwrap();
            strings(&r, col::CLIP_ID)
                .into_iter()
                .zip(strings(&r, col::SET))
        })
        .find(|(_, s)| s == "train")
        .expect("a training row in the last shard")
        .0;
    let bad = BadRow {
        inner: &lookup,
        bad: bad_id.clone(),
        short: vec![0.5; N_CLASSES - 1],
    };
    let err = join_teacher_logits(&data, &bad, &opts(None)).unwrap_err();
    assert!(err.to_string().contains(&bad_id), "{err}");
    assert_eq!(folder_bytes(&data), original);
    no_leftovers(&data);
    // 3. A table of another class count is refused before anything is written.
    let t9 = t.tmp.path().join("t9.parquet");
    write_logits_table(&t9, &ids[..1], &[0.0; 9], 9).unwrap();
    let l9 = TeacherLogits::load(&t9, &[], 9).unwrap();
    let err = join_teacher_logits(&data, &l9, &opts(None)).unwrap_err();
    assert!(err.to_string().contains("9 classes"), "{err}");
    assert_eq!(folder_bytes(&data), original);
    // The set is still readable and complete.
    let m = Manifest::load(&data).unwrap();
    for e in &m.shards {
        pipeline::shards::check_shard(&data.join(&e.file), None).unwrap();
    }
    // 4. A crash between the two renames: both complete sets beside an empty name. The next
    // run moves the complete new set in.
    join_teacher_logits(&data, &lookup, &opts(None)).unwrap();
    let joined = folder_bytes(&data);
    let sib = |s: &str| {
        let mut p = data.as_os_str().to_owned();
        p.push(s);
        PathBuf::from(p)
    };
    std::fs::rename(&data, sib(".teachers-new")).unwrap();
    std::fs::create_dir(sib(".teachers-old")).unwrap();
    for (name, bytes) in &original {
        std::fs::write(sib(".teachers-old").join(name), bytes).unwrap();
    }
    recover_interrupted_swap(&data).unwrap();
    assert_eq!(folder_bytes(&data), joined);
    no_leftovers(&data);
    // ... and an incomplete new set (no manifest yet) is dropped, the old one moves back.
    std::fs::rename(&data, sib(".teachers-old")).unwrap();
    std::fs::create_dir(sib(".teachers-new")).unwrap();
    std::fs::write(
        sib(".teachers-new").join("shard-p0of1-00000.parquet"),
        b"partial",
    )
    .unwrap();
    recover_interrupted_swap(&data).unwrap();
    assert_eq!(folder_bytes(&data), joined);
    no_leftovers(&data);
}

#[test]
fn fuse_logits_fits_reports_and_joins_the_fused_logits() {
    let t = Tiny::new();
    let data = t.data();
    // Labels of the original rows (scene -> label index through the shard vocabulary).
    let meta =
        data_specs::read_shard_meta(&data.join(&Manifest::load(&data).unwrap().shards[0].file))
            .unwrap();
    let mut label_of: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (_, batches, _) in read_set(&data) {
        for b in &batches {
            let ids = strings(b, col::CLIP_ID);
            let sets = strings(b, col::SET);
            let labels = b
                .column(b.schema().index_of(col::LABEL).unwrap())
                .as_primitive::<Int32Type>()
                .clone();
            for (r, id) in ids.iter().enumerate() {
                label_of.insert(id.clone(), (labels.value(r) as usize, sets[r].clone()));
            }
        }
    }
    assert_eq!(meta.n_classes(), N_CLASSES);
    // Three teachers: a good one (label + noise), a weak one, a noise one; keyed by clip id.
    let mut paths = Vec::new();
    let mut tables: Vec<HashMap<String, Vec<f32>>> = Vec::new();
    for k in 0..3 {
        let mut ids = Vec::new();
        let mut values = Vec::new();
        let mut map = HashMap::new();
        for (id, (y, _)) in &label_of {
            let mut v = fake_logits(id, k);
            v[*y] += [4.0, 1.0, 0.0][k];
            ids.push(id.clone());
            values.extend_from_slice(&v);
            map.insert(id.clone(), v);
        }
        let p = t.tmp.path().join(format!("teacher{k}.parquet"));
        write_logits_table(&p, &ids, &values, N_CLASSES).unwrap();
        paths.push(p);
        tables.push(map);
    }
    let report_path = t.tmp.path().join("fusion.json");
    let args = FuseArgs {
        shards: data.clone(),
        logits: paths,
        average: false,
        split: None,
        ridge: 1e-4,
        alpha_ridge: 0.0,
        out_report: Some(report_path.clone()),
        out_logits: None,
        join_set: JoinSet::Train,
        no_join: false,
    };
    let report = run_fuse(&args).unwrap();
    assert!(report_path.is_file());
    // Independent check of the per-teacher accuracy: naive argmax over the training clips.
    let train: Vec<(&String, usize)> = label_of
        .iter()
        .filter(|(_, (_, s))| s == "train")
        .map(|(id, (y, _))| (id, *y))
        .collect();
    assert_eq!(report.fused.train.clips, train.len());
    for (k, table) in tables.iter().enumerate() {
        let hits = train
            .iter()
            .filter(|(id, y)| {
                let v = &table[*id];
                let best = (0..N_CLASSES)
                    .max_by(|&a, &b| v[a].total_cmp(&v[b]))
                    .unwrap();
                best == *y
            })
            .count();
        let acc = hits as f64 / train.len() as f64;
        assert!(
            (report.teacher_scores[k].train.accuracy - acc).abs() < 1e-12,
            "teacher {k}"
        );
    }
    // The fit minimizes the training cross-entropy; the average is one candidate.
    assert!(report.fused.train.cross_entropy <= report.averaged.train.cross_entropy + 1e-9);
    // So is each single teacher (alpha = e_k, beta = 0).
    for (k, s) in report.teacher_scores.iter().enumerate() {
        assert!(
            report.fused.train.cross_entropy <= s.train.cross_entropy + 1e-9,
            "teacher {k}"
        );
    }
    // Joined: training rows hold sum_k alpha_k logits_k + beta (recomputed here), others null.
    for (_, batches, kv) in read_set(&data) {
        assert!(
            kv["asc.teacher"].contains("alpha = ["),
            "{}",
            kv["asc.teacher"]
        );
        for b in &batches {
            let ids = strings(b, col::CLIP_ID);
            let sets = strings(b, col::SET);
            for ((id, set), got) in ids.iter().zip(&sets).zip(logits_of(b)) {
                if set != "train" {
                    assert!(got.is_none(), "{id}");
                    continue;
                }
                let got = got.unwrap_or_else(|| panic!("{id} has no logits"));
                for (c, g) in got.iter().enumerate() {
                    let h: f64 = report.fusion.beta[c]
                        + (0..3)
                            .map(|k| report.fusion.alpha[k] * tables[k][id][c] as f64)
                            .sum::<f64>();
                    assert!((*g as f64 - h).abs() < 1e-4, "{id} class {c}: {g} vs {h}");
                }
            }
        }
    }
    no_leftovers(&data);
}

/// The scene of a TAU-style file name (`audio/<scene>-...`): the label a labelled list gives.
fn scene_of(f: &str) -> &str {
    f.trim_start_matches("audio/")
        .split('-')
        .next()
        .unwrap_or("")
}
