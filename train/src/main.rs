//! `train`: the command line of the trainer.
//!
//! ```text
//! train --shards data/ [--model s1] [--split 100] ...     train a student (KD when the shards
//!                                                           carry teacher logits), leave runs/<name>/
//! train summary --model s1                                the DCASE complexity table
//! train eval --shards data/ --model runs/<name>           evaluate a run on the test set
//! train floor --shards data/ [--split 100]                the floor: logistic regression on
//!                                                           log-mel mean/std, on the test set
//! train predict --shards data/ --model runs/<name> --out logits.parquet [--set train|test|all]
//! train qat --model runs/<name> [--epochs 2]              QAT, runs/<name>/qat/model.asc8
//! train export --model runs/<name> --out model.asc8       QAT model -> int8 model file
//! train eval --int8 model.asc8 --shards data/             int8 engine on the test set
//! train infer model.asc8 a.wav ...                        label + probabilities per clip
//! ```
//!
//! Progress goes to stderr, results to stdout. Exit codes: 0 success, 1 runtime error (bad
//! file, diverged training, ...), 2 bad command line (clap).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use data_specs::FrontEndConfig;
use train::augment::Augment;
use train::loader::ShardSet;
use train::loss::{KdConfig, KlReduction};
use train::metrics::EvalReport;
use train::model::ModelConfig;
use train::predict::{PredictSet, predict_logits, predict_out_of_fold, write_logits_parquet};
use train::trainer::{self, TrainConfig, TrainOptions};

/// Low-complexity acoustic scene classification: train the IRMamba student with knowledge
/// distillation from teacher logits (DCASE2024 Task 1 recipe), evaluate it, export logits.
///
/// Without a subcommand, `train` trains. Example: `train --shards data/` trains the s1 student
/// on the shards written by `pipeline features` and leaves runs/s1-split100-s42/ with
/// config.toml, metrics.jsonl, checkpoints/last/ (and best/ with --val-fold), model.bpk,
/// report.md (model vs floor) and PNG plots.
#[derive(Parser, Debug)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Compute device: cpu (Flex, the default), ndarray, wgpu[:N|:cpu], vulkan[:N|:cpu],
    /// cuda[:N]; GPU devices need the binary built with `--features wgpu` or `cuda`. Also read
    /// from ASC_DEVICE; a resumed run keeps its own unless one is named.
    #[arg(long, global = true, value_name = "SPEC")]
    device: Option<String>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the DCASE complexity table of a model (parameters, MACs, memory) for the default
    /// 256 x 65 log-mel input.
    Summary {
        /// Model preset (s1, s2, s3, baseline, teacher) or a model TOML file.
        #[arg(long, default_value = "s1")]
        model: String,
        /// Number of classes.
        #[arg(long, default_value_t = 10)]
        classes: usize,
    },
    /// Evaluate a finished run's final model (runs/<name>/model.bpk) on the test set.
    Eval {
        /// Shard folder or manifest.json.
        #[arg(long)]
        shards: PathBuf,
        /// Run folder (runs/<name>).
        #[arg(long, required_unless_present = "int8", conflicts_with = "int8")]
        model: Option<PathBuf>,
        /// Evaluate an int8 model file (.asc8) with the int8 engine instead of a run.
        #[arg(long)]
        int8: Option<PathBuf>,
        /// Batch size of inference.
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
    },
    /// The floor every run is compared with: a multinomial logistic regression on the
    /// per-mel-bin mean and std over time of the log-mel, fitted on the training clips of the
    /// split (originals), evaluated on the test set (macro, per device, seen/unseen). Seconds.
    Floor {
        /// Shard folder or manifest.json.
        #[arg(long)]
        shards: PathBuf,
        /// DCASE2024 training split in percent: 5, 10, 25, 50 or 100.
        #[arg(long, default_value_t = 100)]
        split: u8,
        /// Leave location fold k of K of the training clips out (as a run with --val-fold or
        /// --holdout-fold k/K does).
        #[arg(long, value_name = "k/K")]
        without_fold: Option<train::loader::Fold>,
    },
    /// Quantization-aware training of a finished float run; exports runs/<name>/qat/model.asc8.
    Qat(train::int8_cli::QatArgs),
    /// Export a run's QAT model to an int8 model file (.asc8).
    Export(train::int8_cli::ExportArgs),
    /// Classify WAV files with an int8 model (the pipeline's front end, 1 s clips).
    Infer(train::int8_cli::InferArgs),
    /// Write a run's logits for the ORIGINAL rows of a set as a Parquet table
    /// (clip_id: utf8, logits: fixed_size_list<float32>[n_classes]): the format
    /// `pipeline features --teacher-logits` reads.
    Predict {
        /// Shard folder or manifest.json.
        #[arg(long)]
        shards: PathBuf,
        /// Run folder (runs/<name>). Several runs trained with `--holdout-fold 1/K ..
        /// K/K` act as one out-of-fold teacher: each training clip is scored by the run that
        /// did not train on it, other clips by the mean of the runs.
        #[arg(long, num_args = 1.., required = true)]
        model: Vec<PathBuf>,
        /// Output Parquet file.
        #[arg(long)]
        out: PathBuf,
        /// Which rows.
        #[arg(long, value_enum, default_value = "all")]
        set: PredictSet,
        /// Batch size of inference.
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
    },
}

/// On/off switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// Options of training (the default command).
#[derive(Args, Debug)]
struct TrainArgs {
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

fn main() -> ExitCode {
    train::backend::keep_freed_buffers();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Resolves, selects and opens the compute device (`--device`, else ASC_DEVICE, else the one a
/// resumed run recorded, else cpu) and names it on stderr.
fn use_device(
    flag: Option<&str>,
    recorded: Option<&str>,
) -> anyhow::Result<train::backend::DeviceSpec> {
    use train::backend;
    let spec = backend::select_device(backend::resolve_device(flag, recorded)?)?;
    let (_, line) = backend::open_device(spec).map_err(anyhow::Error::msg)?;
    eprintln!("device: {line}");
    Ok(spec)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(
            Command::Eval { .. } | Command::Predict { .. } | Command::Qat(_) | Command::Export(_),
        ) => {
            use_device(cli.device.as_deref(), None)?;
        }
        // The int8 engine, the floor and the complexity table run on the host.
        Some(_) if cli.device.is_some() => {
            eprintln!("note: this command runs on the CPU; --device is not used");
        }
        _ => {}
    }
    match cli.command {
        Some(Command::Summary { model, classes }) => {
            let cfg = ModelConfig::from_name_or_file(&model)?;
            let fe = FrontEndConfig::dcase2024();
            let report = train::complexity::summary(&cfg, classes, fe.n_mels, fe.n_frames());
            println!("{report}");
            Ok(())
        }
        Some(Command::Eval {
            shards,
            model,
            int8,
            batch_size,
        }) => {
            if let Some(int8) = int8 {
                return train::int8_cli::run_eval_int8(&int8, &shards);
            }
            let model = model.context("--model or --int8 is required")?;
            let set = ShardSet::open(&shards, None)?;
            let device = train::backend::default_device();
            let (cfg, m, path) =
                trainer::load_run_model(&model, &set.meta().labels, &shards, &device)?;
            eprintln!(
                "evaluating {} on the test set of {}",
                path.display(),
                shards.display()
            );
            let test = train::evaluate::EvalSet::new(&set, data_specs::ClipSet::Test, batch_size)?;
            if test.is_empty() {
                bail!("{}: the shards hold no test rows", shards.display());
            }
            let seen = trainer::seen_devices(&set, cfg.split);
            let report = test.evaluate(&m, &set, seen, &device)?;
            println!("{report}");
            Ok(())
        }
        Some(Command::Predict {
            shards,
            model,
            out,
            set: which,
            batch_size,
        }) => {
            let set = ShardSet::open(&shards, None)?;
            let device = train::backend::default_device();
            let n_classes = set.meta().n_classes();
            let (ids, logits) = if let [run] = model.as_slice() {
                let (cfg, m, path) =
                    trainer::load_run_model(run, &set.meta().labels, &shards, &device)?;
                if let Some(f) = cfg.holdout_fold {
                    eprintln!(
                        "note: {} left out fold {f}; pass all {} fold runs for out-of-fold logits",
                        run.display(),
                        f.count
                    );
                }
                eprintln!("predicting with {} on {:?} rows", path.display(), which);
                predict_logits(&m, &set, which.clip_sets(), batch_size, &device)?
            } else {
                let mut members = Vec::with_capacity(model.len());
                let mut split = None;
                for run in &model {
                    let (cfg, m, _) =
                        trainer::load_run_model(run, &set.meta().labels, &shards, &device)?;
                    if split.is_some_and(|p| p != cfg.split) {
                        bail!(
                            "{}: trained on split {}, the other runs on split {}",
                            run.display(),
                            cfg.split,
                            split.unwrap_or(0)
                        );
                    }
                    split = Some(cfg.split);
                    let fold = cfg.holdout_fold.ok_or_else(|| {
                        anyhow::anyhow!(
                            "{}: not trained with --holdout-fold; several --model runs form an \
                             out-of-fold teacher",
                            run.display()
                        )
                    })?;
                    members.push((fold, m));
                }
                eprintln!(
                    "predicting out-of-fold with {} runs on {:?} rows",
                    members.len(),
                    which
                );
                predict_out_of_fold(
                    &members,
                    split,
                    &set,
                    which.clip_sets(),
                    batch_size,
                    &device,
                )?
            };
            write_logits_parquet(&out, &ids, &logits, n_classes)?;
            println!("wrote logits of {} clips to {}", ids.len(), out.display());
            Ok(())
        }
        Some(Command::Floor {
            shards,
            split,
            without_fold,
        }) => {
            let set = ShardSet::open(&shards, None)?;
            let seen = trainer::seen_devices(&set, split);
            let f = train::floor::floor(&set, split, without_fold, seen)?;
            eprintln!(
                "floor: logistic regression on log-mel mean/std, fitted on {} training clips \
                 (L2 weight {} by location-fold cross-validation, held-out accuracy {}; \
                 training accuracy {:.2} %, {} L-BFGS iterations, {:.1} s)",
                f.n_train,
                f.lambda,
                f.cv_accuracy
                    .iter()
                    .map(|a| format!("{:.1} %", 100.0 * a))
                    .collect::<Vec<_>>()
                    .join(" / "),
                100.0 * f.train_accuracy,
                f.iterations,
                f.seconds
            );
            println!("{}", f.eval);
            Ok(())
        }
        Some(Command::Qat(a)) => train::int8_cli::run_qat(&a, true),
        Some(Command::Export(a)) => train::int8_cli::run_export(&a),
        Some(Command::Infer(a)) => train::int8_cli::run_infer(&a),
        None => train_command(cli.train, cli.device.as_deref()),
    }
}

fn train_command(a: TrainArgs, device: Option<&str>) -> anyhow::Result<()> {
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
            eval: train::evaluate::EvalConfig {
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
        let rule = trainer::apply_schedule_rule(&mut config, &set, &flags)?;
        eprintln!("schedule: {}", rule.reason);
        config
    };
    let spec = use_device(device, config.device.as_deref())?;
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
    print_summary(&config.name, eval, &outcome);
    Ok(())
}

fn print_summary(name: &str, eval: &EvalReport, o: &trainer::TrainOutcome) {
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
