//! [`ConvBn`]: a 2-D convolution followed by BatchNorm and an optional activation.
//!
//! Every convolution of the CNN parts of the models is one of these, so that quantization-aware
//! training can find each conv + BN (+ ReLU) triple by name, fold the BN into the conv and
//! fake-quantize the folded weights (PyTorch's `fuse_modules` / fbgemm recipe).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

pub use bn_stats::{BnStats, record_bn_stats};

/// Activation applied after the BatchNorm of a [`ConvBn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Activation {
    /// No activation (linear bottleneck / projection).
    #[default]
    Identity,
    /// `max(x, 0)`: fuses with conv + BN in int8 kernels.
    Relu,
}

/// Conv2d (no bias) + BatchNorm2d + activation, as torchvision's `Conv2dNormActivation`.
#[derive(Module, Debug)]
pub struct ConvBn {
    /// The convolution (bias-free: the BN's shift replaces it).
    pub conv: Conv2d,
    /// BatchNorm over the output channels.
    pub bn: BatchNorm,
    /// Activation after the BN.
    #[module(skip)]
    pub activation: Activation,
}

/// Shape and options of a [`ConvBn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvBnConfig {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Square-or-not kernel size `[k_freq, k_time]`.
    pub kernel: [usize; 2],
    /// Stride `[freq, time]`.
    pub stride: [usize; 2],
    /// Convolution groups (`c_in` for a depthwise convolution).
    pub groups: usize,
    /// Activation after the BN.
    pub activation: Activation,
}

impl ConvBnConfig {
    /// A `k x k` convolution with stride 1, one group, ReLU; padding is always `(k - 1) / 2`.
    pub fn new(c_in: usize, c_out: usize, kernel: usize) -> Self {
        Self {
            c_in,
            c_out,
            kernel: [kernel, kernel],
            stride: [1, 1],
            groups: 1,
            activation: Activation::Relu,
        }
    }

    /// Sets the stride `[freq, time]`.
    pub fn with_stride(mut self, stride: [usize; 2]) -> Self {
        self.stride = stride;
        self
    }

    /// Makes the convolution depthwise (`groups = c_in`; `c_out` must be a multiple of `c_in`).
    pub fn depthwise(mut self) -> Self {
        self.groups = self.c_in;
        self
    }

    /// Sets the activation.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Initialises the module: Kaiming-normal (fan-out) conv weights as the DCASE baseline and
    /// MobileNetV2, BN weight 1 and bias 0.
    pub fn init(&self, device: &Device) -> ConvBn {
        let [kh, kw] = self.kernel;
        let conv = Conv2dConfig::new([self.c_in, self.c_out], self.kernel)
            .with_stride(self.stride)
            .with_groups(self.groups)
            .with_padding(PaddingConfig2d::Explicit(
                (kh - 1) / 2,
                (kw - 1) / 2,
                (kh - 1) / 2,
                (kw - 1) / 2,
            ))
            .with_bias(false)
            .with_initializer(Initializer::KaimingNormal {
                gain: 2f64.sqrt(),
                fan_out_only: true,
            })
            .init(device);
        ConvBn {
            conv,
            bn: BatchNormConfig::new(self.c_out).init(device),
            activation: self.activation,
        }
    }
}

impl ConvBn {
    /// `[B, c_in, H, W] -> [B, c_out, H', W']`.
    ///
    /// When training (autodiff device, BN not frozen), BN + activation run as one fused op
    /// ([`crate::ops::batch_norm_train`]) and the running statistics are updated exactly as
    /// burn's `BatchNorm::forward` does (`r <- (1 - momentum) r + momentum * batch`, biased
    /// batch variance); otherwise the BN uses its running statistics.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let z = crate::ops::conv2d_forward(&self.conv, x);
        let bn = &self.bn;
        if let Some(y) = bn_stats::record(self, &z) {
            return y;
        }
        if z.device().is_autodiff() && bn.training.is_enabled() {
            let (y, mean, var) = crate::ops::batch_norm_train(
                z,
                bn.gamma.val(),
                bn.beta.val(),
                bn.epsilon,
                self.activation == Activation::Relu,
            );
            let device = y.device();
            let m = bn.momentum;
            let running_mean = bn.running_mean.value_sync().to_device(&device);
            let running_var = bn.running_var.value_sync().to_device(&device);
            bn.running_mean
                .update((running_mean.mul_scalar(1.0 - m) + mean.mul_scalar(m)).detach());
            bn.running_var
                .update((running_var.mul_scalar(1.0 - m) + var.mul_scalar(m)).detach());
            // Fold the update into the shared value now: burn keeps one pending value per
            // thread and averages them at the next sync, which would mix (and lose) the
            // updates of steps run on different rayon workers (`backend::in_pool`).
            let _ = (bn.running_mean.value_sync(), bn.running_var.value_sync());
            return y;
        }
        let y = bn.forward(z);
        match self.activation {
            Activation::Identity => y,
            Activation::Relu => relu(y),
        }
    }

    /// Output `[C, H, W]` for an input `[C, H, W]` (padding `(k - 1) / 2`, floor division).
    pub fn out_shape(&self, input: [usize; 3]) -> [usize; 3] {
        let [c_out, _, kh, kw] = self.conv.weight.dims();
        let [sh, sw] = self.conv.stride;
        let [_, h, w] = input;
        let oh = (h + 2 * ((kh - 1) / 2) - kh) / sh + 1;
        let ow = (w + 2 * ((kw - 1) / 2) - kw) / sw + 1;
        [c_out, oh, ow]
    }
}

/// Recording of BatchNorm input statistics for precise BatchNorm ([`crate::precise_bn`]).
///
/// While [`record_bn_stats`] runs its closure, every [`ConvBn::forward`] on that thread
/// normalises with the batch's own statistics (training-mode BN, whatever the model's mode)
/// and adds the per-channel count, sum and sum of squares of its BN input to a table keyed by
/// the BN's `gamma` parameter id. Nothing else changes; outside the closure the hook costs one
/// thread-local read.
mod bn_stats {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use burn::module::ParamId;
    use burn::tensor::Tensor;

    use super::{Activation, ConvBn};

    /// Per-channel sums of the BN inputs of every [`ConvBn`] that ran under
    /// [`record_bn_stats`], keyed by the id of its BN's `gamma`.
    #[derive(Debug, Clone, Default)]
    pub struct BnStats {
        /// `gamma` id -> (values per channel so far, sum per channel, sum of squares per
        /// channel), in f64.
        pub layers: HashMap<ParamId, (u64, Vec<f64>, Vec<f64>)>,
    }

    impl BnStats {
        /// Adds the sums of another recording (e.g. the next batch).
        pub fn merge(&mut self, other: BnStats) {
            for (id, (n, s1, s2)) in other.layers {
                match self.layers.get_mut(&id) {
                    None => {
                        self.layers.insert(id, (n, s1, s2));
                    }
                    Some((n0, a1, a2)) => {
                        *n0 += n;
                        a1.iter_mut().zip(&s1).for_each(|(a, b)| *a += b);
                        a2.iter_mut().zip(&s2).for_each(|(a, b)| *a += b);
                    }
                }
            }
        }

        /// Population mean and (biased) variance per channel of one layer:
        /// `mean = S1 / n`, `var = S2 / n - mean^2` (clamped at 0).
        pub fn mean_var(&self, gamma: &ParamId) -> Option<(Vec<f64>, Vec<f64>)> {
            let (n, s1, s2) = self.layers.get(gamma)?;
            let n = (*n).max(1) as f64;
            let mean: Vec<f64> = s1.iter().map(|s| s / n).collect();
            let var = s2
                .iter()
                .zip(&mean)
                .map(|(s, m)| (s / n - m * m).max(0.0))
                .collect();
            Some((mean, var))
        }
    }

    thread_local! {
        static RECORDING: RefCell<Option<BnStats>> = const { RefCell::new(None) };
    }

    /// Runs `f` with recording on for this thread and returns its result and the statistics
    /// of every [`ConvBn`] forward it ran (nested calls record into the innermost).
    pub fn record_bn_stats<R>(f: impl FnOnce() -> R) -> (R, BnStats) {
        let outer = RECORDING.with(|r| r.replace(Some(BnStats::default())));
        let out = f();
        let stats = RECORDING.with(|r| r.replace(outer)).unwrap_or_default();
        (out, stats)
    }

    /// The recording forward of `layer` on its convolution output `z` (`None` when not
    /// recording): BN with the batch statistics (+ ReLU), and the sums added to the table.
    pub(super) fn record(layer: &ConvBn, z: &Tensor<4>) -> Option<Tensor<4>> {
        if !RECORDING.with(|r| r.borrow().is_some()) {
            return None;
        }
        let bn = &layer.bn;
        let [b, c, h, w] = z.dims();
        let (y, mean, var) = crate::ops::batch_norm_train(
            z.clone().detach(),
            bn.gamma.val().detach(),
            bn.beta.val().detach(),
            bn.epsilon,
            layer.activation == Activation::Relu,
        );
        let host = |t: Tensor<1>| -> Vec<f64> {
            t.into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap_or_default()
                .into_iter()
                .map(f64::from)
                .collect()
        };
        let (mean, var) = (host(mean), host(var));
        let n = (b * h * w) as u64;
        let nf = n as f64;
        let s1: Vec<f64> = mean.iter().map(|m| m * nf).collect();
        let s2: Vec<f64> = mean
            .iter()
            .zip(&var)
            .map(|(m, v)| (v + m * m) * nf)
            .collect();
        debug_assert_eq!(s1.len(), c);
        let mut one = BnStats::default();
        one.layers.insert(bn.gamma.id, (n, s1, s2));
        RECORDING.with(|r| {
            if let Some(stats) = r.borrow_mut().as_mut() {
                stats.merge(one);
            }
        });
        Some(y)
    }
}
