//! The fused ops on burn's Cube backend (wgpu, CUDA; train's `wgpu` / `cuda` features).
//!
//! Every fused op of [`crate::ops`], [`crate::scan`] and [`crate::mixer`] checks its device
//! ([`on_cube`]) and, on a Cube device, runs one of:
//!
//! - [`scan`]: the selective scan, forward and backward, as CubeCL kernels behind
//!   [`crate::scan::SelectiveScanOps`] (one unit per (sequence, channel) with its `d_state`
//!   hidden states in registers, `B`/`C` staged in shared memory, gradient reductions in shared
//!   memory and per-sequence partials summed by burn's reduce kernels: no float atomics, which
//!   WGSL lacks);
//! - [`compose`]: the other ops as the compositions of burn's tensor ops that serve as their
//!   references in the tests (burn's own Cube kernels, differentiated by burn's autodiff); the
//!   Mamba mixer as that composition around the scan kernel.
//!
//! Without a Cube runtime in the build, [`on_cube`] is `false` and only [`compose`] is
//! compiled (it is plain burn).

pub mod compose;
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
