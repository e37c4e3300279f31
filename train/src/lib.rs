//! # train
//!
//! The training half of the ASC toolkit: a memory-mapped shard loader, the IRMamba student
//! (and reference models) in burn, the KD/QAT trainer, evaluation, int8 export and inference.
pub mod int8;
