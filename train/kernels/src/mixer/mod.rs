//! The Mamba mixer (everything between `in_proj` and `out_proj`) as one fused kernel:
//! `u = SiLU(causal depthwise conv1d(x))`, `dt, B, C = x_proj(u)`,
//! `delta = softplus(dt_proj(dt))`, `y = selective_scan(u, delta, A, B, C, D)`, output
//! `y * SiLU(z)` (Gu & Dao 2023, `mamba_simple.Mamba.forward` without `in_proj`/`out_proj`).
//!
//! - [`training`]: forward and hand-written backward over token-major `[S, L, 2 d_inner]`
//!   batches (the burn op of the `train` crate).
//! - [`inference`]: the forward pass of one channel-major `[2 d_inner, L]` sequence, on floats
//!   or on the int8 codes of `in_proj` (the int8 engine's op).

pub mod inference;
pub mod training;
