//! Faults that used to get through the trainer silently (issue 20), each reproduced on tiny
//! synthetic shards: damaged or deleted shards, a dataset given as shards, a NaN log-mel
//! value, another label vocabulary, a renamed run folder, QAT on fewer rows than one batch,
//! `--threads 0`.

use std::path::{Path, PathBuf};
use std::process::Command;

use data_specs::{ClipSet, FrontEndConfig, Vocabulary};
use train::augment::Augment;
use train::loader::ShardSet;
use train::loader::synth::{SynthSpec, synth_meta, synth_records, write_records, write_shard_set};
use train::loss::KdConfig;
use train::model::{IrMambaConfig, ModelConfig, PmbStageConfig};
use train::trainer::{self, TrainOptions};
use train::{TrainConfig, TrainError};

/// One training at a time (burn's process-wide state; see train_e2e.rs).
static ONE_TRAINING_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_TRAINING_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const TINY_MODEL: &str = r#"
kind = "baseline"
base_channels = 8
n_blocks = [1, 1, 1]
"#;

fn spec() -> SynthSpec {
    SynthSpec {
        frontend: FrontEndConfig {
            n_mels: 32,
            clip_samples: 16_000,
            ..FrontEndConfig::dcase2024()
        },
        n_clips: 48,
        n_shards: 2,
        row_group_rows: 16,
        dir_per_clip: 1,
        replay_every: 4,
        test_every: 4,
        missing_teacher_every: 5,
    }
}

fn make_shards(dir: &Path, name: &str) -> PathBuf {
    let shards = dir.join(name);
    std::fs::create_dir_all(&shards).unwrap();
    write_shard_set(&shards, &spec()).expect("synthetic shards");
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
        eval: Default::default(),
        labels: None,
    }
}

fn train(
    cfg: TrainConfig,
    runs: &Path,
    resume: bool,
    stop_after: Option<u64>,
) -> Result<trainer::TrainOutcome, TrainError> {
    trainer::train(TrainOptions {
        config: cfg,
        runs_root: runs.to_path_buf(),
        resume,
        progress: false,
        stop_after,
    })
}

fn train_cli(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_train"))
        .args(args)
        .output()
        .expect("runs the train binary")
}

#[test]
fn damaged_or_deleted_shards_are_refused_before_use() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let shards = make_shards(tmp.path(), "shards");
    ShardSet::open(&shards, None).unwrap();
    assert!(shards.join(data_specs::VERIFIED_FILE).is_file());
    // Flip 64 bytes inside the second shard (same length, footer intact).
    let m = data_specs::Manifest::load(&shards).unwrap();
    let victim = shards.join(&m.shards[1].file);
    let good = std::fs::read(&victim).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 3;
    for b in &mut bad[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&victim, &bad).unwrap();
    let found = data_specs::sha256_file(&victim).unwrap();
    for msg in [
        ShardSet::open(&shards, None).unwrap_err().to_string(),
        train(
            config(&shards, "r", 1),
            &tmp.path().join("runs"),
            false,
            None,
        )
        .unwrap_err()
        .to_string(),
    ] {
        assert!(msg.contains(&victim.display().to_string()), "{msg}");
        assert!(
            msg.contains(&m.shards[1].sha256) && msg.contains(&found),
            "{msg}"
        );
        assert!(msg.contains("manifest.json"), "{msg}");
    }
    // The CLI: exit 1 with the same message.
    let out = train_cli(&[
        "--shards".as_ref(),
        shards.as_os_str(),
        "--epochs".as_ref(),
        "1".as_ref(),
        "--runs".as_ref(),
        tmp.path().join("runs").as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&found));
    std::fs::write(&victim, &good).unwrap();
    ShardSet::open(&shards, None).unwrap();
    // A deleted shard: the message says the manifest lists it.
    std::fs::remove_file(&victim).unwrap();
    let msg = ShardSet::open(&shards, None).unwrap_err().to_string();
    assert!(
        msg.contains(&victim.display().to_string())
            && msg.contains("listed in")
            && msg.contains("manifest.json"),
        "{msg}"
    );
}

#[test]
fn a_dataset_given_as_shards_says_what_is_expected() {
    let tmp = tempfile::tempdir().unwrap();
    let meta = tmp.path().join("meta.csv");
    std::fs::write(&meta, "filename\tscene_label\naudio/a.wav\tpark\n").unwrap();
    let msg = ShardSet::open(&meta, None).unwrap_err().to_string();
    assert!(
        msg.contains("not a shard folder or manifest") && msg.contains("pipeline features"),
        "{msg}"
    );
    assert!(!msg.contains("expected ident"), "{msg}");
    let msg = ShardSet::open(tmp.path(), None).unwrap_err().to_string();
    assert!(msg.contains("looks like a dataset"), "{msg}");
    let out = train_cli(&[
        "--shards".as_ref(),
        meta.as_os_str(),
        "--epochs".as_ref(),
        "1".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a shard folder or manifest"), "{err}");
    // --threads 0 is a command-line error.
    let out = train_cli(&[
        "--shards".as_ref(),
        meta.as_os_str(),
        "--threads".as_ref(),
        "0".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads"));
}

#[test]
fn a_nan_log_mel_value_names_its_clip() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec();
    let meta = synth_meta(spec.frontend.clone());
    let mut records = synth_records(&spec, &meta);
    let j = records
        .iter()
        .position(|r| r.set == ClipSet::Train && r.clip_id.contains("-5-0-"))
        .unwrap();
    records[j].logmel[5] = f32::NAN;
    let clip = records[j].clip_id.clone();
    let shards = tmp.path().join("nan");
    std::fs::create_dir_all(&shards).unwrap();
    write_records(&shards, &meta, &records, 2, 16).unwrap();
    let mut cfg = config(&shards, "nan", 1);
    cfg.p_dir = 0.0;
    let e = train(cfg, &tmp.path().join("runs"), false, None).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TrainError::NonFinite(_)), "{msg}");
    assert!(
        msg.contains(&clip) && msg.contains("log-mel value 5"),
        "{msg}"
    );
}

#[test]
fn a_run_refuses_shards_with_another_label_vocabulary() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let shards = make_shards(tmp.path(), "shards");
    let runs = tmp.path().join("runs");
    train(config(&shards, "v", 1), &runs, false, None).unwrap();
    let cfg = TrainConfig::load(&runs.join("v")).unwrap();
    assert_eq!(cfg.labels, Some(Vocabulary::tau22_labels()));
    // The same clips with an eleventh label in the vocabulary.
    let spec = spec();
    let mut meta = synth_meta(spec.frontend.clone());
    meta.labels.0.push("fountain".into());
    let other = tmp.path().join("eleven");
    std::fs::create_dir_all(&other).unwrap();
    write_records(&other, &meta, &synth_records(&spec, &meta), 2, 16).unwrap();
    let set = ShardSet::open(&other, None).unwrap();
    let device = burn::tensor::Device::flex();
    let e = train::run::load_run_model(&runs.join("v"), &set.meta().labels, &other, &device)
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TrainError::Labels { .. }), "{msg}");
    assert!(
        msg.contains("10 labels") && msg.contains("11 labels") && msg.contains("fountain"),
        "{msg}"
    );
    assert!(msg.contains(&other.display().to_string()), "{msg}");
    // `train eval` says the same and exits 1.
    let out = train_cli(&[
        "eval".as_ref(),
        "--shards".as_ref(),
        other.as_os_str(),
        "--model".as_ref(),
        runs.join("v").as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fountain"));
}

#[test]
fn a_renamed_run_folder_resumes_under_its_new_name() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let shards = make_shards(tmp.path(), "shards");
    let runs = tmp.path().join("runs");
    let part = train(config(&shards, "old", 2), &runs, false, Some(1)).unwrap();
    assert!(!part.finished);
    std::fs::rename(runs.join("old"), runs.join("new")).unwrap();
    let out = train_cli(&[
        "--resume".as_ref(),
        runs.join("new").as_os_str(),
        "--quiet".as_ref(),
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resuming new at epoch 1"), "{stderr}");
    assert!(stdout.contains("run new:"), "{stdout}");
    assert!(
        !runs.join("old").exists(),
        "nothing written under the old name"
    );
    assert!(
        runs.join("new")
            .join(train::run::FINAL_MODEL_FILE)
            .is_file()
    );
    assert_eq!(
        std::fs::read_to_string(runs.join("new/metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
}

/// A small IRMamba student (the s1 op mix, narrow) for the QAT path.
fn small_student() -> ModelConfig {
    let mut c = IrMambaConfig::s1();
    c.stem_channels = [4, 8];
    c.irb_channels = [8, 8];
    c.irb_expansion = [2.0, 2.0, 2.0];
    c.stages = vec![
        PmbStageConfig {
            channels: 8,
            groups: vec![2],
        },
        PmbStageConfig {
            channels: 12,
            groups: vec![2],
        },
    ];
    c.final_channels = 16;
    c.d_state = 4;
    c.time_multiple = 16;
    ModelConfig::IrMamba(c)
}

#[test]
fn qat_on_fewer_rows_than_one_batch_uses_one_smaller_batch() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let shards = make_shards(tmp.path(), "shards");
    let runs = tmp.path().join("runs");
    let mut cfg = config(&shards, "q", 1);
    cfg.model = small_student();
    cfg.batch_size = 256;
    cfg.qat_epochs = 1;
    let set = ShardSet::open(&shards, None).unwrap();
    let train_rows = set.rows().filter(|r| r.set == ClipSet::Train).count();
    assert!(train_rows < 256, "{train_rows} rows");
    let done = train(cfg, &runs, false, None).unwrap();
    assert!(done.finished);
    assert!(runs.join("q/qat/model.asc8").is_file());
}
