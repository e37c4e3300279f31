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
//!
//! The command line lives in the private [`cli`] module: clap argument structs and the code
//! that turns them into library calls of the `train` crate and prints the results. The library
//! never sees a clap type.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    train::backend::keep_freed_buffers();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
