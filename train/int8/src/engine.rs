//! [`Int8Model`]: loading, saving, the integer executor with per-thread workspaces, and the
//! float reference executor ([`Reference`]: fake-quant simulation, plain f32, calibration).

use std::path::Path;
use std::sync::Mutex;

use rayon::prelude::*;

use super::Int8Error;
use super::classify::Prediction;
use super::format;
use super::graph::{Activation, BufKind, Graph, ModelMeta, Op, QParams, TensorData, TensorMap};
use asc_kernels::Isa;
use asc_kernels::layer_norm;
use asc_kernels::math::round_even_i32;
use asc_kernels::max_pool::max_pool2d;
use asc_kernels::mixer::inference::{MambaKernel, MixerInput};
use asc_kernels::quant::{ConvGeom, FixedMul, QAddKernel, QConvKernel, conv2d_direct, pad_input};

/// An op prepared for the integer executor.
#[derive(Debug, Clone)]
enum Kernel {
    Quantize {
        input: usize,
        output: usize,
        inv_scale: f32,
        zp: i32,
        lo: i32,
        hi: i32,
    },
    /// `fused`: the only reader is the next op, a Mamba mixer that dequantizes the codes
    /// itself ([`MixerInput::Codes`]); nothing runs here and `output` stays unwritten.
    Dequantize {
        input: usize,
        output: usize,
        scale: f32,
        zp: i32,
        fused: bool,
    },
    Conv {
        input: usize,
        output: usize,
        k: Box<QConvKernel>,
    },
    Add {
        a: usize,
        b: usize,
        output: usize,
        k: QAddKernel,
    },
    MaxPool {
        input: usize,
        output: usize,
        c: usize,
        h: usize,
        w: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
    },
    AvgPool {
        input: usize,
        output: usize,
        hw: usize,
        zp_in: i32,
        zp_out: i32,
        mul: FixedMul,
        lo: i32,
        hi: i32,
    },
    LayerNorm {
        input: usize,
        output: usize,
        gamma: Vec<f32>,
        beta: Vec<f32>,
        eps: f32,
        c: usize,
    },
    Slice {
        input: usize,
        output: usize,
        offset: usize,
    },
    Concat {
        inputs: Vec<usize>,
        output: usize,
    },
    ScaledAdd {
        a: usize,
        b: usize,
        output: usize,
        alpha: f32,
    },
    /// `codes`: the int8 input `(buffer, scale, zero point)` when the preceding `Dequantize`
    /// is fused into the mixer (then `input`, its float output, is not read).
    Mamba {
        input: usize,
        output: usize,
        k: Box<MambaKernel>,
        codes: Option<(usize, f32, i32)>,
    },
}

/// One activation buffer of a workspace.
#[derive(Debug, Clone)]
enum Slot {
    Q(Vec<u8>),
    F(Vec<f32>),
}

/// Everything one clip needs, allocated once and reused.
#[derive(Debug)]
struct Workspace {
    slots: Vec<Slot>,
    xp: Vec<i16>,
    acc: Vec<i32>,
    fscratch: Vec<f32>,
}

/// Scratch sizes computed at load.
#[derive(Debug, Clone, Copy, Default)]
struct ScratchSizes {
    xp: usize,
    acc: usize,
    f: usize,
}

/// Parameter memory of a model, counted from its tensors (quantization scales excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamMemory {
    /// int8 weights of convolutions and linear layers.
    pub int8_weights: usize,
    /// i32 biases of those layers.
    pub int_biases: usize,
    /// f32 parameters (LayerNorm, Mamba mixer, skip scales).
    pub float_params: usize,
}

impl ParamMemory {
    /// Total parameter count.
    pub fn params(&self) -> usize {
        self.int8_weights + self.int_biases + self.float_params
    }
    /// Bytes as stored: int8 weights 1 byte, i32 biases and f32 parameters 4 bytes.
    pub fn stored_bytes(&self) -> usize {
        self.int8_weights + 4 * (self.int_biases + self.float_params)
    }
    /// Bytes the DCASE way for an 8-bit model: every parameter at 8 bits (how QAT entries,
    /// the paper's included, report; compare with the 128,000-byte limit).
    pub fn dcase_8bit_bytes(&self) -> usize {
        self.params()
    }
}

/// How the [`Reference`] executor treats quantization points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecMode {
    /// Fake-quantize every quantized buffer (quantize-dequantize with its qparams): the float
    /// simulation of the int8 model.
    FakeQuant,
    /// Plain f32: quantization points are identities.
    Float,
}

/// A quantized int8 model ready to run.
#[derive(Debug)]
pub struct Int8Model {
    meta: ModelMeta,
    graph: Graph,
    tensors: TensorMap,
    kernels: Vec<Kernel>,
    scratch: ScratchSizes,
    pool: Mutex<Vec<Workspace>>,
    isa: Isa,
}

fn tf32<'a>(t: &'a TensorMap, name: &str) -> &'a [f32] {
    match &t[name].data {
        TensorData::F32(v) => v,
        _ => unreachable!("validated f32 tensor"),
    }
}

fn qp(graph: &Graph, i: usize) -> QParams {
    match graph.buffers[i].kind {
        BufKind::Quant { q } => q,
        BufKind::Float => unreachable!("validated quantized buffer"),
    }
}

/// Output clamp of a fused activation, in codes.
pub fn act_clamp(act: Activation, q: &QParams) -> (i32, i32) {
    match act {
        Activation::None => (q.qmin, q.qmax),
        Activation::Relu => (q.zero_point.max(q.qmin), q.qmax),
        Activation::Relu6 => (q.zero_point.max(q.qmin), q.quantize(6.0).min(q.qmax)),
    }
}

fn mamba_kernel(graph: &Graph, t: &TensorMap, op: &Op) -> MambaKernel {
    let Op::MambaMixer {
        output,
        conv_weight,
        conv_bias,
        x_proj,
        dt_proj_weight,
        dt_proj_bias,
        a_log,
        d_skip,
        ..
    } = op
    else {
        unreachable!()
    };
    let ob = &graph.buffers[*output];
    MambaKernel {
        di: ob.rows(),
        n: t[a_log].shape[1],
        r: t[dt_proj_weight].shape[1],
        k: t[conv_weight].shape[1],
        l: ob.cols(),
        conv_w: tf32(t, conv_weight).to_vec(),
        conv_b: tf32(t, conv_bias).to_vec(),
        x_proj: tf32(t, x_proj).to_vec(),
        dt_w: tf32(t, dt_proj_weight).to_vec(),
        dt_b: tf32(t, dt_proj_bias).to_vec(),
        a: tf32(t, a_log).iter().map(|v| -v.exp()).collect(),
        d: tf32(t, d_skip).to_vec(),
    }
}

/// Geometry of a QConv2d or QLinear op (a linear layer is a 1x1 conv over `[Din, 1, L]`).
fn conv_geom(graph: &Graph, t: &TensorMap, op: &Op) -> ConvGeom {
    match op {
        Op::QConv2d {
            input,
            output,
            weight,
            groups,
            stride,
            padding,
            ..
        } => {
            let (ib, ob) = (&graph.buffers[*input], &graph.buffers[*output]);
            let ws = &t[weight].shape;
            ConvGeom {
                cin: ib.shape[0],
                cout: ob.shape[0],
                groups: *groups,
                h: ib.shape[1],
                w: ib.shape[2],
                kh: ws[2],
                kw: ws[3],
                sh: stride[0],
                sw: stride[1],
                ph: padding[0],
                pw: padding[1],
            }
        }
        Op::QLinear { input, output, .. } => {
            let (ib, ob) = (&graph.buffers[*input], &graph.buffers[*output]);
            ConvGeom {
                cin: ib.rows(),
                cout: ob.rows(),
                groups: 1,
                h: 1,
                w: ib.cols(),
                kh: 1,
                kw: 1,
                sh: 1,
                sw: 1,
                ph: 0,
                pw: 0,
            }
        }
        _ => unreachable!(),
    }
}

impl Int8Model {
    /// Builds a model from its parts, validating the graph (`context` names it in errors).
    pub fn from_parts(
        meta: ModelMeta,
        graph: Graph,
        tensors: TensorMap,
        context: &str,
    ) -> Result<Self, Int8Error> {
        graph
            .validate(&tensors, true)
            .map_err(|msg| Int8Error::Invalid {
                context: context.to_string(),
                msg,
            })?;
        let in_len = graph.buffers[graph.input].numel();
        if meta.frontend.n_mels == 0
            || !in_len.is_multiple_of(meta.frontend.n_mels)
            || graph.buffers[graph.output].numel() != meta.labels.len()
        {
            return Err(Int8Error::Invalid {
                context: context.to_string(),
                msg: format!(
                    "input {:?} does not hold whole {}-bin mel frames or output {:?} does not match the {} labels",
                    graph.buffers[graph.input].shape,
                    meta.frontend.n_mels,
                    graph.buffers[graph.output].shape,
                    meta.labels.len()
                ),
            });
        }
        let mut kernels = Vec::with_capacity(graph.ops.len());
        let mut sz = ScratchSizes::default();
        for op in &graph.ops {
            let k = match op {
                Op::Quantize { input, output } => {
                    let q = qp(&graph, *output);
                    Kernel::Quantize {
                        input: *input,
                        output: *output,
                        inv_scale: 1.0 / q.scale,
                        zp: q.zero_point,
                        lo: q.qmin,
                        hi: q.qmax,
                    }
                }
                Op::Dequantize { input, output } => {
                    let q = qp(&graph, *input);
                    Kernel::Dequantize {
                        input: *input,
                        output: *output,
                        scale: q.scale,
                        zp: q.zero_point,
                        fused: false,
                    }
                }
                Op::QConv2d {
                    input,
                    output,
                    weight,
                    weight_scale,
                    bias,
                    act,
                    ..
                }
                | Op::QLinear {
                    input,
                    output,
                    weight,
                    weight_scale,
                    bias,
                    act,
                } => {
                    let geom = conv_geom(&graph, &tensors, op);
                    let (qi, qo) = (qp(&graph, *input), qp(&graph, *output));
                    let TensorData::I8(w) = &tensors[weight].data else {
                        unreachable!()
                    };
                    let TensorData::I32(b) = &tensors[bias].data else {
                        unreachable!()
                    };
                    let ws = tf32(&tensors, weight_scale.as_deref().expect("validated"));
                    let mul = ws
                        .iter()
                        .map(|&s| FixedMul::new(qi.scale as f64 * s as f64 / qo.scale as f64))
                        .collect();
                    let (lo, hi) = act_clamp(*act, &qo);
                    let k = QConvKernel::new(
                        geom,
                        w.iter().map(|&v| v as i16).collect(),
                        b.clone(),
                        mul,
                        qi.zero_point,
                        qo.zero_point,
                        lo,
                        hi,
                    );
                    sz.xp = sz.xp.max(k.xp_len());
                    sz.acc = sz.acc.max(k.acc_len());
                    Kernel::Conv {
                        input: *input,
                        output: *output,
                        k: Box::new(k),
                    }
                }
                Op::QAdd { a, b, output } => {
                    let (qa, qb, qo) = (qp(&graph, *a), qp(&graph, *b), qp(&graph, *output));
                    let k = QAddKernel::new(
                        qa.scale,
                        qb.scale,
                        qo.scale,
                        qa.zero_point,
                        qb.zero_point,
                        qo.zero_point,
                        qo.qmin,
                        qo.qmax,
                    );
                    Kernel::Add {
                        a: *a,
                        b: *b,
                        output: *output,
                        k,
                    }
                }
                Op::MaxPool2d {
                    input,
                    output,
                    kernel,
                    stride,
                } => {
                    let s = &graph.buffers[*input].shape;
                    Kernel::MaxPool {
                        input: *input,
                        output: *output,
                        c: s[0],
                        h: s[1],
                        w: s[2],
                        kernel: *kernel,
                        stride: *stride,
                    }
                }
                Op::GlobalAvgPool { input, output } => {
                    let (qi, qo) = (qp(&graph, *input), qp(&graph, *output));
                    let hw = graph.buffers[*input].cols();
                    let mul = FixedMul::new(qi.scale as f64 / (qo.scale as f64 * hw as f64));
                    Kernel::AvgPool {
                        input: *input,
                        output: *output,
                        hw,
                        zp_in: qi.zero_point,
                        zp_out: qo.zero_point,
                        mul,
                        lo: qo.qmin,
                        hi: qo.qmax,
                    }
                }
                Op::LayerNorm {
                    input,
                    output,
                    gamma,
                    beta,
                    eps,
                } => {
                    let c = graph.buffers[*input].rows();
                    sz.f = sz.f.max(2 * graph.buffers[*input].cols());
                    Kernel::LayerNorm {
                        input: *input,
                        output: *output,
                        gamma: tf32(&tensors, gamma).to_vec(),
                        beta: tf32(&tensors, beta).to_vec(),
                        eps: *eps,
                        c,
                    }
                }
                Op::SliceRows {
                    input,
                    output,
                    start,
                } => Kernel::Slice {
                    input: *input,
                    output: *output,
                    offset: start * graph.buffers[*input].cols(),
                },
                Op::Concat { inputs, output } => Kernel::Concat {
                    inputs: inputs.clone(),
                    output: *output,
                },
                Op::ScaledAdd {
                    a,
                    b,
                    output,
                    alpha,
                } => Kernel::ScaledAdd {
                    a: *a,
                    b: *b,
                    output: *output,
                    alpha: tf32(&tensors, alpha)[0],
                },
                Op::MambaMixer { input, output, .. } => {
                    let k = mamba_kernel(&graph, &tensors, op);
                    sz.f = sz.f.max(k.scratch_len());
                    Kernel::Mamba {
                        input: *input,
                        output: *output,
                        k: Box::new(k),
                        codes: None,
                    }
                }
            };
            kernels.push(k);
        }
        fuse_dequantize_into_mixers(&graph, &mut kernels);
        Ok(Self {
            meta,
            graph,
            tensors,
            kernels,
            scratch: sz,
            pool: Mutex::new(Vec::new()),
            isa: Isa::detect(),
        })
    }

    /// The instruction-set level the hot kernels run with ([`Isa::detect`] by default).
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Runs the hot kernels at `isa`, or the widest level below it that this CPU supports
    /// (to compare paths; integer results are identical at every level).
    pub fn set_isa(&mut self, isa: Isa) {
        self.isa = isa.or_supported();
    }

    /// Reads an `.asc8` file (see [`mod@super::format`]), refusing corrupt or inconsistent files.
    pub fn load(path: &Path) -> Result<Self, Int8Error> {
        let (meta, graph, tensors) = format::read(path)?;
        Self::from_parts(meta, graph, tensors, &path.display().to_string())
    }

    /// Writes the model atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<(), Int8Error> {
        format::write(path, &self.meta, &self.graph, &self.tensors)
    }

    /// The serialized file contents.
    pub fn to_bytes(&self) -> Vec<u8> {
        format::to_bytes(&self.meta, &self.graph, &self.tensors)
    }

    /// Name, config, front end and labels.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// The front end the model expects its log-mel from.
    pub fn frontend(&self) -> &data_specs::FrontEndConfig {
        &self.meta.frontend
    }

    /// Class names in logit order.
    pub fn labels(&self) -> &data_specs::Vocabulary {
        &self.meta.labels
    }

    /// The op graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The tensor table.
    pub fn tensors(&self) -> &TensorMap {
        &self.tensors
    }

    /// Number of log-mel values one clip must have.
    pub fn input_len(&self) -> usize {
        self.graph.buffers[self.graph.input].numel()
    }

    /// Number of logits.
    pub fn n_classes(&self) -> usize {
        self.graph.buffers[self.graph.output].numel()
    }

    /// Parameter memory counted from the tensors referenced by the ops.
    pub fn param_memory(&self) -> ParamMemory {
        param_memory(&self.graph, &self.tensors)
    }

    fn new_workspace(&self) -> Workspace {
        let slots = self
            .graph
            .buffers
            .iter()
            .map(|b| match b.kind {
                BufKind::Quant { .. } => Slot::Q(vec![0; b.numel()]),
                BufKind::Float => Slot::F(vec![0.0; b.numel()]),
            })
            .collect();
        Workspace {
            slots,
            xp: vec![0; self.scratch.xp],
            acc: vec![0; self.scratch.acc],
            fscratch: vec![0.0; self.scratch.f],
        }
    }

    fn with_workspace<R>(&self, f: impl FnOnce(&mut Workspace) -> R) -> R {
        let ws = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut ws = ws.unwrap_or_else(|| self.new_workspace());
        let r = f(&mut ws);
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(ws);
        r
    }

    fn check_input(&self, got: usize) -> Result<(), Int8Error> {
        if got != self.input_len() {
            return Err(Int8Error::InputLength {
                got,
                expected: self.input_len(),
                shape: self.graph.buffers[self.graph.input].shape.clone(),
            });
        }
        Ok(())
    }

    /// Runs one clip given as the graph's input (the cropped log-mel, mel-bin major,
    /// [`Int8Model::input_len`] values: [`Int8Model::input_shape`]) into `logits`.
    pub fn infer_into(&self, input: &[f32], logits: &mut [f32]) -> Result<(), Int8Error> {
        self.check_input(input.len())?;
        self.run_into(logits, |inp| inp.copy_from_slice(input))
    }

    /// Runs the graph on the input written by `fill`, into `logits`.
    fn run_into(&self, logits: &mut [f32], fill: impl FnOnce(&mut [f32])) -> Result<(), Int8Error> {
        if logits.len() != self.n_classes() {
            return Err(Int8Error::Invalid {
                context: self.meta.name.clone(),
                msg: format!(
                    "{} logit slots for {} classes",
                    logits.len(),
                    self.n_classes()
                ),
            });
        }
        self.with_workspace(|ws| {
            self.run(ws, fill);
            let Slot::F(out) = &ws.slots[self.graph.output] else {
                unreachable!()
            };
            logits.copy_from_slice(out);
        });
        Ok(())
    }

    /// Runs one clip given as the graph's input ([`Int8Model::infer_into`]) and returns its
    /// logits.
    pub fn infer(&self, input: &[f32]) -> Result<Vec<f32>, Int8Error> {
        let mut out = vec![0.0; self.n_classes()];
        self.infer_into(input, &mut out)?;
        Ok(out)
    }

    /// Runs a batch of graph inputs stored back to back (`n * input_len` values) in parallel
    /// (rayon) and returns their logits back to back (`n * n_classes`).
    pub fn infer_batch(&self, logmels: &[f32]) -> Result<Vec<f32>, Int8Error> {
        let (il, nc) = (self.input_len(), self.n_classes());
        if !logmels.len().is_multiple_of(il) {
            return Err(Int8Error::InputLength {
                got: logmels.len() % il,
                expected: il,
                shape: self.graph.buffers[self.graph.input].shape.clone(),
            });
        }
        let mut out = vec![0.0; logmels.len() / il * nc];
        out.par_chunks_mut(nc)
            .zip(logmels.par_chunks(il))
            .try_for_each(|(o, x)| self.infer_into(x, o))?;
        Ok(out)
    }

    /// `(n_mels, n_frames)` of the graph's input: the log-mel the network runs on, the front
    /// end's cropped to the student's time multiple (256 x 64 of the DCASE2024 front end's
    /// 256 x 65).
    pub fn input_shape(&self) -> (usize, usize) {
        let s = &self.graph.buffers[self.graph.input].shape;
        (s[s.len() - 2], s[s.len() - 1])
    }

    /// `(n_mels, n_frames)` of one full log-mel of the model's front end
    /// ([`Int8Model::frontend`]): what [`Int8Model::classify`] and [`Int8Model::infer_logmel`]
    /// take.
    pub fn logmel_shape(&self) -> (usize, usize) {
        (self.meta.frontend.n_mels, self.meta.frontend.n_frames())
    }

    /// Checks that `got` values are one full log-mel and that the graph's input is its time
    /// crop; returns `(n_frames, kept frames)`.
    fn check_logmel(&self, got: usize) -> Result<(usize, usize), Int8Error> {
        let (m, f) = self.logmel_shape();
        let (im, keep) = self.input_shape();
        if im != m || keep > f || self.input_len() != m * keep {
            return Err(Int8Error::Invalid {
                context: self.meta.name.clone(),
                msg: format!(
                    "the graph input {:?} is not a time crop of the front end's {m} x {f} log-mel",
                    self.graph.buffers[self.graph.input].shape
                ),
            });
        }
        if got != m * f {
            return Err(Int8Error::InputLength {
                got,
                expected: m * f,
                shape: vec![m, f],
            });
        }
        Ok((f, keep))
    }

    /// Runs one full log-mel of the model's front end (`n_mels * n_frames` values, mel-bin
    /// major: [`Int8Model::logmel_shape`]) into `logits`. The first frames of each mel row (the
    /// graph input's: 64 of the DCASE2024 front end's 65) go into the input buffer, the rest is
    /// dropped (the student's time crop).
    pub fn infer_logmel_into(&self, logmel: &[f32], logits: &mut [f32]) -> Result<(), Int8Error> {
        let (f, keep) = self.check_logmel(logmel.len())?;
        self.run_into(logits, |inp| {
            for (dst, row) in inp.chunks_exact_mut(keep).zip(logmel.chunks_exact(f)) {
                dst.copy_from_slice(&row[..keep]);
            }
        })
    }

    /// Runs one full log-mel ([`Int8Model::infer_logmel_into`]) and returns its logits.
    pub fn infer_logmel(&self, logmel: &[f32]) -> Result<Vec<f32>, Int8Error> {
        let mut out = vec![0.0; self.n_classes()];
        self.infer_logmel_into(logmel, &mut out)?;
        Ok(out)
    }

    /// Runs full log-mels stored back to back (`n * n_mels * n_frames` values) in parallel
    /// (rayon) and returns their logits back to back (`n * n_classes`).
    pub fn infer_logmel_batch(&self, logmels: &[f32]) -> Result<Vec<f32>, Int8Error> {
        let (m, f) = self.logmel_shape();
        let (len, nc) = (m * f, self.n_classes());
        if len == 0 || !logmels.len().is_multiple_of(len) {
            return Err(Int8Error::InputLength {
                got: logmels.len() % len.max(1),
                expected: len,
                shape: vec![m, f],
            });
        }
        let mut out = vec![0.0; logmels.len() / len * nc];
        out.par_chunks_mut(nc)
            .zip(logmels.par_chunks(len))
            .try_for_each(|(o, x)| self.infer_logmel_into(x, o))?;
        Ok(out)
    }

    /// Classifies one 1 s clip from its full log-mel ([`Int8Model::infer_logmel`]): the
    /// predicted label, the softmax probabilities and the logits.
    pub fn classify(&self, logmel: &[f32]) -> Result<Prediction, Int8Error> {
        let logits = self.infer_logmel(logmel)?;
        Ok(Prediction::from_logits(logits, &self.meta.labels.0))
    }

    /// Diagnostic: runs one clip `reps` times and returns the mean seconds spent in each op
    /// kind (by [`super::graph::op_name`]), largest first.
    pub fn profile(
        &self,
        logmel: &[f32],
        reps: usize,
    ) -> Result<Vec<(&'static str, f64)>, Int8Error> {
        self.check_input(logmel.len())?;
        let mut times: std::collections::BTreeMap<&'static str, f64> = Default::default();
        self.with_workspace(|ws| {
            for _ in 0..reps.max(1) {
                let Slot::F(inp) = &mut ws.slots[self.graph.input] else {
                    unreachable!()
                };
                inp.copy_from_slice(logmel);
                for (k, op) in self.kernels.iter().zip(&self.graph.ops) {
                    let t = std::time::Instant::now();
                    run_kernel(
                        k,
                        self.isa,
                        &mut ws.slots,
                        &mut ws.xp,
                        &mut ws.acc,
                        &mut ws.fscratch,
                    );
                    *times.entry(super::graph::op_name(op)).or_default() +=
                        t.elapsed().as_secs_f64();
                }
            }
        });
        let mut v: Vec<_> = times
            .into_iter()
            .map(|(k, t)| (k, t / reps.max(1) as f64))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(v)
    }

    /// Diagnostic: runs one clip `reps` times and returns, for every op in graph order, its
    /// output buffer's name, its kind (by [`super::graph::op_name`]) and the mean seconds it
    /// took (the per-layer profile; sum the entries sharing a name prefix for a block).
    pub fn profile_ops(
        &self,
        logmel: &[f32],
        reps: usize,
    ) -> Result<Vec<(String, &'static str, f64)>, Int8Error> {
        self.check_input(logmel.len())?;
        let mut times = vec![0.0f64; self.kernels.len()];
        self.with_workspace(|ws| {
            for _ in 0..reps.max(1) {
                let Slot::F(inp) = &mut ws.slots[self.graph.input] else {
                    unreachable!()
                };
                inp.copy_from_slice(logmel);
                for (k, t) in self.kernels.iter().zip(times.iter_mut()) {
                    let s = std::time::Instant::now();
                    run_kernel(
                        k,
                        self.isa,
                        &mut ws.slots,
                        &mut ws.xp,
                        &mut ws.acc,
                        &mut ws.fscratch,
                    );
                    *t += s.elapsed().as_secs_f64();
                }
            }
        });
        Ok(self
            .graph
            .ops
            .iter()
            .zip(times)
            .map(|(op, t)| {
                (
                    self.graph.buffers[op.output()].name.clone(),
                    super::graph::op_name(op),
                    t / reps.max(1) as f64,
                )
            })
            .collect())
    }

    /// Writes the input buffer with `fill`, then runs every op.
    fn run(&self, ws: &mut Workspace, fill: impl FnOnce(&mut [f32])) {
        let Workspace {
            slots,
            xp,
            acc,
            fscratch,
        } = ws;
        let Slot::F(inp) = &mut slots[self.graph.input] else {
            unreachable!()
        };
        fill(inp);
        for k in &self.kernels {
            run_kernel(k, self.isa, slots, xp, acc, fscratch);
        }
    }
}

/// Fuses each `Dequantize` whose float output only the next op reads, a Mamba mixer, into that
/// mixer ([`MixerInput::Codes`]): the same values, without writing and re-reading an
/// `[2 d_inner, L]` float buffer per chunk.
fn fuse_dequantize_into_mixers(graph: &Graph, kernels: &mut [Kernel]) {
    for i in 1..kernels.len() {
        let (head, tail) = kernels.split_at_mut(i);
        let (
            Kernel::Dequantize {
                input: q_in,
                output: f_out,
                scale,
                zp,
                fused,
            },
            Kernel::Mamba { input, codes, .. },
        ) = (&mut head[i - 1], &mut tail[0])
        else {
            continue;
        };
        let readers = graph
            .ops
            .iter()
            .filter(|op| op.inputs().contains(f_out))
            .count();
        if *input == *f_out && readers == 1 && *f_out != graph.output {
            *fused = true;
            *codes = Some((*q_in, *scale, *zp));
        }
    }
}

fn take(slots: &mut [Slot], i: usize) -> Slot {
    std::mem::replace(&mut slots[i], Slot::F(Vec::new()))
}

fn q(s: &Slot) -> &[u8] {
    match s {
        Slot::Q(v) => v,
        Slot::F(_) => unreachable!("validated quantized buffer"),
    }
}

fn f(s: &Slot) -> &[f32] {
    match s {
        Slot::F(v) => v,
        Slot::Q(_) => unreachable!("validated float buffer"),
    }
}

/// Runs one prepared op at `isa`: the element-wise ops (quantize, dequantize, add, pools,
/// LayerNorm) compiled for the same level as the conv and mixer kernels.
fn run_kernel(
    k: &Kernel,
    isa: Isa,
    slots: &mut [Slot],
    xp: &mut [i16],
    acc: &mut [i32],
    fs: &mut [f32],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the model's `isa` is always one this CPU supports (`set_isa`, `detect`).
        Isa::Avx512 | Isa::Avx512Vnni => unsafe { run_kernel_avx512(k, isa, slots, xp, acc, fs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { run_kernel_avx2(k, isa, slots, xp, acc, fs) },
        _ => run_kernel_body(k, isa, slots, xp, acc, fs),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn run_kernel_avx512(
    k: &Kernel,
    isa: Isa,
    slots: &mut [Slot],
    xp: &mut [i16],
    acc: &mut [i32],
    fs: &mut [f32],
) {
    run_kernel_body(k, isa, slots, xp, acc, fs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_kernel_avx2(
    k: &Kernel,
    isa: Isa,
    slots: &mut [Slot],
    xp: &mut [i16],
    acc: &mut [i32],
    fs: &mut [f32],
) {
    run_kernel_body(k, isa, slots, xp, acc, fs)
}

#[inline(always)]
fn run_kernel_body(
    k: &Kernel,
    isa: Isa,
    slots: &mut [Slot],
    xp: &mut [i16],
    acc: &mut [i32],
    fs: &mut [f32],
) {
    let out_idx = match k {
        Kernel::Quantize { output, .. }
        | Kernel::Dequantize { output, .. }
        | Kernel::Conv { output, .. }
        | Kernel::Add { output, .. }
        | Kernel::MaxPool { output, .. }
        | Kernel::AvgPool { output, .. }
        | Kernel::LayerNorm { output, .. }
        | Kernel::Slice { output, .. }
        | Kernel::Concat { output, .. }
        | Kernel::ScaledAdd { output, .. }
        | Kernel::Mamba { output, .. } => *output,
    };
    let mut out = take(slots, out_idx);
    match (k, &mut out) {
        (
            Kernel::Quantize {
                input,
                inv_scale,
                zp,
                lo,
                hi,
                ..
            },
            Slot::Q(y),
        ) => {
            for (o, &v) in y.iter_mut().zip(f(&slots[*input])) {
                let r = round_even_i32((v * inv_scale).clamp(-1e6, 1e6));
                *o = (r + zp).clamp(*lo, *hi) as u8;
            }
        }
        (Kernel::Dequantize { fused: true, .. }, _) => {}
        (
            Kernel::Dequantize {
                input, scale, zp, ..
            },
            Slot::F(y),
        ) => {
            for (o, &v) in y.iter_mut().zip(q(&slots[*input])) {
                *o = scale * (v as i32 - zp) as f32;
            }
        }
        (Kernel::Conv { input, k, .. }, Slot::Q(y)) => {
            k.run_isa(isa, q(&slots[*input]), y, xp, acc)
        }
        (Kernel::Add { a, b, k, .. }, Slot::Q(y)) => k.run(q(&slots[*a]), q(&slots[*b]), y),
        (
            Kernel::MaxPool {
                input,
                c,
                h,
                w,
                kernel,
                stride,
                ..
            },
            Slot::Q(y),
        ) => max_pool2d(q(&slots[*input]), y, *c, *h, *w, *kernel, *stride),
        (
            Kernel::AvgPool {
                input,
                hw,
                zp_in,
                zp_out,
                mul,
                lo,
                hi,
                ..
            },
            Slot::Q(y),
        ) => {
            for (o, row) in y.iter_mut().zip(q(&slots[*input]).chunks_exact(*hw)) {
                let s: i32 = row.iter().map(|&v| v as i32).sum::<i32>() - zp_in * *hw as i32;
                *o = (mul.apply(s) + zp_out).clamp(*lo, *hi) as u8;
            }
        }
        (
            Kernel::LayerNorm {
                input,
                gamma,
                beta,
                eps,
                c,
                ..
            },
            Slot::F(y),
        ) => {
            let x = f(&slots[*input]);
            let (mean, rest) = fs.split_at_mut(x.len() / c);
            layer_norm::forward_cols(x, y, *c, gamma, beta, *eps, mean, rest);
        }
        (Kernel::Slice { input, offset, .. }, y) => match (&slots[*input], y) {
            (Slot::Q(x), Slot::Q(y)) => {
                let n = y.len();
                y.copy_from_slice(&x[*offset..offset + n])
            }
            (Slot::F(x), Slot::F(y)) => {
                let n = y.len();
                y.copy_from_slice(&x[*offset..offset + n])
            }
            _ => unreachable!(),
        },
        (Kernel::Concat { inputs, .. }, y) => {
            let mut at = 0;
            for &i in inputs {
                match (&slots[i], &mut *y) {
                    (Slot::Q(x), Slot::Q(y)) => y[at..at + x.len()].copy_from_slice(x),
                    (Slot::F(x), Slot::F(y)) => y[at..at + x.len()].copy_from_slice(x),
                    _ => unreachable!(),
                }
                at += match &slots[i] {
                    Slot::Q(x) => x.len(),
                    Slot::F(x) => x.len(),
                };
            }
        }
        (Kernel::ScaledAdd { a, b, alpha, .. }, Slot::F(y)) => {
            for ((o, &va), &vb) in y.iter_mut().zip(f(&slots[*a])).zip(f(&slots[*b])) {
                *o = va + alpha * vb;
            }
        }
        (
            Kernel::Mamba {
                input, k, codes, ..
            },
            Slot::F(y),
        ) => {
            let xz = match *codes {
                Some((i, scale, zp)) => MixerInput::Codes {
                    q: q(&slots[i]),
                    scale,
                    zp,
                },
                None => MixerInput::F32(f(&slots[*input])),
            };
            k.run_input(isa, xz, y, fs)
        }
        _ => unreachable!("validated buffer kinds"),
    }
    slots[out_idx] = out;
}

/// Parameter memory of a graph's layers (int8 or float graph alike).
pub fn param_memory(graph: &Graph, t: &TensorMap) -> ParamMemory {
    let mut m = ParamMemory {
        int8_weights: 0,
        int_biases: 0,
        float_params: 0,
    };
    let mut seen = std::collections::BTreeSet::new();
    for op in &graph.ops {
        let mut count = |name: &str, class: u8| {
            if seen.insert(name.to_string()) {
                let n = t[name].data.len();
                match class {
                    0 => m.int8_weights += n,
                    1 => m.int_biases += n,
                    _ => m.float_params += n,
                }
            }
        };
        match op {
            Op::QConv2d { weight, bias, .. } | Op::QLinear { weight, bias, .. } => {
                count(weight, 0);
                count(bias, 1);
            }
            Op::LayerNorm { gamma, beta, .. } => {
                count(gamma, 2);
                count(beta, 2);
            }
            Op::ScaledAdd { alpha, .. } => count(alpha, 2),
            Op::MambaMixer {
                conv_weight,
                conv_bias,
                x_proj,
                dt_proj_weight,
                dt_proj_bias,
                a_log,
                d_skip,
                ..
            } => {
                for n in [
                    conv_weight,
                    conv_bias,
                    x_proj,
                    dt_proj_weight,
                    dt_proj_bias,
                    a_log,
                    d_skip,
                ] {
                    count(n, 2);
                }
            }
            _ => {}
        }
    }
    m
}

/// A float layer of the reference executor.
#[derive(Debug, Clone)]
enum RefLayer {
    Conv {
        geom: ConvGeom,
        weight: Vec<f32>,
        bias: Vec<f32>,
        act: Activation,
    },
    Mamba(Box<MambaKernel>),
    LayerNorm {
        gamma: Vec<f32>,
        beta: Vec<f32>,
    },
    Alpha(f32),
    None,
}

/// Per-buffer min/max seen by calibration, the observers of QAT.
#[derive(Debug, Clone)]
pub struct RangeObserver {
    /// `(min, max)` per buffer; `None` until observed.
    pub ranges: Vec<Option<(f32, f32)>>,
    /// `Some(c)`: moving average `r += c * (r_clip - r)` per clip, as PyTorch's
    /// `MovingAverageMinMaxObserver` (c = 0.01); `None`: global min and max.
    pub averaging: Option<f32>,
}

impl RangeObserver {
    /// An observer for `n` buffers.
    pub fn new(n: usize, averaging: Option<f32>) -> Self {
        Self {
            ranges: vec![None; n],
            averaging,
        }
    }

    fn observe(&mut self, i: usize, x: &[f32]) {
        let (lo, hi) = x
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let r = &mut self.ranges[i];
        *r = Some(match (*r, self.averaging) {
            (None, _) => (lo, hi),
            (Some((a, b)), Some(c)) => (a + c * (lo - a), b + c * (hi - b)),
            (Some((a, b)), None) => (a.min(lo), b.max(hi)),
        });
    }
}

/// The float reference executor: every op in plain f32 (inputs and weights dequantized), with
/// quantized buffers optionally fake-quantized. Runs int8 graphs and float graphs alike.
#[derive(Debug, Clone)]
pub struct Reference {
    graph: Graph,
    layers: Vec<RefLayer>,
    bufs: Vec<Vec<f32>>,
    xp: Vec<f32>,
    acc: Vec<f32>,
    fs: Vec<f32>,
}

impl Reference {
    /// Prepares a graph; `quantized` says whether its layers hold int8 or f32 tensors.
    pub fn new(graph: &Graph, t: &TensorMap, quantized: bool) -> Result<Self, String> {
        graph.validate(t, quantized)?;
        let mut layers = Vec::new();
        let (mut xpl, mut accl, mut fl) = (0, 0, 0);
        for op in &graph.ops {
            let layer = match op {
                Op::QConv2d {
                    input,
                    weight,
                    weight_scale,
                    bias,
                    act,
                    ..
                }
                | Op::QLinear {
                    input,
                    weight,
                    weight_scale,
                    bias,
                    act,
                    ..
                } => {
                    let geom = conv_geom(graph, t, op);
                    xpl = xpl.max(geom.padded_len());
                    accl = accl.max(geom.ho() * geom.wo());
                    let (weight, bias) = match (&t[weight].data, &t[bias].data) {
                        (TensorData::F32(w), TensorData::F32(b)) => (w.clone(), b.clone()),
                        (TensorData::I8(w), TensorData::I32(b)) => {
                            let ws = tf32(t, weight_scale.as_deref().expect("validated"));
                            let si = qp(graph, *input).scale;
                            let per = w.len() / ws.len();
                            let wf = w
                                .iter()
                                .enumerate()
                                .map(|(i, &v)| v as f32 * ws[i / per])
                                .collect();
                            let bf = b.iter().zip(ws).map(|(&v, &s)| v as f32 * si * s).collect();
                            (wf, bf)
                        }
                        _ => unreachable!("validated"),
                    };
                    RefLayer::Conv {
                        geom,
                        weight,
                        bias,
                        act: *act,
                    }
                }
                Op::MambaMixer { .. } => {
                    let k = mamba_kernel(graph, t, op);
                    fl = fl.max(k.scratch_len());
                    RefLayer::Mamba(Box::new(k))
                }
                Op::LayerNorm {
                    input, gamma, beta, ..
                } => {
                    fl = fl.max(2 * graph.buffers[*input].cols());
                    RefLayer::LayerNorm {
                        gamma: tf32(t, gamma).to_vec(),
                        beta: tf32(t, beta).to_vec(),
                    }
                }
                Op::ScaledAdd { alpha, .. } => RefLayer::Alpha(tf32(t, alpha)[0]),
                _ => RefLayer::None,
            };
            layers.push(layer);
        }
        let bufs = graph.buffers.iter().map(|b| vec![0.0; b.numel()]).collect();
        Ok(Self {
            graph: graph.clone(),
            layers,
            bufs,
            xp: vec![0.0; xpl],
            acc: vec![0.0; accl],
            fs: vec![0.0; fl],
        })
    }

    /// Runs one input; returns the output buffer. With an observer, records the range of every
    /// quantized buffer as it is written (before any fake-quant).
    pub fn run(
        &mut self,
        input: &[f32],
        mode: ExecMode,
        mut obs: Option<&mut RangeObserver>,
    ) -> &[f32] {
        self.bufs[self.graph.input].copy_from_slice(input);
        for (op, layer) in self.graph.ops.iter().zip(&self.layers) {
            let o = op.output();
            let mut y = std::mem::take(&mut self.bufs[o]);
            let b = &self.bufs;
            match (op, layer) {
                (Op::Quantize { input, .. } | Op::Dequantize { input, .. }, _) => {
                    y.copy_from_slice(&b[*input])
                }
                (
                    Op::QConv2d { input, .. } | Op::QLinear { input, .. },
                    RefLayer::Conv {
                        geom,
                        weight,
                        bias,
                        act,
                    },
                ) => {
                    pad_input(geom, &b[*input], &mut self.xp, |v| v);
                    let hw = geom.ho() * geom.wo();
                    conv2d_direct(geom, &self.xp, weight, bias, &mut self.acc, |co, a| {
                        for (d, &v) in y[co * hw..(co + 1) * hw].iter_mut().zip(a) {
                            *d = act.apply(v);
                        }
                    });
                }
                (Op::QAdd { a, b: bb, .. }, _) => {
                    for ((d, &x), &z) in y.iter_mut().zip(&b[*a]).zip(&b[*bb]) {
                        *d = x + z;
                    }
                }
                (
                    Op::MaxPool2d {
                        input,
                        kernel,
                        stride,
                        ..
                    },
                    _,
                ) => {
                    let s = &self.graph.buffers[*input].shape;
                    max_pool2d(&b[*input], &mut y, s[0], s[1], s[2], *kernel, *stride);
                }
                (Op::GlobalAvgPool { input, .. }, _) => {
                    let hw = self.graph.buffers[*input].cols();
                    for (d, row) in y.iter_mut().zip(b[*input].chunks_exact(hw)) {
                        *d = row.iter().sum::<f32>() / hw as f32;
                    }
                }
                (Op::LayerNorm { input, eps, .. }, RefLayer::LayerNorm { gamma, beta }) => {
                    let c = self.graph.buffers[*input].rows();
                    let (mean, rest) = self.fs.split_at_mut(y.len() / c);
                    layer_norm::forward_cols(&b[*input], &mut y, c, gamma, beta, *eps, mean, rest);
                }
                (Op::SliceRows { input, start, .. }, _) => {
                    let off = start * self.graph.buffers[*input].cols();
                    let n = y.len();
                    y.copy_from_slice(&b[*input][off..off + n]);
                }
                (Op::Concat { inputs, .. }, _) => {
                    let mut at = 0;
                    for &i in inputs {
                        y[at..at + b[i].len()].copy_from_slice(&b[i]);
                        at += b[i].len();
                    }
                }
                (Op::ScaledAdd { a, b: bb, .. }, RefLayer::Alpha(alpha)) => {
                    for ((d, &x), &z) in y.iter_mut().zip(&b[*a]).zip(&b[*bb]) {
                        *d = x + alpha * z;
                    }
                }
                (Op::MambaMixer { input, .. }, RefLayer::Mamba(k)) => {
                    k.run(&b[*input], &mut y, &mut self.fs)
                }
                _ => unreachable!("prepared layer matches its op"),
            }
            if let BufKind::Quant { q } = self.graph.buffers[o].kind {
                if let Some(obs) = obs.as_deref_mut() {
                    obs.observe(o, &y);
                }
                if mode == ExecMode::FakeQuant {
                    y.iter_mut().for_each(|v| *v = q.fake_quant(*v));
                }
            }
            self.bufs[o] = y;
        }
        &self.bufs[self.graph.output]
    }

    /// The value of buffer `i` after the last run.
    pub fn buffer(&self, i: usize) -> &[f32] {
        &self.bufs[i]
    }
}
