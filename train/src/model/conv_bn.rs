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
