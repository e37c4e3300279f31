//! [`ParallelMamba`]: the parallel Mamba block (PMB), after UltraLight VM-UNet's PVM layer
//! (Wu et al. 2024), on feature maps.
//!
//! `[B, C, H, W]` is flattened row-major to the token sequence `[B, H*W, C]` (frequency-major:
//! the sequence runs over time within each mel band, band after band), normalised by a
//! LayerNorm(C), split along the channels into `P` groups of `C / P` channels, each group goes
//! through a Mamba plus `skip_scale * group` (a learned scalar, initially 1), the groups are
//! concatenated, normalised by *the same* LayerNorm, and a Linear maps `C -> C_out`; the result
//! is reshaped back to `[B, C_out, H, W]`.
//!
//! The reference shares ONE Mamba between the groups (`shared = true`, the groups are then
//! run as one batch of `B * P` sequences); `shared = false` gives each group its own Mamba.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::mamba::{Mamba, MambaConfig};
use crate::complexity::Tally;

/// Epsilon of the PMB's LayerNorm (burn's and PyTorch's default).
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// Parallel Mamba block: LayerNorm, `P` channel groups through Mamba, LayerNorm, Linear.
#[derive(Module, Debug)]
pub struct ParallelMamba {
    /// LayerNorm over the `C` input channels, applied before and after the Mambas.
    pub norm: LayerNorm,
    /// One shared Mamba (`len() == 1`) or one per group (`len() == groups`).
    pub mamba: Vec<Mamba>,
    /// Learned scale of the per-group skip connection, `[1]`, initially 1.
    pub skip_scale: Param<Tensor<1>>,
    /// `C -> C_out`, with bias.
    pub proj: Linear,
    /// Number of channel groups `P`.
    pub groups: usize,
}

/// Configuration of a [`ParallelMamba`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParallelMambaConfig {
    /// Input channels `C` (a multiple of `groups`).
    pub c_in: usize,
    /// Output channels `C_out`.
    pub c_out: usize,
    /// Channel groups `P`; each Mamba has `d_model = C / P`.
    pub groups: usize,
    /// Whether the groups share one Mamba (the reference) or have their own.
    pub shared: bool,
    /// SSM state size of the Mambas.
    pub d_state: usize,
}

impl ParallelMambaConfig {
    /// Initialises the block. `c_in` must be a multiple of `groups` (checked by
    /// [`crate::model::ModelConfig::validate`]).
    pub fn init(&self, device: &Device) -> ParallelMamba {
        let d_model = self.c_in / self.groups;
        let n_mamba = if self.shared { 1 } else { self.groups };
        ParallelMamba {
            norm: LayerNormConfig::new(self.c_in)
                .with_epsilon(LAYER_NORM_EPS)
                .init(device),
            mamba: (0..n_mamba)
                .map(|_| {
                    MambaConfig::new(d_model)
                        .with_d_state(self.d_state)
                        .init(device)
                })
                .collect(),
            skip_scale: Param::from_tensor(Tensor::ones([1], device)),
            proj: LinearConfig::new(self.c_in, self.c_out).init(device),
            groups: self.groups,
        }
    }
}

impl ParallelMamba {
    /// `[B, C, H, W] -> [B, C_out, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        use crate::ops::{scaled_add, swap_mid};
        let [batch, c, h, w] = x.dims();
        let (len, p) = (h * w, self.groups);
        let d = c / p;
        // The layout changes run as `swap_mid` ops on the rayon pool (burn's swap_dims +
        // reshape copied on the calling thread, both ways).
        let tokens = swap_mid(x.reshape([batch, c, len, 1])).reshape([batch, len, c]);
        let tokens = crate::ops::layer_norm(&self.norm, LAYER_NORM_EPS, tokens); // [B, L, C]
        let skip = self.skip_scale.val();
        let mixed = if self.mamba.len() == 1 {
            // Shared weights: the P groups are P more sequences of the batch.
            let groups = swap_mid(tokens.reshape([batch, len, p, d])).reshape([batch * p, len, d]);
            let y = scaled_add(self.mamba[0].forward(groups.clone()), groups, skip);
            swap_mid(y.reshape([batch, p, len, d])).reshape([batch, len, c])
        } else {
            // Groups outermost, `[P, B, L, d]`, so that each group is one contiguous block for
            // its own Mamba (channel slices of the tokens were strided views, copied by every
            // op that read them, both ways).
            let split =
                swap_mid(tokens.reshape([1, batch * len, p, d])).reshape([p, batch, len, d]);
            let outs = split
                .chunk(p, 0)
                .into_iter()
                .zip(&self.mamba)
                .map(|(g, m)| {
                    let g = g.reshape([batch, len, d]);
                    scaled_add(m.forward(g.clone()), g, skip.clone()).reshape([1, batch * len, d])
                })
                .collect();
            swap_mid(Tensor::cat(outs, 0).reshape([1, p, batch * len, d])).reshape([batch, len, c])
        };
        let y = crate::ops::linear_tokens(
            &self.proj,
            crate::ops::layer_norm(&self.norm, LAYER_NORM_EPS, mixed),
        ); // [B, L, C_out]
        let c_out = y.dims()[2];
        swap_mid(y.reshape([batch, len, c_out, 1])).reshape([batch, c_out, h, w])
    }

    /// Records the block's layers; returns its output shape.
    pub fn tally(&self, path: &str, input: [usize; 3], t: &mut Tally) -> [usize; 3] {
        let [_, h, w] = input;
        let tokens = h * w;
        // The LayerNorm runs twice (before and after the Mambas): its parameters once, its
        // MACs twice.
        t.layer_norm(&Tally::child(path, "norm"), &self.norm, tokens);
        let shared = self.mamba.len() == 1;
        for (i, m) in self.mamba.iter().enumerate() {
            let runs = if shared { self.groups } else { 1 };
            for g in 0..runs {
                let sub = if shared {
                    format!("{path}.mamba.0[group {g}]")
                } else {
                    format!("{path}.mamba.{i}")
                };
                let mut inner = Tally::default();
                m.tally(&sub, tokens, &mut inner);
                for mut row in inner.rows {
                    if shared && g > 0 {
                        row.params = 0; // shared weights: counted with group 0 only
                        row.float_params = 0;
                    }
                    t.push(row);
                }
            }
        }
        t.scalar(
            &Tally::child(path, "skip_scale"),
            self.skip_scale.dims()[0],
            vec![tokens, input[0]],
        );
        let mut second = Tally::default();
        second.layer_norm(&Tally::child(path, "norm[again]"), &self.norm, tokens);
        for mut row in second.rows {
            row.params = 0;
            row.float_params = 0;
            t.push(row);
        }
        t.linear(&Tally::child(path, "proj"), &self.proj, tokens);
        let c_out = self.proj.weight.dims()[1];
        [c_out, h, w]
    }
}
