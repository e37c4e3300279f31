//! End-to-end tests of the trainer on tiny synthetic shards (loader::synth) with a tiny
//! baseline-kind model: run folder contents, metrics recomputed independently, resume
//! equivalence, corrupt checkpoint refused, predict -> pipeline::teachers round trip.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use data_specs::{ClipSet, FrontEndConfig, write_logits_table};
use train::augment::Augment;
use train::config::EvalConfig;
use train::loader::Fold;
use train::loader::ShardSet;
use train::loader::synth::{SynthSpec, write_shard_set};
use train::loss::KdConfig;
use train::model::ModelConfig;
use train::predict::{check_folds, predict_logits, predict_out_of_fold};
use train::run::{self as report, RunDir};
use train::trainer::{self, TrainOptions};
use train::{TrainConfig, TrainError};

/// Training runs of this file run one at a time. A `train` process runs one training, but the
/// test harness runs tests on parallel threads of one process, and two trainings interleaving
/// on burn's process-wide autodiff and rayon state made the resume comparison flaky (seen
/// twice in about ten full-suite runs, never alone).
static ONE_TRAINING_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_TRAINING_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A tiny baseline: 8 base channels, one block per stage.
const TINY_MODEL: &str = r#"
kind = "baseline"
base_channels = 8
n_blocks = [1, 1, 1]
"#;

/// 32 mels x 33 frames (16,000 samples, hop 500), 72 clips (1 in 4 in the test set).
fn make_shards(dir: &Path) -> PathBuf {
    let spec = SynthSpec {
        frontend: FrontEndConfig {
            n_mels: 32,
            clip_samples: 16_000,
            ..FrontEndConfig::dcase2024()
        },
        n_clips: 72,
        n_shards: 2,
        row_group_rows: 16,
        dir_per_clip: 1,
        replay_every: 4,
        test_every: 4,
        missing_teacher_every: 5,
    };
    let shards = dir.join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    write_shard_set(&shards, &spec).expect("synthetic shards");
    shards
}

fn config(shards: &Path, name: &str, epochs: u64) -> TrainConfig {
    TrainConfig {
        name: name.into(),
        shards: shards.to_path_buf(),
        model_spec: "tiny.toml".into(),
        split: 100,
        epochs,
        batch_size: 16,
        lr: 0.01,
        weight_decay: 1e-4,
        warmup_steps: 2,
        seed: 7,
        p_dir: 0.6,
        replay: true,
        holdout_fold: None,
        use_kd: true,
        qat_epochs: 0,
        device: None,
        kd: KdConfig::default(),
        augment: Augment::default(),
        model: ModelConfig::from_toml_str(TINY_MODEL).expect("tiny model"),
        updates: 0,
        schedule_rule: String::new(),
        eval: EvalConfig::default(),
        labels: None,
    }
}

fn options(cfg: TrainConfig, runs: &Path, resume: bool, stop_after: Option<u64>) -> TrainOptions {
    TrainOptions {
        config: cfg,
        runs_root: runs.to_path_buf(),
        resume,
        progress: false,
        stop_after,
    }
}

/// Test-set logits of a run's final model.
fn test_logits(run: &Path, shards: &Path) -> (Vec<String>, Vec<f32>) {
    let set = ShardSet::open(shards, None).unwrap();
    let device = Device::flex();
    let (_, model, _) =
        train::run::load_run_model(run, &set.meta().labels, shards, &device).unwrap();
    predict_logits(&model, &set, &[ClipSet::Test], 16, &device).unwrap()
}

#[test]
fn run_writes_every_file_and_consistent_metrics() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let shards = make_shards(tmp.path());
    let runs = tmp.path().join("runs");
    let out = trainer::train(options(config(&shards, "e2e", 2), &runs, false, None)).unwrap();
    assert!(out.finished);
    let run = runs.join("e2e");
    for f in [
        train::config::CONFIG_FILE,
        report::METRICS_FILE,
        report::REPORT_FILE,
        report::LOSS_PLOT,
        report::ACCURACY_PLOT,
        report::CONFUSION_PLOT,
        train::run::FINAL_MODEL_FILE,
        "checkpoints/last/model.bpk",
        "checkpoints/last/optim.bpk",
        "checkpoints/last/state.json",
    ] {
        let p = run.join(f);
        assert!(
            p.is_file() && p.metadata().unwrap().len() > 0,
            "missing {f}"
        );
    }
    // No validation fold: no model selection, so no `best` checkpoint.
    assert!(!run.join("checkpoints/best").exists());
    assert_eq!(out.selected_epoch, Some(1));
    // config.toml round-trips to the configuration of the run (the mask fill resolved to the
    // shards' front end: its log of silence; the shards' labels recorded).
    let fe = ShardSet::open(&shards, None)
        .unwrap()
        .meta()
        .frontend
        .clone();
    let saved = TrainConfig::load(&run).unwrap();
    let mut expected = config(&shards, "e2e", 2).for_frontend(&fe);
    expected.labels = Some(data_specs::Vocabulary::tau22_labels());
    assert_eq!(saved, expected);
    assert_eq!(saved.augment.freq_mask.mask_value, Some(fe.log_silence()));
    // The floor was computed and the report shows it beside the model.
    assert!(out.floor.is_some());
    let md = std::fs::read_to_string(run.join(report::REPORT_FILE)).unwrap();
    assert!(
        md.contains("| test set | model (%) | floor (%) | examples |"),
        "{md}"
    );
    let metrics = RunDir::create(&runs, "e2e")
        .unwrap()
        .read_metrics()
        .unwrap();
    assert_eq!(metrics.len(), 2);
    assert!(
        metrics
            .iter()
            .all(|m| m.train_loss.is_finite() && m.step > 0)
    );
    let eval = out.final_eval.unwrap();

    // Independent recomputation of the macro accuracy and log-loss from the final model's logits.
    let set = ShardSet::open(&shards, None).unwrap();
    let k = set.meta().n_classes();
    let (ids, logits) = test_logits(&run, &shards);
    let labels: Vec<usize> = set
        .rows()
        .filter(|r| r.set == ClipSet::Test && r.variant == data_specs::Variant::Original)
        .map(|r| r.label.unwrap() as usize)
        .collect();
    assert_eq!(ids.len(), labels.len());
    assert_eq!(eval.n_examples as usize, labels.len());
    let (mut n, mut hit) = (vec![0usize; k], vec![0usize; k]);
    let mut nll = 0.0f64;
    for (row, &y) in logits.chunks_exact(k).zip(&labels) {
        let pred = (0..k).fold(0, |b, c| if row[c] > row[b] { c } else { b });
        n[y] += 1;
        hit[y] += usize::from(pred == y);
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) as f64;
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        nll += lse - row[y] as f64;
    }
    let present: Vec<usize> = (0..k).filter(|&c| n[c] > 0).collect();
    let macro_acc = present
        .iter()
        .map(|&c| hit[c] as f64 / n[c] as f64)
        .sum::<f64>()
        / present.len() as f64;
    assert!(
        (eval.macro_accuracy - macro_acc).abs() < 1e-9,
        "{} vs {macro_acc}",
        eval.macro_accuracy
    );
    assert!((eval.log_loss - nll / labels.len() as f64).abs() < 1e-4);
    // (metrics.jsonl keeps the figure to within JSON's float round trip)
    let logged = metrics[1].test_macro_acc.unwrap();
    assert!((logged - eval.macro_accuracy).abs() < 1e-12, "{logged}");

    // An existing run folder is never overwritten.
    let again = trainer::train(options(config(&shards, "e2e", 2), &runs, false, None));
    assert!(matches!(again, Err(TrainError::RunExists(_))));
}

#[test]
fn resume_reproduces_an_uninterrupted_run() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let shards = make_shards(tmp.path());
    let runs = tmp.path().join("runs");
    trainer::train(options(config(&shards, "straight", 3), &runs, false, None)).unwrap();
    let part = trainer::train(options(
        config(&shards, "resumed", 3),
        &runs,
        false,
        Some(1),
    ))
    .unwrap();
    assert!(!part.finished);
    assert!(
        !runs
            .join("resumed")
            .join(train::run::FINAL_MODEL_FILE)
            .exists()
    );
    let done = trainer::train(options(config(&shards, "resumed", 3), &runs, true, None)).unwrap();
    assert!(done.finished);
    assert_eq!(done.metrics.len(), 3);
    let (ids_a, a) = test_logits(&runs.join("straight"), &shards);
    let (ids_b, b) = test_logits(&runs.join("resumed"), &shards);
    assert_eq!(ids_a, ids_b);
    let max_diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(max_diff <= 1e-6, "resumed run differs by {max_diff}");
    // The logits are not trivially equal for any two models: an untrained run differs.
    trainer::train(options(config(&shards, "short", 1), &runs, false, None)).unwrap();
    let (_, c) = test_logits(&runs.join("short"), &shards);
    assert!(a.iter().zip(&c).any(|(x, y)| (x - y).abs() > 1e-4));
}

#[test]
fn corrupt_checkpoint_is_refused_naming_the_file() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let shards = make_shards(tmp.path());
    let runs = tmp.path().join("runs");
    trainer::train(options(config(&shards, "c", 2), &runs, false, Some(1))).unwrap();
    // No validation fold, so no `checkpoints/best`: keep an intact copy of `last` aside.
    let saved_best = runs.join("best-copy");
    copy_dir(&runs.join("c/checkpoints/last"), &saved_best);
    let victim = runs.join("c/checkpoints/last/optim.bpk");
    let len = victim.metadata().unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // No checkpoint is intact: refused, naming the file.
    let err = trainer::train(options(config(&shards, "c", 2), &runs, true, None)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("optim.bpk"), "{msg}");
    // An intact `checkpoints/best` of the same epoch: resume falls back to it.
    std::fs::rename(&saved_best, runs.join("c/checkpoints/best")).unwrap();
    let done = trainer::train(options(config(&shards, "c", 2), &runs, true, None)).unwrap();
    assert!(done.finished);
    assert_eq!(done.metrics.len(), 2);
}

#[test]
fn predict_table_reads_back_as_teacher_logits() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let shards = make_shards(tmp.path());
    let runs = tmp.path().join("runs");
    trainer::train(options(config(&shards, "p", 1), &runs, false, None)).unwrap();
    let set = ShardSet::open(&shards, None).unwrap();
    let k = set.meta().n_classes();
    let device = Device::flex();
    let (_, model, _) =
        train::run::load_run_model(&runs.join("p"), &set.meta().labels, &shards, &device).unwrap();
    let (ids, logits) =
        predict_logits(&model, &set, &[ClipSet::Train, ClipSet::Test], 16, &device).unwrap();
    let originals = set
        .rows()
        .filter(|r| r.variant == data_specs::Variant::Original)
        .count();
    assert_eq!(ids.len(), originals);
    let out = tmp.path().join("logits.parquet");
    write_logits_table(&out, &ids, &logits, k).unwrap();
    let read = pipeline::teachers::TeacherLogits::load(&out, &[], k).unwrap();
    assert_eq!(read.len(), ids.len());
    for (id, row) in ids.iter().zip(logits.chunks_exact(k)) {
        assert_eq!(read.get(id).unwrap(), row, "{id}");
    }
}

#[test]
fn out_of_fold_logits_come_from_the_run_that_left_the_clip_out() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let shards = make_shards(tmp.path());
    let runs = tmp.path().join("runs");
    let set = ShardSet::open(&shards, None).unwrap();
    let k = set.meta().n_classes();
    let device = Device::flex();
    let sets = [ClipSet::Train, ClipSet::Test];
    let mut members = Vec::new();
    let mut full = Vec::new();
    for index in 1..=2 {
        let fold = Fold { index, count: 2 };
        let mut cfg = config(&shards, &format!("f{index}"), 1);
        cfg.holdout_fold = Some(fold);
        // Split 50: the training clips of split 100 only are scored like the test set.
        cfg.split = 50;
        cfg.seed += u64::from(index);
        trainer::train(options(cfg, &runs, false, None)).unwrap();
        let (cfg, model, _) = train::run::load_run_model(
            &runs.join(format!("f{index}")),
            &set.meta().labels,
            &shards,
            &device,
        )
        .unwrap();
        assert_eq!(cfg.holdout_fold, Some(fold), "config.toml keeps the fold");
        // Reference: the member's logits for every original row, by the ordinary path.
        let (ids, logits) = predict_logits(&model, &set, &sets, 16, &device).unwrap();
        full.push(
            ids.into_iter()
                .zip(logits.chunks_exact(k).map(<[f32]>::to_vec))
                .collect::<std::collections::HashMap<_, _>>(),
        );
        members.push((fold, model));
    }
    let (ids, logits) = predict_out_of_fold(&members, Some(50), &set, &sets, 16, &device).unwrap();
    let folds = set.location_folds(2, Some(50));
    let originals: Vec<_> = set
        .rows()
        .filter(|r| r.variant == data_specs::Variant::Original)
        .collect();
    assert_eq!(ids.len(), originals.len(), "one row per original clip");
    let mut from_fold = [0usize; 2];
    let mut averaged = 0;
    for (id, row) in ids.iter().zip(logits.chunks_exact(k)) {
        let info = originals.iter().find(|r| r.clip_id == id).unwrap();
        let in_split = info.set == ClipSet::Train && info.split.is_some_and(|s| s <= 50);
        let want: Vec<f32> = if in_split {
            let f = folds.fold_of(info.location_key).unwrap() as usize;
            from_fold[f - 1] += 1;
            full[f - 1][id].clone()
        } else {
            averaged += usize::from(info.set == ClipSet::Train);
            (0..k)
                .map(|c| (full[0][id][c] + full[1][id][c]) / 2.0)
                .collect()
        };
        for (a, b) in row.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{id}: {row:?} vs {want:?}"
            );
        }
    }
    assert!(
        from_fold.iter().all(|&n| n > 0),
        "both folds score clips: {from_fold:?}"
    );
    assert!(
        averaged > 0,
        "training clips outside the split get the mean"
    );
    // The members must be the folds of one partition, each once.
    let f = |index, count| Fold { index, count };
    assert!(check_folds(&[f(2, 2), f(1, 2)]).is_ok());
    assert!(check_folds(&[f(1, 2), f(1, 2)]).is_err());
    assert!(check_folds(&[f(1, 3), f(2, 3)]).is_err());
    assert!(check_folds(&[f(1, 2), f(2, 3)]).is_err());
    assert!(
        check_folds(&[f(0, 2), f(3, 2)]).is_err(),
        "an invalid fold is an error, no panic"
    );
}

/// Synthetic shards whose log-mel carries the class: the records of `make_shards`' layout with
/// a +6 band over mel bins 3 * label .. 3 * label + 2 (32 mels, 10 classes) on top of the
/// label-free synthetic values. Learnable, tiny.
fn make_learnable_shards(dir: &Path, n_clips: usize) -> PathBuf {
    use train::loader::synth::{synth_meta, synth_records, write_records};
    let spec = SynthSpec {
        frontend: FrontEndConfig {
            n_mels: 32,
            clip_samples: 16_000,
            ..FrontEndConfig::dcase2024()
        },
        n_clips,
        n_shards: 2,
        row_group_rows: 32,
        dir_per_clip: 1,
        replay_every: 0,
        test_every: 4,
        missing_teacher_every: 0,
    };
    let meta = synth_meta(spec.frontend.clone());
    let frames = spec.frontend.n_frames();
    let mut records = synth_records(&spec, &meta);
    for r in &mut records {
        let label = r.label.unwrap() as usize;
        for bin in 3 * label..3 * label + 3 {
            for v in &mut r.logmel[bin * frames..(bin + 1) * frames] {
                *v += 6.0;
            }
        }
    }
    let shards = dir.join("learnable");
    std::fs::create_dir_all(&shards).unwrap();
    write_records(&shards, &meta, &records, spec.n_shards, spec.row_group_rows).unwrap();
    shards
}

/// Accuracy of `logits` rows against `labels`.
fn accuracy(logits: &[f32], labels: &[i64], k: usize) -> f64 {
    let hits = logits
        .chunks_exact(k)
        .zip(labels)
        .filter(|(row, y)| (0..k).fold(0, |b, c| if row[c] > row[b] { c } else { b }) as i64 == **y)
        .count();
    hits as f64 / labels.len().max(1) as f64
}

#[test]
fn short_small_run_is_above_chance_and_eval_mode_matches_train_mode() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let shards = make_learnable_shards(tmp.path(), 120);
    let runs = tmp.path().join("runs");
    // 90 training clips, batch 16: 5 updates per epoch, 12 epochs = 60 updates; no batch
    // augmentation (a 47-bin frequency mask would hide most of 32 bins).
    let mut cfg = config(&shards, "small", 12);
    cfg.batch_size = 16;
    cfg.use_kd = false;
    cfg.augment = Augment::none();
    let out = trainer::train(options(cfg, &runs, false, None)).unwrap();
    let eval = out.final_eval.unwrap();
    // Chance is 10 %; the class band is easy once the BN statistics fit the weights.
    assert!(
        eval.macro_accuracy >= 0.5,
        "eval-mode test macro accuracy {} after 60 updates",
        eval.macro_accuracy
    );
    let floor = out.floor.expect("floor");
    assert!(
        floor.eval.macro_accuracy > 0.5,
        "the floor sees the band too"
    );

    // Eval mode (precise-BN running statistics) vs train mode (batch statistics) on the
    // training rows, with the same weights: close.
    let set = ShardSet::open(&shards, None).unwrap();
    let k = set.meta().n_classes();
    let run = runs.join("small");
    let (cfg, eval_model, _) =
        train::run::load_run_model(&run, &set.meta().labels, &shards, &Device::flex()).unwrap();
    let train_device = Device::flex().autodiff();
    let train_model = train::run::load_model_file(
        &cfg.model,
        k,
        &run.join(train::run::FINAL_MODEL_FILE),
        &train_device,
    )
    .unwrap();
    let rows = train::evaluate::EvalSet::with_selection(
        &set,
        train::loader::Selection::originals(ClipSet::Train),
        cfg.batch_size,
    )
    .unwrap();
    let (mut eval_logits, mut train_logits, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    rows.for_each_batch(&eval_model, &Device::flex(), |_, lg, y| {
        eval_logits.extend_from_slice(lg);
        labels.extend_from_slice(y);
        Ok(())
    })
    .unwrap();
    rows.for_each_batch(&train_model, &train_device, |_, lg, _| {
        train_logits.extend_from_slice(lg);
        Ok(())
    })
    .unwrap();
    let (a_eval, a_train) = (
        accuracy(&eval_logits, &labels, k),
        accuracy(&train_logits, &labels, k),
    );
    assert!(
        (a_eval - a_train).abs() <= 0.1,
        "eval-mode accuracy {a_eval} vs train-mode {a_train} on the training rows"
    );
}

#[test]
fn validation_fold_selects_the_kept_model_without_the_test_set() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let shards = make_learnable_shards(tmp.path(), 120);
    let runs = tmp.path().join("runs");
    let mut cfg = config(&shards, "val", 4);
    cfg.batch_size = 16;
    cfg.use_kd = false;
    cfg.eval.validation = Some(Fold { index: 1, count: 3 });
    let out = trainer::train(options(cfg.clone(), &runs, false, None)).unwrap();
    let run = runs.join("val");
    let metrics = RunDir::create(&runs, "val")
        .unwrap()
        .read_metrics()
        .unwrap();
    // Every epoch evaluated (4 epochs, interval 1), each with a validation accuracy; the kept
    // model is the first epoch with the best one.
    let vals: Vec<f64> = metrics.iter().map(|m| m.val_macro_acc.unwrap()).collect();
    let best = vals
        .iter()
        .enumerate()
        .fold(0, |b, (i, &v)| if v > vals[b] { i } else { b });
    assert_eq!(out.selected_epoch, Some(best as u64));
    assert_eq!(out.best.map(|(e, _)| e), Some(best as u64));
    assert!(run.join("checkpoints/best/state.json").is_file());
    // model.bpk is that checkpoint's model.
    let set = ShardSet::open(&shards, None).unwrap();
    let k = set.meta().n_classes();
    let device = Device::flex();
    let kept = train::run::load_model_file(
        &cfg.model,
        k,
        &run.join("checkpoints/best/model.bpk"),
        &device,
    )
    .unwrap();
    let (_, a) = predict_logits(&kept, &set, &[ClipSet::Test], 16, &device).unwrap();
    let (_, b) = test_logits(&run, &shards);
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff <= 1e-4,
        "model.bpk differs from checkpoints/best by {diff}"
    );
    // The validation clips were not trained on: the training selection leaves the fold out.
    let train_rows = train::config::epoch_rows(&set, &cfg).unwrap();
    let mut all = cfg.clone();
    all.eval.validation = None;
    assert!(train_rows < train::config::epoch_rows(&set, &all).unwrap());
    // Early stopping counts evaluations without a gain after the best one.
    let m = |v: f64| train::metrics::EpochMetrics {
        val_macro_acc: Some(v),
        ..metrics[0].clone()
    };
    let seq = [m(0.2), m(0.5), m(0.4), m(0.5)];
    assert!(!trainer::early_stop_reached(&seq[..3], Some(2)));
    assert!(
        trainer::early_stop_reached(&seq, Some(2)),
        "0.5 again is no gain"
    );
    assert!(!trainer::early_stop_reached(&seq, None));
}

/// Copies the files of a flat folder (a checkpoint) into a new folder.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
