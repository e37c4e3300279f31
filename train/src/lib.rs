//! # train
//!
//! The training half of the ASC toolkit: a memory-mapped shard loader, the IRMamba student
//! (and reference models) in burn, the KD/QAT trainer, evaluation, int8 export and inference.

pub mod loader;

// Trainer building blocks.
pub mod augment;
pub mod checkpoint;
pub mod loss;
pub mod metrics;
pub mod plots;
pub mod report;
pub mod schedule;
