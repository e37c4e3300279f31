//! [`MaxPool`]: the 2x2 max pooling between IRMamba's parallel Mamba blocks.

use burn::module::Module;
use burn::tensor::Tensor;

use crate::complexity::Tally;

/// Non-overlapping max pooling (kernel = stride), floor mode.
#[derive(Module, Debug)]
pub struct MaxPool {
    /// Kernel and stride `[freq, time]`.
    pub size: [usize; 2],
}

impl MaxPool {
    /// A `size` max pooling with stride `size`.
    pub fn new(size: [usize; 2]) -> Self {
        Self { size }
    }

    /// `[B, C, H, W] -> [B, C, H / s_f, W / s_t]` ([`crate::ops::max_pool2d`], equal to burn's
    /// `MaxPool2d` with kernel and stride `size`).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        crate::ops::max_pool2d(x, self.size)
    }

    /// Records the pooling (no parameters, no MACs); returns its output shape.
    pub fn tally(&self, path: &str, input: [usize; 3], t: &mut Tally) -> [usize; 3] {
        let out = [input[0], input[1] / self.size[0], input[2] / self.size[1]];
        t.shape_only(path, "MaxPool2d", out.to_vec());
        out
    }
}
