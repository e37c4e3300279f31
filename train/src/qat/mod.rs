//! # Quantization-aware training (fbgemm-style) of the IRMamba student
//!
//! The fake-quantized forward pass [`qat_forward`] simulates, in float, exactly what the int8
//! engine ([`asc_int8`]) computes from the exported model ([`crate::export`]):
//!
//! * **Conv + BN folding** (PyTorch `fuse_conv_bn_weights`): `w' = w * gamma / sqrt(var + eps)`,
//!   `b' = beta - gamma * mean / sqrt(var + eps)` ([`fold_conv_bn`]), with the BN's running
//!   statistics. The BN statistics are **frozen for the whole QAT phase** (PyTorch's
//!   `freeze_bn_stats`, which CP-JKU applies for the last epochs): gamma and beta still learn
//!   through the fold.
//! * **Weights**: symmetric per output channel, `s = max|w| / 127.5`, codes `-128..=127`
//!   ([`fake_quant_weight`], the same formula as [`asc_int8::builder::quantize_weight`]).
//! * **Activations**: per tensor, affine, codes `0..=127` (fbgemm's reduced range), with
//!   moving-average min/max observers (`min += c (min_batch - min)`, `c` = [`DEFAULT_MOMENTUM`],
//!   PyTorch's `MovingAverageMinMaxObserver`) and `QParams::from_min_max` (PyTorch's
//!   `calculate_qparams`) ([`Observers`], [`fake_quant_act`]).
//! * **Straight-through estimator**: `x + (fq(x) - x).detach()`: identity gradient.
//! * Fake-quant points = the int8 engine's quantized buffers (observer keys, see
//!   [`asc_int8::builder`]): the input (`input.q`), every conv output after its ReLU, every
//!   residual add (`<irb>.add`), per PVM `<pvm>.mamba[.<g>].in_proj.in/.in_proj.out/
//!   .out_proj.in/.out_proj.out`, `<pvm>.proj.in/.proj.out`, `head.conv`, `head.pool`. Max
//!   pooling keeps its input's grid. LayerNorm, the PVM skip and the Mamba mixer (conv1d,
//!   `x_proj`, `dt_proj`, scan) stay in f32 ([`crate::model::Mamba::mixer`]).
//!
//! The observers are saved next to the QAT model (`qat/observers.json` of the run folder,
//! [`QatModel::save`]); [`crate::export`] reads both.

pub mod reference;
pub mod train;

pub use train::{QatConfig, calibrate_observers, qat_finetune, qat_finetune_from};

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Bytes, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::pvm::LAYER_NORM_EPS;
use crate::model::{
    Activation, ConvBn, InvertedResidual, IrMamba, Mamba, Model, ModelConfig, ParallelMamba,
};
use crate::ops;
use asc_int8::QParams;

/// Smallest activation code (fbgemm's reduced range `0..=127`).
pub const ACT_QMIN: i32 = 0;
/// Largest activation code.
pub const ACT_QMAX: i32 = 127;
/// Weight scale divisor: `s = max|w| / 127.5` (codes `-128..=127`).
pub use asc_kernels::quant::fake::WEIGHT_SCALE_DIV;
/// Averaging constant of the moving-average min/max observers (PyTorch's 0.01).
pub const DEFAULT_MOMENTUM: f32 = 0.01;
/// Observer key of the network input.
pub const INPUT_KEY: &str = "input.q";
/// Sub-folder of a run folder holding the QAT model and its observers.
pub const QAT_DIR: &str = "qat";
/// File name of the QAT observers in [`QAT_DIR`].
pub const OBSERVERS_FILE: &str = "observers.json";
/// File name of the QAT model record (burnpack) in [`QAT_DIR`].
pub const MODEL_FILE: &str = "model.bpk";

/// Errors of the QAT phase and of reading its files.
#[derive(Debug, thiserror::Error)]
pub enum QatError {
    /// QAT and int8 export exist for the IRMamba student only.
    #[error("QAT / int8 export supports the IRMamba student only, not `{0}`")]
    Unsupported(String),
    /// A file could not be read or written, or does not parse.
    #[error("{path}: {problem}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// An observer needed by the export was never updated.
    #[error("no QAT observer range for `{0}` (run QAT, or calibrate, before exporting)")]
    MissingRange(String),
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> QatError {
    QatError::Io {
        path: path.to_path_buf(),
        problem: e.to_string(),
    }
}

/// Moving-average min/max observers of every fake-quantized activation, keyed by the int8
/// graph's buffer names (chunks of one PVM share one key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observers {
    /// Averaging constant `c`: `min += c (batch_min - min)` (the first batch sets the range).
    pub momentum: f32,
    /// When true the ranges are no longer updated (the last QAT epochs, and inference).
    pub frozen: bool,
    /// `(min, max)` per key.
    pub ranges: BTreeMap<String, (f32, f32)>,
    /// Largest activation code of the simulated grid (codes `ACT_QMIN..=act_qmax`); the export
    /// quantizes with the same grid. Files without it were written with [`ACT_QMAX`].
    #[serde(default = "default_act_qmax")]
    pub act_qmax: i32,
    /// The float control of QAT measurements: the observers still record their ranges, but
    /// the fake-quant points (activations and weights) pass values through unquantized, so
    /// that [`qat_forward`] is the float model with the same folded, frozen BatchNorm (and an
    /// export of it is post-training quantization). Not saved.
    #[serde(skip)]
    pub float_control: bool,
}

fn default_act_qmax() -> i32 {
    ACT_QMAX
}

impl Default for Observers {
    fn default() -> Self {
        Self::new(DEFAULT_MOMENTUM)
    }
}

impl Observers {
    /// Empty, updating observers.
    pub fn new(momentum: f32) -> Self {
        Self {
            momentum,
            frozen: false,
            ranges: BTreeMap::new(),
            act_qmax: ACT_QMAX,
            float_control: false,
        }
    }

    /// Updates the range of `key` with a batch's `(min, max)` (unless frozen; a frozen
    /// observer that never saw data is still initialised) and returns its qparams.
    pub fn update(&mut self, key: &str, lo: f32, hi: f32) -> QParams {
        let c = self.momentum;
        let frozen = self.frozen;
        let r = self.ranges.entry(key.to_string()).or_insert((lo, hi));
        if !frozen && lo.is_finite() && hi.is_finite() {
            r.0 += c * (lo - r.0);
            r.1 += c * (hi - r.1);
        }
        QParams::from_min_max(r.0, r.1, ACT_QMIN, self.act_qmax)
    }

    /// The qparams of `key` for a batch: the frozen range, or the range updated with the
    /// batch `(min, max)` that `batch_range` computes (called only when needed).
    pub fn qparams_for(&mut self, key: &str, batch_range: impl FnOnce() -> (f32, f32)) -> QParams {
        if self.frozen
            && let Some(&(lo, hi)) = self.ranges.get(key)
        {
            return QParams::from_min_max(lo, hi, ACT_QMIN, self.act_qmax);
        }
        let (lo, hi) = batch_range();
        self.update(key, lo, hi)
    }

    /// Observes `x` under `key` and fake-quantizes it with the updated qparams (PyTorch's
    /// `FakeQuantize`: observer first, then quantize-dequantize), with the fused op
    /// [`ops::fake_quant::fake_quant_act`].
    pub fn fq<const D: usize>(&mut self, key: &str, x: Tensor<D>) -> Tensor<D> {
        self.fq_with(key, x, None, 0, false)
    }

    /// [`Observers::fq`] of `act(x + bias)` (per-channel `bias` along `channel_axis`, ReLU
    /// when `relu`): the bias and activation of the layer before fused with the fake-quant,
    /// and the observer sees `act(x + bias)`.
    pub fn fq_with<const D: usize>(
        &mut self,
        key: &str,
        x: Tensor<D>,
        bias: Option<Tensor<1>>,
        channel_axis: usize,
        relu: bool,
    ) -> Tensor<D> {
        let q = self.qparams_for(key, || {
            ops::fake_quant::act_min_max(&x, bias.as_ref(), channel_axis, relu)
        });
        if self.float_control {
            return ops::fake_quant::bias_act(x, bias, channel_axis, relu);
        }
        ops::fake_quant::fake_quant_act(x, bias, channel_axis, relu, q.grid())
    }

    /// A weight fake-quantized per output channel along `axis` ([`ops::fake_quant`]), or as it
    /// is under [`Observers::float_control`].
    pub fn fq_weight<const D: usize>(&self, w: Tensor<D>, axis: usize) -> Tensor<D> {
        if self.float_control {
            w
        } else {
            ops::fake_quant::fake_quant_weight(w, axis)
        }
    }

    /// Writes the observers as JSON (temporary name, then rename).
    pub fn save(&self, path: &Path) -> Result<(), QatError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| io_err(path, e))?;
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, text).map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io_err(path, e))
    }

    /// Reads observers written by [`Observers::save`].
    pub fn load(path: &Path) -> Result<Self, QatError> {
        let text = fs::read_to_string(path).map_err(|e| io_err(path, e))?;
        serde_json::from_str(&text).map_err(|e| io_err(path, e))
    }
}

pub use crate::ops::fake_quant::{
    fake_quant_weight_reference as fake_quant_weight, straight_through,
};

/// Per-tensor affine fake quantization with straight-through gradient:
/// `(clamp(round(x / s) + z, qmin, qmax) - z) * s` (round half to even, as `nearbyint`); the
/// composition of [`crate::ops::fake_quant::fake_quant_grid_reference`] on `q`'s grid.
pub fn fake_quant_act<const D: usize>(x: Tensor<D>, q: &QParams) -> Tensor<D> {
    crate::ops::fake_quant::fake_quant_grid_reference(x, q.grid())
}

/// Conv + BN folded with the BN's running statistics (eval-mode BN, PyTorch
/// `fuse_conv_bn_weights`): `w' = w * g`, `b' = beta + (b - mean) * g`, `g = gamma / sqrt(var +
/// eps)`. Differentiable in `w`, `gamma`, `beta`.
pub fn fold_conv_bn(cb: &ConvBn) -> (Tensor<4>, Tensor<1>) {
    let w = cb.conv.weight.val();
    let c = w.dims()[0];
    let mean = cb.bn.running_mean.value();
    let var = cb.bn.running_var.value();
    let g = cb.bn.gamma.val() / var.add_scalar(cb.bn.epsilon).sqrt();
    let b0 = match &cb.conv.bias {
        Some(b) => b.val() - mean,
        None => mean.neg(),
    };
    let b = cb.bn.beta.val() + b0 * g.clone();
    (w * g.reshape([c, 1, 1, 1]), b)
}

/// Convolution options of a [`ConvBn`] (padding `(k - 1) / 2`, see [`crate::model::ConvBnConfig`]).
pub fn conv_options(cb: &ConvBn) -> ConvOptions<2> {
    let [kh, kw] = cb.conv.kernel_size;
    ConvOptions::new(
        cb.conv.stride,
        [(kh - 1) / 2, (kw - 1) / 2],
        cb.conv.dilation,
        cb.conv.groups,
    )
}

/// Folded conv with fake-quantized weights ([`ops::fake_quant::fake_quant_weight`]) through the
/// fused convolutions of float training ([`ops::conv2d_with`]: depthwise and pointwise
/// kernels), then its bias, its activation and the output fake-quant `key` as one op
/// ([`Observers::fq_with`]).
pub fn conv_bn_qat(cb: &ConvBn, x: Tensor<4>, key: &str, obs: &mut Observers) -> Tensor<4> {
    let (w, b) = fold_conv_bn(cb);
    let y = ops::conv2d_with(&cb.conv, x, obs.fq_weight(w, 0), None);
    obs.fq_with(key, y, Some(b), 1, cb.activation == Activation::Relu)
}

/// Token-major linear layer `[S, L, d_in] -> [S, L, d_out]` with fake-quantized weights, its
/// bias and the output fake-quant `key` fused ([`Observers::fq_with`]).
fn linear_qat(l: &burn::nn::Linear, x: Tensor<3>, key: &str, obs: &mut Observers) -> Tensor<3> {
    let w = obs.fq_weight(l.weight.val(), 1);
    let y = ops::linear_tokens_with(x, w, None);
    obs.fq_with(key, y, l.bias.as_ref().map(|b| b.val()), 2, false)
}

fn irb_qat(m: &InvertedResidual, name: &str, x: Tensor<4>, obs: &mut Observers) -> Tensor<4> {
    let y = conv_bn_qat(&m.expand, x.clone(), &format!("{name}.expand"), obs);
    let y = conv_bn_qat(&m.depthwise, y, &format!("{name}.depthwise"), obs);
    let y = conv_bn_qat(&m.project, y, &format!("{name}.project"), obs);
    if m.residual {
        obs.fq(&format!("{name}.add"), y + x)
    } else {
        y
    }
}

/// Mamba with int8 `in_proj` / `out_proj` and their fake-quant points under `prefix`
/// (`<pvm>.mamba` or `<pvm>.mamba.<g>`); the mixer stays f32 (the fused mixer op of float
/// training). Input already fake-quantized.
fn mamba_qat(m: &Mamba, prefix: &str, u: Tensor<3>, obs: &mut Observers) -> Tensor<3> {
    let xz = linear_qat(&m.in_proj, u, &format!("{prefix}.in_proj.out"), obs);
    let y = obs.fq(&format!("{prefix}.out_proj.in"), m.mixer(xz));
    linear_qat(&m.out_proj, y, &format!("{prefix}.out_proj.out"), obs)
}

/// The parallel Mamba block with the layout changes, LayerNorm, skip and products of float
/// training ([`ParallelMamba::forward`]), fake-quantized at the int8 engine's points.
fn pvm_qat(p: &ParallelMamba, name: &str, x: Tensor<4>, obs: &mut Observers) -> Tensor<4> {
    use ops::{layer_norm, scaled_add, swap_mid};
    let [batch, c, h, w] = x.dims();
    let (len, g) = (h * w, p.groups);
    let d = c / g;
    let tokens = swap_mid(x.reshape([batch, c, len, 1])).reshape([batch, len, c]);
    let tokens = layer_norm(&p.norm, LAYER_NORM_EPS, tokens); // [B, L, C]
    let tq = obs.fq(&format!("{name}.mamba.in_proj.in"), tokens.clone());
    let skip = p.skip_scale.val();
    let mixed = if p.mamba.len() == 1 {
        let split =
            |t: Tensor<3>| swap_mid(t.reshape([batch, len, g, d])).reshape([batch * g, len, d]);
        let y = mamba_qat(&p.mamba[0], &format!("{name}.mamba"), split(tq), obs);
        let y = scaled_add(y, split(tokens), skip);
        swap_mid(y.reshape([batch, g, len, d])).reshape([batch, len, c])
    } else {
        let split = |t: Tensor<3>| {
            swap_mid(t.reshape([1, batch * len, g, d]))
                .reshape([g, batch, len, d])
                .chunk(g, 0)
        };
        let outs = split(tq)
            .into_iter()
            .zip(split(tokens))
            .zip(&p.mamba)
            .enumerate()
            .map(|(j, ((q, f), m))| {
                let y = mamba_qat(
                    m,
                    &format!("{name}.mamba.{j}"),
                    q.reshape([batch, len, d]),
                    obs,
                );
                scaled_add(y, f.reshape([batch, len, d]), skip.clone()).reshape([1, batch * len, d])
            })
            .collect();
        swap_mid(Tensor::cat(outs, 0).reshape([1, g, batch * len, d])).reshape([batch, len, c])
    };
    let y = obs.fq(
        &format!("{name}.proj.in"),
        layer_norm(&p.norm, LAYER_NORM_EPS, mixed),
    );
    let y = linear_qat(&p.proj, y, &format!("{name}.proj.out"), obs);
    let c_out = y.dims()[2];
    swap_mid(y.reshape([batch, len, c_out, 1])).reshape([batch, c_out, h, w])
}

/// Name of PVM block `j` of stage `i` (prefix of its observer keys and int8 tensors).
pub fn pvm_name(i: usize, j: usize) -> String {
    format!("stages.{i}.blocks.{j}")
}

/// The fake-quantized forward pass of the IRMamba student: log-mel `[B, 1, n_mels, n_frames]`
/// -> logits `[B, n_classes]`, updating `obs` unless frozen (see the module docs).
pub fn qat_forward(m: &IrMamba, x: Tensor<4>, obs: &mut Observers) -> Tensor<2> {
    let t = x.dims()[3];
    let x = x.narrow(3, 0, m.cropped_frames(t));
    let x = obs.fq(INPUT_KEY, x);
    let x = conv_bn_qat(&m.stem.dw1, x, "stem.dw1", obs);
    let x = conv_bn_qat(&m.stem.dw2, x, "stem.dw2", obs);
    let x = conv_bn_qat(&m.stem.pw2, x, "stem.pw2", obs);
    let x = irb_qat(&m.irb1, "irb1", x, obs);
    let mut x = irb_qat(&m.irb2, "irb2", x, obs);
    for (i, stage) in m.stages.iter().enumerate() {
        for (j, blk) in stage.blocks.iter().enumerate() {
            x = pvm_qat(blk, &pvm_name(i, j), x, obs);
        }
        x = stage.pool.forward(x); // max pooling keeps the grid of its input
    }
    let x = irb_qat(&m.irb3, "irb3", x, obs);
    let y = conv_bn_qat(&m.head.conv, x, "head.conv", obs);
    let y = obs.fq("head.pool", m.head.pool.forward(y));
    let [b, c, _, _] = y.dims();
    y.reshape([b, c])
}

/// The student of a [`Model`], or [`QatError::Unsupported`].
pub fn student(model: &Model) -> Result<&IrMamba, QatError> {
    match model {
        Model::IrMamba(m) => Ok(m),
        Model::Baseline(_) => Err(QatError::Unsupported("baseline".into())),
        Model::CnnTeacher(_) => Err(QatError::Unsupported("teacher".into())),
    }
}

/// A QAT-trained student and its observers (what [`crate::export`] turns into `.asc8`).
#[derive(Debug, Clone)]
pub struct QatModel {
    /// The model (an IRMamba student).
    pub model: Model,
    /// The activation observers (frozen after QAT).
    pub observers: Observers,
}

impl QatModel {
    /// Fake-quantized logits (observers are not updated).
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<2>, QatError> {
        let mut obs = self.observers.clone();
        obs.frozen = true;
        Ok(qat_forward(student(&self.model)?, x, &mut obs))
    }

    /// Writes `<run>/qat/model.bpk` and `<run>/qat/observers.json`.
    pub fn save(&self, run_dir: &Path) -> Result<(), QatError> {
        let dir = run_dir.join(QAT_DIR);
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let mpath = dir.join(MODEL_FILE);
        let bytes = self
            .model
            .valid()
            .into_record()
            .into_bytes()
            .map_err(|e| io_err(&mpath, e))?;
        let tmp = mpath.with_extension("bpk.tmp");
        fs::write(&tmp, &bytes[..]).map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, &mpath).map_err(|e| io_err(&mpath, e))?;
        self.observers.save(&dir.join(OBSERVERS_FILE))
    }

    /// Reads the QAT model of a run folder (architecture `cfg`).
    pub fn load(
        run_dir: &Path,
        cfg: &ModelConfig,
        n_classes: usize,
        device: &Device,
    ) -> Result<Self, QatError> {
        let dir = run_dir.join(QAT_DIR);
        let mpath = dir.join(MODEL_FILE);
        let bytes = fs::read(&mpath).map_err(|e| io_err(&mpath, e))?;
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
            .map_err(|e| io_err(&mpath, e))?;
        let model = cfg
            .init(n_classes, device)
            .try_load_record(record)
            .map_err(|e| io_err(&mpath, e))?;
        let mut observers = Observers::load(&dir.join(OBSERVERS_FILE))?;
        observers.frozen = true;
        Ok(Self { model, observers })
    }
}
