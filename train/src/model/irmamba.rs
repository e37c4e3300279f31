//! [`IrMamba`]: the student network of the IRMamba report (Table 1): a depthwise stem,
//! MobileNetV2 inverted residual blocks, parallel Mamba blocks between max poolings, one more
//! inverted residual block, and a 1x1 convolution + average pooling head.
//!
//! With the default widths, a `[B, 1, 256, 64]` log-mel input flows (C x F x T):
//! `1x256x64 -stem-> 32x64x16 -IRB-> 48x64x16 -IRB s(2,1)-> 48x32x16 -PMB-> 48x32x16 -pool->
//! 48x16x8 -PMB-> 64x16x8 -pool-> 64x8x4 -PMB-> 72x8x4 -pool-> 72x4x2 -IRB-> 128x4x2
//! -conv 1x1-> 10x4x2 -avg-> 10`. See [`crate::model`] for the choices the report leaves open.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::config::IrMambaConfig;
use super::head::ClassifierHead;
use super::irb::{InvertedResidual, InvertedResidualConfig};
use super::pool::MaxPool;
use super::pvm::{ParallelMamba, ParallelMambaConfig};
use super::stem::{Stem, StemConfig};
use crate::complexity::Tally;

/// One PMB stage: one or more parallel Mamba blocks, then a 2x2 max pooling.
#[derive(Module, Debug)]
pub struct PmbStage {
    /// The blocks; the first maps the stage's input width to its output width.
    pub blocks: Vec<ParallelMamba>,
    /// 2x2 max pooling after the blocks.
    pub pool: MaxPool,
}

/// The IRMamba student.
#[derive(Module, Debug)]
pub struct IrMamba {
    /// Two strided depthwise(-separable) convolutions: `1 -> 8 -> 32` channels, `/4` in F and T.
    pub stem: Stem,
    /// Inverted residual block, stride 1 (`32 -> 48`).
    pub irb1: InvertedResidual,
    /// Inverted residual block, stride (2, 1) (`48 -> 48`, halves the mel axis).
    pub irb2: InvertedResidual,
    /// Parallel Mamba stages (PMBs + max pooling).
    pub stages: Vec<PmbStage>,
    /// Last inverted residual block (`72 -> 128`).
    pub irb3: InvertedResidual,
    /// 1x1 convolution to the classes + global average pooling.
    pub head: ClassifierHead,
    /// The time axis is cropped to a multiple of this many frames (32: 65 -> 64).
    pub time_multiple: usize,
}

impl IrMambaConfig {
    /// Initialises the student for `n_classes` classes. The configuration must be valid
    /// ([`IrMambaConfig::validate`]); invalid widths panic with a message naming the field.
    pub fn init(&self, n_classes: usize, device: &Device) -> IrMamba {
        if let Err(e) = self.validate() {
            panic!("invalid IRMamba configuration: {e}");
        }
        let [c1, c2] = self.stem_channels;
        let [i1, i2] = self.irb_channels;
        let [t1, t2, t3] = self.irb_expansion;
        let mut c = i2;
        let stages = self
            .stages
            .iter()
            .map(|s| {
                let blocks = s
                    .groups
                    .iter()
                    .map(|&p| {
                        let blk = ParallelMambaConfig {
                            c_in: c,
                            c_out: s.channels,
                            groups: p,
                            shared: self.shared_mamba,
                            d_state: self.d_state,
                        }
                        .init(device);
                        c = s.channels;
                        blk
                    })
                    .collect();
                PmbStage {
                    blocks,
                    pool: MaxPool::new([2, 2]),
                }
            })
            .collect();
        let irb = |c_in, c_out, expansion, stride| {
            InvertedResidualConfig {
                c_in,
                c_out,
                expansion,
                stride,
            }
            .init(device)
        };
        IrMamba {
            stem: StemConfig { c_in: 1, c1, c2 }.init(device),
            irb1: irb(c2, i1, t1, [1, 1]),
            irb2: irb(i1, i2, t2, self.irb2_stride),
            stages,
            irb3: irb(c, self.final_channels, t3, [1, 1]),
            head: ClassifierHead::new(self.final_channels, n_classes, device),
            time_multiple: self.time_multiple,
        }
    }
}

impl IrMamba {
    /// Frames kept from `n_frames`: the largest multiple of `time_multiple` (all of them when
    /// shorter than one multiple). 65 -> 64 for the DCASE front end.
    pub fn cropped_frames(&self, n_frames: usize) -> usize {
        if self.time_multiple > 1 && n_frames >= self.time_multiple {
            n_frames - n_frames % self.time_multiple
        } else {
            n_frames
        }
    }

    /// Log-mel `[B, 1, n_mels, n_frames]` -> logits `[B, n_classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.forward_features(x);
        self.head.forward(x)
    }

    /// Everything but the head: `[B, 1, n_mels, n_frames] -> [B, final_channels, F', T']`.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<4> {
        let t = x.dims()[3];
        let x = x.narrow(3, 0, self.cropped_frames(t));
        let mut x = self.irb2.forward(self.irb1.forward(self.stem.forward(x)));
        for stage in &self.stages {
            for blk in &stage.blocks {
                x = blk.forward(x);
            }
            x = stage.pool.forward(x);
        }
        self.irb3.forward(x)
    }

    /// Records every layer for an input `[1, n_mels, n_frames]`; returns the head's output shape.
    pub fn tally(&self, t: &mut Tally, input: [usize; 3]) -> [usize; 3] {
        let input = [input[0], input[1], self.cropped_frames(input[2])];
        let s = self.stem.tally("stem", input, t);
        let s = self.irb1.tally("irb1", s, t);
        let mut s = self.irb2.tally("irb2", s, t);
        for (i, stage) in self.stages.iter().enumerate() {
            for (j, blk) in stage.blocks.iter().enumerate() {
                s = blk.tally(&format!("pmb.{i}.{j}"), s, t);
            }
            s = stage.pool.tally(&format!("pool.{i}"), s, t);
        }
        let s = self.irb3.tally("irb3", s, t);
        self.head.tally("head", s, t)
    }
}
