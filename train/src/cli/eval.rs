//! `train summary`, `train eval` (float runs), `train floor` and `train predict`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use data_specs::{ClipSet, FrontEndConfig};
use train::evaluate::{EvalSet, FloatModel};
use train::loader::{Fold, ShardSet};
use train::model::ModelConfig;
use train::predict::{PredictSet, predict_logits, predict_out_of_fold};
use train::run::{load_run_model, seen_devices};

#[derive(Args, Debug)]
pub struct SummaryArgs {
    /// Model preset (s1, s2, s3, baseline, teacher) or a model TOML file.
    #[arg(long, default_value = "s1")]
    model: String,
    /// Number of classes.
    #[arg(long, default_value_t = 10)]
    classes: usize,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Shard folder or manifest.json.
    #[arg(long)]
    pub shards: PathBuf,
    /// Run folder (runs/<name>).
    #[arg(long, required_unless_present = "int8", conflicts_with = "int8")]
    model: Option<PathBuf>,
    /// Evaluate an int8 model file (.asc8) with the int8 engine instead of a run.
    #[arg(long)]
    pub int8: Option<PathBuf>,
    /// Batch size of inference.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
}

#[derive(Args, Debug)]
pub struct FloorArgs {
    /// Shard folder or manifest.json.
    #[arg(long)]
    shards: PathBuf,
    /// DCASE2024 training split in percent: 5, 10, 25, 50 or 100.
    #[arg(long, default_value_t = 100)]
    split: u8,
    /// Leave location fold k of K of the training clips out (as a run with --val-fold or
    /// --holdout-fold k/K does).
    #[arg(long, value_name = "k/K")]
    without_fold: Option<Fold>,
}

/// Which rows `predict` covers (the command-line spelling of [`PredictSet`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SetArg {
    /// Original rows of the training set.
    Train,
    /// Original rows of the test set.
    Test,
    /// Original rows of every set (train, test, unused).
    All,
}

impl From<SetArg> for PredictSet {
    fn from(s: SetArg) -> Self {
        match s {
            SetArg::Train => Self::Train,
            SetArg::Test => Self::Test,
            SetArg::All => Self::All,
        }
    }
}

#[derive(Args, Debug)]
pub struct PredictArgs {
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
    set: SetArg,
    /// Batch size of inference.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
}

/// `train summary`.
pub fn summary(a: &SummaryArgs) -> anyhow::Result<()> {
    let cfg = ModelConfig::from_name_or_file(&a.model)?;
    let fe = FrontEndConfig::dcase2024();
    println!("{}", cfg.complexity(a.classes, fe.n_mels, fe.n_frames()));
    Ok(())
}

/// `train eval --model RUN --shards DIR`: a run's model on the test set.
pub fn eval(a: &EvalArgs) -> anyhow::Result<()> {
    let model = a.model.as_ref().context("--model or --int8 is required")?;
    let set = ShardSet::open(&a.shards, None)?;
    let device = train::backend::default_device();
    let (cfg, m, path) = load_run_model(model, &set.meta().labels, &a.shards, &device)?;
    eprintln!(
        "evaluating {} on the test set of {}",
        path.display(),
        a.shards.display()
    );
    let test = EvalSet::new(&set, ClipSet::Test, a.batch_size)?;
    if test.is_empty() {
        bail!("{}: the shards hold no test rows", a.shards.display());
    }
    let seen = seen_devices(&set, cfg.split);
    let report = test.evaluate(&FloatModel::new(&m, &device), &set, seen)?;
    println!("{report}");
    Ok(())
}

/// `train floor`.
pub fn floor(a: &FloorArgs) -> anyhow::Result<()> {
    let set = ShardSet::open(&a.shards, None)?;
    let seen = seen_devices(&set, a.split);
    let f = train::floor::floor(&set, a.split, a.without_fold, seen)?;
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

/// `train predict`: one run's logits, or the out-of-fold logits of several.
pub fn predict(a: &PredictArgs) -> anyhow::Result<()> {
    let set = ShardSet::open(&a.shards, None)?;
    let device = train::backend::default_device();
    let n_classes = set.meta().n_classes();
    let which = PredictSet::from(a.set);
    let (ids, logits) = if let [run] = a.model.as_slice() {
        let (cfg, m, path) = load_run_model(run, &set.meta().labels, &a.shards, &device)?;
        if let Some(f) = cfg.holdout_fold {
            eprintln!(
                "note: {} left out fold {f}; pass all {} fold runs for out-of-fold logits",
                run.display(),
                f.count
            );
        }
        eprintln!("predicting with {} on {:?} rows", path.display(), which);
        predict_logits(&m, &set, which.clip_sets(), a.batch_size, &device)?
    } else {
        let mut members = Vec::with_capacity(a.model.len());
        let mut split = None;
        for run in &a.model {
            let (cfg, m, _) = load_run_model(run, &set.meta().labels, &a.shards, &device)?;
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
            a.batch_size,
            &device,
        )?
    };
    data_specs::write_logits_table(&a.out, &ids, &logits, n_classes)?;
    println!("wrote logits of {} clips to {}", ids.len(), a.out.display());
    Ok(())
}
