//! [`CnnTeacher`]: a CP-ResNet-like CNN teacher (Koutini et al., "Receptive-field-regularized
//! CNN variants"): a 5x5 stride-2 input Conv-BN-ReLU and 2x2 max pooling, then residual stages
//! (two Conv-BN per block, ReLU after the sum, 1x1 Conv-BN shortcut when the width changes)
//! separated by 2x2 max pooling; the last stage uses 1x1 kernels, which restricts the receptive
//! field as CP-ResNet does; head: 1x1 conv + BN + global average pooling.
//! About 240K parameters: a teacher that trains on CPU on the demo data.

use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::config::CnnTeacherConfig;
use super::conv_bn::{Activation, ConvBn, ConvBnConfig};
use super::head::ClassifierHead;
use super::pool::MaxPool;
use crate::complexity::Tally;

/// A residual block: `relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`.
#[derive(Module, Debug)]
pub struct ResBlock {
    /// First Conv-BN-ReLU.
    pub conv1: ConvBn,
    /// Second Conv-BN (activation after the sum).
    pub conv2: ConvBn,
    /// 1x1 Conv-BN projection when the width changes.
    pub shortcut: Option<ConvBn>,
}

impl ResBlock {
    fn new(c_in: usize, c_out: usize, k: usize, device: &Device) -> Self {
        Self {
            conv1: ConvBnConfig::new(c_in, c_out, k).init(device),
            conv2: ConvBnConfig::new(c_out, c_out, k)
                .with_activation(Activation::Identity)
                .init(device),
            shortcut: (c_in != c_out).then(|| {
                ConvBnConfig::new(c_in, c_out, 1)
                    .with_activation(Activation::Identity)
                    .init(device)
            }),
        }
    }

    /// `[B, c_in, H, W] -> [B, c_out, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.conv2.forward(self.conv1.forward(x.clone()));
        let s = match &self.shortcut {
            Some(p) => p.forward(x),
            None => x,
        };
        relu(y + s)
    }

    fn tally(&self, path: &str, input: [usize; 3], t: &mut Tally) -> [usize; 3] {
        let s = self.conv1.tally(t, &Tally::child(path, "conv1"), input);
        let s = self.conv2.tally(t, &Tally::child(path, "conv2"), s);
        if let Some(p) = &self.shortcut {
            p.tally(t, &Tally::child(path, "shortcut"), input);
        }
        s
    }
}

/// The CP-ResNet-like teacher.
#[derive(Module, Debug)]
pub struct CnnTeacher {
    /// 5x5 stride-2 Conv-BN-ReLU.
    pub stem: ConvBn,
    /// 2x2 max pooling after the stem and after every stage but the last.
    pub pool: MaxPool,
    /// Residual stages.
    pub stages: Vec<Vec<ResBlock>>,
    /// 1x1 conv + BN + global average pooling.
    pub head: ClassifierHead,
}

impl CnnTeacherConfig {
    /// Initialises the teacher for `n_classes` classes.
    pub fn init(&self, n_classes: usize, device: &Device) -> CnnTeacher {
        let mut c = self.stem_channels;
        let stages = self
            .channels
            .iter()
            .zip(&self.blocks)
            .zip(&self.kernels)
            .map(|((&w, &n), &k)| {
                (0..n)
                    .map(|_| {
                        let b = ResBlock::new(c, w, k, device);
                        c = w;
                        b
                    })
                    .collect()
            })
            .collect();
        CnnTeacher {
            stem: ConvBnConfig::new(1, self.stem_channels, 5)
                .with_stride([2, 2])
                .init(device),
            pool: MaxPool::new([2, 2]),
            stages,
            head: ClassifierHead::new(c, n_classes, device),
        }
    }
}

impl CnnTeacher {
    /// Log-mel `[B, 1, n_mels, n_frames]` -> logits `[B, n_classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.pool.forward(self.stem.forward(x));
        let n = self.stages.len();
        for (i, stage) in self.stages.iter().enumerate() {
            for b in stage {
                x = b.forward(x);
            }
            if i + 1 < n {
                x = self.pool.forward(x);
            }
        }
        self.head.forward(x)
    }

    /// Records every layer for an input `[1, n_mels, n_frames]`.
    pub fn tally(&self, t: &mut Tally, input: [usize; 3]) -> [usize; 3] {
        let s = self.stem.tally(t, "stem", input);
        let mut s = self.pool.tally("pool.0", s, t);
        let n = self.stages.len();
        for (i, stage) in self.stages.iter().enumerate() {
            for (j, b) in stage.iter().enumerate() {
                s = b.tally(&format!("stage{}.{j}", i + 1), s, t);
            }
            if i + 1 < n {
                s = self.pool.tally(&format!("pool.{}", i + 1), s, t);
            }
        }
        self.head.tally("head", s, t)
    }
}
