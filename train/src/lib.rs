//! # train
//!
//! The training half of the ASC toolkit: a memory-mapped shard loader, the IRMamba student
//! (and reference models) in burn, the KD/QAT trainer, evaluation, int8 export and inference.

pub mod ops;
#[cfg(test)]
mod test_util;

pub mod backend;
pub mod complexity;
pub mod model;

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
pub mod evaluate;
pub mod finite;
pub mod floor;
pub mod precise_bn;
pub mod predict;
pub mod qat_hook;
pub mod trainer;

pub mod export;
pub mod infer;
pub mod int8_cli;
pub mod qat;
