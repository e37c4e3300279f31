//! # train
//!
//! The training half of the ASC toolkit: a memory-mapped shard loader, the IRMamba student
//! (and reference models) in burn, the KD/QAT trainer, evaluation, int8 export and inference.

/// The fused Mamba mixer (conv1d, projections, scan, gate) with its backward pass.
pub mod mixer;
/// Fused depthwise convolutions (2-D and Mamba's causal 1-D) with hand-written backward passes.
pub mod ops;
/// Mamba selective scan: reference tensor-op graph and fused kernel with hand-written backward.
pub mod scan;
#[cfg(test)]
mod test_util;

/// Backend selection (Flex by default; NdArray behind the `ndarray` feature).
pub mod backend;
/// Parameter, MAC and memory counting the DCASE way.
pub mod complexity;
/// The IRMamba student, the DCASE2024 baseline and the CNN teacher.
pub mod model;

/// Memory-mapped Parquet shard loader.
pub mod loader;

// Trainer building blocks.
pub mod augment;
pub mod checkpoint;
pub mod loss;
pub mod metrics;
pub mod plots;
pub mod report;
pub mod schedule;

// The trainer, evaluation and prediction.
/// Batched inference and evaluation on the original rows of a set.
pub mod evaluate;
/// `train predict`: logits as the Parquet table the pipeline reads as teacher logits.
pub mod predict;
/// Hook of the QAT phase (not implemented yet).
pub mod qat_hook;
/// The KD trainer: epochs, checkpoints, resume, the run folder.
pub mod trainer;

/// True int8 inference engine and the versioned int8 model file.
pub mod int8;

/// Export of a QAT student to the int8 model file (`.asc8`).
pub mod export;
/// `train infer`: WAV files -> the pipeline's front end -> the int8 engine.
pub mod infer;
/// The `qat`, `export`, `eval --int8` and `infer` subcommands (arguments and run functions).
pub mod int8_cli;
/// Quantization-aware training: fake quantization, observers, conv+BN folding, QAT loop.
pub mod qat;
