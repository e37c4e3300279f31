//! The fused ops on burn's Cube backend (wgpu, CUDA; train's `wgpu` / `cuda` features).
//!
//! Every fused op of [`crate::ops`] checks its device ([`on_cube`]) and, on a Cube device, runs
//! one of:
//!
//! - [`scan`]: the selective scan, forward and backward, as CubeCL kernels behind
//!   [`crate::ops::scan::SelectiveScanOps`] (one unit per (sequence, channel) with its `d_state`
//!   hidden states in registers, `B`/`C` staged in shared memory, gradient reductions in shared
//!   memory and per-sequence partials summed by burn's reduce kernels: no float atomics, which
//!   WGSL lacks);
//! - the op's composition from burn's tensor ops (the `*_reference` function of its module in
//!   [`crate::ops`], which its fused CPU kernel is tested against), computed by burn's own Cube
//!   kernels and differentiated by burn's autodiff; the Mamba mixer as that composition around
//!   the scan kernel ([`crate::ops::mixer::mamba_mixer_composed`]).
//!
//! Without a Cube runtime in the build, [`on_cube`] is `false` and nothing else is compiled.

#[cfg(feature = "cube")]
pub mod scan;

use burn::tensor::Device;

/// Whether `device` (with or without autodiff) is a device of burn's Cube backend.
pub fn on_cube(device: &Device) -> bool {
    #[cfg(feature = "cube")]
    {
        use burn::backend::DispatchDevice;
        let inner = match device.as_dispatch() {
            DispatchDevice::Autodiff(ad) => &**ad,
            other => other,
        };
        matches!(inner, DispatchDevice::Cube(_))
    }
    #[cfg(not(feature = "cube"))]
    {
        let _ = device;
        false
    }
}
