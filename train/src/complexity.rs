//! Model complexity the DCASE way: parameters, multiply-accumulates (MACs) and int8 parameter
//! memory, per layer and in total.
//!
//! The official DCASE2024 counter sums `torchinfo`'s `total_params` and `total_mult_adds` for one
//! input of batch 1. This module reproduces those conventions from the model *structure*
//! (every count is read from an initialised model's parameter shapes; shapes are propagated
//! analytically), calibrated on the DCASE2024 baseline: 61,148 parameters, 29,419,156 MACs.
//!
//! Conventions (per layer):
//! - **Conv1d/Conv2d**: `params (weights + bias) x output positions` (torchinfo).
//! - **BatchNorm**: 2 parameters per channel (weight, bias; running statistics are buffers) and
//!   2 MACs per channel, *not* per position (torchinfo multiplies by the batch size only).
//! - **Linear and LayerNorm on a token sequence**: `params x tokens` (the true count).
//!   torchinfo multiplies by the batch size only, i.e. counts a sequence Linear once; that
//!   undercount is reported separately as the "torchinfo-convention" total, which is probably
//!   what the IRMamba report's MMACs figures show.
//! - **Selective scan** (invisible to torchinfo, added by hand, in its own column): per token and
//!   inner channel `3 N + 1` MACs: `N` for the decay `exp(delta A) * h`, `N` for the input
//!   `(delta u) * B`, `N` for the read-out `<h, C>`, `1` for the skip `D u`. The `exp` and the
//!   discretisation product `delta * A` are element-wise and, like activations, gating, pooling
//!   and residual additions, not counted (torchinfo does not count them either).
//! - **Parameter memory**: 1 byte per parameter at int8 (the DCASE rule, limit
//!   [`MAX_PARAM_BYTES`] = 128,000 bytes, [`data_specs::limits`]); the "mixed" figure keeps
//!   LayerNorm, `A_log`, `D` and the skip scales in float32 (4 bytes), as the IRMamba report
//!   does.
//!
//! This module is a leaf: the models walk their layers and report each one to a [`Tally`]
//! (`Model::tally`); `ModelConfig::complexity` builds the [`ComplexityReport`] of a model.

use std::fmt;

use burn::module::Param;
use burn::nn::conv::{Conv1d, Conv2d};
use burn::nn::{BatchNorm, LayerNorm, Linear};
use burn::tensor::Tensor;
use data_specs::limits::{MAX_MACS, MAX_PARAM_BYTES};

/// One row of the complexity table: a leaf layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRow {
    /// Module path, e.g. `pmb.0.0.mamba.0.in_proj`.
    pub path: String,
    /// Layer kind (`Conv2d+BN`, `Linear`, `LayerNorm`, `Scan`, ...).
    pub kind: &'static str,
    /// Output shape for one example (`[C, H, W]` or `[L, C]`).
    pub out_shape: Vec<usize>,
    /// Trainable parameters.
    pub params: usize,
    /// Parameters kept in float32 by the mixed int8 scheme (LayerNorm, SSM state parameters).
    pub float_params: usize,
    /// MACs per example (conventions in the module docs), excluding the selective scan.
    pub macs: u64,
    /// Selective-scan MACs per example (added by hand; torchinfo does not see the scan).
    pub scan_macs: u64,
    /// MACs as torchinfo would count this layer for batch 1.
    pub torchinfo_macs: u64,
}

/// Accumulates [`LayerRow`]s while a model walks its layers.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// The rows so far, in forward order.
    pub rows: Vec<LayerRow>,
    /// Non-trainable state elements seen (BatchNorm running mean and variance).
    pub buffers: usize,
}

fn numel<const D: usize>(p: &Param<Tensor<D>>) -> usize {
    p.dims().iter().product()
}

fn numel_state(s: &burn::module::RunningState<Tensor<1>>) -> usize {
    s.value().dims()[0]
}

fn join(path: &str, leaf: &str) -> String {
    if path.is_empty() {
        leaf.to_string()
    } else {
        format!("{path}.{leaf}")
    }
}

impl Tally {
    /// Pushes a row.
    pub fn push(&mut self, row: LayerRow) {
        self.rows.push(row);
    }

    /// A Conv2d followed by a BatchNorm with output shape `out` (`[C, H, W]`).
    pub fn conv2d_bn(&mut self, path: &str, conv: &Conv2d, bn: &BatchNorm, out: [usize; 3]) {
        let conv_params = numel(&conv.weight) + conv.bias.as_ref().map_or(0, numel);
        let bn_params = numel(&bn.gamma) + numel(&bn.beta);
        self.buffers += numel_state(&bn.running_mean) + numel_state(&bn.running_var);
        let positions = (out[1] * out[2]) as u64;
        let macs = conv_params as u64 * positions + bn_params as u64;
        self.push(LayerRow {
            path: path.to_string(),
            kind: if conv.groups > 1 {
                "DWConv2d+BN"
            } else {
                "Conv2d+BN"
            },
            out_shape: out.to_vec(),
            params: conv_params + bn_params,
            float_params: 0,
            macs,
            scan_macs: 0,
            torchinfo_macs: macs,
        });
    }

    /// A Linear applied to each of `tokens` tokens.
    pub fn linear(&mut self, path: &str, m: &Linear, tokens: usize) {
        let params = numel(&m.weight) + m.bias.as_ref().map_or(0, numel);
        let d_out = m.weight.dims()[1];
        self.push(LayerRow {
            path: path.to_string(),
            kind: "Linear",
            out_shape: vec![tokens, d_out],
            params,
            float_params: 0,
            macs: (params * tokens) as u64,
            scan_macs: 0,
            torchinfo_macs: params as u64,
        });
    }

    /// A LayerNorm applied to each of `tokens` tokens (kept in float32 by the mixed scheme).
    pub fn layer_norm(&mut self, path: &str, m: &LayerNorm, tokens: usize) {
        let params = numel(&m.gamma) + m.beta.as_ref().map_or(0, numel);
        self.push(LayerRow {
            path: path.to_string(),
            kind: "LayerNorm",
            out_shape: vec![tokens, m.gamma.dims()[0]],
            params,
            float_params: params,
            macs: (params * tokens) as u64,
            scan_macs: 0,
            torchinfo_macs: params as u64,
        });
    }

    /// A (causal, depthwise) Conv1d over `tokens` positions, output length `tokens`.
    pub fn conv1d(&mut self, path: &str, m: &Conv1d, tokens: usize) {
        let params = numel(&m.weight) + m.bias.as_ref().map_or(0, numel);
        let c_out = m.weight.dims()[0];
        self.push(LayerRow {
            path: path.to_string(),
            kind: "DWConv1d",
            out_shape: vec![c_out, tokens],
            params,
            float_params: 0,
            macs: (params * tokens) as u64,
            scan_macs: 0,
            torchinfo_macs: (params * tokens) as u64,
        });
    }

    /// The selective scan over `tokens` tokens, `d_inner` channels, state size `d_state`, with
    /// its own parameters (`A_log`, `D`) counted here and kept in float32.
    pub fn scan(
        &mut self,
        path: &str,
        params: usize,
        d_inner: usize,
        d_state: usize,
        tokens: usize,
    ) {
        self.push(LayerRow {
            path: path.to_string(),
            kind: "SelectiveScan",
            out_shape: vec![tokens, d_inner],
            params,
            float_params: params,
            macs: 0,
            scan_macs: ((3 * d_state + 1) * d_inner * tokens) as u64,
            torchinfo_macs: 0,
        });
    }

    /// A scalar or small parameter without MACs (e.g. a learned skip scale), kept in float32.
    pub fn scalar(&mut self, path: &str, params: usize, out_shape: Vec<usize>) {
        self.push(LayerRow {
            path: path.to_string(),
            kind: "Scale",
            out_shape,
            params,
            float_params: params,
            macs: 0,
            scan_macs: 0,
            torchinfo_macs: 0,
        });
    }

    /// A parameter-free layer (pooling), recorded for its output shape.
    pub fn shape_only(&mut self, path: &str, kind: &'static str, out_shape: Vec<usize>) {
        self.push(LayerRow {
            path: path.to_string(),
            kind,
            out_shape,
            params: 0,
            float_params: 0,
            macs: 0,
            scan_macs: 0,
            torchinfo_macs: 0,
        });
    }

    /// Child path helper: `path.leaf`.
    pub fn child(path: &str, leaf: &str) -> String {
        join(path, leaf)
    }
}

/// The complexity of one model for one input size: the per-layer table and its totals.
#[derive(Debug, Clone)]
pub struct ComplexityReport {
    /// Model name (preset or kind).
    pub model: String,
    /// Input `[1, n_mels, n_frames]`.
    pub input: [usize; 3],
    /// Leaf layers in forward order.
    pub rows: Vec<LayerRow>,
    /// Non-trainable state elements (BatchNorm running statistics), not parameters for DCASE.
    pub buffers: usize,
    /// `Module::num_params` of the initialised model: burn counts BatchNorm running statistics
    /// too, so it equals [`Self::params`] + [`Self::buffers`].
    pub module_params: usize,
}

impl ComplexityReport {
    /// Total trainable parameters.
    pub fn params(&self) -> usize {
        self.rows.iter().map(|r| r.params).sum()
    }
    /// Total MACs excluding the selective scan.
    pub fn layer_macs(&self) -> u64 {
        self.rows.iter().map(|r| r.macs).sum()
    }
    /// Total selective-scan MACs.
    pub fn scan_macs(&self) -> u64 {
        self.rows.iter().map(|r| r.scan_macs).sum()
    }
    /// Total MACs (layers + scan): the figure checked against [`MAX_MACS`].
    pub fn macs(&self) -> u64 {
        self.layer_macs() + self.scan_macs()
    }
    /// Total MACs as torchinfo (the official counter) would report them, without the scan.
    pub fn torchinfo_macs(&self) -> u64 {
        self.rows.iter().map(|r| r.torchinfo_macs).sum()
    }
    /// Parameter memory with every parameter in int8, in bytes.
    pub fn int8_bytes(&self) -> usize {
        self.params()
    }
    /// Parameter memory with LayerNorm and SSM parameters in float32 and the rest in int8.
    pub fn mixed_bytes(&self) -> usize {
        let float: usize = self.rows.iter().map(|r| r.float_params).sum();
        self.params() - float + 4 * float
    }
    /// Whether the model meets both DCASE2024 limits (int8 memory and MACs).
    pub fn within_limits(&self) -> bool {
        self.int8_bytes() <= MAX_PARAM_BYTES && self.macs() <= MAX_MACS
    }
}

fn fmt_shape(s: &[usize]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl fmt::Display for ComplexityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pw = self
            .rows
            .iter()
            .map(|r| r.path.len())
            .max()
            .unwrap_or(4)
            .max(5);
        let kw = self
            .rows
            .iter()
            .map(|r| r.kind.len())
            .max()
            .unwrap_or(4)
            .max(4);
        writeln!(f, "model {}  input {}", self.model, fmt_shape(&self.input))?;
        writeln!(
            f,
            "{:<pw$}  {:<kw$}  {:>12}  {:>9}  {:>12}  {:>11}",
            "layer", "kind", "output", "params", "MACs", "scan MACs"
        )?;
        writeln!(f, "{}", "-".repeat(pw + kw + 54))?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<pw$}  {:<kw$}  {:>12}  {:>9}  {:>12}  {:>11}",
                r.path,
                r.kind,
                fmt_shape(&r.out_shape),
                thousands(r.params as u64),
                thousands(r.macs),
                thousands(r.scan_macs)
            )?;
        }
        writeln!(f, "{}", "-".repeat(pw + kw + 54))?;
        writeln!(
            f,
            "{:<pw$}  {:<kw$}  {:>12}  {:>9}  {:>12}  {:>11}",
            "total",
            "",
            "",
            thousands(self.params() as u64),
            thousands(self.layer_macs()),
            thousands(self.scan_macs())
        )?;
        writeln!(
            f,
            "parameters {} | MACs {} ({:.2} M, limit {:.0} M) incl. scan {} | torchinfo-convention MACs {}",
            thousands(self.params() as u64),
            thousands(self.macs()),
            self.macs() as f64 / 1e6,
            MAX_MACS as f64 / 1e6,
            thousands(self.scan_macs()),
            thousands(self.torchinfo_macs())
        )?;
        write!(
            f,
            "parameter memory: {} bytes int8 (limit {}), {} bytes with LayerNorm/SSM in float32 | {}",
            thousands(self.int8_bytes() as u64),
            thousands(MAX_PARAM_BYTES as u64),
            thousands(self.mixed_bytes() as u64),
            if self.within_limits() {
                "within DCASE limits"
            } else {
                "EXCEEDS DCASE limits"
            }
        )
    }
}
