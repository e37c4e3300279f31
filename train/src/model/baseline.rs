//! [`Baseline`]: the DCASE2024 Task 1 baseline, a simplified CP-Mobile
//! (CPJKU/dcase2024_task1_baseline, `models/baseline.py`), with its published complexity:
//! 61,148 parameters and 29,419,156 MACs on a 1 x 256 x 65 log-mel input.
//!
//! `in_c`: two 3x3 stride-2 Conv-BN-ReLU (`1 -> base/4 -> base`); three stages of inverted
//! bottleneck blocks (1x1 expand, 3x3 depthwise with the block's stride, 1x1 project, each with
//! BN; ReLU after the first two and after the block), with a shortcut when the widths match
//! (identity, or 3x3 average pooling with the block's stride); head: 1x1 conv + BN + global
//! average pooling.

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::config::BaselineConfig;
use super::conv_bn::{Activation, ConvBn, ConvBnConfig};
use super::head::ClassifierHead;
use super::irb::make_divisible;
use crate::complexity::Tally;

/// One inverted bottleneck block of the baseline.
#[derive(Module, Debug)]
pub struct BaselineBlock {
    /// 1x1 expansion with BN and ReLU.
    pub expand: ConvBn,
    /// 3x3 depthwise with the block's stride, BN and ReLU.
    pub depthwise: ConvBn,
    /// 1x1 projection with BN, no activation.
    pub project: ConvBn,
    /// Average pooling (3x3, the block's stride, padding 1) on the shortcut of strided blocks.
    pub shortcut_pool: Option<AvgPool2d>,
    /// Whether the shortcut is added (`c_in == c_out`).
    pub use_shortcut: bool,
}

impl BaselineBlock {
    fn new(c_in: usize, c_out: usize, expansion: f64, stride: [usize; 2], device: &Device) -> Self {
        let h = make_divisible(c_in as f64 * expansion, 8);
        let use_shortcut = c_in == c_out;
        Self {
            expand: ConvBnConfig::new(c_in, h, 1).init(device),
            depthwise: ConvBnConfig::new(h, h, 3)
                .with_stride(stride)
                .depthwise()
                .init(device),
            project: ConvBnConfig::new(h, c_out, 1)
                .with_activation(Activation::Identity)
                .init(device),
            shortcut_pool: (use_shortcut && stride != [1, 1]).then(|| {
                AvgPool2dConfig::new([3, 3])
                    .with_strides(stride)
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init()
            }),
            use_shortcut,
        }
    }

    /// `relu(block(x) + shortcut(x))`, or `relu(block(x))` without a shortcut.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self
            .project
            .forward(self.depthwise.forward(self.expand.forward(x.clone())));
        if !self.use_shortcut {
            return relu(y);
        }
        let s = match &self.shortcut_pool {
            Some(p) => p.forward(x),
            None => x,
        };
        relu(y + s)
    }

    fn tally(&self, path: &str, input: [usize; 3], t: &mut Tally) -> [usize; 3] {
        let s = self.expand.tally(t, &Tally::child(path, "expand"), input);
        let s = self.depthwise.tally(t, &Tally::child(path, "depthwise"), s);
        self.project.tally(t, &Tally::child(path, "project"), s)
    }
}

/// The DCASE2024 baseline network.
#[derive(Module, Debug)]
pub struct Baseline {
    /// Two 3x3 stride-2 Conv-BN-ReLU.
    pub in_c: Vec<ConvBn>,
    /// All blocks of the three stages, in order (`b1` .. `b6`).
    pub blocks: Vec<BaselineBlock>,
    /// 1x1 conv + BN + global average pooling.
    pub head: ClassifierHead,
}

impl BaselineConfig {
    /// Widths `[base, stage 1, stage 2, ...]` after `make_divisible(., 8)`.
    pub fn channels_per_stage(&self) -> Vec<usize> {
        let base = make_divisible(self.base_channels as f64, 8);
        std::iter::once(base)
            .chain(
                (0..self.n_blocks.len()).map(|s| {
                    make_divisible(base as f64 * self.channels_multiplier.powi(s as i32), 8)
                }),
            )
            .collect()
    }

    /// Initialises the baseline for `n_classes` classes.
    pub fn init(&self, n_classes: usize, device: &Device) -> Baseline {
        let ch = self.channels_per_stage();
        let in_c = vec![
            ConvBnConfig::new(self.in_channels, ch[0] / 4, 3)
                .with_stride([2, 2])
                .init(device),
            ConvBnConfig::new(ch[0] / 4, ch[0], 3)
                .with_stride([2, 2])
                .init(device),
        ];
        let mut blocks = Vec::new();
        let mut id = 0;
        for (stage, &n) in self.n_blocks.iter().enumerate() {
            let mut c_in = ch[stage];
            for _ in 0..n {
                id += 1;
                let stride = self
                    .strides
                    .iter()
                    .find(|s| s.block == id)
                    .map_or([1, 1], |s| s.stride);
                blocks.push(BaselineBlock::new(
                    c_in,
                    ch[stage + 1],
                    self.expansion_rate,
                    stride,
                    device,
                ));
                c_in = ch[stage + 1];
            }
        }
        Baseline {
            in_c,
            blocks,
            head: ClassifierHead::new(*ch.last().expect("at least one width"), n_classes, device),
        }
    }
}

impl Baseline {
    /// Log-mel `[B, 1, n_mels, n_frames]` -> logits `[B, n_classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for c in &self.in_c {
            x = c.forward(x);
        }
        for b in &self.blocks {
            x = b.forward(x);
        }
        self.head.forward(x)
    }

    /// Records every layer for an input `[1, n_mels, n_frames]`.
    pub fn tally(&self, t: &mut Tally, input: [usize; 3]) -> [usize; 3] {
        let mut s = input;
        for (i, c) in self.in_c.iter().enumerate() {
            s = c.tally(t, &format!("in_c.{i}"), s);
        }
        for (i, b) in self.blocks.iter().enumerate() {
            s = b.tally(&format!("b{}", i + 1), s, t);
        }
        self.head.tally("head", s, t)
    }
}
