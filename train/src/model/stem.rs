//! [`Stem`]: the two strided depthwise(-separable) convolutions that open IRMamba (Table 1:
//! `256x64x1 -> DWConv s2 -> 128x32x8 -> DWConv s2 -> 64x16x32`).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::conv_bn::{Activation, ConvBn, ConvBnConfig};
use crate::complexity::Tally;

/// Two stride-2 3x3 "DWConv" layers, each followed by BN + ReLU.
///
/// - `dw1`: on a one-channel input a depthwise convolution is a 3x3 convolution with channel
///   multiplier `c1` (`1 -> c1`, groups 1 = `c_in`).
/// - `dw2` + `pw2`: depthwise-separable: 3x3 depthwise stride 2 on `c1` channels, then a 1x1
///   pointwise `c1 -> c2` (Table 1 grows the width from 8 to 32 in this step).
#[derive(Module, Debug)]
pub struct Stem {
    /// 3x3 stride-2 convolution `1 -> c1` (depthwise with multiplier `c1`).
    pub dw1: ConvBn,
    /// 3x3 stride-2 depthwise convolution on `c1` channels.
    pub dw2: ConvBn,
    /// 1x1 pointwise convolution `c1 -> c2`.
    pub pw2: ConvBn,
}

/// Configuration of a [`Stem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StemConfig {
    /// Input channels (1 for a log-mel spectrogram).
    pub c_in: usize,
    /// Channels after the first convolution (8 in Table 1).
    pub c1: usize,
    /// Channels after the second (32 in Table 1).
    pub c2: usize,
}

impl StemConfig {
    /// Initialises the stem.
    pub fn init(&self, device: &Device) -> Stem {
        Stem {
            dw1: ConvBnConfig::new(self.c_in, self.c1, 3)
                .with_stride([2, 2])
                .with_activation(Activation::Relu)
                .init(device),
            dw2: ConvBnConfig::new(self.c1, self.c1, 3)
                .with_stride([2, 2])
                .depthwise()
                .init(device),
            pw2: ConvBnConfig::new(self.c1, self.c2, 1).init(device),
        }
    }
}

impl Stem {
    /// `[B, c_in, F, T] -> [B, c2, F/4, T/4]` (ceil for odd sizes, padding 1).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.pw2.forward(self.dw2.forward(self.dw1.forward(x)))
    }

    /// Records the stem's layers; returns its output shape.
    pub fn tally(&self, path: &str, input: [usize; 3], t: &mut Tally) -> [usize; 3] {
        let s = self.dw1.tally(t, &Tally::child(path, "dw1"), input);
        let s = self.dw2.tally(t, &Tally::child(path, "dw2"), s);
        self.pw2.tally(t, &Tally::child(path, "pw2"), s)
    }
}
