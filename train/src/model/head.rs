//! [`ClassifierHead`]: 1x1 convolution to the classes (with BN) and global average pooling.

use burn::module::Module;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::tensor::{Device, Tensor};

use super::conv_bn::{Activation, ConvBn, ConvBnConfig};
use crate::complexity::Tally;

/// `Conv2d 1x1 (no bias) + BN -> AdaptiveAvgPool2d(1)`: the DCASE baseline's `feed_forward` and
/// IRMamba's last two rows of Table 1.
#[derive(Module, Debug)]
pub struct ClassifierHead {
    /// 1x1 convolution `c_in -> n_classes` with BN, no activation.
    pub conv: ConvBn,
    /// Global average pooling.
    pub pool: AdaptiveAvgPool2d,
}

impl ClassifierHead {
    /// A head mapping `c_in` channels to `n_classes` logits.
    pub fn new(c_in: usize, n_classes: usize, device: &Device) -> Self {
        Self {
            conv: ConvBnConfig::new(c_in, n_classes, 1)
                .with_activation(Activation::Identity)
                .init(device),
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
        }
    }

    /// `[B, c_in, H, W] -> [B, n_classes]` logits.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let y = self.pool.forward(self.conv.forward(x));
        let [b, c, _, _] = y.dims();
        y.reshape([b, c])
    }

    /// Records the head's layers; returns `[n_classes, 1, 1]`.
    pub fn tally(&self, path: &str, input: [usize; 3], t: &mut Tally) -> [usize; 3] {
        let s = self.conv.tally(t, &Tally::child(path, "conv"), input);
        let out = [s[0], 1, 1];
        t.shape_only(&Tally::child(path, "pool"), "AvgPool", out.to_vec());
        out
    }
}
