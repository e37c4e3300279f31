//! `pipeline`: command-line entry point of the offline feature pipeline.

use clap::{Parser, Subcommand};

/// Offline feature pipeline for low-complexity acoustic scene classification (DCASE2024 Task 1).
///
/// Turns a TAU-style dataset into validated Parquet shards of log-mel features, with DIR and
/// replay variants and teacher logits, ready for `train`.
#[derive(Parser)]
#[command(name = "pipeline", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the embedded demo dataset (a synthetic stand-in for TAU22, same layout).
    Synth(pipeline::synth::SynthArgs),
    /// Turn a dataset into Parquet shards (ingest, resample, variants, log-mel, shards).
    Features(pipeline::features::FeaturesArgs),
    /// Print the schema, metadata and row counts of a shard set.
    Inspect(pipeline::inspect::InspectArgs),
    /// Teacher ensemble: fuse teacher logits (eq. 4) and join logits into the shards.
    Teachers(pipeline::teachers::TeachersArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Synth(args) => pipeline::synth::run(&args),
        Command::Features(args) => pipeline::features::run(&args),
        Command::Inspect(args) => pipeline::inspect::run(&args),
        Command::Teachers(args) => pipeline::teachers::run(&args),
    }
}
