//! The op graph of an int8 model: buffers, tensors, ops, and the checks that make a graph safe
//! to run (every shape, kind and tensor reference is verified before the engine sees it).

use std::collections::BTreeMap;

use data_specs::{FrontEndConfig, Vocabulary};
use serde::{Deserialize, Serialize};

/// Affine per-tensor quantization of an activation: `real = scale * (q - zero_point)`,
/// `q = clamp(round_half_even(real / scale) + zero_point, qmin, qmax)` (PyTorch's convention).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QParams {
    /// Step size (> 0).
    pub scale: f32,
    /// The code of real 0.0, inside `qmin..=qmax`.
    pub zero_point: i32,
    /// Smallest code (0 for uint8).
    pub qmin: i32,
    /// Largest code (127 for fbgemm's reduced range, 255 for the full uint8 range).
    pub qmax: i32,
}

impl QParams {
    /// fbgemm's activation range: uint8 with the reduced range `0..=127`.
    pub const REDUCED: (i32, i32) = (0, 127);

    /// PyTorch's `MinMaxObserver` affine qparams: the range is widened to include 0, then
    /// `scale = (max - min) / (qmax - qmin)`, `zero_point = clamp(qmin - round(min / scale))`.
    pub fn from_min_max(min: f32, max: f32, qmin: i32, qmax: i32) -> Self {
        let min = min.min(0.0);
        let max = max.max(0.0);
        let scale = ((max - min) / (qmax - qmin) as f32).max(f32::EPSILON);
        let zero_point = (qmin - (min / scale).round_ties_even() as i32).clamp(qmin, qmax);
        Self {
            scale,
            zero_point,
            qmin,
            qmax,
        }
    }

    /// Quantizes one value.
    #[inline]
    pub fn quantize(&self, x: f32) -> i32 {
        ((x / self.scale).round_ties_even() as i32 + self.zero_point).clamp(self.qmin, self.qmax)
    }

    /// Dequantizes one code.
    #[inline]
    pub fn dequantize(&self, q: i32) -> f32 {
        self.scale * (q - self.zero_point) as f32
    }

    /// Quantize then dequantize (the QAT fake-quant).
    #[inline]
    pub fn fake_quant(&self, x: f32) -> f32 {
        self.dequantize(self.quantize(x))
    }

    fn check(&self) -> Result<(), String> {
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(format!(
                "scale {} is not a positive finite number",
                self.scale
            ));
        }
        if !(0 <= self.qmin && self.qmin < self.qmax && self.qmax <= 255) {
            return Err(format!(
                "code range {}..={} is not inside 0..=255",
                self.qmin, self.qmax
            ));
        }
        if !(self.qmin..=self.qmax).contains(&self.zero_point) {
            return Err(format!(
                "zero point {} outside {}..={}",
                self.zero_point, self.qmin, self.qmax
            ));
        }
        Ok(())
    }
}

/// The element type of an activation buffer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dtype", rename_all = "snake_case")]
pub enum BufKind {
    /// uint8 codes with their quantization.
    Quant {
        /// The quantization of the buffer.
        q: QParams,
    },
    /// f32 values.
    Float,
}

/// One activation buffer. Layout is row-major over `shape`; ops read `shape[0]` as channels
/// (or features) and the product of the rest as positions (`H*W` or tokens `L`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BufferDesc {
    /// A readable name (`stem1.out`, `pmb1.ln`); quantization observers are keyed by it.
    pub name: String,
    /// Shape, e.g. `[C, H, W]` or `[D, L]`.
    pub shape: Vec<usize>,
    /// Element type.
    pub kind: BufKind,
}

impl BufferDesc {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// `shape[0]` (channels / features).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }
    /// Product of `shape[1..]` (positions / tokens).
    pub fn cols(&self) -> usize {
        self.shape.iter().skip(1).product()
    }
}

/// Activation fused into a quantized convolution or linear layer (applied as a clamp of the
/// output codes: ReLU clamps below at the zero point, ReLU6 also above at `quantize(6.0)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Linear.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

impl Activation {
    /// Applies the activation to a real value.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
        }
    }
}

/// One op of the graph. Buffers are indices into [`Graph::buffers`]; tensors are names in the
/// model's tensor table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// f32 -> uint8 with the output buffer's qparams.
    Quantize {
        /// Float input.
        input: usize,
        /// Quantized output.
        output: usize,
    },
    /// uint8 -> f32 with the input buffer's qparams.
    Dequantize {
        /// Quantized input.
        input: usize,
        /// Float output.
        output: usize,
    },
    /// Quantized 2-D convolution `[Cin, H, W] -> [Cout, Ho, Wo]`, BN folded, activation fused.
    /// Weight int8 `[Cout, Cin/groups, kh, kw]` (f32 in a float graph), per-output-channel
    /// scales f32 `[Cout]`, bias i32 `[Cout]` at scale `s_in * s_w[c]` (f32 in a float graph).
    QConv2d {
        /// Input buffer.
        input: usize,
        /// Output buffer.
        output: usize,
        /// Weight tensor.
        weight: String,
        /// Per-output-channel weight scales (absent in a float graph).
        weight_scale: Option<String>,
        /// Bias tensor.
        bias: String,
        /// Groups (`Cin` for depthwise).
        groups: usize,
        /// Stride (vertical, horizontal).
        stride: [usize; 2],
        /// Zero padding (vertical, horizontal), in real values (codes `zero_point`).
        padding: [usize; 2],
        /// Fused activation.
        act: Activation,
    },
    /// Quantized linear layer over a feature-major sequence `[Din, L] -> [Dout, L]`. Weight
    /// int8 `[Dout, Din]`, scales f32 `[Dout]`, bias i32 `[Dout]` (a zero tensor when the layer
    /// has none).
    QLinear {
        /// Input buffer.
        input: usize,
        /// Output buffer.
        output: usize,
        /// Weight tensor.
        weight: String,
        /// Per-output-channel weight scales (absent in a float graph).
        weight_scale: Option<String>,
        /// Bias tensor.
        bias: String,
        /// Fused activation.
        act: Activation,
    },
    /// Quantized element-wise add of two buffers with their own qparams.
    QAdd {
        /// First input.
        a: usize,
        /// Second input.
        b: usize,
        /// Output.
        output: usize,
    },
    /// Max pooling without padding (floor mode) on `[C, H, W]`; exact on codes, so input and
    /// output share their qparams.
    MaxPool2d {
        /// Input buffer.
        input: usize,
        /// Output buffer.
        output: usize,
        /// Window (vertical, horizontal).
        kernel: [usize; 2],
        /// Stride (vertical, horizontal).
        stride: [usize; 2],
    },
    /// Global average pool `[C, H, W] -> [C]`: i32 sums, then requantization.
    GlobalAvgPool {
        /// Input buffer.
        input: usize,
        /// Output buffer.
        output: usize,
    },
    /// Float LayerNorm over the channel axis (`shape[0]`) at every position:
    /// `y = (x - mean) / sqrt(var + eps) * gamma + beta` (biased variance, as PyTorch).
    LayerNorm {
        /// Input buffer.
        input: usize,
        /// Output buffer.
        output: usize,
        /// Scale `[C]`.
        gamma: String,
        /// Shift `[C]`.
        beta: String,
        /// Epsilon.
        eps: f32,
    },
    /// Copies rows `start..start + out.rows` (a channel chunk of the PVM split); quantized
    /// buffers keep their qparams.
    SliceRows {
        /// Input buffer.
        input: usize,
        /// Output buffer.
        output: usize,
        /// First row.
        start: usize,
    },
    /// Stacks the inputs' rows (the PVM concat); quantized buffers share their qparams.
    Concat {
        /// Input buffers, in order.
        inputs: Vec<usize>,
        /// Output buffer.
        output: usize,
    },
    /// Float `out = a + alpha * b`, `alpha` a scalar tensor (the PVM `skip_scale`).
    ScaledAdd {
        /// First input.
        a: usize,
        /// Second input (scaled).
        b: usize,
        /// Output.
        output: usize,
        /// Scalar tensor `[1]`.
        alpha: String,
    },
    /// The float Mamba mixer between `in_proj` and `out_proj`, on feature-major sequences:
    /// input `[2*d_inner, L]` (`x` rows then `z` rows), output `[d_inner, L]`.
    /// `u = silu(causal_conv1d(x))`, `[dt; B; C] = x_proj u`, `delta = softplus(dt_proj dt + b)`,
    /// `h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t`, `y_t = <h_t, C_t> + D u_t`,
    /// `out = y * silu(z)`, `A = -exp(A_log)` (Gu & Dao 2023, Alg. 2).
    MambaMixer {
        /// Input buffer `[2*d_inner, L]`.
        input: usize,
        /// Output buffer `[d_inner, L]`.
        output: usize,
        /// Depthwise conv1d weight `[d_inner, d_conv]`.
        conv_weight: String,
        /// Conv1d bias `[d_inner]`.
        conv_bias: String,
        /// `x_proj` weight `[dt_rank + 2*d_state, d_inner]` (no bias).
        x_proj: String,
        /// `dt_proj` weight `[d_inner, dt_rank]`.
        dt_proj_weight: String,
        /// `dt_proj` bias `[d_inner]`.
        dt_proj_bias: String,
        /// `A_log` `[d_inner, d_state]`.
        a_log: String,
        /// `D` `[d_inner]`.
        d_skip: String,
    },
}

impl Op {
    /// The buffer the op writes.
    pub fn output(&self) -> usize {
        match self {
            Op::Quantize { output, .. }
            | Op::Dequantize { output, .. }
            | Op::QConv2d { output, .. }
            | Op::QLinear { output, .. }
            | Op::QAdd { output, .. }
            | Op::MaxPool2d { output, .. }
            | Op::GlobalAvgPool { output, .. }
            | Op::LayerNorm { output, .. }
            | Op::SliceRows { output, .. }
            | Op::Concat { output, .. }
            | Op::ScaledAdd { output, .. }
            | Op::MambaMixer { output, .. } => *output,
        }
    }

    /// The buffers the op reads.
    pub fn inputs(&self) -> Vec<usize> {
        match self {
            Op::QAdd { a, b, .. } | Op::ScaledAdd { a, b, .. } => vec![*a, *b],
            Op::Concat { inputs, .. } => inputs.clone(),
            Op::Quantize { input, .. }
            | Op::Dequantize { input, .. }
            | Op::QConv2d { input, .. }
            | Op::QLinear { input, .. }
            | Op::MaxPool2d { input, .. }
            | Op::GlobalAvgPool { input, .. }
            | Op::LayerNorm { input, .. }
            | Op::SliceRows { input, .. }
            | Op::MambaMixer { input, .. } => vec![*input],
        }
    }
}

/// Element storage of a parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// int8 weights.
    I8(Vec<i8>),
    /// i32 biases.
    I32(Vec<i32>),
    /// f32 scales and float parameters.
    F32(Vec<f32>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::I8(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::F32(v) => v.len(),
        }
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The dtype name used in the file header.
    pub fn dtype(&self) -> &'static str {
        match self {
            TensorData::I8(_) => "i8",
            TensorData::I32(_) => "i32",
            TensorData::F32(_) => "f32",
        }
    }
}

/// A named parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: TensorData,
}

impl Tensor {
    /// An f32 tensor.
    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> Self {
        Self {
            shape,
            data: TensorData::F32(v),
        }
    }
}

/// Descriptive metadata stored in the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Model name, e.g. `irmamba-s1`.
    pub name: String,
    /// Free-form model configuration (the trainer's config JSON).
    pub config: serde_json::Value,
    /// The front end the model expects its log-mel from.
    pub frontend: FrontEndConfig,
    /// Class names, in logit order.
    pub labels: Vocabulary,
}

/// The op graph: buffers, ops run in order, the float input and the float logits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Activation buffers.
    pub buffers: Vec<BufferDesc>,
    /// Ops, run in order; each writes one buffer written by no other op.
    pub ops: Vec<Op>,
    /// Float input buffer (the log-mel, `[1, n_mels, n_frames]`).
    pub input: usize,
    /// Float output buffer (the logits, `[n_classes]`).
    pub output: usize,
}

/// The tensor table.
pub type TensorMap = BTreeMap<String, Tensor>;

fn shape_str(s: &[usize]) -> String {
    format!("{s:?}")
}

impl Graph {
    /// Checks every buffer reference, kind, shape and tensor. `quantized` selects int8 layers
    /// (i8 weights, scales, i32 biases) or a float graph (f32 weights and biases), the input of
    /// calibration. Returns a message naming the offending op.
    pub fn validate(&self, tensors: &TensorMap, quantized: bool) -> Result<(), String> {
        let nb = self.buffers.len();
        let buf = |i: usize, what: &str| -> Result<&BufferDesc, String> {
            self.buffers
                .get(i)
                .ok_or_else(|| format!("{what}: buffer index {i} out of range (have {nb})"))
        };
        for b in &self.buffers {
            if b.shape.is_empty() || b.numel() == 0 {
                return Err(format!("buffer {}: empty shape {:?}", b.name, b.shape));
            }
            if let BufKind::Quant { q } = &b.kind {
                q.check().map_err(|e| format!("buffer {}: {e}", b.name))?;
            }
        }
        let inp = buf(self.input, "graph input")?;
        let out = buf(self.output, "graph output")?;
        if inp.kind != BufKind::Float || out.kind != BufKind::Float {
            return Err("graph input and output must be float buffers".into());
        }
        let mut written = vec![false; nb];
        written[self.input] = true;
        let tensor = |name: &str, ctx: &str| -> Result<&Tensor, String> {
            let t = tensors
                .get(name)
                .ok_or_else(|| format!("{ctx}: missing tensor '{name}'"))?;
            if t.shape.iter().product::<usize>() != t.data.len() {
                return Err(format!(
                    "{ctx}: tensor '{name}' has {} elements for shape {:?}",
                    t.data.len(),
                    t.shape
                ));
            }
            Ok(t)
        };
        let expect =
            |name: &str, ctx: &str, dtype: &str, shape: &[usize]| -> Result<&Tensor, String> {
                let t = tensor(name, ctx)?;
                if t.data.dtype() != dtype || t.shape != shape {
                    return Err(format!(
                        "{ctx}: tensor '{name}' is {} {}, expected {dtype} {}",
                        t.data.dtype(),
                        shape_str(&t.shape),
                        shape_str(shape)
                    ));
                }
                Ok(t)
            };
        let is_q = |b: &BufferDesc| matches!(b.kind, BufKind::Quant { .. });
        for (k, op) in self.ops.iter().enumerate() {
            let ctx = format!("op {k} ({})", op_name(op));
            for i in op.inputs() {
                let b = buf(i, &ctx)?;
                if !written[i] {
                    return Err(format!(
                        "{ctx}: reads buffer '{}' before it is written",
                        b.name
                    ));
                }
            }
            let o = op.output();
            let ob = buf(o, &ctx)?;
            if written[o] {
                return Err(format!("{ctx}: buffer '{}' is written twice", ob.name));
            }
            written[o] = true;
            let ctx = format!("{ctx} -> '{}'", ob.name);
            let (wt, bt) = if quantized {
                ("i8", "i32")
            } else {
                ("f32", "f32")
            };
            match op {
                Op::Quantize { input, .. } | Op::Dequantize { input, .. } => {
                    let ib = &self.buffers[*input];
                    let want_in_q = matches!(op, Op::Dequantize { .. });
                    if is_q(ib) != want_in_q || is_q(ob) == want_in_q || ib.numel() != ob.numel() {
                        return Err(format!(
                            "{ctx}: kinds or sizes do not match ({:?} -> {:?})",
                            ib.shape, ob.shape
                        ));
                    }
                }
                Op::QConv2d {
                    input,
                    weight,
                    weight_scale,
                    bias,
                    groups,
                    stride,
                    padding,
                    ..
                } => {
                    let ib = &self.buffers[*input];
                    if !is_q(ib) || !is_q(ob) || ib.shape.len() != 3 || ob.shape.len() != 3 {
                        return Err(format!("{ctx}: needs quantized [C, H, W] buffers"));
                    }
                    let w = tensor(weight, &ctx)?;
                    if w.shape.len() != 4 {
                        return Err(format!("{ctx}: weight shape {:?} is not 4-D", w.shape));
                    }
                    let (co, cig, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
                    let (ci, h, wd) = (ib.shape[0], ib.shape[1], ib.shape[2]);
                    let g = *groups;
                    if g == 0 || ci % g != 0 || co % g != 0 || cig * g != ci || co != ob.shape[0] {
                        return Err(format!(
                            "{ctx}: weight {:?} with groups {g} does not fit {:?} -> {:?}",
                            w.shape, ib.shape, ob.shape
                        ));
                    }
                    if stride[0] == 0
                        || stride[1] == 0
                        || h + 2 * padding[0] < kh
                        || wd + 2 * padding[1] < kw
                    {
                        return Err(format!("{ctx}: kernel/stride/padding do not fit the input"));
                    }
                    let ho = (h + 2 * padding[0] - kh) / stride[0] + 1;
                    let wo = (wd + 2 * padding[1] - kw) / stride[1] + 1;
                    if ob.shape[1] != ho || ob.shape[2] != wo {
                        return Err(format!(
                            "{ctx}: output {:?} should be [{co}, {ho}, {wo}]",
                            ob.shape
                        ));
                    }
                    expect(weight, &ctx, wt, &w.shape.clone())?;
                    expect(bias, &ctx, bt, &[co])?;
                    if quantized {
                        let s = weight_scale
                            .as_deref()
                            .ok_or_else(|| format!("{ctx}: missing weight_scale"))?;
                        expect(s, &ctx, "f32", &[co])?;
                    }
                }
                Op::QLinear {
                    input,
                    weight,
                    weight_scale,
                    bias,
                    ..
                } => {
                    let ib = &self.buffers[*input];
                    if !is_q(ib) || !is_q(ob) || ib.cols() != ob.cols() {
                        return Err(format!(
                            "{ctx}: needs quantized [D, L] buffers with equal L"
                        ));
                    }
                    let (dout, din) = (ob.rows(), ib.rows());
                    expect(weight, &ctx, wt, &[dout, din])?;
                    expect(bias, &ctx, bt, &[dout])?;
                    if quantized {
                        let s = weight_scale
                            .as_deref()
                            .ok_or_else(|| format!("{ctx}: missing weight_scale"))?;
                        expect(s, &ctx, "f32", &[dout])?;
                    }
                }
                Op::QAdd { a, b, .. } => {
                    let (ab, bb) = (&self.buffers[*a], &self.buffers[*b]);
                    if !is_q(ab)
                        || !is_q(bb)
                        || !is_q(ob)
                        || ab.numel() != ob.numel()
                        || bb.numel() != ob.numel()
                    {
                        return Err(format!("{ctx}: needs three quantized buffers of one size"));
                    }
                }
                Op::MaxPool2d {
                    input,
                    kernel,
                    stride,
                    ..
                } => {
                    let ib = &self.buffers[*input];
                    if ib.kind != ob.kind || !is_q(ib) || ib.shape.len() != 3 || ob.shape.len() != 3
                    {
                        return Err(format!(
                            "{ctx}: needs quantized [C, H, W] buffers with equal qparams"
                        ));
                    }
                    if kernel.contains(&0)
                        || stride.contains(&0)
                        || ib.shape[1] < kernel[0]
                        || ib.shape[2] < kernel[1]
                    {
                        return Err(format!("{ctx}: bad kernel/stride"));
                    }
                    let ho = (ib.shape[1] - kernel[0]) / stride[0] + 1;
                    let wo = (ib.shape[2] - kernel[1]) / stride[1] + 1;
                    if ob.shape != [ib.shape[0], ho, wo] {
                        return Err(format!(
                            "{ctx}: output {:?} should be [{}, {ho}, {wo}]",
                            ob.shape, ib.shape[0]
                        ));
                    }
                }
                Op::GlobalAvgPool { input, .. } => {
                    let ib = &self.buffers[*input];
                    if !is_q(ib) || !is_q(ob) || ob.numel() != ib.rows() {
                        return Err(format!("{ctx}: needs quantized buffers [C, ...] -> [C]"));
                    }
                }
                Op::LayerNorm {
                    input,
                    gamma,
                    beta,
                    eps,
                    ..
                } => {
                    let ib = &self.buffers[*input];
                    if is_q(ib)
                        || is_q(ob)
                        || ib.rows() != ob.rows()
                        || ib.cols() != ob.cols()
                        || eps.is_nan()
                        || *eps < 0.0
                    {
                        return Err(format!(
                            "{ctx}: needs float [C, L] buffers of one size and eps >= 0"
                        ));
                    }
                    expect(gamma, &ctx, "f32", &[ib.rows()])?;
                    expect(beta, &ctx, "f32", &[ib.rows()])?;
                }
                Op::SliceRows { input, start, .. } => {
                    let ib = &self.buffers[*input];
                    if ib.kind != ob.kind || ib.cols() != ob.cols() || start + ob.rows() > ib.rows()
                    {
                        return Err(format!(
                            "{ctx}: rows {start}..{} of {:?} do not fit {:?}",
                            start + ob.rows(),
                            ib.shape,
                            ob.shape
                        ));
                    }
                }
                Op::Concat { inputs, .. } => {
                    let mut rows = 0;
                    for &i in inputs {
                        let ib = &self.buffers[i];
                        if ib.kind != ob.kind || ib.cols() != ob.cols() {
                            return Err(format!(
                                "{ctx}: input '{}' differs in kind, qparams or length",
                                ib.name
                            ));
                        }
                        rows += ib.rows();
                    }
                    if rows != ob.rows() {
                        return Err(format!(
                            "{ctx}: {rows} input rows for {} output rows",
                            ob.rows()
                        ));
                    }
                }
                Op::ScaledAdd { a, b, alpha, .. } => {
                    let (ab, bb) = (&self.buffers[*a], &self.buffers[*b]);
                    if is_q(ab)
                        || is_q(bb)
                        || is_q(ob)
                        || ab.numel() != ob.numel()
                        || bb.numel() != ob.numel()
                    {
                        return Err(format!("{ctx}: needs three float buffers of one size"));
                    }
                    expect(alpha, &ctx, "f32", &[1])?;
                }
                Op::MambaMixer {
                    input,
                    conv_weight,
                    conv_bias,
                    x_proj,
                    dt_proj_weight,
                    dt_proj_bias,
                    a_log,
                    d_skip,
                    ..
                } => {
                    let ib = &self.buffers[*input];
                    let di = ob.rows();
                    if is_q(ib) || is_q(ob) || ib.rows() != 2 * di || ib.cols() != ob.cols() {
                        return Err(format!("{ctx}: needs float [2*d_inner, L] -> [d_inner, L]"));
                    }
                    let cw = tensor(conv_weight, &ctx)?;
                    let al = tensor(a_log, &ctx)?;
                    let dtw = tensor(dt_proj_weight, &ctx)?;
                    if cw.shape.len() != 2 || al.shape.len() != 2 || dtw.shape.len() != 2 {
                        return Err(format!("{ctx}: conv/A_log/dt_proj weights must be 2-D"));
                    }
                    let (k, n, r) = (cw.shape[1], al.shape[1], dtw.shape[1]);
                    if k == 0 || n == 0 || r == 0 {
                        return Err(format!("{ctx}: zero d_conv, d_state or dt_rank"));
                    }
                    expect(conv_weight, &ctx, "f32", &[di, k])?;
                    expect(conv_bias, &ctx, "f32", &[di])?;
                    expect(x_proj, &ctx, "f32", &[r + 2 * n, di])?;
                    expect(dt_proj_weight, &ctx, "f32", &[di, r])?;
                    expect(dt_proj_bias, &ctx, "f32", &[di])?;
                    expect(a_log, &ctx, "f32", &[di, n])?;
                    expect(d_skip, &ctx, "f32", &[di])?;
                }
            }
        }
        if !written[self.output] {
            return Err("the graph output is never written".into());
        }
        Ok(())
    }
}

/// The op's tag as written in the header.
pub fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Quantize { .. } => "quantize",
        Op::Dequantize { .. } => "dequantize",
        Op::QConv2d { .. } => "q_conv2d",
        Op::QLinear { .. } => "q_linear",
        Op::QAdd { .. } => "q_add",
        Op::MaxPool2d { .. } => "max_pool2d",
        Op::GlobalAvgPool { .. } => "global_avg_pool",
        Op::LayerNorm { .. } => "layer_norm",
        Op::SliceRows { .. } => "slice_rows",
        Op::Concat { .. } => "concat",
        Op::ScaledAdd { .. } => "scaled_add",
        Op::MambaMixer { .. } => "mamba_mixer",
    }
}
