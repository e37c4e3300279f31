//! [`Mamba`]: one Mamba block (Gu & Dao 2023, `mamba_simple.Mamba`), the VSS module of the
//! parallel Mamba blocks.
//!
//! Forward for a token sequence `u: [B, L, d_model]` (`d_inner = expand * d_model`):
//! `x, z = in_proj(u)`; `x = SiLU(causal depthwise conv1d(x))` (kernel `d_conv`);
//! `dt, B, C = x_proj(x)` (`dt_rank`, `d_state`, `d_state`); `delta = softplus(dt_proj(dt))`;
//! `A = -exp(A_log)`; the selective scan `h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t`,
//! `y_t = <h_t, C_t> + D x_t` ([`crate::ops::scan::selective_scan`]); output `out_proj(y * SiLU(z))`.
//!
//! Defaults and initialisation follow the reference: `d_state` 16, `d_conv` 4, `expand` 2,
//! `dt_rank = ceil(d_model / 16)`, no bias in `in_proj`/`out_proj`, conv bias on,
//! `A_log[c, n] = ln(n + 1)`, `D = 1`, `dt_proj.weight ~ U(-dt_rank^-1/2, dt_rank^-1/2)`,
//! `dt_proj.bias = softplus^-1(dt)` with `dt` log-uniform in `[dt_min, dt_max] = [1e-3, 0.1]`
//! floored at `1e-4`. Parameters: `6 d^2 + 4 d R + 110 d` for `d = d_model`, `R = dt_rank`
//! (at `d_state` 16, `expand` 2, `d_conv` 4).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig1d};
use burn::tensor::{Device, Distribution, Tensor, TensorData};

use crate::complexity::Tally;

/// One Mamba block on `[B, L, d_model]` sequences.
#[derive(Module, Debug)]
pub struct Mamba {
    /// `d_model -> 2 d_inner` (x and the gate z), no bias.
    pub in_proj: Linear,
    /// Causal depthwise convolution over time, kernel `d_conv`, with bias.
    pub conv1d: Conv1d,
    /// `d_inner -> dt_rank + 2 d_state` (dt, B, C), no bias.
    pub x_proj: Linear,
    /// `dt_rank -> d_inner` with bias (the dt bias sets the initial time scales).
    pub dt_proj: Linear,
    /// `A_log: [d_inner, d_state]`, `A = -exp(A_log)`.
    pub a_log: Param<Tensor<2>>,
    /// Skip `D: [d_inner]`.
    pub d: Param<Tensor<1>>,
    /// `d_inner -> d_model`, no bias.
    pub out_proj: Linear,
    /// Inner width `expand * d_model`.
    pub d_inner: usize,
    /// Rank of the dt projection.
    pub dt_rank: usize,
    /// SSM state size `N`.
    pub d_state: usize,
}

/// Configuration of a [`Mamba`] block (the reference's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MambaConfig {
    /// Model width.
    pub d_model: usize,
    /// SSM state size `N` (16).
    pub d_state: usize,
    /// Causal convolution width (4).
    pub d_conv: usize,
    /// Expansion factor (2).
    pub expand: usize,
    /// Smallest initial time step (1e-3).
    pub dt_min: f64,
    /// Largest initial time step (0.1).
    pub dt_max: f64,
    /// Floor of the initial time steps (1e-4).
    pub dt_init_floor: f64,
}

impl MambaConfig {
    /// The reference defaults for a given `d_model`.
    pub fn new(d_model: usize) -> Self {
        Self {
            d_model,
            d_state: 16,
            d_conv: 4,
            expand: 2,
            dt_min: 1e-3,
            dt_max: 0.1,
            dt_init_floor: 1e-4,
        }
    }

    /// Sets the state size.
    pub fn with_d_state(mut self, d_state: usize) -> Self {
        self.d_state = d_state;
        self
    }

    /// `ceil(d_model / 16)`.
    pub fn dt_rank(&self) -> usize {
        self.d_model.div_ceil(16)
    }

    /// Initialises the block (see the module docs for the initialisation).
    pub fn init(&self, device: &Device) -> Mamba {
        let d_inner = self.expand * self.d_model;
        let dt_rank = self.dt_rank();
        let n = self.d_state;
        let in_proj = LinearConfig::new(self.d_model, 2 * d_inner)
            .with_bias(false)
            .init(device);
        let conv1d = Conv1dConfig::new(d_inner, d_inner, self.d_conv)
            .with_groups(d_inner)
            .with_padding(PaddingConfig1d::Explicit(self.d_conv - 1, 0))
            .with_bias(true)
            .init(device);
        let x_proj = LinearConfig::new(d_inner, dt_rank + 2 * n)
            .with_bias(false)
            .init(device);
        let std = (dt_rank as f64).powf(-0.5);
        let mut dt_proj = LinearConfig::new(dt_rank, d_inner)
            .with_initializer(Initializer::Uniform {
                min: -std,
                max: std,
            })
            .init(device);
        // dt = exp(U(ln dt_min, ln dt_max)) floored; bias = softplus^-1(dt) = dt + ln(1 - e^-dt).
        let (lo, hi) = (self.dt_min.ln(), self.dt_max.ln());
        let dt = Tensor::<1>::random([d_inner], Distribution::Uniform(lo, hi), device)
            .exp()
            .clamp_min(self.dt_init_floor);
        let inv_dt = dt.clone() + (-(dt.neg().exp()) + 1.0).log();
        dt_proj.bias = Some(Param::from_tensor(inv_dt));
        let a: Vec<f32> = (0..d_inner)
            .flat_map(|_| (0..n).map(|j| ((j + 1) as f32).ln()))
            .collect();
        let a_log = Param::from_tensor(Tensor::from_data(TensorData::new(a, [d_inner, n]), device));
        let d = Param::from_tensor(Tensor::ones([d_inner], device));
        let out_proj = LinearConfig::new(d_inner, self.d_model)
            .with_bias(false)
            .init(device);
        Mamba {
            in_proj,
            conv1d,
            x_proj,
            dt_proj,
            a_log,
            d,
            out_proj,
            d_inner,
            dt_rank,
            d_state: n,
        }
    }
}

impl Mamba {
    /// `[B, L, d_model] -> [B, L, d_model]`: `out_proj(mixer(in_proj(u)))`.
    pub fn forward(&self, u: Tensor<3>) -> Tensor<3> {
        let xz = crate::ops::linear_tokens(&self.in_proj, u);
        crate::ops::linear_tokens(&self.out_proj, self.mixer(xz))
    }

    /// The float part between `in_proj` and `out_proj`: `xz: [B, L, 2 d_inner] -> y * SiLU(z)`
    /// `[B, L, d_inner]` (conv1d, SiLU, `x_proj`, `dt_proj` + softplus, selective scan, `D`
    /// skip, gating). Split out so that QAT ([`crate::qat`]) can fake-quantize `in_proj` and
    /// `out_proj` and keep this part in floating point, as the int8 engine does.
    pub fn mixer(&self, xz: Tensor<3>) -> Tensor<3> {
        crate::ops::mixer::mamba_mixer(xz, self.mixer_params())
    }

    /// The mixer's parameters as tensors (`A = -exp(A_log)`: the exponential stays in the
    /// graph, so `A_log` receives its gradient through it).
    pub fn mixer_params(&self) -> crate::ops::mixer::MixerParams {
        crate::ops::mixer::MixerParams {
            conv_w: self.conv1d.weight.val(),
            conv_b: match &self.conv1d.bias {
                Some(b) => b.val(),
                None => Tensor::zeros([self.d_inner], &self.d.device()),
            },
            x_proj: self.x_proj.weight.val(),
            dt_proj: self.dt_proj.weight.val(),
            dt_b: match &self.dt_proj.bias {
                Some(b) => b.val(),
                None => Tensor::zeros([self.d_inner], &self.d.device()),
            },
            a: self.a_log.val().exp().neg(),
            d: self.d.val(),
        }
    }

    /// Records the block's layers for a sequence of `tokens` tokens.
    pub fn tally(&self, path: &str, tokens: usize, t: &mut Tally) {
        t.linear(&Tally::child(path, "in_proj"), &self.in_proj, tokens);
        t.conv1d(&Tally::child(path, "conv1d"), &self.conv1d, tokens);
        t.linear(&Tally::child(path, "x_proj"), &self.x_proj, tokens);
        t.linear(&Tally::child(path, "dt_proj"), &self.dt_proj, tokens);
        let ssm_params = self.a_log.dims().iter().product::<usize>() + self.d.dims()[0];
        t.scan(
            &Tally::child(path, "scan"),
            ssm_params,
            self.d_inner,
            self.d_state,
            tokens,
        );
        t.linear(&Tally::child(path, "out_proj"), &self.out_proj, tokens);
    }
}
