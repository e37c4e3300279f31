//! Backend selection: which burn device the toolkit computes on.
//!
//! burn 0.22 picks the backend at run time through the [`Device`]; every model and the trainer
//! are written once against `Tensor<D>` and run unchanged on any device.
//!
//! - Default: **Flex**, burn's pure-Rust CPU backend (gemm, SIMD, rayon). It builds offline
//!   and is the fast CPU choice.
//! - With train's `ndarray` cargo feature, the environment variable `ASC_BACKEND=ndarray`
//!   selects burn's (deprecated, slower) NdArray backend instead.
//! - GPU backends (`wgpu`, `cuda` cargo features of train) take the same code path; they are
//!   not built by CI (their build scripts need drivers or downloads) and are not selected here.

use burn::tensor::Device;

/// Name of the environment variable that selects the CPU backend (`flex` or `ndarray`).
pub const BACKEND_ENV: &str = "ASC_BACKEND";

/// The inference device: Flex, or NdArray when built with the `ndarray` feature and
/// `ASC_BACKEND=ndarray` is set. Any other value of `ASC_BACKEND` falls back to Flex.
pub fn default_device() -> Device {
    #[cfg(feature = "ndarray")]
    if std::env::var(BACKEND_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("ndarray")) {
        #[allow(deprecated)] // the users asked for ndarray by name; Flex stays the default
        return Device::ndarray();
    }
    Device::flex()
}

/// The training device: [`default_device`] with autodiff switched on.
pub fn training_device() -> Device {
    default_device().autodiff()
}

/// Runs `f` on a worker of the global rayon pool (right here when already on one).
///
/// A training step is hundreds of ops, most of them parallel: called from a thread outside the
/// pool, each one injects its tasks and parks the caller until the workers are done (two
/// context switches per op); from inside, the calling worker takes part in the work. The
/// trainers run each step's tensor work through this (about 4 % more samples/s on 2 cores).
/// `f` must not block on work that only the pool can do (the loader's channel), which with
/// one worker would never run.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// Keeps freed tensor buffers in the process heap instead of returning them to the kernel.
///
/// A training step allocates and frees hundreds of activation buffers of 1-32 MB. glibc's
/// `malloc` serves such sizes with fresh `mmap`s and `munmap`s them on `free`, so every step
/// page-faults and zeroes all its activations again (a fifth of the step's time in `perf`:
/// page faults, `clear_page`, cgroup accounting). With the `mmap` threshold above any tensor and
/// trimming off, the heap keeps the buffers for reuse; resident memory stays at the high-water
/// mark of one step. A no-op on targets other than glibc. Call once, at the start of `main`.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator tuning parameters; it is called before any
    // other thread exists (start of `main`), and its result only reports success.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        // One arena: rayon workers free buffers that the main thread allocated and vice versa.
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
