//! The fake-quantized forward pass composed from burn's generic tensor ops, weight and
//! activation fake quantization as straight-through compositions ([`super::fake_quant_act`],
//! [`super::fake_quant_weight`]), burn's own convolutions, linear layers and LayerNorm: the
//! reference (the tests' oracle) for [`super::qat_forward`], which runs the fused ops of float
//! training and the fused fake-quant ops.

use burn::tensor::Tensor;
use burn::tensor::module::{conv2d, linear};

use super::{
    INPUT_KEY, Observers, conv_options, fake_quant_act, fake_quant_weight, fold_conv_bn, pvm_name,
};
use crate::model::{Activation, ConvBn, InvertedResidual, IrMamba, Mamba, ParallelMamba};

/// [`Observers::fq`] composed from burn's ops: the batch `(min, max)` by reductions, then
/// [`fake_quant_act`].
pub fn fq<const D: usize>(obs: &mut Observers, key: &str, x: Tensor<D>) -> Tensor<D> {
    let q = obs.qparams_for(key, || {
        let d = x.clone().detach();
        (d.clone().min().into_scalar(), d.max().into_scalar())
    });
    fake_quant_act(x, &q)
}

/// Folded conv with fake-quantized weights, its activation, then the output fake-quant `key`.
fn conv_bn_qat(cb: &ConvBn, x: Tensor<4>, key: &str, obs: &mut Observers) -> Tensor<4> {
    let (w, b) = fold_conv_bn(cb);
    let y = conv2d(x, fake_quant_weight(w, 0), Some(b), conv_options(cb));
    let y = match cb.activation {
        Activation::Identity => y,
        Activation::Relu => burn::tensor::activation::relu(y),
    };
    fq(obs, key, y)
}

fn linear_qat<const D: usize>(l: &burn::nn::Linear, x: Tensor<D>) -> Tensor<D> {
    linear(
        x,
        fake_quant_weight(l.weight.val(), 1),
        l.bias.as_ref().map(|b| b.val()),
    )
}

fn irb_qat(m: &InvertedResidual, name: &str, x: Tensor<4>, obs: &mut Observers) -> Tensor<4> {
    let y = conv_bn_qat(&m.expand, x.clone(), &format!("{name}.expand"), obs);
    let y = conv_bn_qat(&m.depthwise, y, &format!("{name}.depthwise"), obs);
    let y = conv_bn_qat(&m.project, y, &format!("{name}.project"), obs);
    if m.residual {
        fq(obs, &format!("{name}.add"), y + x)
    } else {
        y
    }
}

/// Mamba with int8 `in_proj` / `out_proj` and their fake-quant points under `prefix`
/// (`<pvm>.mamba` or `<pvm>.mamba.<g>`); the mixer stays f32. Input already fake-quantized.
fn mamba_qat(m: &Mamba, prefix: &str, u: Tensor<3>, obs: &mut Observers) -> Tensor<3> {
    let xz = fq(
        obs,
        &format!("{prefix}.in_proj.out"),
        linear_qat(&m.in_proj, u),
    );
    let y = fq(obs, &format!("{prefix}.out_proj.in"), m.mixer(xz));
    fq(
        obs,
        &format!("{prefix}.out_proj.out"),
        linear_qat(&m.out_proj, y),
    )
}

fn pvm_qat(p: &ParallelMamba, name: &str, x: Tensor<4>, obs: &mut Observers) -> Tensor<4> {
    let [batch, c, h, w] = x.dims();
    let (len, g) = (h * w, p.groups);
    let d = c / g;
    let tokens = p.norm.forward(x.reshape([batch, c, len]).swap_dims(1, 2)); // [B, L, C]
    let tq = fq(obs, &format!("{name}.mamba.in_proj.in"), tokens.clone());
    let skip = p.skip_scale.val().reshape([1, 1, 1]);
    let mixed = if p.mamba.len() == 1 {
        let split = |t: Tensor<3>| {
            t.reshape([batch, len, g, d])
                .swap_dims(1, 2)
                .reshape([batch * g, len, d])
        };
        let y =
            mamba_qat(&p.mamba[0], &format!("{name}.mamba"), split(tq), obs) + split(tokens) * skip;
        y.reshape([batch, g, len, d])
            .swap_dims(1, 2)
            .reshape([batch, len, c])
    } else {
        let outs = tq
            .chunk(g, 2)
            .into_iter()
            .zip(tokens.chunk(g, 2))
            .zip(&p.mamba)
            .enumerate()
            .map(|(j, ((q, f), m))| {
                mamba_qat(m, &format!("{name}.mamba.{j}"), q, obs) + f * skip.clone()
            })
            .collect();
        Tensor::cat(outs, 2)
    };
    let y = fq(obs, &format!("{name}.proj.in"), p.norm.forward(mixed));
    let y = fq(obs, &format!("{name}.proj.out"), linear_qat(&p.proj, y));
    let c_out = y.dims()[2];
    y.swap_dims(1, 2).reshape([batch, c_out, h, w])
}

/// The fake-quantized forward pass of the IRMamba student composed from burn's tensor ops:
/// log-mel `[B, 1, n_mels, n_frames]` -> logits `[B, n_classes]`, updating `obs` unless
/// frozen; the oracle of [`super::qat_forward`].
pub fn qat_forward_reference(m: &IrMamba, x: Tensor<4>, obs: &mut Observers) -> Tensor<2> {
    let t = x.dims()[3];
    let x = x.narrow(3, 0, m.cropped_frames(t));
    let x = fq(obs, INPUT_KEY, x);
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
    let y = fq(obs, "head.pool", m.head.pool.forward(y));
    let [b, c, _, _] = y.dims();
    y.reshape([b, c])
}
