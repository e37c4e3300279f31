//! The knowledge-distillation trainer: [`train`] turns a shard folder into a finished run
//! folder, in named steps (`open_session`, `eval_sets`, `start_learner`, `training_loader`,
//! `plan_epochs`, `announce`, then per epoch `train_epoch` and `close_epoch`, then
//! `keep_model`, the report and the QAT phase).
//!
//! ```text
//! ShardSet::open -> Loader (Selection: train set, split P, p_dir, replay)     per epoch e:
//!   for each batch (step s):  augment (rng = epoch_rng(seed, s, AUGMENT_STREAM))
//!                             -> forward -> kd_loss (teacher logits + mask) | cross_entropy
//!                             -> backward -> AdamW step with lr = LrSchedule::lr_at(s)
//!   every few epochs and after the last (EvalConfig::due): precise BN over training rows,
//!   then evaluate on the validation fold (if any) and on the test set (a diagnostic)
//!   metrics.jsonl += EpochMetrics;  checkpoints/last  (+ checkpoints/best when the validation
//!   macro accuracy improved); optional early stopping on the validation accuracy
//! start: the schedule (ScheduleRule, chosen by the caller) and the floor (crate::floor)
//! end: model.bpk (the final model, or the validation-selected one; precise BN), report.md
//!   with model vs floor on the test set, loss/accuracy/confusion PNGs, then QAT if asked
//!   (crate::qat_phase::run_qat)
//! ```
//!
//! # Model selection
//! Never by the test set. Without a validation fold (`EvalConfig::validation`) the run keeps
//! its final model; with one (location fold k of K of the training clips, left out of
//! training), `checkpoints/best` and `model.bpk` hold the model of the evaluation with the best
//! validation macro accuracy. The per-epoch test accuracy is logged and plotted as a
//! diagnostic only.
//!
//! # Reproducibility and resume
//! Every random draw is derived from the run seed: the model initialisation seeds the device with
//! `derive_seed(seed, 0, INIT_STREAM)`; the loader's variant draw and shuffle depend only on
//! `(seed, epoch)`; the augmentation generator of update `s` is `epoch_rng(seed, s,
//! AUGMENT_STREAM)` and the device is re-seeded with `derive_seed(seed, s, DEVICE_STREAM)` before
//! each update. A checkpoint is written at the end of every epoch (model, AdamW moments, step,
//! loader state, best metric), so `--resume` continues at the next epoch with exactly the
//! generators an uninterrupted run would use.
//!
//! # Threads
//! The rayon global pool (size `--threads`, default all cores) runs burn Flex's gemm/conv kernels
//! and the fused selective scan; the loader decodes the next batches on its own prefetch thread,
//! so Parquet decoding overlaps the compute.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use data_specs::{ClipSet, ShardMeta};
use indicatif::{ProgressBar, ProgressStyle};

use crate::checkpoint::{self, TrainState};
use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::evaluate::{EvalSet, FloatModel};
use crate::floor::Floor;
use crate::loader::{HostBatch, Loader, LoaderConfig, LoaderState, ShardSet};
use crate::loss;
use crate::metrics::{EpochMetrics, EvalReport};
use crate::model::Model;
use crate::qat_phase::{QatOptions, QatOutcome};
use crate::report::RunSummary;
use crate::run::{BEST, CHECKPOINTS_DIR, FINAL_MODEL_FILE, LAST, RunDir};
use crate::schedule::LrSchedule;

/// RNG stream of the model initialisation.
pub const INIT_STREAM: u64 = 1;
/// RNG stream of the batch augmentations (indexed by update step).
pub const AUGMENT_STREAM: u64 = 2;
/// RNG stream of the device generator (indexed by update step).
pub const DEVICE_STREAM: u64 = 3;

/// How a run is started.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The resolved configuration (ignored on resume: the run's own `config.toml` is used).
    pub config: TrainConfig,
    /// Folder that holds the run folders.
    pub runs_root: PathBuf,
    /// Continue the run folder `runs_root/<config.name>` from its last checkpoint.
    pub resume: bool,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// Stop after this many completed epochs without finishing the run (tests of resume).
    pub stop_after: Option<u64>,
}

/// What a finished (or stopped) run returns.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Evaluation of the kept model (final, or validation-selected) on the test set; for a
    /// stopped run, of the last evaluated epoch.
    pub final_eval: Option<EvalReport>,
    /// `(epoch, validation macro accuracy)` of `checkpoints/best` (runs with a validation
    /// fold).
    pub best: Option<(u64, f64)>,
    /// Zero-based epoch of the kept model.
    pub selected_epoch: Option<u64>,
    /// The floor on the same test rows ([`crate::floor`]), when it could be computed.
    pub floor: Option<Floor>,
    /// True when early stopping ended the run before its last epoch.
    pub stopped_early: bool,
    /// Every epoch's metrics.
    pub metrics: Vec<EpochMetrics>,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
    /// Training examples per second over this invocation's epochs.
    pub samples_per_s: f64,
    /// True when the run completed all epochs.
    pub finished: bool,
    /// The QAT phase of the run (`qat_epochs > 0`), once finished.
    pub qat: Option<QatOutcome>,
}

/// Train (or resume) a run; see the module docs for the loop.
pub fn train(opts: TrainOptions) -> Result<TrainOutcome> {
    let t_start = Instant::now();
    let session = open_session(&opts)?;
    let evals = eval_sets(&session)?;
    let (model, mut learner) = start_learner(&session, opts.resume)?;
    let loader = training_loader(&session, &learner.state)?;
    let plan = plan_epochs(&session, &loader, &learner.state);
    let complexity = session.cfg.model.complexity(
        session.n_classes,
        session.meta.frontend.n_mels,
        session.meta.frontend.n_frames(),
    );
    announce(&session, &evals, &loader, &plan, &complexity);
    if plan.steps_per_epoch == 0 {
        return Err(TrainError::Config(
            "the training selection is empty (check --split and the shards)".into(),
        ));
    }
    let floor = compute_floor(&session.set, &session.cfg, evals.seen.clone());
    let (model, done) = run_epochs(&session, &evals, &loader, &plan, model, &mut learner, &opts)?;

    let cfg = &session.cfg;
    let state = &learner.state;
    let finished = state.epoch >= cfg.epochs || done.stopped_early;
    let best = state.best_epoch.zip(state.best_metric);
    let samples_per_s = done.train_samples as f64 / done.train_seconds.max(1e-9);
    let mut outcome = TrainOutcome {
        run_dir: session.run.path().to_path_buf(),
        final_eval: None,
        best,
        selected_epoch: None,
        floor,
        metrics: Vec::new(),
        seconds: 0.0,
        samples_per_s,
        finished,
        stopped_early: done.stopped_early,
        qat: None,
    };
    if !finished {
        outcome.final_eval = done.last_eval.map(|(_, e)| e);
        outcome.metrics = learner.metrics;
        outcome.seconds = t_start.elapsed().as_secs_f64();
        return Ok(outcome);
    }
    let kept = keep_model(&session, &evals, model, state, done.last_eval)?;
    let total_seconds: f64 = learner.metrics.iter().map(|m| m.seconds).sum();
    let summary = RunSummary {
        name: cfg.name.clone(),
        complexity: complexity.to_string(),
        total_seconds,
        epochs: learner.metrics.clone(),
        selection: kept.selection,
        floor: outcome.floor.as_ref().map(|f| f.eval.clone()),
    };
    crate::report::write_report(&session.run, &summary, &kept.eval)?;
    // QAT fine-tuning of the kept model (model.bpk, precise BN statistics), then int8 export
    // (runs/<name>/qat/).
    if cfg.qat_epochs > 0 {
        let qat = QatOptions {
            progress: opts.progress,
            ..QatOptions::new(session.run.path(), cfg.qat_epochs)
        };
        let done = crate::qat_phase::run_qat(&qat).map_err(|e| TrainError::Qat(e.to_string()))?;
        outcome.qat = Some(done);
    }
    outcome.final_eval = Some(kept.eval);
    outcome.selected_epoch = Some(kept.epoch);
    outcome.metrics = learner.metrics;
    outcome.seconds = t_start.elapsed().as_secs_f64();
    Ok(outcome)
}

/// A run opened for training: its resolved configuration (labels recorded, frequency-mask fill
/// from the front end), its shards and its folder.
struct Session {
    cfg: TrainConfig,
    set: ShardSet,
    meta: ShardMeta,
    run: RunDir,
    /// Hash of the configuration as written (the checkpoints carry it).
    config_hash: String,
    n_classes: usize,
}

/// Resolves the configuration (the run's own `config.toml` on resume), opens the shards,
/// checks their labels and creates the run folder (writing `config.toml` for a new run). On
/// resume the checkpoints carry the hash of the configuration as written; the run name then
/// follows the folder, so a moved or renamed run folder resumes under its new name.
fn open_session(opts: &TrainOptions) -> Result<Session> {
    let run_path = opts.runs_root.join(&opts.config.name);
    let (mut cfg, resumed_hash) = if opts.resume {
        let mut c = TrainConfig::load(&run_path)?;
        let hash = checkpoint::config_hash(&c);
        c.name = opts.config.name.clone();
        (c, Some(hash))
    } else {
        if run_path.exists() {
            return Err(TrainError::RunExists(run_path));
        }
        (opts.config.clone(), None)
    };
    cfg.validate()?;
    let set = ShardSet::open(&cfg.shards, None)?;
    let meta = set.meta().clone();
    crate::run::check_labels(&cfg, &run_path, &meta.labels, &cfg.shards)?;
    cfg.labels = Some(meta.labels.clone());
    let cfg = cfg.for_frontend(&meta.frontend);
    let run = RunDir::create(&opts.runs_root, &cfg.name)?;
    let config_hash = resumed_hash.unwrap_or_else(|| checkpoint::config_hash(&cfg));
    if !opts.resume {
        run.write_config(&cfg)?;
    }
    let n_classes = meta.n_classes();
    Ok(Session {
        cfg,
        set,
        meta,
        run,
        config_hash,
        n_classes,
    })
}

/// What the run evaluates: the test set (a diagnostic), the validation fold (selects the kept
/// model) and the devices of the training selection (the "seen" group).
struct EvalSets {
    test: EvalSet,
    val: Option<EvalSet>,
    seen: BTreeSet<String>,
}

fn eval_sets(s: &Session) -> Result<EvalSets> {
    let (set, cfg) = (&s.set, &s.cfg);
    let test = EvalSet::new(set, ClipSet::Test, cfg.batch_size.max(64))?;
    let val = match cfg.eval.validation_selection(cfg.split) {
        Some(sel) => Some(EvalSet::with_selection(set, sel, cfg.batch_size.max(64))?),
        None => None,
    };
    Ok(EvalSets {
        test,
        val,
        seen: crate::run::seen_devices(set, cfg.split),
    })
}

/// What training carries besides the model (which moves through every update by value): the
/// optimizer, the trainer state, the epochs so far and the training device.
struct Learner {
    optim: ModuleOptimizer,
    state: TrainState,
    metrics: Vec<EpochMetrics>,
    device: Device,
}

/// The optimizer of the recipe: AdamW with decoupled weight decay (eps 1e-8 as in PyTorch's
/// AdamW, which the paper used; burn's default would be 1e-5).
fn optimizer(cfg: &TrainConfig) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay as f32)
        .with_epsilon(1e-8)
        .init()
}

/// A fresh model (the device seeded with `derive_seed(seed, 0, INIT_STREAM)`), AdamW and state,
/// or on resume those of the newest intact checkpoint (with `metrics.jsonl` cut back to it).
fn start_learner(s: &Session, resume: bool) -> Result<(Model, Learner)> {
    let cfg = &s.cfg;
    let device = crate::backend::training_device();
    // Drawn now from the CPU generator, on a GPU too: one seed, one initial model.
    let init_seed = checkpoint::derive_seed(cfg.seed, 0, INIT_STREAM);
    let model = crate::backend::init_model(&device, init_seed, |d| cfg.model.init(s.n_classes, d));
    let optim = optimizer(cfg);
    let state = TrainState {
        epoch: 0,
        step: 0,
        seed: cfg.seed,
        loader_state: serde_json::to_value(LoaderState {
            seed: cfg.seed,
            epoch: 0,
            batch: 0,
        })
        .unwrap_or_default(),
        best_metric: None,
        best_epoch: None,
        config_hash: s.config_hash.clone(),
    };
    if !resume {
        let learner = Learner {
            optim,
            state,
            metrics: Vec::new(),
            device,
        };
        return Ok((model, learner));
    }
    let dir = checkpoint::newest_intact(&s.run.path().join(CHECKPOINTS_DIR), LAST)?;
    let (model, optim, state) = checkpoint::load_checkpoint(&dir, model, optim)?;
    checkpoint::check_config(&dir, &state, &s.config_hash)?;
    let metrics = s.run.truncate_metrics(state.epoch)?;
    eprintln!(
        "resuming {} at epoch {} (update {}) from {}",
        cfg.name,
        state.epoch,
        state.step,
        dir.display()
    );
    let learner = Learner {
        optim,
        state,
        metrics,
        device,
    };
    Ok((model, learner))
}

/// The training loader, positioned at the state's epoch. drop_last keeps BatchNorm away from
/// a 1-example batch at the end of an epoch (when an epoch holds more than one batch).
fn training_loader(s: &Session, state: &TrainState) -> Result<Loader> {
    let cfg = &s.cfg;
    let mut loader_cfg = LoaderConfig {
        batch_size: cfg.batch_size,
        seed: cfg.seed,
        shuffle: true,
        drop_last: false,
        prefetch_next_epoch: true,
        ..LoaderConfig::default()
    };
    let probe = Loader::new(&s.set, cfg.selection(), loader_cfg.clone())?;
    loader_cfg.drop_last = probe.epoch_len() > cfg.batch_size;
    drop(probe);
    let loader_state: LoaderState =
        serde_json::from_value(state.loader_state.clone()).unwrap_or(LoaderState {
            seed: cfg.seed,
            epoch: state.epoch,
            batch: 0,
        });
    Ok(Loader::resume(
        &s.set,
        cfg.selection(),
        loader_cfg,
        loader_state,
    )?)
}

/// Rows of one epoch counted by device and variant, and those with teacher logits.
struct RowCounts {
    rows: usize,
    by_device: BTreeMap<String, usize>,
    by_variant: BTreeMap<String, usize>,
    with_teacher: usize,
}

impl RowCounts {
    fn of(set: &ShardSet, rows: &[u32]) -> Self {
        let mut c = Self {
            rows: rows.len(),
            by_device: BTreeMap::new(),
            by_variant: BTreeMap::new(),
            with_teacher: 0,
        };
        for &r in rows {
            let info = set.row_info(r);
            *c.by_device.entry(info.device.to_string()).or_insert(0) += 1;
            *c.by_variant
                .entry(format!("{:?}", info.variant).to_lowercase())
                .or_insert(0) += 1;
            c.with_teacher += usize::from(info.has_teacher);
        }
        c
    }
}

fn fmt_counts(m: &BTreeMap<String, usize>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How every epoch runs: updates per epoch, the learning-rate schedule, the loss.
struct EpochPlan {
    steps_per_epoch: u64,
    total_steps: u64,
    sched: LrSchedule,
    /// KD loss (the configuration asks for it and the epoch's rows carry teacher logits).
    use_kd: bool,
    /// The rows of the first epoch of this invocation (for the starting message).
    rows: RowCounts,
}

fn plan_epochs(s: &Session, loader: &Loader, state: &TrainState) -> EpochPlan {
    let cfg = &s.cfg;
    let steps_per_epoch = loader.batches_per_epoch();
    let total_steps = cfg.epochs * steps_per_epoch;
    let rows = RowCounts::of(&s.set, &loader.epoch_order(state.epoch));
    EpochPlan {
        steps_per_epoch,
        total_steps,
        sched: LrSchedule::exact(cfg.lr, cfg.warmup_steps, total_steps),
        use_kd: cfg.use_kd && rows.with_teacher > 0,
        rows,
    }
}

/// The starting message: model, rows, loss, schedule, evaluation, threads, run folder.
fn announce(
    s: &Session,
    evals: &EvalSets,
    loader: &Loader,
    plan: &EpochPlan,
    cx: &crate::complexity::ComplexityReport,
) {
    let (cfg, meta) = (&s.cfg, &s.meta);
    let (n_mels, n_frames) = (meta.frontend.n_mels, meta.frontend.n_frames());
    eprintln!(
        "model {} ({}): {} parameters, {:.2} M MACs, input {n_mels}x{n_frames}, {} classes",
        cfg.model.name(),
        cfg.model_spec,
        cx.params(),
        cx.macs() as f64 / 1e6,
        s.n_classes
    );
    eprintln!(
        "training rows per epoch: {} (split {} %, p_dir {}, replay {}{}) from {}",
        plan.rows.rows,
        cfg.split,
        cfg.p_dir,
        if cfg.replay { "on" } else { "off" },
        cfg.holdout_fold
            .map(|f| format!(", fold {f} left out"))
            .unwrap_or_default(),
        cfg.shards.display()
    );
    eprintln!("  by device:  {}", fmt_counts(&plan.rows.by_device));
    eprintln!("  by variant: {}", fmt_counts(&plan.rows.by_variant));
    eprintln!("test rows: {} (originals)", evals.test.len());
    if let (Some(v), Some(f)) = (&evals.val, cfg.eval.validation) {
        eprintln!(
            "validation rows: {} (originals of location fold {f}, left out of training; they \
             select the kept model{})",
            v.len(),
            cfg.eval
                .early_stop
                .map(|p| format!(" and stop the run after {p} evaluations without gain"))
                .unwrap_or_default()
        );
    }
    eprintln!(
        "loss: {}",
        if plan.use_kd {
            format!(
                "KD (lambda {}, tau {}) on the {} rows with teacher logits ({}), \
                 cross-entropy on the others",
                cfg.kd.lambda,
                cfg.kd.tau,
                plan.rows.with_teacher,
                if meta.teacher.is_empty() {
                    "unnamed teacher"
                } else {
                    &meta.teacher
                }
            )
        } else if cfg.use_kd {
            "plain cross-entropy: the shards carry no teacher logits for the selected rows".into()
        } else {
            "plain cross-entropy (--no-kd)".into()
        }
    );
    eprintln!(
        "schedule: {} updates of {} ({} epochs x {}, drop_last {}), lr {} warm-up {} updates \
         then cosine to 0{}",
        plan.total_steps,
        cfg.batch_size,
        cfg.epochs,
        plan.steps_per_epoch,
        loader.config().drop_last,
        cfg.lr,
        plan.sched.warmup_steps,
        if cfg.schedule_rule.is_empty() {
            String::new()
        } else {
            format!("\n  rule: {}", cfg.schedule_rule)
        }
    );
    eprintln!(
        "evaluation: every {} epochs and after the last, precise BN over {} training rows first",
        cfg.eval.interval(cfg.epochs),
        cfg.eval.precise_bn_rows
    );
    eprintln!(
        "threads: {} rayon (burn Flex kernels, selective scan) + 1 loader prefetch thread",
        rayon::current_num_threads()
    );
    eprintln!("run folder: {}", s.run.path().display());
}

/// What the loop over the epochs of this invocation leaves.
struct EpochsDone {
    train_samples: u64,
    train_seconds: f64,
    /// `(epoch, test evaluation)` of the last evaluation.
    last_eval: Option<(u64, EvalReport)>,
    stopped_early: bool,
}

/// The epochs from the state's epoch to the last (or to `stop_after`, or to early stopping);
/// returns the model after them.
fn run_epochs(
    s: &Session,
    evals: &EvalSets,
    loader: &Loader,
    plan: &EpochPlan,
    mut model: Model,
    learner: &mut Learner,
    opts: &TrainOptions,
) -> Result<(Model, EpochsDone)> {
    let cfg = &s.cfg;
    let mut done = EpochsDone {
        train_samples: 0,
        train_seconds: 0.0,
        last_eval: None,
        stopped_early: early_stop_reached(&learner.metrics, cfg.eval.early_stop),
    };
    let mut epochs_this_call = 0u64;
    while learner.state.epoch < cfg.epochs && !done.stopped_early {
        if opts.stop_after.is_some_and(|k| epochs_this_call >= k) {
            break;
        }
        let epoch = learner.state.epoch;
        let t_epoch = Instant::now();
        let (m, totals) = train_epoch(s, loader, plan, model, learner, opts.progress)?;
        done.train_samples += totals.n_seen;
        done.train_seconds += totals.seconds;
        let (m, test) = close_epoch(s, evals, m, learner, &totals, t_epoch)?;
        model = m;
        if let Some(test) = test {
            done.last_eval = Some((epoch, test));
        }
        epochs_this_call += 1;
        done.stopped_early = early_stop_reached(&learner.metrics, cfg.eval.early_stop);
        if done.stopped_early && learner.state.epoch < cfg.epochs {
            eprintln!(
                "early stop: no validation gain in {} evaluations (best: epoch {})",
                cfg.eval.early_stop.unwrap_or(0),
                learner.state.best_epoch.map_or(0, |e| e + 1)
            );
        }
    }
    Ok((model, done))
}

/// Totals of one epoch's updates.
struct EpochTotals {
    loss_sum: f64,
    n_seen: u64,
    n_correct: u64,
    /// Learning rate of the last update.
    lr: f64,
    /// Seconds of the updates.
    seconds: f64,
}

fn progress_bar(show: bool, epoch: u64, epochs: u64, steps: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(steps);
    b.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_prefix(format!("{}/{epochs}", epoch + 1));
    b
}

/// The updates of one epoch (the state's epoch): per batch, the augmentation generator of
/// update `s` and the device seed are derived from `(seed, s)`, the loss is the KD loss (or
/// cross-entropy) of the augmented batch, and AdamW steps with the schedule's learning rate.
fn train_epoch(
    s: &Session,
    loader: &Loader,
    plan: &EpochPlan,
    mut model: Model,
    learner: &mut Learner,
    progress: bool,
) -> Result<(Model, EpochTotals)> {
    let cfg = &s.cfg;
    let epoch = learner.state.epoch;
    let t_epoch = Instant::now();
    let bar = progress_bar(progress, epoch, cfg.epochs, plan.steps_per_epoch);
    let log_to_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log_every = plan.steps_per_epoch.div_ceil(10).max(1);
    let mut t = EpochTotals {
        loss_sum: 0.0,
        n_seen: 0,
        n_correct: 0,
        lr: 0.0,
        seconds: 0.0,
    };
    for batch in loader.epoch(epoch) {
        let batch = batch?;
        let step = learner.state.step;
        t.lr = plan.sched.lr_at(step);
        crate::finite::check_batch(&s.set, &batch)?;
        let (batch_index, b) = (batch.index(), batch.len() as u64);
        let host_labels = batch.labels().to_vec();
        let (next, loss_value, host_logits) = update(s, plan, model, learner, batch, t.lr)?;
        model = next;
        t.n_correct += count_correct(&host_logits, &host_labels, s.n_classes) as u64;
        t.loss_sum += loss_value as f64 * b as f64;
        t.n_seen += b;
        learner.state.step += 1;
        let secs = t_epoch.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} samples/s",
            t.loss_sum / t.n_seen as f64,
            t.lr,
            t.n_seen as f64 / secs
        ));
        bar.inc(1);
        // Without a terminal the bar is invisible: log about ten lines per epoch instead.
        if progress && !log_to_terminal && (batch_index + 1) % log_every == 0 {
            eprintln!(
                "  epoch {} update {}/{}: loss {:.4} lr {:.2e} {:.1} samples/s",
                epoch + 1,
                batch_index + 1,
                plan.steps_per_epoch,
                t.loss_sum / t.n_seen as f64,
                t.lr,
                t.n_seen as f64 / secs
            );
        }
    }
    t.seconds = t_epoch.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok((model, t))
}

/// One optimizer update of `model` on `batch` with learning rate `lr`; returns the updated
/// model, the loss and the logits (host, `[B, n_classes]`). The step's tensor work runs on a
/// pool worker (`in_pool`); the batch came from the loader's channel outside it.
fn update(
    s: &Session,
    plan: &EpochPlan,
    model: Model,
    learner: &mut Learner,
    batch: HostBatch,
    lr: f64,
) -> Result<(Model, f32, Vec<f32>)> {
    let (cfg, step) = (&s.cfg, learner.state.step);
    let device = &learner.device;
    device.seed(checkpoint::derive_seed(cfg.seed, step, DEVICE_STREAM));
    let mut rng = checkpoint::epoch_rng(cfg.seed, step, AUGMENT_STREAM);
    let optim = &mut learner.optim;
    crate::backend::in_pool(|| {
        let tb = batch.into_tensors(device);
        let x = cfg.augment.apply(tb.logmel, &mut rng);
        let logits = model.forward(x);
        let loss = if plan.use_kd {
            loss::kd_loss_parts(
                logits.clone(),
                tb.labels,
                tb.teacher_logits,
                tb.teacher_mask,
                &cfg.kd,
            )
            .total
        } else {
            loss::cross_entropy(logits.clone(), tb.labels)
        };
        let loss_value: f32 = loss.clone().into_scalar();
        if !loss_value.is_finite() {
            let host = logits.clone().into_data().try_to_vec::<f32>().ok();
            return Err(TrainError::Diverged {
                step,
                loss: loss_value,
                detail: crate::finite::non_finite_logits(
                    &s.set,
                    &tb.rows,
                    host.as_deref(),
                    s.n_classes,
                ),
            });
        }
        let host_logits = logits
            .detach()
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| TrainError::Config(format!("reading the logits: {e:?}")))?;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        Ok((optim.step(lr, model, grads), loss_value, host_logits))
    })
}

/// Host-side argmax accuracy of `logits` `[B, C]` against `labels`.
fn count_correct(logits: &[f32], labels: &[i64], n_classes: usize) -> usize {
    logits
        .chunks_exact(n_classes)
        .zip(labels)
        .filter(|&(row, &y)| asc_kernels::math::argmax(row) as i64 == y)
        .count()
}

/// The end of an epoch: every few epochs precise BN, then validation (selection) and test
/// (diagnostic); the state moves to the next epoch; `metrics.jsonl` gets the epoch,
/// `checkpoints/last` (and `checkpoints/best` when the validation accuracy improved) the
/// model. Returns the model (its BN statistics recomputed when it was evaluated) and the test
/// evaluation, when the epoch had one.
fn close_epoch(
    s: &Session,
    evals: &EvalSets,
    model: Model,
    learner: &mut Learner,
    t: &EpochTotals,
    t_epoch: Instant,
) -> Result<(Model, Option<EvalReport>)> {
    let cfg = &s.cfg;
    let epoch = learner.state.epoch;
    let (model, evaluation) = if cfg.eval.due(epoch, cfg.epochs) {
        let (val, seen) = (evals.val.as_ref(), &evals.seen);
        let (m, ev) = evaluate_now(model, &s.set, cfg, &evals.test, val, seen)?;
        (m, Some(ev))
    } else {
        (model, None)
    };
    let state = &mut learner.state;
    state.epoch += 1;
    state.loader_state = serde_json::to_value(LoaderState {
        seed: cfg.seed,
        epoch: state.epoch,
        batch: 0,
    })
    .unwrap_or_default();
    let val_acc = evaluation
        .as_ref()
        .and_then(|(_, v)| v.as_ref())
        .filter(|v| v.n_examples > 0)
        .map(|v| v.macro_accuracy);
    let improved = val_acc.is_some_and(|a| state.best_metric.is_none_or(|b| a > b));
    if improved {
        state.best_metric = val_acc;
        state.best_epoch = Some(epoch);
    }
    let test_eval = evaluation
        .as_ref()
        .map(|(t, _)| t)
        .filter(|t| t.n_examples > 0);
    let m = EpochMetrics {
        epoch,
        step: state.step,
        lr: t.lr,
        train_loss: t.loss_sum / t.n_seen.max(1) as f64,
        train_acc: t.n_correct as f64 / t.n_seen.max(1) as f64,
        test_macro_acc: test_eval.map(|t| t.macro_accuracy),
        test_log_loss: test_eval.map(|t| t.log_loss),
        seconds: t_epoch.elapsed().as_secs_f64(),
        samples_per_s: t.n_seen as f64 / t.seconds.max(1e-9),
        val_macro_acc: val_acc,
    };
    s.run.append_metrics(&m)?;
    let optim = &learner.optim;
    checkpoint::save_checkpoint(&s.run.checkpoint_dir(LAST), &model, optim, &learner.state)?;
    if improved {
        checkpoint::save_checkpoint(&s.run.checkpoint_dir(BEST), &model, optim, &learner.state)?;
    }
    eprintln!("{}", epoch_line(&m, cfg.epochs, improved));
    learner.metrics.push(m);
    Ok((model, evaluation.map(|(t, _)| t)))
}

/// The kept model of a finished run, evaluated on the test set.
struct KeptModel {
    /// Zero-based epoch of the kept model.
    epoch: u64,
    /// Which model, one line (e.g. "the final model (epoch 39)").
    selection: String,
    eval: EvalReport,
}

/// The kept model: the validation-selected one, else the final one; its BN statistics
/// recomputed for its weights (precise BN) before it is saved as `model.bpk` and evaluated.
fn keep_model(
    s: &Session,
    evals: &EvalSets,
    model: Model,
    state: &TrainState,
    last_eval: Option<(u64, EvalReport)>,
) -> Result<KeptModel> {
    let cfg = &s.cfg;
    let last_epoch = state.epoch.saturating_sub(1);
    let (model, epoch, selection) = match state.best_epoch {
        Some(e) if evals.val.is_some() => {
            let path = s.run.checkpoint_dir(BEST).join(checkpoint::MODEL_FILE);
            let device = crate::backend::training_device();
            let m = crate::run::load_model_file(&cfg.model, s.n_classes, &path, &device)?;
            let what = format!(
                "the validation-selected model (epoch {} of {}, validation macro accuracy {:.2} %)",
                e + 1,
                state.epoch,
                100.0 * state.best_metric.unwrap_or(0.0)
            );
            (m, e, what)
        }
        _ => (
            model,
            last_epoch,
            format!("the final model (epoch {})", state.epoch),
        ),
    };
    let (model, eval) = match last_eval {
        Some((e, eval)) if e == epoch => (model, eval),
        // Another epoch's model, or a resumed finished run: precise BN and evaluate it.
        _ => {
            let (m, (eval, _)) = evaluate_now(model, &s.set, cfg, &evals.test, None, &evals.seen)?;
            (m, eval)
        }
    };
    crate::run::save_model_file(&model, &s.run.path().join(FINAL_MODEL_FILE))?;
    Ok(KeptModel {
        epoch,
        selection,
        eval,
    })
}

/// Precise BN of `model` over the run's training rows (unless switched off), then the
/// evaluation of its inference copy on the test set and, when given, the validation set.
fn evaluate_now(
    model: Model,
    set: &ShardSet,
    cfg: &TrainConfig,
    test: &EvalSet,
    val: Option<&EvalSet>,
    seen: &BTreeSet<String>,
) -> Result<(Model, (EvalReport, Option<EvalReport>))> {
    let eval_device = crate::backend::default_device();
    let model = if cfg.eval.precise_bn_rows > 0 {
        crate::precise_bn::precise_bn_on_training_rows(
            model,
            set,
            cfg.selection(),
            cfg.batch_size,
            cfg.eval.precise_bn_rows,
            &eval_device,
        )?
        .0
    } else {
        model
    };
    let inference = model.valid();
    let classifier = FloatModel::new(&inference, &eval_device);
    let t = test.evaluate(&classifier, set, seen.clone())?;
    let v = match val {
        Some(v) => Some(v.evaluate(&classifier, set, seen.clone())?),
        None => None,
    };
    Ok((model, (t, v)))
}

/// True when the last `patience` evaluations with a validation accuracy brought no gain over
/// the best one before them (`None`: never).
pub fn early_stop_reached(metrics: &[EpochMetrics], patience: Option<u64>) -> bool {
    let Some(p) = patience else {
        return false;
    };
    let vals: Vec<f64> = metrics.iter().filter_map(|m| m.val_macro_acc).collect();
    let Some(best_at) = vals
        .iter()
        .enumerate()
        .fold(None, |b: Option<(usize, f64)>, (i, &v)| match b {
            Some((_, bv)) if v <= bv => b,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i)
    else {
        return false;
    };
    (vals.len() - 1 - best_at) as u64 >= p.max(1)
}

/// The floor of a run ([`crate::floor`]) with its starting message; `None` (with a note) when
/// it cannot be computed, which does not stop the run.
fn compute_floor(set: &ShardSet, cfg: &TrainConfig, seen: BTreeSet<String>) -> Option<Floor> {
    match crate::floor::floor(set, cfg.split, cfg.excluded_fold(), seen) {
        Ok(f) => {
            let group = |name: &str| {
                f.eval
                    .per_group
                    .iter()
                    .find(|g| g.name == name)
                    .map_or_else(
                        || "-".into(),
                        |g| format!("{:.2} %", 100.0 * g.macro_accuracy),
                    )
            };
            eprintln!(
                "floor (logistic regression on log-mel mean/std, {} training clips, L2 {}): \
                 test macro accuracy {:.2} % (seen {}, unseen {}), {:.1} s",
                f.n_train,
                f.lambda,
                100.0 * f.eval.macro_accuracy,
                group("seen"),
                group("unseen"),
                f.seconds
            );
            Some(f)
        }
        Err(e) => {
            eprintln!("note: no floor for this run: {e}");
            None
        }
    }
}

/// The console line of one epoch.
fn epoch_line(m: &EpochMetrics, epochs: u64, improved: bool) -> String {
    let mut line = format!(
        "epoch {:>3}/{epochs}: loss {:.4} train acc {:5.1} %",
        m.epoch + 1,
        m.train_loss,
        100.0 * m.train_acc
    );
    if let Some(v) = m.val_macro_acc {
        line.push_str(&format!(" | val macro acc {:5.2} %", 100.0 * v));
    }
    if let (Some(a), Some(l)) = (m.test_macro_acc, m.test_log_loss) {
        line.push_str(&format!(
            " | test macro acc {:5.2} % log-loss {l:.4} (diagnostic)",
            100.0 * a
        ));
    }
    line.push_str(&format!(
        " | {:.0} samples/s, {:.0} s{}",
        m.samples_per_s,
        m.seconds,
        if improved { " (best)" } else { "" }
    ));
    line
}
