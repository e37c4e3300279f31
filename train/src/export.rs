//! Export of a QAT-trained IRMamba student to the int8 model file (`.asc8`).
//!
//! burn model -> BN-folded float weights in PyTorch layouts ([`crate::qat::fold_conv_bn`], the
//! SAME fold the QAT forward used) assembled with [`GraphBuilder`] in the student's layer order,
//! with buffer names equal to the QAT observer keys -> [`quantize_model`] with the observers'
//! `(min, max)` and fbgemm's activation range `0..=127` -> [`Int8Model`] (save with
//! [`Int8Model::save`]).
//!
//! The int8 graph's input is the log-mel cropped to the student's time multiple (256 x 64 for the
//! DCASE front end's 65 frames); the engine takes the front end's full log-mel and crops it
//! itself ([`Int8Model::classify`], [`Int8Model::infer_logmel`]).

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use data_specs::{FrontEndConfig, Vocabulary};

use crate::model::{Activation, ConvBn, InvertedResidual, IrMamba, Mamba, ParallelMamba};
use crate::qat::{self, ACT_QMAX, ACT_QMIN, INPUT_KEY, QatError, QatModel};
use asc_int8::builder::{GraphBuilder, MambaParams, PvmParams, quantize_model};
use asc_int8::graph::TensorMap;
use asc_int8::{Activation as QAct, Graph, Int8Error, Int8Model, ModelMeta};

/// Errors of the export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The model cannot be exported or its observers are incomplete.
    #[error(transparent)]
    Qat(#[from] QatError),
    /// The int8 builder refused the graph.
    #[error(transparent)]
    Int8(#[from] Int8Error),
    /// A tensor could not be read back from the device.
    #[error("reading tensor `{0}` from the device: {1}")]
    Read(String, String),
}

fn host<const D: usize>(name: &str, t: Tensor<D>) -> Result<Vec<f32>, ExportError> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| ExportError::Read(name.to_string(), format!("{e:?}")))
}

/// A burn Linear weight `[d_in, d_out]` in PyTorch's layout `[d_out, d_in]`.
fn linear_weight(name: &str, l: &burn::nn::Linear) -> Result<Vec<f32>, ExportError> {
    host(name, l.weight.val().transpose())
}

struct Exporter {
    b: GraphBuilder,
}

impl Exporter {
    fn conv(&mut self, name: &str, x: usize, cb: &ConvBn) -> Result<usize, ExportError> {
        let (w, bias) = qat::fold_conv_bn(cb);
        let d = w.dims();
        let [kh, kw] = cb.conv.kernel_size;
        let act = match cb.activation {
            Activation::Identity => QAct::None,
            Activation::Relu => QAct::Relu,
        };
        Ok(self.b.conv2d(
            name,
            x,
            host(name, w)?,
            d,
            host(name, bias)?,
            cb.conv.groups,
            cb.conv.stride,
            [(kh - 1) / 2, (kw - 1) / 2],
            act,
        ))
    }

    fn irb(&mut self, name: &str, x: usize, m: &InvertedResidual) -> Result<usize, ExportError> {
        let y = self.conv(&format!("{name}.expand"), x, &m.expand)?;
        let y = self.conv(&format!("{name}.depthwise"), y, &m.depthwise)?;
        let y = self.conv(&format!("{name}.project"), y, &m.project)?;
        Ok(if m.residual {
            self.b.add(&format!("{name}.add"), x, y)
        } else {
            y
        })
    }

    fn pvm(&mut self, name: &str, x: usize, p: &ParallelMamba) -> Result<usize, ExportError> {
        let c = p.norm.gamma.dims()[0];
        let mambas = p
            .mamba
            .iter()
            .map(|m| mamba_params(name, m))
            .collect::<Result<Vec<_>, _>>()?;
        let params = PvmParams {
            chunks: p.groups,
            ln_gamma: host(name, p.norm.gamma.val())?,
            ln_beta: match &p.norm.beta {
                Some(b) => host(name, b.val())?,
                None => vec![0.0; c],
            },
            // burn's LayerNormConfig default, used by ParallelMambaConfig (the field is private).
            ln_eps: 1e-5,
            mamba: mambas[0].clone(),
            skip_scale: host(name, p.skip_scale.val())?[0],
            proj_weight: linear_weight(name, &p.proj)?,
            proj_bias: match &p.proj.bias {
                Some(b) => host(name, b.val())?,
                None => vec![0.0; p.proj.weight.dims()[1]],
            },
        };
        Ok(if mambas.len() == 1 {
            self.b.pvm(name, x, &params)
        } else {
            self.b.pvm_unshared(name, x, &params, &mambas)
        })
    }
}

/// A burn Mamba's parameters in PyTorch layouts.
fn mamba_params(name: &str, m: &Mamba) -> Result<MambaParams, ExportError> {
    Ok(MambaParams {
        d_model: m.in_proj.weight.dims()[0],
        d_inner: m.d_inner,
        d_state: m.d_state,
        dt_rank: m.dt_rank,
        d_conv: m.conv1d.kernel_size,
        in_proj: linear_weight(name, &m.in_proj)?,
        conv_weight: host(name, m.conv1d.weight.val())?,
        conv_bias: match &m.conv1d.bias {
            Some(b) => host(name, b.val())?,
            None => vec![0.0; m.d_inner],
        },
        x_proj: linear_weight(name, &m.x_proj)?,
        dt_proj_weight: linear_weight(name, &m.dt_proj)?,
        dt_proj_bias: match &m.dt_proj.bias {
            Some(b) => host(name, b.val())?,
            None => vec![0.0; m.d_inner],
        },
        a_log: host(name, m.a_log.val())?,
        d: host(name, m.d.val())?,
        out_proj: linear_weight(name, &m.out_proj)?,
    })
}

/// The float graph of the student (BN folded, PyTorch layouts) for a log-mel of `n_mels` x
/// `n_frames` (cropped to the student's time multiple); buffer names are the QAT observer keys.
pub fn float_graph(
    m: &IrMamba,
    n_mels: usize,
    n_frames: usize,
) -> Result<(Graph, TensorMap), ExportError> {
    let (b, input) = GraphBuilder::new(n_mels, m.cropped_frames(n_frames));
    let mut e = Exporter { b };
    let x = e.b.quantize(INPUT_KEY, input);
    let x = e.conv("stem.dw1", x, &m.stem.dw1)?;
    let x = e.conv("stem.dw2", x, &m.stem.dw2)?;
    let x = e.conv("stem.pw2", x, &m.stem.pw2)?;
    let x = e.irb("irb1", x, &m.irb1)?;
    let mut x = e.irb("irb2", x, &m.irb2)?;
    for (i, stage) in m.stages.iter().enumerate() {
        for (j, blk) in stage.blocks.iter().enumerate() {
            x = e.pvm(&qat::pvm_name(i, j), x, blk)?;
        }
        x = e.b.max_pool(
            &format!("stages.{i}.pool"),
            x,
            stage.pool.size,
            stage.pool.size,
        );
    }
    let x = e.irb("irb3", x, &m.irb3)?;
    let x = e.conv("head.conv", x, &m.head.conv)?;
    let x = e.b.avg_pool("head.pool", x);
    let out = e.b.dequantize("logits", x);
    Ok(e.b.finish(input, out))
}

/// The int8 model of a QAT student: folded weights, the observers' ranges, the front end the
/// model expects and the class names. `config` is stored as the model's configuration.
pub fn export_int8(
    qm: &QatModel,
    name: &str,
    config: serde_json::Value,
    frontend: FrontEndConfig,
    labels: Vocabulary,
) -> Result<Int8Model, ExportError> {
    let m = qat::student(&qm.model)?;
    let (graph, tensors) = float_graph(m, frontend.n_mels, frontend.n_frames())?;
    let ranges: BTreeMap<String, (f32, f32)> = qm.observers.ranges.clone();
    let meta = ModelMeta {
        name: name.to_string(),
        config,
        frontend,
        labels,
    };
    quantize_model(meta, &graph, &tensors, &ranges, (ACT_QMIN, ACT_QMAX)).map_err(|e| match e {
        Int8Error::Invalid { msg, .. } if msg.starts_with("no activation range") => {
            ExportError::Qat(QatError::MissingRange(msg))
        }
        e => ExportError::Int8(e),
    })
}
