//! Mamba's selective scan (the S6 recurrence) on `f32` buffers:
//! `h_t = exp(delta_t A) ⊙ h_{t-1} + delta_t B_t u_t`, `y_t = <h_t, C_t> + D u_t`, `h_0 = 0`
//! (Gu & Dao 2023, Algorithm 2; `delta` already softplus'ed by the caller).
//!
//! - [`channel_major`]: forward and hand-written backward over `[batch, d_inner, L]` buffers
//!   (burn's layout), states in the vector lanes, any `d_state`; [`channel_major::SeqScan`] runs
//!   one sequence inside a caller's task (the training mixer).
//! - [`time_major`]: `d_state` 16 on AVX-512, channels in the lanes and the states in
//!   registers, forward and backward over `[L, d_inner]` buffers (the mixers' fast path).
//! - [`step`]: one time step for a block of channels, states in memory (the inference
//!   mixer's scan for other `d_state` or instruction sets).

pub mod channel_major;
pub mod step;
#[cfg(target_arch = "x86_64")]
pub mod time_major;

pub use channel_major::{ScanDims, ScanGrads, backward, backward_with, forward, forward_with};
