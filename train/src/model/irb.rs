//! [`InvertedResidual`]: MobileNetV2's inverted residual block (Sandler et al. 2018).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::conv_bn::{Activation, ConvBn, ConvBnConfig};
use crate::complexity::Tally;

/// `round(v)` to a multiple of `divisor`, never below `divisor` nor more than 10% below `v`
/// (MobileNet's / the DCASE baseline's `make_divisible`).
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let new_v = (((v + d / 2.0) as usize) / divisor * divisor).max(divisor);
    if (new_v as f64) < 0.9 * v {
        new_v + divisor
    } else {
        new_v
    }
}

/// 1x1 expansion (BN, ReLU) -> 3x3 depthwise with stride (BN, ReLU) -> 1x1 linear projection
/// (BN, no activation), plus the identity shortcut when the stride is 1 and the widths match.
#[derive(Module, Debug)]
pub struct InvertedResidual {
    /// 1x1 expansion `c_in -> hidden`.
    pub expand: ConvBn,
    /// 3x3 depthwise convolution on `hidden` channels, carrying the block's stride.
    pub depthwise: ConvBn,
    /// 1x1 linear projection `hidden -> c_out` (no activation: the linear bottleneck).
    pub project: ConvBn,
    /// Whether the identity shortcut is added (stride 1 and `c_in == c_out`).
    pub residual: bool,
}

/// Configuration of an [`InvertedResidual`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InvertedResidualConfig {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Expansion ratio `t`: hidden width `make_divisible(c_in * t, 8)`.
    pub expansion: f64,
    /// Stride of the depthwise convolution `[freq, time]`.
    pub stride: [usize; 2],
}

impl InvertedResidualConfig {
    /// Hidden (expanded) width.
    pub fn hidden(&self) -> usize {
        make_divisible(self.c_in as f64 * self.expansion, 8)
    }

    /// Initialises the block.
    pub fn init(&self, device: &Device) -> InvertedResidual {
        let h = self.hidden();
        InvertedResidual {
            expand: ConvBnConfig::new(self.c_in, h, 1).init(device),
            depthwise: ConvBnConfig::new(h, h, 3)
                .with_stride(self.stride)
                .depthwise()
                .init(device),
            project: ConvBnConfig::new(h, self.c_out, 1)
                .with_activation(Activation::Identity)
                .init(device),
            residual: self.stride == [1, 1] && self.c_in == self.c_out,
        }
    }
}

impl InvertedResidual {
    /// `[B, c_in, H, W] -> [B, c_out, H / s_f, W / s_t]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self
            .project
            .forward(self.depthwise.forward(self.expand.forward(x.clone())));
        if self.residual { y + x } else { y }
    }

    /// Records the block's layers; returns its output shape.
    pub fn tally(&self, path: &str, input: [usize; 3], t: &mut Tally) -> [usize; 3] {
        let s = self.expand.tally(t, &Tally::child(path, "expand"), input);
        let s = self.depthwise.tally(t, &Tally::child(path, "depthwise"), s);
        self.project.tally(t, &Tally::child(path, "project"), s)
    }
}
