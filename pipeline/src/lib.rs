//! # pipeline
//!
//! The offline half of the ASC toolkit: reads a TAU-style dataset (or generates the embedded demo
//! dataset), cuts 1 s clips at 32 kHz, materializes DIR-convolved and replay variants, computes
//! log-mel features and writes validated Parquet shards (schema: `data-specs`).
//!
//! One module per stage; each stage is a pure function over clips where it can be, and the
//! orchestration (threads, shards, resume, partitions) lives in [`features`] and [`shards`].

pub mod cli;
pub mod dir;
pub mod features;
pub mod fusion;
pub mod ingest;
pub mod inspect;
pub mod lock;
pub mod logmel;
pub mod materialize;
pub mod replay;
pub mod resample;
pub mod shards;
pub mod skips;
pub mod synth;
pub mod teacher;
