//! `train qat`, `train export`, `train eval --int8` and `train infer`:
//!
//! ```text
//! train qat --model runs/<name> [--epochs 2] [--lr 5e-5]   QAT after the float run: runs/<name>/qat/
//!                                                          {model.bpk, observers.json, model.asc8}
//! train export --model runs/<name> --out model.asc8        QAT model -> int8 model file
//! train eval --int8 model.asc8 --shards data/              int8 engine on the test set
//! train infer model.asc8 a.wav b.wav ...                   label and probabilities per 1 s clip
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;
use asc_int8::Int8Model;
use clap::Args;
use data_specs::ClipSet;
use train::evaluate::evaluate_int8;
use train::infer::infer_wav;
use train::loader::ShardSet;
use train::qat_phase::{QatOptions, export_run, int8_memory_line, run_qat};
use train::run::seen_devices;

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

/// `train qat`: fine-tune with fake quantization, save `qat/`, export `qat/model.asc8`, and
/// compare float, QAT (fake-quant) and int8-engine macro accuracy on the test set.
pub fn qat(a: &QatArgs) -> anyhow::Result<()> {
    let outcome = run_qat(&QatOptions {
        run_dir: a.model.clone(),
        shards: a.shards.clone(),
        epochs: a.epochs,
        lr: a.lr,
        freeze_last: a.freeze_last,
        progress: true,
    })?;
    println!("{outcome}");
    Ok(())
}

/// `train export`.
pub fn export(a: &ExportArgs) -> anyhow::Result<()> {
    let int8 = export_run(&a.model, a.shards.as_deref(), &a.out)?;
    println!("wrote {}", a.out.display());
    println!("{}", int8_memory_line(&int8));
    Ok(())
}

/// `train eval --int8 MODEL --shards DIR`: the int8 engine on the test set.
pub fn eval_int8(model: &Path, shards: &Path) -> anyhow::Result<()> {
    let m = Int8Model::load(model)?;
    let set = ShardSet::open(shards, None)?;
    // The split the model was trained on (recorded by the export) decides the seen devices.
    let split = m
        .meta()
        .config
        .get("split")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(100) as u8;
    let seen = seen_devices(&set, split);
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
pub fn infer(a: &InferArgs) -> anyhow::Result<()> {
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
                        p.probs[asc_int8::argmax(&p.probs)],
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
