//! # train
//!
//! The training half of the ASC toolkit: a memory-mapped shard loader, the IRMamba student
//! (and reference models) in burn, the KD/QAT trainer, evaluation, int8 export and inference.

/// Mamba selective scan: reference tensor-op graph and fused kernel with hand-written backward.
pub mod scan;

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

/// True int8 inference engine and the versioned int8 model file.
pub mod int8;
