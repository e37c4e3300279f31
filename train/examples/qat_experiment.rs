//! The QAT measurement driver of issue 23 (the tables in `train/docs/qat-study.md`): `train qat`
//! with its knobs in environment variables, on a copy of a finished float run (it writes the
//! copy's `qat/`). `cargo run --release -p train --example qat_experiment -- RUN_COPY` with
//! SHARDS (the run's own), EPOCHS (2), LR (5e-5), FREEZE_LAST (observers frozen for the last
//! epochs/5, at least 1), MOMENTUM (observer averaging, 0.01), AUG (1: the run's batch
//! augmentations; 0: none), DIR (1: the run's DIR / replay rows; 0: originals only), CALIB (rows
//! of observer calibration on the training originals before QAT, 0), FLOAT (1: float control,
//! nothing quantized during the fine-tuning: its export is post-training quantization), QMAX
//! (activation codes 0..=QMAX, 127), QSEED (added to the run seed for the QAT loader and
//! augmentations, 0), EVAL_FLOAT (1: also the float model), LABEL. Prints one `RESULT` line:
//! macro accuracy (seen, unseen) of the float model, the fake-quantized QAT model and the int8
//! engine, and per device. `EPOCHS=0 CALIB=1024` is plain post-training quantization.

use std::path::PathBuf;
use std::time::Instant;

use data_specs::ClipSet;
use train::TrainConfig;
use train::augment::Augment;
use train::evaluate::{evaluate_int8, evaluate_qat};
use train::export::export_int8;
use train::loader::{Loader, LoaderConfig, ShardSet};
use train::metrics::EvalReport;
use train::qat::{Observers, QatConfig, calibrate_observers, qat_finetune_from};

fn env<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn groups(r: &EvalReport) -> String {
    let g = |n: &str| {
        r.per_group
            .iter()
            .find(|g| g.name == n)
            .map_or(f64::NAN, |g| 100.0 * g.macro_accuracy)
    };
    format!(
        "{:.2} (seen {:.2}, unseen {:.2})",
        100.0 * r.macro_accuracy,
        g("seen"),
        g("unseen")
    )
}

fn devices(r: &EvalReport) -> String {
    r.per_device
        .iter()
        .map(|d| format!("{} {:.0}", d.name, 100.0 * d.macro_accuracy))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() -> anyhow::Result<()> {
    train::backend::keep_freed_buffers();
    let run = PathBuf::from(std::env::args().nth(1).expect("run folder"));
    let cfg = TrainConfig::load(&run)?;
    let shards = std::env::var("SHARDS")
        .map(PathBuf::from)
        .unwrap_or(cfg.shards.clone());
    let set = ShardSet::open(&shards, None)?;
    let n_classes = set.meta().n_classes();
    let device = train::backend::training_device();
    let path = run.join(train::run::FINAL_MODEL_FILE);
    let model = train::run::load_model_file(&cfg.model, n_classes, &path, &device)?;
    let epochs: u64 = env("EPOCHS", 2);
    let mut sel = cfg.selection();
    if env("DIR", 1) == 0 {
        sel.p_dir = 0.0;
        sel.replay = false;
    }
    let loader_cfg = LoaderConfig {
        batch_size: cfg.batch_size,
        seed: (cfg.seed + env("QSEED", 0u64)) ^ 0x51a7,
        shuffle: true,
        drop_last: true,
        prefetch_next_epoch: true,
        ..LoaderConfig::default()
    };
    let loader = Loader::new(&set, sel, loader_cfg.clone())?;
    let mut qc = QatConfig::new(epochs);
    qc.lr = env("LR", 5e-5);
    qc.freeze_last = env("FREEZE_LAST", qc.freeze_last).min(epochs);
    qc.momentum = env("MOMENTUM", 0.01f32);
    qc.kd = cfg.use_kd.then_some(cfg.kd);
    qc.augment = if env("AUG", 1) == 0 {
        Augment::none()
    } else {
        cfg.augment.clone()
    };
    qc.seed = cfg.seed + env("QSEED", 0u64);
    let mut obs = Observers::new(qc.momentum);
    obs.float_control = env("FLOAT", 0) == 1;
    obs.act_qmax = env("QMAX", 127);
    let calib: usize = env("CALIB", 0);
    let t0 = Instant::now();
    if calib > 0 {
        let mut csel = cfg.selection();
        csel.p_dir = 0.0;
        csel.replay = false;
        let cl = Loader::new(
            &set,
            csel,
            LoaderConfig {
                prefetch_next_epoch: false,
                ..loader_cfg.clone()
            },
        )?;
        let n = calibrate_observers(&model, &cl, calib, &mut obs)?;
        eprintln!("calibrated on {n} rows");
    }
    let qm = qat_finetune_from(model, obs, &loader, &qc, |e, l, s| {
        eprintln!("epoch {e}: loss {l:.4} {s:.0} s")
    })?;
    let secs = t0.elapsed().as_secs_f64();
    qm.save(&run)?;
    let meta = set.meta();
    let int8 = export_int8(
        &qm,
        "x",
        serde_json::Value::Null,
        meta.frontend.clone(),
        meta.labels.clone(),
    )?;
    int8.save(&run.join("qat").join("model.asc8"))?;
    let seen = train::run::seen_devices(&set, cfg.split);
    let fq = evaluate_qat(&qm, &set, ClipSet::Test, seen.clone())?;
    let i8r = evaluate_int8(&int8, &set, ClipSet::Test, seen)?;
    let label = std::env::var("LABEL").unwrap_or_default();
    let fl = if env("EVAL_FLOAT", 0) == 1 {
        let dev = train::backend::default_device();
        let fm = train::run::load_model_file(&cfg.model, n_classes, &path, &dev)?;
        let test = train::evaluate::EvalSet::new(&set, ClipSet::Test, 256)?;
        let r = test.evaluate(
            &train::evaluate::FloatModel::new(&fm, &dev),
            &set,
            train::run::seen_devices(&set, cfg.split),
        )?;
        format!(" | float {}", groups(&r))
    } else {
        String::new()
    };
    println!(
        "RESULT {label} | QAT {secs:.0} s{fl} | fq {} | int8 {} | fq devices {} | int8 devices {}",
        groups(&fq),
        groups(&i8r),
        devices(&fq),
        devices(&i8r)
    );
    Ok(())
}
