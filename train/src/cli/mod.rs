//! The command line of the `train` binary: the clap argument structs and the code that turns
//! them into library calls and prints the results. Nothing in the `train` library depends on
//! this module.
//!
//! - [`training`]: the default command (training) and its summary;
//! - [`eval`]: `summary`, `eval`, `floor`, `predict`;
//! - [`int8`]: `qat`, `export`, `eval --int8`, `infer`.

mod eval;
mod int8;
mod training;

use clap::{Parser, Subcommand};

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
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Compute device: cpu (Flex, the default), ndarray, wgpu[:N|:cpu], vulkan[:N|:cpu],
    /// cuda[:N]; GPU devices need the binary built with `--features wgpu` or `cuda`. Also read
    /// from ASC_DEVICE; a resumed run keeps its own unless one is named.
    #[arg(long, global = true, value_name = "SPEC")]
    device: Option<String>,
    #[command(flatten)]
    train: training::TrainArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the DCASE complexity table of a model (parameters, MACs, memory) for the default
    /// 256 x 65 log-mel input.
    Summary(eval::SummaryArgs),
    /// Evaluate a finished run's final model (runs/<name>/model.bpk) on the test set.
    Eval(eval::EvalArgs),
    /// The floor every run is compared with: a multinomial logistic regression on the
    /// per-mel-bin mean and std over time of the log-mel, fitted on the training clips of the
    /// split (originals), evaluated on the test set (macro, per device, seen/unseen). Seconds.
    Floor(eval::FloorArgs),
    /// Quantization-aware training of a finished float run; exports runs/<name>/qat/model.asc8.
    Qat(int8::QatArgs),
    /// Export a run's QAT model to an int8 model file (.asc8).
    Export(int8::ExportArgs),
    /// Classify WAV files with an int8 model (the pipeline's front end, 1 s clips).
    Infer(int8::InferArgs),
    /// Write a run's logits for the ORIGINAL rows of a set as a Parquet table
    /// (clip_id: utf8, logits: fixed_size_list<float32>[n_classes]): the format
    /// `pipeline features --teacher-logits` reads.
    Predict(eval::PredictArgs),
}

/// Runs the command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Eval(_) | Command::Predict(_) | Command::Qat(_) | Command::Export(_)) => {
            use_device(cli.device.as_deref(), None)?;
        }
        // The int8 engine, the floor and the complexity table run on the host.
        Some(_) if cli.device.is_some() => {
            eprintln!("note: this command runs on the CPU; --device is not used");
        }
        _ => {}
    }
    match cli.command {
        Some(Command::Summary(a)) => eval::summary(&a),
        Some(Command::Eval(a)) => match &a.int8 {
            Some(model) => int8::eval_int8(model, &a.shards),
            None => eval::eval(&a),
        },
        Some(Command::Floor(a)) => eval::floor(&a),
        Some(Command::Predict(a)) => eval::predict(&a),
        Some(Command::Qat(a)) => int8::qat(&a),
        Some(Command::Export(a)) => int8::export(&a),
        Some(Command::Infer(a)) => int8::infer(&a),
        None => training::train(cli.train, cli.device.as_deref()),
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
