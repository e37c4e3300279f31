//! # int8: a true integer inference engine for the quantized student, and its file format
//!
//! The IRMamba student is fine-tuned with fbgemm-style quantization-aware training (conv+BN
//! folded, weights symmetric per output channel in int8, activations per tensor in affine
//! uint8 with the reduced range `0..=127`, moving-average min/max observers), exported to an
//! `.asc8` file ([`format`], documented in `FORMAT.md`) and run here without burn.
//!
//! * [`graph`]: the op graph (a sequential list of ops over indexed activation buffers) and its
//!   validation.
//! * [`kernels`]: the integer kernels (convolutions, linear layers, adds, pools, fixed-point
//!   requantization), the float kernels (LayerNorm, the Mamba mixer with its selective scan)
//!   and fast vectorizable `exp`/`ln`.
//! * [`engine`]: [`Int8Model`]: load/save, `infer`, `infer_batch`, and the float reference
//!   executor (fake-quant simulation, plain f32, calibration observers).
//! * [`builder`]: [`builder::GraphBuilder`] to assemble a float graph from folded float
//!   weights, and [`builder::quantize_model`] to turn it plus observed activation ranges into
//!   an int8 model (what the exporter calls); a random IRMamba-shaped network for tests and
//!   benches.
//!
//! ## Int8 / float boundary
//! Activations are stored channel-major `[C, H, W]`; token sequences of the parallel Mamba
//! block are stored feature-major `[D, L]` (`L = H*W`), the transpose of PyTorch's `[L, D]`, so
//! the PVM flatten and reshape are free and every `Linear` is a pointwise convolution.
//! Integer: all convolutions, linear layers (PVM output projection, Mamba `in_proj` and
//! `out_proj`), residual adds, max/average pooling. Float (f32): LayerNorm, the PVM skip
//! (`y + skip_scale * chunk`), and the Mamba mixer between `in_proj` and `out_proj` (causal
//! depthwise conv1d, SiLU, `x_proj`, `dt_proj` + softplus, selective scan, `D` skip, gating
//! `y * silu(z)`). Explicit `Quantize`/`Dequantize` ops mark each crossing.

pub mod builder;
pub mod engine;
pub mod format;
pub mod graph;
pub mod kernels;

#[cfg(test)]
mod tests;

pub use engine::{ExecMode, Int8Model, ParamMemory};
pub use graph::{
    Activation, BufKind, BufferDesc, Graph, ModelMeta, Op, QParams, Tensor, TensorData,
};

use std::path::PathBuf;

/// Everything that can go wrong while reading, validating or running an int8 model.
#[derive(Debug, thiserror::Error)]
pub enum Int8Error {
    /// The file could not be read or written.
    #[error("{path}: I/O error: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not start with the `.asc8` magic bytes.
    #[error(
        "{path}: not an int8 ASC model file (magic bytes {found:02x?}, expected {expected:02x?})"
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first bytes found.
        found: Vec<u8>,
        /// The magic bytes expected.
        expected: Vec<u8>,
    },
    /// The file was written in another format version.
    #[error(
        "{path}: format version {found} is not supported (this build reads version {supported})"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The file is shorter than its header says.
    #[error("{path}: truncated file: {what}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was missing.
        what: String,
    },
    /// The trailing CRC-32 does not match the content.
    #[error(
        "{path}: checksum mismatch (stored CRC-32 {stored:08x}, computed {computed:08x}): the file is corrupt"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Checksum stored in the file.
        stored: u32,
        /// Checksum of the bytes read.
        computed: u32,
    },
    /// The JSON header does not parse.
    #[error("{path}: bad JSON header: {source}")]
    Header {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The graph, a tensor or a shape is inconsistent.
    #[error("{context}: invalid model: {msg}")]
    Invalid {
        /// The file or model name.
        context: String,
        /// What is wrong.
        msg: String,
    },
    /// The log-mel handed to `infer` has the wrong size.
    #[error("input has {got} values, the model expects {expected} (n_mels x n_frames = {shape:?})")]
    InputLength {
        /// Values given.
        got: usize,
        /// Values expected.
        expected: usize,
        /// The model's input shape.
        shape: Vec<usize>,
    },
}
