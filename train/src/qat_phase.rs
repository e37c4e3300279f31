//! Quantization-aware training of a finished float run, as a library call ([`run_qat`]): what
//! `train qat` and the trainer's `--qat-epochs N` both run.
//!
//! ```text
//! runs/<name>/model.bpk -> QAT fine-tuning (crate::qat::qat_finetune: fake-quantized int8
//!   weights and activations, BN statistics frozen, observers frozen for the last epochs,
//!   constant lr 5e-5) -> runs/<name>/qat/{model.bpk, observers.json}
//!   -> int8 export (crate::export) -> runs/<name>/qat/model.asc8
//!   -> float vs QAT (fake-quant) vs int8-engine macro accuracy on the test set
//! ```
//!
//! [`export_run`] exports the QAT model of a run again (`train export`). Both return what they
//! did; the caller prints it ([`QatOutcome`]'s `Display`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use asc_int8::Int8Model;
use data_specs::ClipSet;

use crate::config::TrainConfig;
use crate::error::{Result, TrainError, io_err};
use crate::evaluate::{EvalSet, FloatModel, evaluate_int8, evaluate_qat};
use crate::export::export_int8;
use crate::loader::{Loader, LoaderConfig, ShardSet};
use crate::metrics::EvalReport;
use crate::qat::{QAT_DIR, QatConfig, QatModel, qat_finetune};
use crate::run::{FINAL_MODEL_FILE, INT8_FILE, load_model_file, open_run_shards, seen_devices};

/// What QAT of a finished run does.
#[derive(Debug, Clone, PartialEq)]
pub struct QatOptions {
    /// Run folder of a finished float run (`runs/<name>`, with `model.bpk`).
    pub run_dir: PathBuf,
    /// Shard folder (`None`: the run's own).
    pub shards: Option<PathBuf>,
    /// QAT epochs.
    pub epochs: u64,
    /// Constant learning rate of the QAT epochs.
    pub lr: f64,
    /// Observers frozen for the last this-many epochs (`None`: `epochs / 5`, at least 1,
    /// [`QatConfig::new`]).
    pub freeze_last: Option<u64>,
    /// Print a line per QAT epoch on stderr.
    pub progress: bool,
}

impl QatOptions {
    /// `epochs` of QAT of the run `run_dir` on its own shards with the recipe's settings (lr
    /// 5e-5, the default observer freeze), with progress lines.
    pub fn new(run_dir: &Path, epochs: u64) -> Self {
        Self {
            run_dir: run_dir.to_path_buf(),
            shards: None,
            epochs,
            lr: QatConfig::new(epochs).lr,
            freeze_last: None,
            progress: true,
        }
    }
}

/// Float, fake-quant and int8-engine evaluations of one QAT phase on the test set.
#[derive(Debug, Clone, PartialEq)]
pub struct QatComparison {
    /// The float model (`model.bpk`).
    pub float: EvalReport,
    /// The QAT model, fake-quantized.
    pub fake_quant: EvalReport,
    /// The exported int8 model on the int8 engine.
    pub int8: EvalReport,
    /// Seconds of the int8 evaluation.
    pub int8_seconds: f64,
    /// Threads of the int8 evaluation.
    pub threads: usize,
}

/// What a QAT phase wrote and measured.
#[derive(Debug, Clone)]
pub struct QatOutcome {
    /// The exported int8 model file (`runs/<name>/qat/model.asc8`).
    pub int8_path: PathBuf,
    /// Its parameter memory line ([`int8_memory_line`]).
    pub memory: String,
    /// The comparison on the test set (`None` when the shards hold no test rows).
    pub test: Option<QatComparison>,
}

impl fmt::Display for QatOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "wrote {}", self.int8_path.display())?;
        write!(f, "{}", self.memory)?;
        if let Some(c) = &self.test {
            write!(
                f,
                "\ntest macro accuracy: float {:.2} %, QAT fake-quant {:.2} %, int8 engine {:.2} % \
                 ({} clips; int8 evaluation {:.1} ms per clip on {} threads)\n{}",
                100.0 * c.float.macro_accuracy,
                100.0 * c.fake_quant.macro_accuracy,
                100.0 * c.int8.macro_accuracy,
                c.int8.n_examples,
                1e3 * c.int8_seconds / c.int8.n_examples.max(1) as f64,
                c.threads,
                c.int8
            )?;
        }
        Ok(())
    }
}

/// The parameter memory of an int8 model against the DCASE2024 limit
/// ([`data_specs::limits::MAX_PARAM_BYTES`]).
pub fn int8_memory_line(m: &Int8Model) -> String {
    let pm = m.param_memory();
    format!(
        "int8 model: {} parameters, {} bytes stored, {} bytes by the DCASE 8-bit rule ({:.1} % of \
         the {}-byte limit)",
        pm.params(),
        pm.stored_bytes(),
        pm.dcase_8bit_bytes(),
        data_specs::limits::param_memory_percent(pm.dcase_8bit_bytes()),
        data_specs::limits::MAX_PARAM_BYTES
    )
}

/// The `config` JSON an exported model carries (architecture, split, run name).
fn model_json(cfg: &TrainConfig) -> serde_json::Value {
    serde_json::json!({ "model": cfg.model, "split": cfg.split, "run": cfg.name })
}

/// The int8 model of a QAT model of the run `cfg` on shards `set`.
fn export(qm: &QatModel, cfg: &TrainConfig, set: &ShardSet) -> Result<Int8Model> {
    let meta = set.meta();
    Ok(export_int8(
        qm,
        &format!("{}-int8", cfg.model.name()),
        model_json(cfg),
        meta.frontend.clone(),
        meta.labels.clone(),
    )?)
}

/// The loader of the QAT epochs: the run's training selection, shuffled with its own seed,
/// full batches; fewer training rows than one batch give one smaller batch per epoch instead of
/// none (the BatchNorm statistics are frozen during QAT, so a small batch is safe).
fn qat_loader(
    set: &ShardSet,
    cfg: &TrainConfig,
    opts: &QatOptions,
    shards: &Path,
) -> Result<Loader> {
    let mut loader_cfg = LoaderConfig {
        batch_size: cfg.batch_size,
        seed: cfg.seed ^ 0x51a7,
        shuffle: true,
        drop_last: true,
        // As the float trainer: the loader decodes into the next epoch, never waiting at an
        // epoch boundary.
        prefetch_next_epoch: true,
        ..LoaderConfig::default()
    };
    let rows = Loader::new(set, cfg.selection(), loader_cfg.clone())?.epoch_len();
    if rows == 0 {
        return Err(TrainError::Config(format!(
            "{}: the run's training selection (split {}) holds no rows of {}; QAT needs \
             training rows",
            opts.run_dir.display(),
            cfg.split,
            shards.display()
        )));
    }
    if rows < loader_cfg.batch_size {
        eprintln!(
            "note: {rows} training rows, fewer than one batch of {}: QAT uses one batch of \
             {rows} per epoch",
            loader_cfg.batch_size
        );
        loader_cfg.drop_last = false;
    }
    Ok(Loader::new(set, cfg.selection(), loader_cfg)?)
}

/// QAT of a finished float run: fine-tune with fake quantization, save `qat/`, export
/// `qat/model.asc8`, and compare float, QAT (fake-quant) and int8-engine macro accuracy on the
/// test set.
pub fn run_qat(opts: &QatOptions) -> Result<QatOutcome> {
    let (cfg, set, shards) = open_run_shards(&opts.run_dir, opts.shards.as_deref())?;
    let n_classes = set.meta().n_classes();
    let path = opts.run_dir.join(FINAL_MODEL_FILE);
    if !path.exists() {
        return Err(io_err(
            &opts.run_dir,
            format!("no {FINAL_MODEL_FILE} (finish the float run first)"),
        ));
    }
    let model = load_model_file(
        &cfg.model,
        n_classes,
        &path,
        &crate::backend::training_device(),
    )?;
    let eval_device = crate::backend::default_device();
    let float_model = load_model_file(&cfg.model, n_classes, &path, &eval_device)?;
    let loader = qat_loader(&set, &cfg, opts, &shards)?;
    let mut qc = QatConfig::new(opts.epochs);
    qc.lr = opts.lr;
    if let Some(f) = opts.freeze_last {
        qc.freeze_last = f.min(opts.epochs);
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
        if opts.progress {
            eprintln!(
                "QAT epoch {}/{}: loss {loss:.4}, {s:.0} s",
                e + 1,
                qc.epochs
            );
        }
    })?;
    eprintln!("QAT took {:.0} s", t0.elapsed().as_secs_f64());
    qm.save(&opts.run_dir)?;
    let int8 = export(&qm, &cfg, &set)?;
    let int8_path = opts.run_dir.join(QAT_DIR).join(INT8_FILE);
    int8.save(&int8_path)?;
    let memory = int8_memory_line(&int8);

    let seen = seen_devices(&set, cfg.split);
    let test = EvalSet::new(&set, ClipSet::Test, 256)?;
    if test.is_empty() {
        return Ok(QatOutcome {
            int8_path,
            memory,
            test: None,
        });
    }
    let float = test.evaluate(
        &FloatModel::new(&float_model, &eval_device),
        &set,
        seen.clone(),
    )?;
    let fake_quant = evaluate_qat(&qm, &set, ClipSet::Test, seen.clone())?;
    let t1 = Instant::now();
    let int8_eval = evaluate_int8(&int8, &set, ClipSet::Test, seen)?;
    Ok(QatOutcome {
        int8_path,
        memory,
        test: Some(QatComparison {
            float,
            fake_quant,
            int8: int8_eval,
            int8_seconds: t1.elapsed().as_secs_f64(),
            threads: rayon::current_num_threads(),
        }),
    })
}

/// Exports the QAT model of the run `run_dir` (`qat/`, written by [`run_qat`]) to the int8
/// model file `out`, with the front end and labels of `shards` (`None`: the run's own); returns
/// the model.
pub fn export_run(run_dir: &Path, shards: Option<&Path>, out: &Path) -> Result<Int8Model> {
    let (cfg, set, _) = open_run_shards(run_dir, shards)?;
    let qm = QatModel::load(
        run_dir,
        &cfg.model,
        set.meta().n_classes(),
        &crate::backend::default_device(),
    )
    .map_err(|e| io_err(run_dir, format!("run `train qat --model` first: {e}")))?;
    let int8 = export(&qm, &cfg, &set)?;
    int8.save(out)?;
    Ok(int8)
}
