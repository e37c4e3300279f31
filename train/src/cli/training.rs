//! The default command: training (or resuming) a run.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use train::TrainConfig;
use train::augment::Augment;
use train::config::{EvalConfig, apply_schedule_rule};
use train::loader::ShardSet;
use train::loss::{KdConfig, KlReduction};
use train::metrics::EvalReport;
use train::model::ModelConfig;
use train::trainer::{self, TrainOptions, TrainOutcome};

/// On/off switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// Options of training (the default command).
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Shard folder (or its manifest.json) written by `pipeline features`.
    #[arg(long, required_unless_present = "resume")]
    shards: Option<PathBuf>,
    /// Model: preset s1 | s2 | s3 (IRMamba students), baseline (DCASE2024), teacher (CNN), or
    /// a model TOML file.
    #[arg(long, default_value = "s1")]
    model: String,
    /// DCASE2024 training split in percent: 5, 10, 25, 50 or 100.
    #[arg(long, default_value_t = 100)]
    split: u8,
    /// Epochs [default: from the schedule rule: the paper's 150 of batch 256 when that gives
    /// at least 1,000 updates (>= 1,792 training rows per epoch, every TAU22 split); on
    /// smaller sets a batch of 128/64/32 for >= 16 updates per epoch and enough epochs for
    /// 1,000 updates]. The start of a run prints the outcome ("N updates of B").
    #[arg(long, conflicts_with = "updates")]
    epochs: Option<u64>,
    /// Total optimizer updates instead of --epochs (epochs = ceil(updates / updates per epoch)).
    #[arg(long)]
    updates: Option<u64>,
    /// Examples per update [default: from the schedule rule, see --epochs].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate (AdamW), reached after the warm-up, then cosine decay to 0.
    #[arg(long, default_value_t = 0.005)]
    lr: f64,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    /// Linear warm-up updates, used as given [default: the paper's 2,000 capped at 10 % of the
    /// run: min(2000, max(1, round(0.1 * updates)))].
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// Run seed (model init, loader shuffle and DIR draw, augmentations).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Probability of replacing a clip by one of its DIR (device impulse response) variants.
    #[arg(long, default_value_t = 0.6)]
    p_dir: f64,
    /// Use the replay rows (real or simulated playback/re-recording) as extra examples.
    #[arg(long, value_enum, default_value = "on")]
    replay: OnOff,
    /// Leave fold k of K of the training clips out (folds by recording location): one member
    /// of an out-of-fold teacher (`predict` with all K runs scores each clip with the run that
    /// did not train on it).
    #[arg(long, value_name = "k/K")]
    holdout_fold: Option<train::loader::Fold>,
    /// Hold location fold k of K of the training clips out as a validation set: it selects
    /// the kept model (best validation macro accuracy) and enables --early-stop. Without it
    /// the run keeps its final model. The test set never selects.
    #[arg(long, value_name = "k/K", conflicts_with = "holdout_fold")]
    val_fold: Option<train::loader::Fold>,
    /// Stop after this many evaluations without a validation gain (needs --val-fold).
    #[arg(long, value_name = "EVALUATIONS", requires = "val_fold")]
    early_stop: Option<u64>,
    /// Evaluate every N epochs and after the last [default: about 10 evaluations per run].
    #[arg(long, value_name = "N")]
    eval_every: Option<u64>,
    /// Training rows of the precise BatchNorm that recomputes the BN statistics for the
    /// current weights before each evaluation and before the model is saved (0: off, keep the
    /// running averages).
    #[arg(long, default_value_t = train::precise_bn::DEFAULT_ROWS)]
    precise_bn_rows: usize,
    /// Switch off the circular time roll.
    #[arg(long)]
    no_time_roll: bool,
    /// Switch off frequency masking.
    #[arg(long)]
    no_freq_mask: bool,
    /// Switch off Freq-MixStyle.
    #[arg(long)]
    no_fms: bool,
    /// Weight of the label cross-entropy in the KD loss (the KL gets 1 - lambda).
    #[arg(long, default_value_t = 0.02)]
    kd_lambda: f64,
    /// KD softmax temperature.
    #[arg(long, default_value_t = 2.0)]
    kd_tau: f64,
    /// Plain cross-entropy even when the shards carry teacher logits.
    #[arg(long)]
    no_kd: bool,
    /// Folder of the run folders.
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Run name [default: <model>-split<P>-s<seed>]; an existing run folder is never overwritten.
    #[arg(long)]
    name: Option<String>,
    /// Continue the run folder runs/<name> from its newest intact checkpoint (its config.toml
    /// is used; the other training options are ignored, except --threads). The run keeps the
    /// folder's name, also when the folder was moved or renamed.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Quantization-aware training epochs after the float epochs (lr 5e-5, observers frozen for
    /// the last fifth); writes runs/<name>/qat/ with the int8 model qat/model.asc8. IRMamba only.
    #[arg(long, default_value_t = 0)]
    qat_epochs: u64,
    /// Compute threads (rayon pool: burn Flex kernels and the selective scan) [default: all
    /// cores]. The loader adds one prefetch thread.
    #[arg(long, value_parser = pipeline::cli::positive_usize)]
    threads: Option<usize>,
    /// No progress bars (per-epoch lines only).
    #[arg(long)]
    quiet: bool,
}

/// The default command: trains (or resumes) a run and prints its summary.
pub fn train(a: TrainArgs, device: Option<&str>) -> anyhow::Result<()> {
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .context("setting up the rayon thread pool")?;
    }
    let (runs_root, name, resume) = match &a.resume {
        Some(dir) => {
            // The run name follows the folder (a moved or renamed run keeps working).
            let dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .with_context(|| format!("--resume {}: not a run folder", dir.display()))?;
            let root = dir.parent().map(PathBuf::from).unwrap_or_default();
            (root, name, true)
        }
        None => (a.runs.clone(), String::new(), false),
    };
    let config = if resume {
        TrainConfig {
            name: name.clone(),
            ..TrainConfig::load(&runs_root.join(&name))?
        }
    } else {
        let shards = a.shards.clone().context("--shards is required")?;
        let model = ModelConfig::from_name_or_file(&a.model)?;
        let mut augment = Augment::default();
        augment.time_roll.enabled = !a.no_time_roll;
        augment.freq_mask.enabled = !a.no_freq_mask;
        augment.freq_mixstyle.enabled = !a.no_fms;
        let model_tag = std::path::Path::new(&a.model)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| a.model.clone());
        let mut config = TrainConfig {
            name: a
                .name
                .clone()
                .unwrap_or_else(|| format!("{model_tag}-split{}-s{}", a.split, a.seed)),
            shards,
            model_spec: a.model.clone(),
            split: a.split,
            // Set by the schedule rule below.
            epochs: 1,
            batch_size: 1,
            updates: 0,
            schedule_rule: String::new(),
            lr: a.lr,
            weight_decay: a.weight_decay,
            warmup_steps: 1,
            seed: a.seed,
            p_dir: a.p_dir,
            replay: a.replay == OnOff::On,
            holdout_fold: a.holdout_fold,
            use_kd: !a.no_kd,
            qat_epochs: a.qat_epochs,
            device: None,
            kd: KdConfig {
                lambda: a.kd_lambda,
                tau: a.kd_tau,
                kl_reduction: KlReduction::BatchMean,
            },
            augment,
            model,
            eval: EvalConfig {
                validation: a.val_fold,
                early_stop: a.early_stop,
                every: a.eval_every.unwrap_or(0),
                precise_bn_rows: a.precise_bn_rows,
            },
            labels: None,
        };
        let set = ShardSet::open(&config.shards, None)?;
        let flags = train::schedule::ScheduleFlags {
            batch_size: a.batch_size,
            epochs: a.epochs,
            updates: a.updates,
            warmup_steps: a.warmup_steps,
        };
        let rule = apply_schedule_rule(&mut config, &set, &flags)?;
        eprintln!("schedule: {}", rule.reason);
        config
    };
    let spec = super::use_device(device, config.device.as_deref())?;
    let config = match resume {
        true => config,
        false => TrainConfig {
            device: Some(spec.to_string()),
            ..config
        },
    };
    let outcome = trainer::train(TrainOptions {
        config: config.clone(),
        runs_root: if resume { runs_root } else { a.runs.clone() },
        resume,
        progress: !a.quiet,
        stop_after: None,
    })?;
    let Some(eval) = &outcome.final_eval else {
        bail!("the run stopped before its last epoch");
    };
    if let Some(qat) = &outcome.qat {
        println!("{qat}");
    }
    print_summary(&config.name, eval, &outcome);
    Ok(())
}

fn print_summary(name: &str, eval: &EvalReport, o: &TrainOutcome) {
    println!("run {name}: {}", o.run_dir.display());
    println!("{eval}");
    match (o.selected_epoch, o.best) {
        (Some(e), Some((b, acc))) if e == b => println!(
            "kept model: epoch {} (best validation macro accuracy {:.2} %){}",
            e + 1,
            100.0 * acc,
            if o.stopped_early { ", early stop" } else { "" }
        ),
        (Some(e), _) => println!("kept model: the final one (epoch {})", e + 1),
        _ => {}
    }
    if let Some(f) = &o.floor {
        println!(
            "model vs floor (logistic regression on log-mel mean/std, {:.1} s):",
            f.seconds
        );
        print!("{}", train::report::comparison_table(eval, Some(&f.eval)));
    }
    let train_s: f64 = o.metrics.iter().map(|m| m.seconds).sum();
    println!(
        "wall time {:.1} s (all epochs {:.1} s), {:.1} training samples/s",
        o.seconds, train_s, o.samples_per_s
    );
}
