//! The models: the IRMamba student, the DCASE2024 baseline and a CNN teacher, in burn.
//!
//! Every model maps a log-mel batch `[B, 1, n_mels, n_frames]` (256 x 65 with the DCASE front
//! end) to logits `[B, n_classes]` through [`Model::forward`]; [`ModelConfig::init`] builds it.
//! Conv + BN (+ ReLU) triples are [`ConvBn`] sub-modules everywhere, so quantization-aware
//! training can fold and fake-quantize them by name.
//!
//! # IRMamba: the choices the report leaves open
//!
//! The report (Shao, Jiang, Li, DCASE2024 technical report) gives Table 1 (shapes per layer)
//! and Table 2 (PMBN, VSSN, parameters, MMACs for S1-S3) and nothing finer. Our choices:
//!
//! - **Input**: Table 1 starts at 256 x 64; the DCASE front end gives 256 x 65 frames. The time
//!   axis is cropped to a multiple of 32 frames (the total time downsampling of the network),
//!   i.e. the last frame is dropped ([`IrMambaConfig::time_multiple`]). Any other input size
//!   works; odd sizes are floored by the poolings.
//! - **Stem** ("DWConv s2" twice, 1 -> 8 -> 32): a 3x3 stride-2 convolution 1 -> 8 (depthwise
//!   with channel multiplier 8 on the single input channel), then a depthwise-separable pair
//!   (3x3 stride-2 depthwise on 8 channels, 1x1 pointwise 8 -> 32); BN + ReLU after each.
//! - **Inverted residual blocks**: MobileNetV2 (1x1 expand, 3x3 depthwise, 1x1 linear
//!   projection, BN after each), hidden width `make_divisible(c_in * t, 8)`; **ReLU** instead of
//!   ReLU6 so that conv-BN-ReLU fuses for int8 as in the DCASE baseline; identity shortcut only
//!   with stride 1 and equal widths (none of the three IRBs of Table 1 qualifies). Expansion
//!   ratios `t` per preset (below). "Stride 2x1" halves the mel axis (64x16 -> 32x16).
//! - **Parallel Mamba block (PMB)**: UltraLight VM-UNet's PVM layer ([`ParallelMamba`]): the
//!   feature map is read as a sequence of `H * W` tokens (mel-major, row-major), LayerNorm,
//!   `P` channel groups, Mamba + learned skip scale, concat, the same LayerNorm, Linear to the
//!   output width. No extra activation or normalisation around it (Table 1 shows none); the
//!   max pooling follows directly. Mamba defaults as the reference (`d_state` 16, `d_conv` 4,
//!   `expand` 2, `dt_rank = ceil(d/16)`).
//! - **PMBN** = the number of PMBs; Table 1's three stages (48, 64, 72 channels, each followed
//!   by 2x2 max pooling) hold them, extra blocks repeat a stage's width.
//! - **VSSN** ("number of VSS modules") = the number of parallel Mamba *paths*, the sum of the
//!   groups `P` over all PMBs. With unshared groups that is also the number of Mamba modules
//!   (S1: 3 PMBs x 2 = 6). VSSN 185 of S3 cannot be a count of paths or modules within
//!   126.41K parameters and 4 PMBs (it would need groups of 1-2 channels); we keep S3's PMBN
//!   and parameter budget and give it many small unshared Mambas (8 + 2 + 16 + 2 groups).
//! - **Shared vs unshared** Mamba weights across the groups: configurable
//!   ([`IrMambaConfig::shared_mamba`]); S1 and S3 unshared, S2 shared (UltraLight VM-UNet).
//! - **Head**: 1x1 conv 128 -> classes with BN (no bias), global average pooling (as the
//!   baseline).
//!
//! | preset | PMBs (groups per block)    | shared | IRB `t`   | params  | report  | MACs (+scan)   | torchinfo | report |
//! |--------|----------------------------|--------|-----------|---------|---------|----------------|-----------|--------|
//! | s1     | `48:[2] 64:[2] 72:[2]`     | no     | 2, 2.5, 2 | 107,431 | 107.46K | 28.78M (3.21M) | 16.49M    | 16.9M  |
//! | s2     | `48:[6] 64:[2,2] 72:[1,6]` | yes    | 2, 2, 2   | 121,889 | 121.9K  | 29.24M (4.24M) | 14.76M    | 17.3M  |
//! | s3     | `48:[8] 64:[2,16] 72:[2]`  | no     | 1.5, 2, 3 | 126,408 | 126.41K | 25.03M (4.01M) | 13.36M    | 16.8M  |
//!
//! MACs are counted by [`crate::complexity`] for a 1 x 256 x 65 input: with sequence Linears
//! counted per token (true MACs) plus the selective scan (in brackets), all presets stay under
//! the 30M limit. The report's MMACs (16.8-17.3M) are close to the torchinfo convention, which
//! counts a sequence Linear once per example and does not see the scan: for S1 we get 16.49M.

pub mod baseline;
pub mod cnn_teacher;
pub mod config;
pub mod conv_bn;
pub mod head;
pub mod irb;
pub mod irmamba;
pub mod mamba;
pub mod pool;
pub mod pvm;
pub mod stem;

#[cfg(test)]
mod tests;

use burn::module::Module;
use burn::tensor::Tensor;

pub use baseline::{Baseline, BaselineBlock};
pub use cnn_teacher::{CnnTeacher, ResBlock};
pub use config::{
    BaselineConfig, BlockStride, CnnTeacherConfig, IrMambaConfig, ModelConfig, ModelConfigError,
    PmbStageConfig,
};
pub use conv_bn::{Activation, ConvBn, ConvBnConfig};
pub use head::ClassifierHead;
pub use irb::{InvertedResidual, InvertedResidualConfig};
pub use irmamba::{IrMamba, PmbStage};
pub use mamba::{Mamba, MambaConfig};
pub use pool::MaxPool;
pub use pvm::{ParallelMamba, ParallelMambaConfig};
pub use stem::{Stem, StemConfig};

use crate::complexity::{ComplexityReport, Tally};

/// Any of the toolkit's models.
// One model lives per run: the variants' size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Model {
    /// The IRMamba student.
    IrMamba(IrMamba),
    /// The DCASE2024 baseline.
    Baseline(Baseline),
    /// The CP-ResNet-like teacher.
    CnnTeacher(CnnTeacher),
}

impl Model {
    /// Log-mel `[B, 1, n_mels, n_frames]` -> logits `[B, n_classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Self::IrMamba(m) => m.forward(x),
            Self::Baseline(m) => m.forward(x),
            Self::CnnTeacher(m) => m.forward(x),
        }
    }

    /// Records every layer's complexity for an input `[1, n_mels, n_frames]`
    /// (see [`ModelConfig::complexity`]).
    pub fn tally(&self, t: &mut Tally, input: [usize; 3]) -> [usize; 3] {
        match self {
            Self::IrMamba(m) => m.tally(t, input),
            Self::Baseline(m) => m.tally(t, input),
            Self::CnnTeacher(m) => m.tally(t, input),
        }
    }
}

impl ModelConfig {
    /// The DCASE complexity report ([`crate::complexity`]) of this model for `n_classes`
    /// classes and a `[1, n_mels, n_frames]` input.
    ///
    /// The model is initialised on the default (CPU) device and walked layer by layer; counts
    /// come from its parameter shapes.
    pub fn complexity(&self, n_classes: usize, n_mels: usize, n_frames: usize) -> ComplexityReport {
        let device = crate::backend::default_device();
        let model = self.init(n_classes, &device);
        let mut tally = Tally::default();
        model.tally(&mut tally, [1, n_mels, n_frames]);
        ComplexityReport {
            model: self.name(),
            input: [1, n_mels, n_frames],
            rows: tally.rows,
            buffers: tally.buffers,
            module_params: model.num_params(),
        }
    }
}
