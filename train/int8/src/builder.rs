//! Building int8 models: [`GraphBuilder`] assembles a float graph from folded float weights,
//! [`calibrate`] observes activation ranges with the float reference executor, and
//! [`quantize_model`] turns graph + ranges into an [`Int8Model`](super::Int8Model) (fbgemm conventions). The
//! exporter of the burn student calls the same three with its QAT weights and observer ranges.
//! [`random_irmamba`] builds an IRMamba-shaped network with random weights for tests and benches.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Int8Error;
use super::engine::{ExecMode, RangeObserver, Reference};
use super::graph::{
    Activation, BufKind, BufferDesc, Graph, ModelMeta, Op, QParams, Tensor, TensorData, TensorMap,
};

/// Suffix separating a buffer name from the index of a PVM chunk (`pmb1.in_proj#2`): chunks
/// share one Mamba, hence one observer, so ranges are looked up by the name before `#`.
pub const CHUNK_SEP: char = '#';

/// Placeholder qparams of a float graph's quantized buffers (replaced by [`quantize_model`]).
const PLACEHOLDER: QParams = QParams {
    scale: 1.0,
    zero_point: 0,
    qmin: 0,
    qmax: 127,
};

/// Parameters of one Mamba block (BN-free; `d_inner = expand * d_model`), PyTorch layouts.
#[derive(Debug, Clone)]
pub struct MambaParams {
    /// `d_model`.
    pub d_model: usize,
    /// `d_inner`.
    pub d_inner: usize,
    /// `d_state` (N).
    pub d_state: usize,
    /// `dt_rank` (R).
    pub dt_rank: usize,
    /// `d_conv`.
    pub d_conv: usize,
    /// `in_proj.weight` `[2*d_inner, d_model]` (no bias).
    pub in_proj: Vec<f32>,
    /// `conv1d.weight` `[d_inner, 1, d_conv]` flattened to `[d_inner, d_conv]`.
    pub conv_weight: Vec<f32>,
    /// `conv1d.bias` `[d_inner]`.
    pub conv_bias: Vec<f32>,
    /// `x_proj.weight` `[R + 2N, d_inner]`.
    pub x_proj: Vec<f32>,
    /// `dt_proj.weight` `[d_inner, R]`.
    pub dt_proj_weight: Vec<f32>,
    /// `dt_proj.bias` `[d_inner]`.
    pub dt_proj_bias: Vec<f32>,
    /// `A_log` `[d_inner, N]`.
    pub a_log: Vec<f32>,
    /// `D` `[d_inner]`.
    pub d: Vec<f32>,
    /// `out_proj.weight` `[d_model, d_inner]` (no bias).
    pub out_proj: Vec<f32>,
}

/// Parameters of a parallel Vision Mamba layer (UltraLight VM-UNet's PVM).
#[derive(Debug, Clone)]
pub struct PvmParams {
    /// Number of channel chunks sharing the Mamba (P).
    pub chunks: usize,
    /// LayerNorm weight `[C]` (used before and after the Mamba).
    pub ln_gamma: Vec<f32>,
    /// LayerNorm bias `[C]`.
    pub ln_beta: Vec<f32>,
    /// LayerNorm epsilon (1e-5).
    pub ln_eps: f32,
    /// The shared Mamba (`d_model = C / chunks`).
    pub mamba: MambaParams,
    /// `skip_scale`.
    pub skip_scale: f32,
    /// `proj.weight` `[C_out, C]`.
    pub proj_weight: Vec<f32>,
    /// `proj.bias` `[C_out]`.
    pub proj_bias: Vec<f32>,
}

/// Assembles a float graph (f32 weights and biases, BN already folded into convolutions).
/// Every quantized buffer gets a name; [`quantize_model`] looks its range up by that name.
#[derive(Debug, Clone, Default)]
pub struct GraphBuilder {
    buffers: Vec<BufferDesc>,
    ops: Vec<Op>,
    tensors: TensorMap,
}

impl GraphBuilder {
    /// A builder with the float input buffer `[1, n_mels, n_frames]`; returns it and the input index.
    pub fn new(n_mels: usize, n_frames: usize) -> (Self, usize) {
        Self::with_input(vec![1, n_mels, n_frames])
    }

    /// A builder with a float input buffer of any shape.
    pub fn with_input(shape: Vec<usize>) -> (Self, usize) {
        let mut b = Self::default();
        let i = b.buffer("input", shape, false);
        (b, i)
    }

    /// Adds a buffer.
    pub fn buffer(&mut self, name: &str, shape: Vec<usize>, quant: bool) -> usize {
        let kind = if quant {
            BufKind::Quant { q: PLACEHOLDER }
        } else {
            BufKind::Float
        };
        self.buffers.push(BufferDesc {
            name: name.to_string(),
            shape,
            kind,
        });
        self.buffers.len() - 1
    }

    /// Shape of a buffer.
    pub fn shape(&self, i: usize) -> &[usize] {
        &self.buffers[i].shape
    }

    fn tensor(&mut self, name: &str, shape: Vec<usize>, v: Vec<f32>) -> String {
        self.tensors.insert(name.to_string(), Tensor::f32(shape, v));
        name.to_string()
    }

    /// f32 -> uint8 (`name` keys the range).
    pub fn quantize(&mut self, name: &str, x: usize) -> usize {
        let s = self.shape(x).to_vec();
        let o = self.buffer(name, s, true);
        self.ops.push(Op::Quantize {
            input: x,
            output: o,
        });
        o
    }

    /// uint8 -> f32.
    pub fn dequantize(&mut self, name: &str, x: usize) -> usize {
        let s = self.shape(x).to_vec();
        let o = self.buffer(name, s, false);
        self.ops.push(Op::Dequantize {
            input: x,
            output: o,
        });
        o
    }

    /// A convolution with BN folded: weight `[Cout, Cin/groups, kh, kw]`, bias `[Cout]`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        &mut self,
        name: &str,
        x: usize,
        weight: Vec<f32>,
        wshape: [usize; 4],
        bias: Vec<f32>,
        groups: usize,
        stride: [usize; 2],
        padding: [usize; 2],
        act: Activation,
    ) -> usize {
        let s = self.shape(x).to_vec();
        let (h, w) = (
            s.get(1).copied().unwrap_or(1),
            s.get(2).copied().unwrap_or(1),
        );
        let ho = (h + 2 * padding[0]).saturating_sub(wshape[2]) / stride[0].max(1) + 1;
        let wo = (w + 2 * padding[1]).saturating_sub(wshape[3]) / stride[1].max(1) + 1;
        let o = self.buffer(name, vec![wshape[0], ho, wo], true);
        let weight = self.tensor(&format!("{name}.weight"), wshape.to_vec(), weight);
        let bias = self.tensor(&format!("{name}.bias"), vec![wshape[0]], bias);
        self.ops.push(Op::QConv2d {
            input: x,
            output: o,
            weight,
            weight_scale: None,
            bias,
            groups,
            stride,
            padding,
            act,
        });
        o
    }

    /// A linear layer over a feature-major sequence `[Din, ...] -> out_shape` (`out_shape[0] = Dout`,
    /// positions unchanged). Weight `[Dout, Din]`; a missing bias is zero.
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &mut self,
        name: &str,
        tensor_prefix: &str,
        x: usize,
        weight: &[f32],
        bias: Option<&[f32]>,
        out_shape: Vec<usize>,
        act: Activation,
    ) -> usize {
        let din = self.shape(x)[0];
        let dout = out_shape[0];
        let o = self.buffer(name, out_shape, true);
        let wname = format!("{tensor_prefix}.weight");
        let bname = format!("{tensor_prefix}.bias");
        if !self.tensors.contains_key(&wname) {
            self.tensor(&wname, vec![dout, din], weight.to_vec());
            self.tensor(
                &bname,
                vec![dout],
                bias.map_or_else(|| vec![0.0; dout], <[f32]>::to_vec),
            );
        }
        self.ops.push(Op::QLinear {
            input: x,
            output: o,
            weight: wname,
            weight_scale: None,
            bias: bname,
            act,
        });
        o
    }

    /// Quantized residual add.
    pub fn add(&mut self, name: &str, a: usize, b: usize) -> usize {
        let s = self.shape(a).to_vec();
        let o = self.buffer(name, s, true);
        self.ops.push(Op::QAdd { a, b, output: o });
        o
    }

    /// Max pooling (no padding).
    pub fn max_pool(
        &mut self,
        name: &str,
        x: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
    ) -> usize {
        let s = self.shape(x).to_vec();
        let o = self.buffer(
            name,
            vec![
                s[0],
                (s[1] - kernel[0]) / stride[0] + 1,
                (s[2] - kernel[1]) / stride[1] + 1,
            ],
            true,
        );
        self.ops.push(Op::MaxPool2d {
            input: x,
            output: o,
            kernel,
            stride,
        });
        o
    }

    /// Global average pool `[C, H, W] -> [C]`.
    pub fn avg_pool(&mut self, name: &str, x: usize) -> usize {
        let c = self.shape(x)[0];
        let o = self.buffer(name, vec![c], true);
        self.ops.push(Op::GlobalAvgPool {
            input: x,
            output: o,
        });
        o
    }

    /// A PVM layer on quantized `[C, H, W]`, returning quantized `[C_out, H, W]`:
    /// dequantize, LayerNorm, P chunks through one Mamba (int8 `in_proj`/`out_proj`, float
    /// mixer) plus `skip_scale * chunk`, concat, the same LayerNorm, int8 `proj`.
    pub fn pvm(&mut self, name: &str, x: usize, p: &PvmParams) -> usize {
        self.pvm_impl(name, x, p, &[&p.mamba])
    }

    /// A PVM layer whose P chunks each have their OWN Mamba (`group_mambas[j]` for chunk `j`;
    /// `p.mamba` is ignored). Tensors and observer keys of group `j` are named
    /// `<name>.mamba.<j>.in_proj.out`, ...; the LayerNorm output keeps the single observer
    /// `<name>.mamba.in_proj.in`. With one Mamba this is [`GraphBuilder::pvm`].
    pub fn pvm_unshared(
        &mut self,
        name: &str,
        x: usize,
        p: &PvmParams,
        group_mambas: &[MambaParams],
    ) -> usize {
        let refs: Vec<&MambaParams> = group_mambas.iter().collect();
        self.pvm_impl(name, x, p, &refs)
    }

    fn pvm_impl(&mut self, name: &str, x: usize, p: &PvmParams, mambas: &[&MambaParams]) -> usize {
        let s = self.shape(x).to_vec();
        let (c, l) = (s[0], s[1..].iter().product::<usize>());
        let xf = self.dequantize(&format!("{name}.x"), x);
        let gamma = self.tensor(&format!("{name}.norm.weight"), vec![c], p.ln_gamma.clone());
        let beta = self.tensor(&format!("{name}.norm.bias"), vec![c], p.ln_beta.clone());
        let ln1 = self.buffer(&format!("{name}.norm1"), vec![c, l], false);
        self.ops.push(Op::LayerNorm {
            input: xf,
            output: ln1,
            gamma: gamma.clone(),
            beta: beta.clone(),
            eps: p.ln_eps,
        });
        let lnq = self.quantize(&format!("{name}.mamba.in_proj.in"), ln1);
        let alpha = self.tensor(&format!("{name}.skip_scale"), vec![1], vec![p.skip_scale]);
        let shared = mambas.len() == 1;
        let mut outs = Vec::with_capacity(p.chunks);
        for j in 0..p.chunks {
            let m = mambas[if shared { 0 } else { j }];
            let (dm, di, n, r, k) = (m.d_model, m.d_inner, m.d_state, m.dt_rank, m.d_conv);
            let mp = if shared {
                format!("{name}.mamba")
            } else {
                format!("{name}.mamba.{j}")
            };
            let conv_weight = format!("{mp}.conv1d.weight");
            if !self.tensors.contains_key(&conv_weight) {
                self.tensor(&conv_weight, vec![di, k], m.conv_weight.clone());
                self.tensor(&format!("{mp}.conv1d.bias"), vec![di], m.conv_bias.clone());
                self.tensor(
                    &format!("{mp}.x_proj.weight"),
                    vec![r + 2 * n, di],
                    m.x_proj.clone(),
                );
                self.tensor(
                    &format!("{mp}.dt_proj.weight"),
                    vec![di, r],
                    m.dt_proj_weight.clone(),
                );
                self.tensor(
                    &format!("{mp}.dt_proj.bias"),
                    vec![di],
                    m.dt_proj_bias.clone(),
                );
                self.tensor(&format!("{mp}.A_log"), vec![di, n], m.a_log.clone());
                self.tensor(&format!("{mp}.D"), vec![di], m.d.clone());
            }
            let cq = self.buffer(&format!("{mp}.in_proj.in{CHUNK_SEP}{j}"), vec![dm, l], true);
            self.ops.push(Op::SliceRows {
                input: lnq,
                output: cq,
                start: j * dm,
            });
            let cf = self.buffer(&format!("{name}.chunk{CHUNK_SEP}{j}"), vec![dm, l], false);
            self.ops.push(Op::SliceRows {
                input: ln1,
                output: cf,
                start: j * dm,
            });
            let xz = self.linear(
                &format!("{mp}.in_proj.out{CHUNK_SEP}{j}"),
                &format!("{mp}.in_proj"),
                cq,
                &m.in_proj,
                None,
                vec![2 * di, l],
                Activation::None,
            );
            let xzf = self.dequantize(&format!("{mp}.xz{CHUNK_SEP}{j}"), xz);
            let y = self.buffer(&format!("{mp}.y{CHUNK_SEP}{j}"), vec![di, l], false);
            self.ops.push(Op::MambaMixer {
                input: xzf,
                output: y,
                conv_weight,
                conv_bias: format!("{mp}.conv1d.bias"),
                x_proj: format!("{mp}.x_proj.weight"),
                dt_proj_weight: format!("{mp}.dt_proj.weight"),
                dt_proj_bias: format!("{mp}.dt_proj.bias"),
                a_log: format!("{mp}.A_log"),
                d_skip: format!("{mp}.D"),
            });
            let yq = self.quantize(&format!("{mp}.out_proj.in{CHUNK_SEP}{j}"), y);
            let oq = self.linear(
                &format!("{mp}.out_proj.out{CHUNK_SEP}{j}"),
                &format!("{mp}.out_proj"),
                yq,
                &m.out_proj,
                None,
                vec![dm, l],
                Activation::None,
            );
            let of = self.dequantize(&format!("{mp}.out{CHUNK_SEP}{j}"), oq);
            let sum = self.buffer(&format!("{name}.skip{CHUNK_SEP}{j}"), vec![dm, l], false);
            self.ops.push(Op::ScaledAdd {
                a: of,
                b: cf,
                output: sum,
                alpha: alpha.clone(),
            });
            outs.push(sum);
        }
        let cat = self.buffer(&format!("{name}.concat"), vec![c, l], false);
        self.ops.push(Op::Concat {
            inputs: outs,
            output: cat,
        });
        let ln2 = self.buffer(&format!("{name}.norm2"), vec![c, l], false);
        self.ops.push(Op::LayerNorm {
            input: cat,
            output: ln2,
            gamma,
            beta,
            eps: p.ln_eps,
        });
        let q2 = self.quantize(&format!("{name}.proj.in"), ln2);
        let cout = p.proj_weight.len() / c;
        let mut oshape = s.clone();
        oshape[0] = cout;
        self.linear(
            &format!("{name}.proj.out"),
            &format!("{name}.proj"),
            q2,
            &p.proj_weight,
            Some(&p.proj_bias),
            oshape,
            Activation::None,
        )
    }

    /// The float graph and its tensors, with `output` (a float buffer) as the logits.
    pub fn finish(self, input: usize, output: usize) -> (Graph, TensorMap) {
        (
            Graph {
                buffers: self.buffers,
                ops: self.ops,
                input,
                output,
            },
            self.tensors,
        )
    }
}

/// The observer key of a buffer name (the part before [`CHUNK_SEP`]).
pub fn range_key(name: &str) -> &str {
    name.split(CHUNK_SEP).next().unwrap_or(name)
}

/// Runs the float graph on every input and returns the observed `(min, max)` of every
/// quantized buffer, keyed by [`range_key`] (chunks of one PVM merged). `averaging`: see
/// [`RangeObserver::averaging`].
pub fn calibrate<'a>(
    graph: &Graph,
    tensors: &TensorMap,
    inputs: impl IntoIterator<Item = &'a [f32]>,
    averaging: Option<f32>,
) -> Result<BTreeMap<String, (f32, f32)>, String> {
    let mut r = Reference::new(graph, tensors, false)?;
    let mut obs = RangeObserver::new(graph.buffers.len(), averaging);
    for x in inputs {
        if x.len() != graph.buffers[graph.input].numel() {
            return Err(format!(
                "calibration input of {} values for input {:?}",
                x.len(),
                graph.buffers[graph.input].shape
            ));
        }
        r.run(x, ExecMode::Float, Some(&mut obs));
    }
    let mut out: BTreeMap<String, (f32, f32)> = BTreeMap::new();
    for (b, rg) in graph.buffers.iter().zip(&obs.ranges) {
        if let Some((lo, hi)) = rg {
            let e = out
                .entry(range_key(&b.name).to_string())
                .or_insert((*lo, *hi));
            *e = (e.0.min(*lo), e.1.max(*hi));
        }
    }
    Ok(out)
}

/// Per-output-channel symmetric int8 quantization of a weight `[Cout, ...]` (PyTorch's
/// `per_channel_symmetric` with qint8 `-128..=127`: `scale = max|w| / 127.5`).
pub fn quantize_weight(w: &[f32], cout: usize) -> (Vec<i8>, Vec<f32>) {
    let per = w.len() / cout.max(1);
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(cout);
    for row in w.chunks(per.max(1)) {
        let m = row.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
        let s = (m / 127.5).max(f32::EPSILON);
        scales.push(s);
        q.extend(
            row.iter()
                .map(|&v| (v / s).round_ties_even().clamp(-128.0, 127.0) as i8),
        );
    }
    (q, scales)
}

/// Builds the int8 model from a float graph and activation ranges keyed by [`range_key`]
/// (from [`calibrate`] or from the QAT observers), with activation codes `qmin..=qmax`
/// (`QParams::REDUCED` for fbgemm). Max-pool, slice and concat outputs inherit their input's
/// qparams; weights are quantized per output channel, biases to i32 at `s_in * s_w`.
pub fn quantize_model(
    meta: ModelMeta,
    graph: &Graph,
    tensors: &TensorMap,
    ranges: &BTreeMap<String, (f32, f32)>,
    act_range: (i32, i32),
) -> Result<super::Int8Model, Int8Error> {
    let invalid = |msg: String| Int8Error::Invalid {
        context: meta.name.clone(),
        msg,
    };
    graph.validate(tensors, false).map_err(invalid)?;
    let mut g = graph.clone();
    let mut t = tensors.clone();
    for op in &graph.ops {
        let o = op.output();
        if !matches!(g.buffers[o].kind, BufKind::Quant { .. }) {
            continue;
        }
        let q = match op {
            Op::MaxPool2d { input, .. } | Op::SliceRows { input, .. } => g.buffers[*input].kind,
            Op::Concat { inputs, .. } => g.buffers[inputs[0]].kind,
            _ => {
                let key = range_key(&g.buffers[o].name);
                let (lo, hi) = *ranges
                    .get(key)
                    .ok_or_else(|| invalid(format!("no activation range for buffer '{key}'")))?;
                BufKind::Quant {
                    q: QParams::from_min_max(lo, hi, act_range.0, act_range.1),
                }
            }
        };
        g.buffers[o].kind = q;
    }
    for op in g.ops.iter_mut() {
        if let Op::QConv2d {
            input,
            weight,
            weight_scale,
            bias,
            ..
        }
        | Op::QLinear {
            input,
            weight,
            weight_scale,
            bias,
            ..
        } = op
        {
            let BufKind::Quant { q: qi } = g.buffers[*input].kind else {
                unreachable!("validated")
            };
            let sname = format!("{weight}.scale");
            if !t.contains_key(&sname) {
                let (TensorData::F32(w), TensorData::F32(b)) =
                    (&tensors[weight.as_str()].data, &tensors[bias.as_str()].data)
                else {
                    unreachable!("validated float graph")
                };
                let cout = b.len();
                let (wq, ws) = quantize_weight(w, cout);
                let bq = b
                    .iter()
                    .zip(&ws)
                    .map(|(&v, &s)| {
                        (v as f64 / (qi.scale as f64 * s as f64))
                            .round()
                            .clamp(i32::MIN as f64, i32::MAX as f64) as i32
                    })
                    .collect();
                let wshape = tensors[weight.as_str()].shape.clone();
                t.insert(
                    weight.clone(),
                    Tensor {
                        shape: wshape,
                        data: TensorData::I8(wq),
                    },
                );
                t.insert(
                    bias.clone(),
                    Tensor {
                        shape: vec![cout],
                        data: TensorData::I32(bq),
                    },
                );
                t.insert(sname.clone(), Tensor::f32(vec![cout], ws));
            }
            *weight_scale = Some(sname);
        }
    }
    super::Int8Model::from_parts(meta, g, t, &graph_context(&graph.buffers))
}

fn graph_context(b: &[BufferDesc]) -> String {
    format!("quantized graph ({} buffers)", b.len())
}

/// Shapes of a random IRMamba-like network.
#[derive(Debug, Clone)]
pub struct RandomNetConfig {
    /// Mel bins (input height).
    pub n_mels: usize,
    /// Frames (input width).
    pub n_frames: usize,
    /// Classes.
    pub n_classes: usize,
    /// PVM chunks (P).
    pub chunks: usize,
    /// Mamba `d_state`.
    pub d_state: usize,
    /// Mamba `expand`.
    pub expand: usize,
    /// Inverted-residual expansion factor.
    pub irb_expand: usize,
    /// The full Table 1 layout (true) or a small test network (false).
    pub full: bool,
}

impl RandomNetConfig {
    /// IRMamba's Table 1: 256 x 64 input, channels 8, 32, 48, 48, 64, 72, 128, 10; P = 4,
    /// d_state 16, expand 2, IRB expansion 2.
    pub fn irmamba() -> Self {
        Self {
            n_mels: 256,
            n_frames: 64,
            n_classes: 10,
            chunks: 4,
            d_state: 16,
            expand: 2,
            irb_expand: 2,
            full: true,
        }
    }
    /// A small network with the same op mix (stem, IRB with residual, PVM, head) on 32 x 16.
    pub fn small() -> Self {
        Self {
            n_mels: 32,
            n_frames: 16,
            n_classes: 10,
            chunks: 2,
            d_state: 8,
            expand: 2,
            irb_expand: 2,
            full: false,
        }
    }
}

struct Rnd(StdRng);

impl Rnd {
    fn uniform(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.0.random_range(-a..=a)).collect()
    }
    /// He-uniform weights for a fan-in, with a folded-BN-like bias.
    fn conv(&mut self, cout: usize, fan_in: usize) -> (Vec<f32>, Vec<f32>) {
        let a = (6.0 / fan_in as f32).sqrt();
        (self.uniform(cout * fan_in, a), self.uniform(cout, 0.2))
    }
}

fn random_mamba(r: &mut Rnd, d_model: usize, expand: usize, d_state: usize) -> MambaParams {
    let di = expand * d_model;
    let rank = d_model.div_ceil(16);
    let (n, k) = (d_state, 4);
    let dt: Vec<f32> = (0..di)
        .map(|_| (r.0.random_range(0.001f32.ln()..0.1f32.ln())).exp())
        .collect();
    MambaParams {
        d_model,
        d_inner: di,
        d_state: n,
        dt_rank: rank,
        d_conv: k,
        in_proj: r.uniform(2 * di * d_model, (3.0 / d_model as f32).sqrt()),
        conv_weight: r.uniform(di * k, (3.0 / k as f32).sqrt()),
        conv_bias: r.uniform(di, 0.1),
        x_proj: r.uniform((rank + 2 * n) * di, (3.0 / di as f32).sqrt()),
        dt_proj_weight: r.uniform(di * rank, (1.0 / rank as f32).sqrt()),
        // Inverse softplus of dt in [0.001, 0.1], Mamba's initialisation.
        dt_proj_bias: dt.iter().map(|&d| d + (-(-d).exp_m1()).ln()).collect(),
        a_log: (0..di)
            .flat_map(|_| (0..n).map(|s| ((s + 1) as f32).ln()))
            .collect(),
        d: vec![1.0; di],
        out_proj: r.uniform(d_model * di, (3.0 / di as f32).sqrt()),
    }
}

fn random_pvm(r: &mut Rnd, c: usize, cout: usize, cfg: &RandomNetConfig) -> PvmParams {
    let (w, b) = r.conv(cout, c);
    PvmParams {
        chunks: cfg.chunks,
        ln_gamma: (0..c)
            .map(|_| 1.0 + r.0.random_range(-0.2f32..0.2))
            .collect(),
        ln_beta: r.uniform(c, 0.1),
        ln_eps: 1e-5,
        mamba: random_mamba(r, c / cfg.chunks, cfg.expand, cfg.d_state),
        skip_scale: 1.0,
        proj_weight: w,
        proj_bias: b,
    }
}

/// An inverted residual block: 1x1 expand + ReLU6, 3x3 depthwise (stride) + ReLU6, 1x1 linear
/// projection, residual add when the shapes allow.
fn irb(
    b: &mut GraphBuilder,
    r: &mut Rnd,
    name: &str,
    x: usize,
    cout: usize,
    stride: [usize; 2],
    expand: usize,
) -> usize {
    let cin = b.shape(x)[0];
    let ce = cin * expand;
    let (w, bb) = r.conv(ce, cin);
    let e = b.conv2d(
        &format!("{name}.expand"),
        x,
        w,
        [ce, cin, 1, 1],
        bb,
        1,
        [1, 1],
        [0, 0],
        Activation::Relu6,
    );
    let (w, bb) = r.conv(ce, 9);
    let d = b.conv2d(
        &format!("{name}.dw"),
        e,
        w,
        [ce, 1, 3, 3],
        bb,
        ce,
        stride,
        [1, 1],
        Activation::Relu6,
    );
    let (w, bb) = r.conv(cout, ce);
    let p = b.conv2d(
        &format!("{name}.project"),
        d,
        w,
        [cout, ce, 1, 1],
        bb,
        1,
        [1, 1],
        [0, 0],
        Activation::None,
    );
    if cin == cout && stride == [1, 1] {
        b.add(&format!("{name}.add"), x, p)
    } else {
        p
    }
}

/// A network with IRMamba's op mix and random weights (see [`RandomNetConfig`]): returns the
/// float graph and its tensors.
pub fn random_irmamba(cfg: &RandomNetConfig, seed: u64) -> (Graph, TensorMap) {
    let mut r = Rnd(StdRng::seed_from_u64(seed));
    let (mut b, input) = GraphBuilder::new(cfg.n_mels, cfg.n_frames);
    let x = b.quantize("input.q", input);
    let s1 = if cfg.full { 8 } else { 4 };
    let (w, bb) = r.conv(s1, 9);
    let x = b.conv2d(
        "stem1",
        x,
        w,
        [s1, 1, 3, 3],
        bb,
        1,
        [2, 2],
        [1, 1],
        Activation::Relu,
    );
    let s2 = if cfg.full { 32 } else { 8 };
    let (w, bb) = r.conv(s1, 9);
    let x = b.conv2d(
        "stem2.dw",
        x,
        w,
        [s1, 1, 3, 3],
        bb,
        s1,
        [2, 2],
        [1, 1],
        Activation::Relu,
    );
    let (w, bb) = r.conv(s2, s1);
    let mut x = b.conv2d(
        "stem2.pw",
        x,
        w,
        [s2, s1, 1, 1],
        bb,
        1,
        [1, 1],
        [0, 0],
        Activation::Relu,
    );
    if cfg.full {
        x = irb(&mut b, &mut r, "irb1", x, 48, [1, 1], cfg.irb_expand);
        x = irb(&mut b, &mut r, "irb2", x, 48, [2, 1], cfg.irb_expand);
        for (i, cout) in [48, 64, 72].into_iter().enumerate() {
            let p = random_pvm(&mut r, b.shape(x)[0], cout, cfg);
            x = b.pvm(&format!("pmb{}", i + 1), x, &p);
            x = b.max_pool(&format!("pool{}", i + 1), x, [2, 2], [2, 2]);
        }
        x = irb(&mut b, &mut r, "irb3", x, 128, [1, 1], cfg.irb_expand);
    } else {
        x = irb(&mut b, &mut r, "irb1", x, s2, [1, 1], cfg.irb_expand);
        let p = random_pvm(&mut r, s2, 12, cfg);
        x = b.pvm("pmb1", x, &p);
        x = b.max_pool("pool1", x, [2, 2], [2, 2]);
    }
    let c = b.shape(x)[0];
    let (w, bb) = r.conv(cfg.n_classes, c);
    let x = b.conv2d(
        "head",
        x,
        w,
        [cfg.n_classes, c, 1, 1],
        bb,
        1,
        [1, 1],
        [0, 0],
        Activation::None,
    );
    let x = b.avg_pool("head.pool", x);
    let out = b.dequantize("logits", x);
    b.finish(input, out)
}
