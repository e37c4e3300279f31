//! # train
//!
//! The training half of the ASC toolkit: a memory-mapped shard loader, the IRMamba student
//! (and reference models) in burn, the KD/QAT trainer, evaluation, int8 export and inference.
//! The command line (`train`, `train eval`, `train qat`, ...) is the binary's private `cli`
//! module; everything here is a library call without command-line types.
//!
//! ## Layers
//!
//! Data flows one way: a module uses only the modules listed before it (its own submodules
//! aside; test code may use anything). `tests/layering.rs` checks this list against the
//! `use crate::...` paths of every module.
//!
//! | layer | modules | what |
//! |---|---|---|
//! | foundations | [`backend`], [`ops`], [`complexity`], [`metrics`], [`plots`], [`loss`], [`augment`], [`schedule`], [`checkpoint`], [`loader`] | devices, burn glue over `asc-kernels`, the complexity counter, evaluation numbers and `EpochMetrics`, their plots, losses, augmentations, schedules, checkpoint files, the shard loader |
//! | models | [`model`], [`qat`], [`export`] | the networks (they report to the complexity counter), their fake-quantized forward and QAT loop, the int8 export |
//! | run | [`error`], [`finite`], [`precise_bn`], [`config`], [`run`] | `TrainError`, non-finite checks, precise BatchNorm, the resolved configuration, the run folder (paths, model files, seen devices) |
//! | evaluation | [`evaluate`], [`floor`], [`predict`], [`infer`], [`report`] | one `Classifier` trait (float, QAT, int8) driven by one loop, the floor, logits for teachers, WAV inference, `report.md` |
//! | top | [`qat_phase`], [`trainer`] | QAT of a finished run as a library call, the training loop |
//!
//! The crates below `train`: `asc-kernels` (CPU kernels, no burn), `asc-int8` (the int8
//! engine, no burn), `data-specs` (formats, stable hashes, the DCASE limits) and `pipeline`
//! (the front end).

#![warn(missing_docs)]

// Foundations.
pub mod backend;
pub mod ops;
#[cfg(test)]
mod test_util;

pub mod complexity;
pub mod metrics;
pub mod plots;

pub mod augment;
pub mod checkpoint;
pub mod loss;
pub mod schedule;

pub mod loader;

// Models.
pub mod model;

pub mod export;
pub mod qat;

// The run.
pub mod config;
pub mod error;
pub mod finite;
pub mod precise_bn;
pub mod run;

// Evaluation.
pub mod evaluate;
pub mod floor;
pub mod infer;
pub mod predict;
pub mod report;

// Top.
pub mod qat_phase;
pub mod trainer;

pub use config::TrainConfig;
pub use error::{Result, TrainError};

/// The modules of the crate in layer order: a module may use only the modules before it (see
/// the crate documentation; checked by `tests/layering.rs`).
pub const LAYERS: &[&str] = &[
    "backend",
    "ops",
    "complexity",
    "metrics",
    "plots",
    "loss",
    "augment",
    "schedule",
    "checkpoint",
    "loader",
    "model",
    "qat",
    "export",
    "error",
    "finite",
    "precise_bn",
    "config",
    "run",
    "evaluate",
    "floor",
    "predict",
    "infer",
    "report",
    "qat_phase",
    "trainer",
];
