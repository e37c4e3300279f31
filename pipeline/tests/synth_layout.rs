//! `pipeline synth` writes exactly the TAU22 development layout: parsed back here with code
//! independent of the generator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use data_specs::{TAU22_DEVICES, TAU22_LABELS, TAU22_UNSEEN_DEVICES, TauFileName};
use pipeline::synth::{SynthArgs, generate};

/// Reads a TAB-separated list: (header, rows).
fn read_tsv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header = lines
        .next()
        .expect("header")
        .split('\t')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect();
    (header, rows)
}

fn args(out: &Path, seed: u64) -> SynthArgs {
    SynthArgs {
        out: out.to_path_buf(),
        seed,
        scale: 0.2,
        force: false,
        threads: None,
    }
}

#[test]
fn synth_writes_the_tau22_layout() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    generate(&args(&out, 7)).expect("synth");

    // Audio files: every name parses, every WAV is 1 s, 44.1 kHz, 24-bit mono.
    let mut audio: BTreeSet<String> = BTreeSet::new();
    for e in std::fs::read_dir(out.join("audio")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        let f = TauFileName::parse(&name).unwrap_or_else(|| panic!("bad name {name}"));
        assert!(TAU22_LABELS.contains(&f.scene.as_str()), "{name}");
        assert!(TAU22_DEVICES.contains(&f.device.as_str()), "{name}");
        assert!(f.index <= 9, "{name}");
        assert!(name.ends_with(".wav"), "{name}");
        audio.insert(format!("audio/{name}"));
    }
    assert!(audio.len() >= 1000, "{} clips", audio.len());
    for (k, name) in audio.iter().enumerate() {
        if k % 37 != 0 {
            continue;
        }
        let r = hound::WavReader::open(out.join(name)).unwrap();
        let s = r.spec();
        assert_eq!(
            (
                s.channels,
                s.sample_rate,
                s.bits_per_sample,
                s.sample_format
            ),
            (1, 44_100, 24, hound::SampleFormat::Int),
            "{name}"
        );
        assert_eq!(r.duration(), 44_100, "{name}");
        let x: Vec<f64> = r
            .into_samples::<i32>()
            .map(|v| v.unwrap() as f64 / 8_388_608.0)
            .collect();
        let rms = (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt();
        assert!(rms > 0.003 && rms < 0.5, "{name}: rms {rms}");
    }

    // meta.csv: one row per audio file, identifier = city-location, source = device.
    let (h, meta) = read_tsv(&out.join("meta.csv"));
    assert_eq!(h, ["filename", "scene_label", "identifier", "source_label"]);
    let meta_files: BTreeSet<String> = meta.iter().map(|r| r[0].clone()).collect();
    assert_eq!(meta_files.len(), meta.len(), "duplicate rows in meta.csv");
    assert_eq!(meta_files, audio, "meta.csv and audio/ differ");
    let mut label_of = HashMap::new();
    for r in &meta {
        let f = TauFileName::parse(&r[0]).unwrap();
        assert_eq!(r[1], f.scene);
        assert_eq!(r[2], format!("{}-{}", f.city, f.location));
        assert_eq!(r[3], f.device);
        label_of.insert(r[0].clone(), r[1].clone());
    }

    // A segment's seconds are all there for every device that recorded it.
    let mut seconds: BTreeMap<(String, String), BTreeSet<u32>> = BTreeMap::new();
    for f in &audio {
        let t = TauFileName::parse(f).unwrap();
        seconds
            .entry((t.segment_id(), t.device.clone()))
            .or_default()
            .insert(t.index);
    }
    assert!(seconds.values().all(|s| s.len() == 10));

    // fold1: train and evaluate partition the clips, test = evaluate without labels,
    // disjoint locations.
    let (h, train) = read_tsv(&out.join("evaluation_setup/fold1_train.csv"));
    assert_eq!(h, ["filename", "scene_label"]);
    let (h, eval) = read_tsv(&out.join("evaluation_setup/fold1_evaluate.csv"));
    assert_eq!(h, ["filename", "scene_label"]);
    let (h, test) = read_tsv(&out.join("evaluation_setup/fold1_test.csv"));
    assert_eq!(h, ["filename"]);
    for r in train.iter().chain(&eval) {
        assert_eq!(label_of[&r[0]], r[1], "{}", r[0]);
    }
    let train_set: BTreeSet<String> = train.iter().map(|r| r[0].clone()).collect();
    let eval_set: BTreeSet<String> = eval.iter().map(|r| r[0].clone()).collect();
    let test_set: BTreeSet<String> = test.iter().map(|r| r[0].clone()).collect();
    assert_eq!(eval_set, test_set);
    assert!(train_set.is_disjoint(&eval_set));
    assert_eq!(
        train_set.union(&eval_set).cloned().collect::<BTreeSet<_>>(),
        audio
    );
    let loc = |f: &String| {
        let t = TauFileName::parse(f).unwrap();
        format!("{}-{}", t.city, t.location)
    };
    let train_locs: BTreeSet<String> = train_set.iter().map(loc).collect();
    let test_locs: BTreeSet<String> = eval_set.iter().map(loc).collect();
    assert!(train_locs.is_disjoint(&test_locs));

    // Devices: s4-s6 only in test; every device in test; a has most training clips.
    let count = |set: &BTreeSet<String>, dev: &str| {
        set.iter()
            .filter(|f| TauFileName::parse(f).unwrap().device == dev)
            .count()
    };
    for d in TAU22_DEVICES {
        assert!(count(&eval_set, d) > 0, "no test clip of {d}");
        let n = count(&train_set, d);
        if TAU22_UNSEEN_DEVICES.contains(&d) {
            assert_eq!(n, 0, "unseen device {d} in training");
        } else {
            assert!(n > 0, "no training clip of {d}");
        }
    }
    for d in ["b", "c", "s1", "s2", "s3"] {
        assert!(count(&train_set, "a") > count(&train_set, d), "device {d}");
    }

    // Splits: nested, split100 = training list, whole segments, all labels in split5.
    let (h, split_test) = read_tsv(&out.join("split_setup/test.csv"));
    assert_eq!(h, ["filename", "scene_label"]);
    assert_eq!(split_test, eval);
    let mut prev: Option<BTreeSet<String>> = None;
    let segment_of = |f: &String| TauFileName::parse(f).unwrap().segment_id();
    for p in [5, 10, 25, 50, 100] {
        let (h, rows) = read_tsv(&out.join(format!("split_setup/split{p}.csv")));
        assert_eq!(h, ["filename", "scene_label"]);
        let set: BTreeSet<String> = rows.iter().map(|r| r[0].clone()).collect();
        assert!(set.is_subset(&train_set), "split{p} outside training");
        if let Some(prev) = &prev {
            assert!(
                prev.is_subset(&set),
                "split{p} does not contain the smaller split"
            );
        }
        let segs: BTreeSet<String> = set.iter().map(segment_of).collect();
        let whole: BTreeSet<String> = train_set
            .iter()
            .filter(|f| segs.contains(&segment_of(f)))
            .cloned()
            .collect();
        assert_eq!(whole, set, "split{p} cuts a segment");
        if p == 5 {
            let labels: BTreeSet<&str> = rows.iter().map(|r| r[1].as_str()).collect();
            assert_eq!(labels.len(), 10, "split5 lacks a class");
        }
        if p == 100 {
            assert_eq!(set, train_set);
        }
        prev = Some(set);
    }
    let readme = std::fs::read_to_string(out.join("README.txt")).unwrap();
    assert!(readme.contains("pipeline synth") && readme.contains("Seed: 7"));
}

#[test]
fn synth_is_deterministic_and_refuses_foreign_folders() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    generate(&args(&a, 11)).unwrap();
    let mut one_thread = args(&b, 11);
    one_thread.threads = Some(1);
    generate(&one_thread).unwrap();
    generate(&args(&c, 12)).unwrap();
    let lists = [
        "meta.csv",
        "split_setup/split10.csv",
        "evaluation_setup/fold1_test.csv",
    ];
    for l in lists {
        assert_eq!(
            std::fs::read(a.join(l)).unwrap(),
            std::fs::read(b.join(l)).unwrap(),
            "{l}"
        );
    }
    let (_, meta) = read_tsv(&a.join("meta.csv"));
    for r in meta.iter().step_by(97) {
        let x = std::fs::read(a.join(&r[0])).unwrap();
        assert_eq!(x, std::fs::read(b.join(&r[0])).unwrap(), "{}", r[0]);
    }
    // Another seed: other locations, other sounds.
    assert_ne!(
        std::fs::read(a.join("meta.csv")).unwrap(),
        std::fs::read(c.join("meta.csv")).unwrap()
    );
    let first = |d: &Path| {
        let (_, m) = read_tsv(&d.join("meta.csv"));
        std::fs::read(d.join(&m[0][0])).unwrap()
    };
    assert_ne!(first(&a), first(&c));

    // Rerunning into a previous output is fine; a foreign non-empty folder is refused.
    generate(&args(&a, 11)).unwrap();
    assert_eq!(
        std::fs::read(a.join("meta.csv")).unwrap(),
        std::fs::read(b.join("meta.csv")).unwrap()
    );
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let err = generate(&args(&foreign, 1)).unwrap_err().to_string();
    assert!(err.contains("not empty"), "{err}");
    assert!(
        generate(&SynthArgs {
            scale: -1.0,
            ..args(&dir.path().join("neg"), 1)
        })
        .is_err()
    );
}
