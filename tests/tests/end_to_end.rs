//! End to end across the crates, on a tiny demo dataset in the real TAU22 layout:
//! `pipeline synth` -> `pipeline features` -> mmap loader -> KD trainer -> `train predict`
//! -> teacher logits joined back into the shards -> the loader sees them.
//!
//! Everything runs through the same library entry points as the command-line tools.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use data_specs::{ClipSet, FrontEndConfig, TauFileName, Variant};
use pipeline::features::{FeaturesArgs, run_features};
use pipeline::materialize::{JoinOptions, join_teacher_logits};
use pipeline::synth::{SynthArgs, generate};
use pipeline::teacher::TeacherLogits;
use train::augment::Augment;
use train::backend::default_device;
use train::loader::{Loader, LoaderConfig, Selection, ShardSet};
use train::loss::KdConfig;
use train::model::ModelConfig;
use train::predict::{predict_logits, write_logits_parquet};
use train::trainer::{self, TrainConfig, TrainOptions};

/// A small baseline-kind model so that a training epoch on 256 x 65 inputs takes seconds.
const SMALL_MODEL: &str = r#"
kind = "baseline"
base_channels = 8
n_blocks = [1, 1, 1]
"#;

/// `meta.csv` read independently of the pipeline: file name -> (scene, device).
fn read_meta(dataset: &Path) -> HashMap<String, (String, String)> {
    let text = std::fs::read_to_string(dataset.join("meta.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "filename\tscene_label\tidentifier\tsource_label"
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), (f[1].to_string(), f[3].to_string()))
        })
        .collect()
}

fn make_demo_shards(root: &Path) -> (PathBuf, PathBuf) {
    let dataset = root.join("demo");
    generate(&SynthArgs {
        out: dataset.clone(),
        seed: 11,
        scale: 0.05,
        force: false,
        threads: None,
    })
    .expect("demo dataset");
    let shards = root.join("data");
    let args = FeaturesArgs::parse_args([
        "--dataset",
        dataset.to_str().unwrap(),
        "--out",
        shards.to_str().unwrap(),
        "--dir-variants",
        "1",
        "-q",
    ])
    .unwrap();
    run_features(&args).expect("features");
    (dataset, shards)
}

#[test]
fn demo_dataset_to_shards_to_trained_model_to_teacher_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let (dataset, shards) = make_demo_shards(tmp.path());
    let meta = read_meta(&dataset);

    // The shards hold every meta.csv clip once as an original, with its label and device, and
    // DIR variants only for device-a training clips.
    let set = ShardSet::open(&shards, Some(&FrontEndConfig::dcase2024())).unwrap();
    let labels = set.meta().labels.clone();
    let mut originals = 0;
    for row in set.rows() {
        let file = format!("audio/{}.wav", row.clip_id);
        let (scene, device) = meta
            .get(&file)
            .unwrap_or_else(|| panic!("{file} not in meta.csv"));
        assert_eq!(
            labels.name(row.label.unwrap() as usize),
            Some(scene.as_str())
        );
        assert_eq!(row.device, device.as_str());
        assert_eq!(TauFileName::parse(&file).unwrap().device, *device);
        match row.variant {
            Variant::Original => originals += 1,
            Variant::Dir => assert!(row.set == ClipSet::Train && device == "a", "{file}"),
            other => panic!("unexpected variant {other:?}"),
        }
        assert!(!row.has_teacher, "no teacher logits yet");
    }
    assert_eq!(originals, meta.len());

    // One training epoch of a small model writes a run folder with an evaluation.
    let runs = tmp.path().join("runs");
    let config = TrainConfig {
        name: "e2e".into(),
        shards: shards.clone(),
        model_spec: "small.toml".into(),
        split: 100,
        epochs: 1,
        batch_size: 64,
        lr: 0.005,
        weight_decay: 1e-4,
        warmup_steps: 2,
        seed: 3,
        p_dir: 0.6,
        replay: true,
        holdout_fold: None,
        use_kd: true,
        qat_epochs: 0,
        kd: KdConfig::default(),
        augment: Augment::default(),
        model: ModelConfig::from_toml_str(SMALL_MODEL).unwrap(),
        updates: 0,
        schedule_rule: String::new(),
        eval: Default::default(),
        labels: None,
    };
    let outcome = trainer::train(TrainOptions {
        config,
        runs_root: runs.clone(),
        resume: false,
        progress: false,
        stop_after: None,
    })
    .expect("training");
    assert!(outcome.finished);
    let eval = outcome.final_eval.expect("final evaluation");
    let n_test = set.rows().filter(|r| r.set == ClipSet::Test).count() as u64;
    let confusion_total: u64 = eval.confusion.iter().flatten().sum();
    assert_eq!(confusion_total, n_test);
    assert!((0.0..=1.0).contains(&eval.macro_accuracy));

    // The model's logits for the training clips, joined back as teacher logits.
    let device = default_device();
    let run = runs.join("e2e");
    let (_, model, _) =
        trainer::load_run_model(&run, &set.meta().labels, &shards, &device).unwrap();
    let (ids, logits) = predict_logits(&model, &set, &[ClipSet::Train], 64, &device).unwrap();
    let table = tmp.path().join("teacher.parquet");
    write_logits_parquet(&table, &ids, &logits, labels.len()).unwrap();
    drop(set);
    let ds = pipeline::ingest::Dataset::load(&dataset, &Default::default()).unwrap();
    let teacher = TeacherLogits::load(&table, &ds.rows, labels.len()).unwrap();
    let report = join_teacher_logits(
        &shards,
        &teacher,
        &JoinOptions {
            sets: vec![ClipSet::Train],
            description: "end-to-end test teacher".into(),
            fail_after_shards: None,
        },
    )
    .unwrap();
    assert_eq!(report.clips_without_logits, 0);

    // Every training row (each variant) now carries its clip's logits, test rows none, and the
    // loader hands them to the trainer with a full mask.
    let set = ShardSet::open(&shards, None).unwrap();
    let by_clip: HashMap<&str, &[f32]> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                id.as_str(),
                &logits[i * labels.len()..(i + 1) * labels.len()],
            )
        })
        .collect();
    for row in set.rows() {
        assert_eq!(
            row.has_teacher,
            row.set == ClipSet::Train,
            "{}",
            row.clip_id
        );
    }
    let loader = Loader::new(
        &set,
        Selection::train(Some(100)),
        LoaderConfig {
            batch_size: 32,
            ..LoaderConfig::default()
        },
    )
    .unwrap();
    let mut checked = 0;
    for batch in loader.epoch(0) {
        let batch = batch.unwrap();
        assert!(batch.teacher_mask().iter().all(|&m| m == 1.0));
        for (i, &row) in batch.rows().iter().enumerate() {
            let info = set.row_info(row);
            let expected = by_clip[info.clip_id];
            let got = &batch.teacher_logits()[i * labels.len()..(i + 1) * labels.len()];
            assert_eq!(got, expected, "{}", info.clip_id);
            checked += 1;
        }
    }
    assert!(checked > 0);
}
