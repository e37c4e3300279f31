//! The QAT / int8 subcommands of the `train` binary (arguments and `run` functions; `main.rs`
//! only dispatches):
//!
//! ```text
//! train qat --model runs/<name> [--epochs 2] [--lr 5e-5]   QAT after the float run: runs/<name>/qat/
//!                                                          {model.bpk, observers.json, model.asc8}
//! train export --model runs/<name> --out model.asc8        QAT model -> int8 model file
//! train eval --int8 model.asc8 --shards data/              int8 engine on the test set
//! train infer model.asc8 a.wav b.wav ...                   label and probabilities per 1 s clip
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::tensor::{Tensor, TensorData};
use clap::Args;
use data_specs::{ClipSet, Variant};

use crate::export::export_int8;
use crate::infer::{argmax, evaluate_int8, infer_wav};
use crate::loader::{Loader, LoaderConfig, ShardSet};
use crate::metrics::{EvalAccumulator, EvalReport};
use crate::qat::{QatConfig, QatModel, qat_finetune};
use crate::trainer::{self, TrainConfig};
use asc_int8::Int8Model;

/// DCASE2024 Task 1 limit on parameter memory (128 KB).
pub const PARAM_MEMORY_LIMIT: usize = 128 * 1024;
/// File name of the exported int8 model in a run's `qat/` folder.
pub const INT8_FILE: &str = "model.asc8";

/// `train qat`: quantization-aware fine-tuning of a finished float run.
#[derive(Args, Debug)]
pub struct QatArgs {
    /// Run folder of a finished float run (`runs/<name>`, with `model.bpk`).
    #[arg(long)]
    pub model: PathBuf,
    /// Shard folder [default: the run's own].
    #[arg(long)]
    pub shards: Option<PathBuf>,
    /// QAT epochs.
    #[arg(long, default_value_t = 2)]
    pub epochs: u64,
    /// Constant learning rate of the QAT epochs.
    #[arg(long, default_value_t = 5e-5, value_parser = pipeline::cli::finite_f64)]
    pub lr: f64,
    /// Observers frozen for the last this-many epochs [default: epochs / 5, at least 1].
    #[arg(long)]
    pub freeze_last: Option<u64>,
}

/// `train export`: the QAT model of a run -> `.asc8`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Run folder with a `qat/` folder (`runs/<name>`).
    #[arg(long)]
    pub model: PathBuf,
    /// Output int8 model file.
    #[arg(long)]
    pub out: PathBuf,
    /// Shard folder whose front end and labels the model uses [default: the run's own].
    #[arg(long)]
    pub shards: Option<PathBuf>,
}

/// `train infer`: WAV files -> label and probabilities per clip with the int8 engine.
#[derive(Args, Debug)]
pub struct InferArgs {
    /// Int8 model file (.asc8).
    pub model: PathBuf,
    /// WAV files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

fn load_set(run: &Path, shards: Option<&PathBuf>) -> anyhow::Result<(TrainConfig, ShardSet)> {
    let cfg = TrainConfig::load(run)?;
    let path = shards.cloned().unwrap_or_else(|| cfg.shards.clone());
    let set = ShardSet::open(&path, None)?;
    trainer::check_labels(&cfg, run, &set.meta().labels, &path)?;
    Ok((cfg, set))
}

fn set_path(run: &Path, shards: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match shards {
        Some(p) => p.clone(),
        None => TrainConfig::load(run)?.shards,
    })
}

fn model_json(cfg: &TrainConfig) -> serde_json::Value {
    serde_json::json!({ "model": cfg.model, "split": cfg.split, "run": cfg.name })
}

fn print_memory(m: &Int8Model) {
    let pm = m.param_memory();
    println!(
        "int8 model: {} parameters, {} bytes stored, {} bytes by the DCASE 8-bit rule ({:.1} % of \
         the 128 KB limit)",
        pm.params(),
        pm.stored_bytes(),
        pm.dcase_8bit_bytes(),
        100.0 * pm.dcase_8bit_bytes() as f64 / PARAM_MEMORY_LIMIT as f64
    );
}

/// Evaluates the fake-quantized model on the original rows of `clip_set`.
pub fn evaluate_qat(
    qm: &QatModel,
    set: &ShardSet,
    clip_set: ClipSet,
    seen: BTreeSet<String>,
) -> anyhow::Result<EvalReport> {
    let meta = set.meta();
    let mut acc = EvalAccumulator::new(
        meta.labels.names().map(str::to_string).collect(),
        meta.devices.names().map(str::to_string).collect(),
        seen,
    );
    if !set
        .rows()
        .any(|r| r.set == clip_set && r.variant == Variant::Original)
    {
        return Ok(acc.finish());
    }
    let loader = Loader::new(
        set,
        crate::evaluate::originals(clip_set),
        LoaderConfig {
            batch_size: 128,
            shuffle: false,
            drop_last: false,
            ..LoaderConfig::default()
        },
    )?;
    let device = crate::backend::default_device();
    let k = meta.n_classes();
    for batch in loader.epoch(0) {
        let batch = batch?;
        let (m, f) = batch.logmel_shape();
        let x = Tensor::<4>::from_data(
            TensorData::new(batch.logmel().to_vec(), [batch.len(), 1, m, f]),
            &device,
        );
        let logits = qm
            .forward(x)?
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?;
        for ((row, lg), &y) in batch
            .rows()
            .iter()
            .zip(logits.chunks_exact(k))
            .zip(batch.labels())
        {
            if y >= 0 {
                acc.push(lg, y as usize, set.row_info(*row).device)?;
            }
        }
    }
    Ok(acc.finish())
}

/// `train qat`: fine-tune with fake quantization, save `qat/`, export `qat/model.asc8`, and
/// compare float, QAT (fake-quant) and int8-engine macro accuracy on the test set.
pub fn run_qat(a: &QatArgs, progress: bool) -> anyhow::Result<()> {
    let (cfg, set) = load_set(&a.model, a.shards.as_ref())?;
    let n_classes = set.meta().n_classes();
    let device = crate::backend::training_device();
    let path = a.model.join(trainer::FINAL_MODEL_FILE);
    if !path.exists() {
        bail!(
            "{}: no {} (finish the float run first)",
            a.model.display(),
            trainer::FINAL_MODEL_FILE
        );
    }
    let model = trainer::load_model_file(&cfg.model, n_classes, &path, &device)?;
    let float_model = trainer::load_model_file(
        &cfg.model,
        n_classes,
        &path,
        &crate::backend::default_device(),
    )?;
    let mut loader_cfg = LoaderConfig {
        batch_size: cfg.batch_size,
        seed: cfg.seed ^ 0x51a7,
        shuffle: true,
        drop_last: true,
        ..LoaderConfig::default()
    };
    // Fewer training rows than one batch: one smaller batch per epoch instead of none (the
    // BatchNorm statistics are frozen during QAT, so a small batch is safe).
    let rows = Loader::new(&set, cfg.selection(), loader_cfg.clone())?.epoch_len();
    if rows == 0 {
        bail!(
            "{}: the run's training selection (split {}) holds no rows of {}; QAT needs \
             training rows",
            a.model.display(),
            cfg.split,
            set_path(&a.model, a.shards.as_ref())?.display()
        );
    }
    if rows < loader_cfg.batch_size {
        eprintln!(
            "note: {rows} training rows, fewer than one batch of {}: QAT uses one batch of \
             {rows} per epoch",
            loader_cfg.batch_size
        );
        loader_cfg.drop_last = false;
    }
    let loader = Loader::new(&set, cfg.selection(), loader_cfg)?;
    let mut qc = QatConfig::new(a.epochs);
    qc.lr = a.lr;
    if let Some(f) = a.freeze_last {
        qc.freeze_last = f.min(a.epochs);
    }
    qc.kd = cfg.use_kd.then_some(cfg.kd);
    qc.augment = cfg.augment.clone();
    qc.seed = cfg.seed;
    eprintln!(
        "QAT of {} for {} epochs x {} updates (lr {}, observers frozen for the last {}, BN \
         statistics frozen)",
        path.display(),
        qc.epochs,
        loader.batches_per_epoch(),
        qc.lr,
        qc.freeze_last
    );
    let t0 = Instant::now();
    let qm = qat_finetune(model, &loader, &qc, |e, loss, s| {
        if progress {
            eprintln!(
                "QAT epoch {}/{}: loss {loss:.4}, {s:.0} s",
                e + 1,
                qc.epochs
            );
        }
    })?;
    eprintln!("QAT took {:.0} s", t0.elapsed().as_secs_f64());
    qm.save(&a.model)?;
    let meta = set.meta();
    let int8 = export_int8(
        &qm,
        &format!("{}-int8", cfg.model.name()),
        model_json(&cfg),
        meta.frontend.clone(),
        meta.labels.clone(),
    )?;
    let out = a.model.join(crate::qat::QAT_DIR).join(INT8_FILE);
    int8.save(&out)?;
    println!("wrote {}", out.display());
    print_memory(&int8);

    let seen = trainer::seen_devices(&set, cfg.split);
    let test = crate::evaluate::EvalSet::new(&set, ClipSet::Test, 256)?;
    if test.is_empty() {
        return Ok(());
    }
    let fl = test.evaluate(
        &float_model,
        &set,
        seen.clone(),
        &crate::backend::default_device(),
    )?;
    let fq = evaluate_qat(&qm, &set, ClipSet::Test, seen.clone())?;
    let t1 = Instant::now();
    let i8r = evaluate_int8(&int8, &set, ClipSet::Test, seen)?;
    let secs = t1.elapsed().as_secs_f64();
    println!(
        "test macro accuracy: float {:.2} %, QAT fake-quant {:.2} %, int8 engine {:.2} % ({} \
         clips; int8 evaluation {:.1} ms per clip on {} threads)",
        100.0 * fl.macro_accuracy,
        100.0 * fq.macro_accuracy,
        100.0 * i8r.macro_accuracy,
        i8r.n_examples,
        1e3 * secs / i8r.n_examples.max(1) as f64,
        rayon::current_num_threads()
    );
    println!("{i8r}");
    Ok(())
}

/// `train export`.
pub fn run_export(a: &ExportArgs) -> anyhow::Result<()> {
    let (cfg, set) = load_set(&a.model, a.shards.as_ref())?;
    let meta = set.meta();
    let qm = QatModel::load(
        &a.model,
        &cfg.model,
        meta.n_classes(),
        &crate::backend::default_device(),
    )
    .with_context(|| format!("{}: run `train qat --model` first", a.model.display()))?;
    let int8 = export_int8(
        &qm,
        &format!("{}-int8", cfg.model.name()),
        model_json(&cfg),
        meta.frontend.clone(),
        meta.labels.clone(),
    )?;
    int8.save(&a.out)?;
    println!("wrote {}", a.out.display());
    print_memory(&int8);
    Ok(())
}

/// `train eval --int8 MODEL --shards DIR`: the int8 engine on the test set.
pub fn run_eval_int8(model: &Path, shards: &Path) -> anyhow::Result<()> {
    let m = Int8Model::load(model)?;
    let set = ShardSet::open(shards, None)?;
    let split = m
        .meta()
        .config
        .get("split")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(100) as u8;
    let seen = trainer::seen_devices(&set, split);
    eprintln!(
        "evaluating int8 model {} on the test set of {}",
        model.display(),
        shards.display()
    );
    let t0 = Instant::now();
    let r = evaluate_int8(&m, &set, ClipSet::Test, seen)?;
    if r.n_examples == 0 {
        bail!(
            "{}: the shards hold no labelled test rows",
            shards.display()
        );
    }
    eprintln!(
        "{} clips in {:.1} s ({:.2} ms per clip, {} threads)",
        r.n_examples,
        t0.elapsed().as_secs_f64(),
        1e3 * t0.elapsed().as_secs_f64() / r.n_examples as f64,
        rayon::current_num_threads()
    );
    println!("{r}");
    Ok(())
}

/// `train infer`: one line per clip: file, clip id, label, then `label=probability` pairs.
pub fn run_infer(a: &InferArgs) -> anyhow::Result<()> {
    let m = Int8Model::load(&a.model)?;
    let lm = pipeline::logmel::LogMel::new(m.frontend());
    let mut failed = 0;
    for f in &a.files {
        match infer_wav(&m, &lm, f) {
            Ok(preds) => {
                for p in preds {
                    let probs: Vec<String> = m
                        .labels()
                        .0
                        .iter()
                        .zip(&p.probs)
                        .map(|(l, q)| format!("{l}={q:.3}"))
                        .collect();
                    println!(
                        "{}\t{}\t{}\t{:.3}\t{}",
                        f.display(),
                        p.clip_id,
                        p.label,
                        p.probs[argmax(&p.probs)],
                        probs.join(" ")
                    );
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} files failed", a.files.len());
    }
    Ok(())
}
