//! Fake quantization for quantization-aware training as fused ops with straight-through
//! backward passes (burn backend extension; kernels in [`asc_kernels::quant::fake`]).
//!
//! - [`fake_quant_act`]: `fq(act(x + bias))` per tensor on an affine [`Grid`]: the folded
//!   conv's bias, its ReLU and the activation fake-quant of the int8 engine's quantized buffer
//!   as one pass (burn's composition, [`crate::qat::fake_quant_act`] after a broadcast add and a
//!   ReLU, is a dozen passes over the activation forward and four backward);
//! - [`act_min_max`]: the batch `(min, max)` of `act(x + bias)` for the observers, one read-only
//!   pass without a graph node;
//! - [`fake_quant_weight`]: per-output-channel symmetric int8 fake quantization of a weight.
//!
//! Gradients are straight-through: `dx = dy` masked by the ReLU, `dbias` its per-channel sum,
//! `dw = dw_q`.

#[cfg(test)]
mod tests;

use asc_kernels::quant::fake::{self as kernel, Grid, Pre};
use burn::backend::Dispatch;
use burn::tensor::Tensor;

use super::host::{from_host, host_view, impl_for_cpu_backends, register_host_grads};
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{
    AutodiffBackend, Backend, TensorMetadata, backend_extension, tensor::FloatTensor,
};

/// The channel layout of a bias for `x`: `bias[c]` applies to the elements `i` of `x` with
/// `(i / inner) % C == c`; `inner` is the product of the axes after `channel_axis`.
fn inner_of(dims: &[usize], channel_axis: usize) -> usize {
    dims[channel_axis + 1..].iter().product::<usize>().max(1)
}

fn check_bias(dims: &[usize], channel_axis: usize, bias: Option<&Tensor<1>>) {
    if let Some(b) = bias {
        assert_eq!(
            b.dims()[0],
            dims[channel_axis],
            "fake quant: bias of {} values for {} channels (axis {channel_axis} of {dims:?})",
            b.dims()[0],
            dims[channel_axis]
        );
    }
}

/// `fq(act(x + bias))`: the per-channel `bias` (along `channel_axis`; `None`: none) and the
/// ReLU (when `relu`) of the layer before, then per-tensor affine fake quantization on `grid`,
/// as one op on the rayon pool. Differentiable in `x` and `bias` with the straight-through
/// estimator (`dx = dy` where the ReLU passes, `dbias` its sum per channel).
///
/// Equal to `crate::qat::fake_quant_act(relu(x + bias), q)`.
///
/// # Panics
/// When the bias length differs from the channel count.
pub fn fake_quant_act<const D: usize>(
    x: Tensor<D>,
    bias: Option<Tensor<1>>,
    channel_axis: usize,
    relu: bool,
    grid: Grid,
) -> Tensor<D> {
    let dims = x.dims();
    check_bias(&dims, channel_axis, bias.as_ref());
    if crate::backend::on_cube(&x.device()) {
        return fake_quant_grid_reference(bias_act(x, bias, channel_axis, relu), grid);
    }
    let inner = inner_of(&dims, channel_axis);
    let bias = bias.unwrap_or_else(|| Tensor::empty([0], &x.device()));
    Tensor::from_dispatch(<Dispatch as FakeQuantOps>::fake_quant_act_fused(
        x.into_dispatch(),
        bias.into_dispatch(),
        inner,
        relu,
        grid,
    ))
}

/// `(min, max)` of `act(x + bias)` (see [`fake_quant_act`]): the batch range of a
/// moving-average observer, without a graph node (NaNs skipped; `(inf, -inf)` when empty).
pub fn act_min_max<const D: usize>(
    x: &Tensor<D>,
    bias: Option<&Tensor<1>>,
    channel_axis: usize,
    relu: bool,
) -> (f32, f32) {
    let dims = x.dims();
    check_bias(&dims, channel_axis, bias);
    if crate::backend::on_cube(&x.device()) {
        let y = bias_act(x.clone().detach(), bias.cloned(), channel_axis, relu);
        if y.shape().num_elements() == 0 {
            return (f32::INFINITY, f32::NEG_INFINITY);
        }
        let lo: f32 = y.clone().min().into_scalar();
        let hi: f32 = y.max().into_scalar();
        return (lo, hi);
    }
    let inner = inner_of(&dims, channel_axis);
    let bias = bias
        .cloned()
        .unwrap_or_else(|| Tensor::empty([0], &x.device()));
    let r: Tensor<1> = Tensor::from_dispatch(<Dispatch as FakeQuantOps>::act_min_max_fused(
        x.clone().into_dispatch(),
        bias.into_dispatch(),
        inner,
        relu,
    ));
    let v = r
        .into_data()
        .try_to_vec::<f32>()
        .expect("fake quant: reading the batch range");
    (v[0], v[1])
}

/// Per-output-channel symmetric int8 fake quantization of a weight whose output channels lie
/// along `axis` (0 for a conv weight `[C_out, ...]`, 1 for burn's Linear `[d_in, d_out]`),
/// with straight-through gradient; see [`asc_kernels::quant::fake::fake_quant_weight`]. Equal to
/// [`crate::qat::fake_quant_weight`].
pub fn fake_quant_weight<const D: usize>(w: Tensor<D>, axis: usize) -> Tensor<D> {
    if crate::backend::on_cube(&w.device()) {
        return fake_quant_weight_reference(w, axis);
    }
    let dims = w.dims();
    let (channels, inner) = (dims[axis], inner_of(&dims, axis));
    Tensor::from_dispatch(<Dispatch as FakeQuantOps>::fake_quant_weight_fused(
        w.into_dispatch(),
        channels,
        inner,
    ))
}

/// `act(x + bias)`: the per-channel `bias` broadcast along `channel_axis`, then the ReLU when
/// `relu` (burn's ops; the first half of [`fake_quant_act`]'s composition, and the whole of it
/// when nothing is quantized).
pub fn bias_act<const D: usize>(
    x: Tensor<D>,
    bias: Option<Tensor<1>>,
    channel_axis: usize,
    relu: bool,
) -> Tensor<D> {
    let y = match bias {
        Some(b) => {
            let mut shape = [1usize; D];
            shape[channel_axis] = b.dims()[0];
            x + b.reshape(shape)
        }
        None => x,
    };
    if relu {
        burn::tensor::activation::relu(y)
    } else {
        y
    }
}

/// Straight-through estimator: the value of `q`, the gradient of `x` (`x + (q - x).detach()`).
pub fn straight_through<const D: usize>(x: Tensor<D>, q: Tensor<D>) -> Tensor<D> {
    x.clone() + (q - x).detach()
}

/// Reference for the fake quantization of [`fake_quant_act`] from burn's ops, the path on a
/// Cube device: per-tensor affine fake quantization on `grid` with straight-through gradient,
/// `(clamp(round(x / s) + z, qmin, qmax) - z) * s` (round half to even, as `nearbyint`).
pub fn fake_quant_grid_reference<const D: usize>(x: Tensor<D>, grid: Grid) -> Tensor<D> {
    let (s, z) = (grid.scale, grid.zero_point as f32);
    let y = x
        .clone()
        .detach()
        .div_scalar(s)
        .round()
        .add_scalar(z)
        .clamp(grid.qmin as f32, grid.qmax as f32)
        .sub_scalar(z)
        .mul_scalar(s);
    straight_through(x, y)
}

/// Reference for [`fake_quant_weight`] from burn's ops, the path on a Cube device:
/// per-output-channel symmetric int8 fake quantization along `axis`,
/// `s_c = max(max|w_c| / 127.5, eps)`, `clamp(round(w / s_c), -128, 127) * s_c`, with
/// straight-through gradient (the scale is not differentiated).
pub fn fake_quant_weight_reference<const D: usize>(w: Tensor<D>, axis: usize) -> Tensor<D> {
    let wt = if axis == 0 { w } else { w.swap_dims(0, axis) };
    let dims = wt.dims();
    let c = dims[0];
    let rest = dims[1..].iter().product::<usize>();
    let flat: Tensor<2> = wt.reshape([c, rest]);
    let scale = flat
        .clone()
        .detach()
        .abs()
        .max_dim(1)
        .div_scalar(kernel::WEIGHT_SCALE_DIV)
        .clamp_min(f32::EPSILON);
    let q = (flat.clone().detach() / scale.clone())
        .round()
        .clamp(-128.0, 127.0)
        * scale;
    let out: Tensor<D> = straight_through(flat, q).reshape(dims);
    if axis == 0 {
        out
    } else {
        out.swap_dims(0, axis)
    }
}

/// Backends that can run the fused fake-quant ops.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Autodiff)]
pub trait FakeQuantOps: Backend {
    /// `fq(act(x + bias))` on `grid` with `bias: [C]` or `[0]` (none), element `i` in channel
    /// `(i / inner) % C`.
    fn fake_quant_act_fused(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        inner: usize,
        relu: bool,
        grid: Grid,
    ) -> FloatTensor<Self>;

    /// `[min, max]` of `act(x + bias)` (not differentiable).
    fn act_min_max_fused(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        inner: usize,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// Per-channel symmetric weight fake quantization, element `i` in channel
    /// `(i / inner) % channels`.
    fn fake_quant_weight_fused(
        w: FloatTensor<Self>,
        channels: usize,
        inner: usize,
    ) -> FloatTensor<Self>;
}

fn pre<'a>(bias: &'a [f32], inner: usize, relu: bool) -> Pre<'a> {
    Pre {
        bias: (!bias.is_empty()).then_some(bias),
        inner,
        relu,
    }
}

impl_for_cpu_backends!(FakeQuantOps {
    fn fake_quant_act_fused(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        inner: usize,
        relu: bool,
        grid: Grid,
    ) -> FloatTensor<Self> {
        let (shape, device) = (x.shape().to_vec(), x.device());
        let b = host_view::<Self>(&bias);
        let y = kernel::forward(&host_view::<Self>(&x), &pre(&b, inner, relu), grid);
        from_host::<Self>(y, shape, &device)
    }

    fn act_min_max_fused(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        inner: usize,
        relu: bool,
    ) -> FloatTensor<Self> {
        let device = x.device();
        let b = host_view::<Self>(&bias);
        let (lo, hi) = kernel::min_max(&host_view::<Self>(&x), &pre(&b, inner, relu));
        from_host::<Self>(vec![lo, hi], vec![2], &device)
    }

    fn fake_quant_weight_fused(
        w: FloatTensor<Self>,
        channels: usize,
        inner: usize,
    ) -> FloatTensor<Self> {
        let (shape, device) = (w.shape().to_vec(), w.device());
        let q = kernel::fake_quant_weight(&host_view::<Self>(&w), channels, inner);
        from_host::<Self>(q, shape, &device)
    }
});

/// Backward step of [`fake_quant_act`] (parents: `x`, `bias`); the state is `x`, `bias` and
/// the layout (no state without ReLU and bias: `dy` passes through).
#[derive(Debug)]
struct FakeQuantActBackward;

impl<B: Backend> Backward<B, 2> for FakeQuantActBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, usize, bool);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<B>(&ops.node);
        let (x, bias, inner, relu) = ops.state;
        let [px, pb] = ops.parents.map(|p| p.map(|n| n.id));
        let b = host_view::<B>(&bias);
        if b.is_empty() && !relu {
            // Pure straight-through: the gradient is `dy` itself.
            if let Some(id) = px {
                grads.register::<B>(id, dy);
            }
            return;
        }
        let (shape, device) = (x.shape().to_vec(), x.device());
        let (dx, db) = kernel::backward(
            &host_view::<B>(&x),
            &pre(&b, inner, relu),
            &host_view::<B>(&dy),
            px.is_some(),
        );
        let c = b.len();
        let mut outs = Vec::new();
        if let Some(dx) = dx {
            outs.push((px, dx, shape));
        }
        if let Some(db) = db {
            outs.push((pb, db, vec![c]));
        }
        register_host_grads::<B>(grads, &device, outs);
    }
}

/// Backward step of [`fake_quant_weight`]: straight through.
#[derive(Debug)]
struct FakeQuantWeightBackward;

impl<B: Backend> Backward<B, 1> for FakeQuantWeightBackward {
    type State = ();

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<B>(&ops.node);
        if let [Some(p)] = ops.parents {
            grads.register::<B>(p.id, dy);
        }
    }
}

impl<B: Backend + FakeQuantOps, C: CheckpointStrategy> FakeQuantOps for Autodiff<B, C> {
    fn fake_quant_act_fused(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        inner: usize,
        relu: bool,
        grid: Grid,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), bias.node()];
        let (px, pb) = (x.into_primitive(), bias.into_primitive());
        let y = B::fake_quant_act_fused(px.clone(), pb.clone(), inner, relu, grid);
        match FakeQuantActBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((px, pb, inner, relu), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn act_min_max_fused(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        inner: usize,
        relu: bool,
    ) -> FloatTensor<Self> {
        let r = B::act_min_max_fused(x.into_primitive(), bias.into_primitive(), inner, relu);
        <Self as AutodiffBackend>::from_inner(r)
    }

    fn fake_quant_weight_fused(
        w: FloatTensor<Self>,
        channels: usize,
        inner: usize,
    ) -> FloatTensor<Self> {
        let nodes = [w.node()];
        let y = B::fake_quant_weight_fused(w.into_primitive(), channels, inner);
        FakeQuantWeightBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateless(y)
    }
}
