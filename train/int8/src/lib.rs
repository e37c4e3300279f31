//! # asc-int8: a true integer inference engine for the quantized student, and its file format
//!
//! The IRMamba student is fine-tuned with fbgemm-style quantization-aware training (conv+BN
//! folded, weights symmetric per output channel in int8, activations per tensor in affine
//! uint8 with the reduced range `0..=127`, moving-average min/max observers), exported to an
//! `.asc8` file ([`mod@format`], documented in `FORMAT.md`) and run here without burn, on the
//! kernels of [`asc_kernels`] (integer convolutions, linear layers, adds, pools, fixed-point
//! requantization; the float LayerNorm and Mamba mixer with its selective scan).
//!
//! * [`graph`]: the op graph (a sequential list of ops over indexed activation buffers) and its
//!   validation.
//! * [`engine`]: [`Int8Model`]: load/save, [`Int8Model::classify`] and
//!   [`Int8Model::infer_logmel`] on the front end's full log-mel (the time crop inside),
//!   `infer` / `infer_batch` on the graph's input, and the float reference executor (fake-quant
//!   simulation, plain f32, calibration observers).
//! * [`mod@classify`]: [`Prediction`] (label, probabilities, logits), [`softmax`], [`argmax`].
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
//!
//! ## Kernels
//! Requantization is integer: i32 accumulators times a per-channel fixed-point multiplier
//! `m / 2^shift` (gemmlowp), rounding half up. Hot kernels are dispatched at run time
//! ([`asc_kernels::Isa`]: portable, AVX2, AVX-512, AVX-512 VNNI) and give identical codes at every
//! level. Pointwise convolutions and linear layers run as a u8 x i8 GEMM with `vpdpbusd`
//! (VNNI; the input zero point folded into the bias) or over channel pairs with `pmaddwd`;
//! channel-wise convolutions (depthwise, the one-channel stem) run over `u8` stride-phase
//! planes padded with the zero-point code, accumulators in registers and requantization fused
//! (AVX-512), 4 taps per `vpdpbusd` for unit column stride; other convolutions are direct.
//! The selective scan keeps the 16 states of a channel block in registers over the sequence
//! (AVX-512) with a branch-free `exp`. Workspaces are allocated once and pooled (`infer`
//! allocates only its returned logits; `infer_into` nothing). `Int8Model::profile_ops` gives
//! the per-layer time (`cargo bench -p train --bench int8` prints it).
//!
//! ## What the exporter provides
//! 1. The BN-folded float weights (`w * gamma / sqrt(var + eps)`, `beta + (b - mean) * gamma /
//!    sqrt(var + eps)`), assembled with [`builder::GraphBuilder`] in the student's layer order
//!    (`conv2d`, `add`, `max_pool`, `pvm` with [`builder::PvmParams`], `avg_pool`, ...).
//! 2. The QAT observers' `(min, max)` for every quantized buffer, keyed by buffer name up to
//!    [`builder::CHUNK_SEP`] (chunks of one PVM share an observer): the network input, every
//!    conv output (after its fused ReLU/ReLU6), every residual add, per PVM `<pvm>.mamba.in_proj.in`
//!    (LayerNorm output), `.in_proj.out`, `.out_proj.in` (gated mixer output),
//!    `.out_proj.out`, `<pvm>.proj.in` (second LayerNorm output), `<pvm>.proj.out`, the head
//!    conv and the average pool. Max-pool outputs inherit their input's qparams.
//! 3. [`builder::quantize_model`] then applies the QAT conventions: weights symmetric per
//!    output channel, `scale = max|w| / 127.5`, codes `-128..=127`; activations affine with
//!    PyTorch's `MinMaxObserver` formula over `0..=127` (fbgemm's reduced range, which keeps
//!    its `u8 x i8` pair sums from saturating; this engine widens to i16 and accepts any range
//!    inside `0..=255`, but the file must match what QAT simulated); biases
//!    `round(b / (s_in s_w))`. QAT must fake-quantize at exactly these points and keep
//!    LayerNorm, the PVM skip and the Mamba mixer (`conv1d`, `x_proj`, `dt_proj`, scan) in f32.

#![warn(missing_docs)]

pub mod builder;
pub mod classify;
pub mod engine;
pub mod format;
pub mod graph;

#[cfg(test)]
mod tests;

pub use asc_kernels::Isa;
pub use classify::{Prediction, argmax, softmax};
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
