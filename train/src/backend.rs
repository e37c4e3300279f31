//! Backend selection: which burn device the toolkit computes on.
//!
//! burn 0.22 picks the backend at run time through the [`Device`]; every model and the trainer
//! are written once against `Tensor<D>` and run unchanged on any device.
//!
//! - Default: **Flex** (`cpu`), burn's pure-Rust CPU backend (gemm, SIMD, rayon). It builds
//!   offline and is the fast CPU choice.
//! - With train's `ndarray` cargo feature, `ndarray` (or the older `ASC_BACKEND=ndarray`)
//!   selects burn's deprecated, slower NdArray backend.
//! - With train's `wgpu` feature: `wgpu` (the machine's best graphics API: Vulkan, Metal, DX12)
//!   and `vulkan` (pinned to Vulkan); with `cuda`: `cuda`. These are burn's Cube backend; the
//!   fused ops run their CubeCL kernels or burn-op compositions there ([`crate::ops`]).
//!
//! The device is named by `train --device SPEC` or the environment variable [`DEVICE_ENV`]
//! (`ASC_DEVICE`), parsed by [`parse_device`]; the binary selects it once ([`select_device`])
//! and [`default_device`] / [`training_device`] hand it out.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use burn::tensor::{Device, Tensor};

/// Name of the environment variable that selects the CPU backend (`flex` or `ndarray`); kept
/// for compatibility, [`DEVICE_ENV`] takes precedence.
pub const BACKEND_ENV: &str = "ASC_BACKEND";

/// Name of the environment variable that names the compute device (same syntax as
/// `--device`, see [`parse_device`]); `--device` takes precedence.
pub const DEVICE_ENV: &str = "ASC_DEVICE";

/// Which adapter of a graphics API a `wgpu` / `vulkan` device uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    /// The API's best adapter (a high-power GPU first).
    Default,
    /// The `n`-th discrete GPU.
    Discrete(usize),
    /// A CPU (software) adapter, e.g. Mesa's lavapipe.
    Cpu,
}

/// A compute device as named on the command line (`--device`) or in [`DEVICE_ENV`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// `cpu` (or `flex`): burn's Flex CPU backend, the default.
    Cpu,
    /// `ndarray`: burn's deprecated NdArray CPU backend (train's `ndarray` feature).
    NdArray,
    /// `wgpu[:N|:cpu]`: burn's wgpu runtime on the machine's preferred graphics API.
    Wgpu(Adapter),
    /// `vulkan[:N|:cpu]`: burn's wgpu runtime pinned to Vulkan (no silent fallback to GL).
    Vulkan(Adapter),
    /// `cuda[:N]`: the `N`-th CUDA GPU (train's `cuda` feature).
    Cuda(usize),
}

/// A device name that [`parse_device`] does not accept, or a device this build cannot open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceSpecError {
    /// Not one of the accepted forms.
    #[error(
        "unknown device `{0}`: expected cpu, ndarray, wgpu, wgpu:N, wgpu:cpu, vulkan, vulkan:N, \
         vulkan:cpu, cuda or cuda:N"
    )]
    Unknown(String),
    /// The backend is not compiled into this binary.
    #[error(
        "device `{spec}` needs train's `{feature}` cargo feature: rebuild with \
         `cargo build --release -p train --features {feature}` (see README, \"Training on a GPU\")"
    )]
    NotBuilt {
        /// The device asked for.
        spec: DeviceSpec,
        /// The cargo feature of `train` that provides it.
        feature: &'static str,
    },
}

/// Parses a device name: `cpu` | `flex` | `ndarray` | `wgpu[:N|:cpu]` | `vulkan[:N|:cpu]` |
/// `cuda[:N]` (case-insensitive, surrounding blanks ignored; `N` is a GPU index).
pub fn parse_device(s: &str) -> Result<DeviceSpec, DeviceSpecError> {
    let unknown = || DeviceSpecError::Unknown(s.to_string());
    let lower = s.trim().to_ascii_lowercase();
    let (name, arg) = match lower.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (lower.as_str(), None),
    };
    let index = |a: &str| a.parse::<usize>().map_err(|_| unknown());
    let adapter = |a: Option<&str>| match a {
        None => Ok(Adapter::Default),
        Some("cpu") => Ok(Adapter::Cpu),
        Some(a) => index(a).map(Adapter::Discrete),
    };
    match (name, arg) {
        ("cpu" | "flex", None) => Ok(DeviceSpec::Cpu),
        ("ndarray", None) => Ok(DeviceSpec::NdArray),
        ("wgpu", a) => adapter(a).map(DeviceSpec::Wgpu),
        ("vulkan", a) => adapter(a).map(DeviceSpec::Vulkan),
        ("cuda", None) => Ok(DeviceSpec::Cuda(0)),
        ("cuda", Some(a)) => index(a).map(DeviceSpec::Cuda),
        _ => Err(unknown()),
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_device(s)
    }
}

impl fmt::Display for DeviceSpec {
    /// The canonical name, which [`parse_device`] reads back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let adapter = |f: &mut fmt::Formatter<'_>, api: &str, a: &Adapter| match a {
            Adapter::Default => write!(f, "{api}"),
            Adapter::Discrete(i) => write!(f, "{api}:{i}"),
            Adapter::Cpu => write!(f, "{api}:cpu"),
        };
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::NdArray => write!(f, "ndarray"),
            DeviceSpec::Wgpu(a) => adapter(f, "wgpu", a),
            DeviceSpec::Vulkan(a) => adapter(f, "vulkan", a),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// Whether this is a GPU (Cube backend) device.
    pub fn is_gpu(&self) -> bool {
        !matches!(self, DeviceSpec::Cpu | DeviceSpec::NdArray)
    }

    /// The burn device (without autodiff), or why this build cannot open it.
    pub fn device(&self) -> Result<Device, DeviceSpecError> {
        let not_built = |feature| DeviceSpecError::NotBuilt {
            spec: *self,
            feature,
        };
        match *self {
            DeviceSpec::Cpu => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            // the users asked for ndarray by name; Flex stays the default
            DeviceSpec::NdArray => Ok(Device::ndarray()),
            #[cfg(not(feature = "ndarray"))]
            DeviceSpec::NdArray => Err(not_built("ndarray")),
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu(a) => Ok(wgpu_device(a, burn::backend::WgpuBackend::Auto)),
            #[cfg(feature = "wgpu")]
            DeviceSpec::Vulkan(a) => Ok(wgpu_device(a, burn::backend::WgpuBackend::Vulkan)),
            #[cfg(not(feature = "wgpu"))]
            DeviceSpec::Wgpu(_) | DeviceSpec::Vulkan(_) => Err(not_built("wgpu")),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(i) => Ok(Device::cuda(i)),
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => Err(not_built("cuda")),
        }
    }
}

/// A wgpu device on `api` (`Vulkan` pins it: the device comes up there or not at all, with the
/// WGSL compiler unless burn's `vulkan` feature adds SPIR-V).
#[cfg(feature = "wgpu")]
fn wgpu_device(adapter: Adapter, api: burn::backend::WgpuBackend) -> Device {
    use burn::backend::{WgpuDevice, WgpuDeviceKind};
    let kind = match adapter {
        Adapter::Default => WgpuDeviceKind::DefaultDevice,
        Adapter::Discrete(i) => WgpuDeviceKind::DiscreteGpu(i),
        Adapter::Cpu => WgpuDeviceKind::Cpu,
    };
    Device::new(WgpuDevice::new(kind).on(api))
}

/// The device chosen by the binary ([`select_device`]); unset in tests and library use.
static SELECTED: OnceLock<DeviceSpec> = OnceLock::new();

/// The device named by `flag` (`--device`), else by [`DEVICE_ENV`], else by `recorded` (the
/// device a resumed run was started on), else `cpu`; `ASC_BACKEND=ndarray` still means
/// `ndarray` when nothing else names a device.
pub fn resolve_device(
    flag: Option<&str>,
    recorded: Option<&str>,
) -> Result<DeviceSpec, DeviceSpecError> {
    let env = std::env::var(DEVICE_ENV).ok();
    let legacy = std::env::var(BACKEND_ENV).ok();
    resolve_from(flag, env.as_deref(), recorded, legacy.as_deref())
}

/// [`resolve_device`] with the environment passed in: the first of `flag`, `env` (blank
/// counts as unset), `recorded` that is set, else `ndarray` when `legacy` (`ASC_BACKEND`) says
/// so, else `cpu`.
fn resolve_from(
    flag: Option<&str>,
    env: Option<&str>,
    recorded: Option<&str>,
    legacy: Option<&str>,
) -> Result<DeviceSpec, DeviceSpecError> {
    let env = env.filter(|v| !v.trim().is_empty());
    let legacy = legacy
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("ndarray"))
        .then_some("ndarray");
    let name = flag.or(env).or(recorded).or(legacy);
    name.map_or(Ok(DeviceSpec::Cpu), parse_device)
}

/// Opens `spec`'s device and names it ([`describe_device`]); a device that this build lacks or
/// that the machine cannot bring up (no driver, no such GPU) is an error instead of a later
/// panic inside burn.
pub fn open_device(spec: DeviceSpec) -> Result<(Device, String), String> {
    let device = spec.device().map_err(|e| e.to_string())?;
    let probe = device.clone();
    std::panic::catch_unwind(move || describe_device(spec, &probe))
        .map(|line| (device, line))
        .map_err(|p| {
            let why = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("unknown failure");
            format!("device `{spec}` could not be opened: {why}")
        })
}

/// Makes `spec` the device of [`default_device`] / [`training_device`] for the rest of the
/// process (the binary calls this once, before any tensor exists); checks that this build can
/// open it. A second call keeps the first choice and returns it.
pub fn select_device(spec: DeviceSpec) -> Result<DeviceSpec, DeviceSpecError> {
    spec.device()?;
    Ok(*SELECTED.get_or_init(|| spec))
}

/// The device [`default_device`] uses: the selected one, else the one [`resolve_device`]
/// finds in the environment.
///
/// # Panics
/// When [`DEVICE_ENV`] holds a name [`parse_device`] rejects (the binary reports that as an
/// error before it gets here).
pub fn current_spec() -> DeviceSpec {
    if let Some(s) = SELECTED.get() {
        return *s;
    }
    resolve_device(None, None).unwrap_or_else(|e| panic!("{DEVICE_ENV}: {e}"))
}

/// The inference device: [`current_spec`]'s device (Flex unless a device was selected or named
/// in [`DEVICE_ENV`]).
///
/// # Panics
/// When that device is not compiled into this build (see [`DeviceSpec::device`]).
pub fn default_device() -> Device {
    current_spec().device().unwrap_or_else(|e| panic!("{e}"))
}

/// The training device: [`default_device`] with autodiff switched on.
pub fn training_device() -> Device {
    default_device().autodiff()
}

/// The device whose random generator initialises a model for `device` ([`init_model`]):
/// `device` itself on the CPU backends, Flex (with autodiff when `device` has it) on a GPU
/// (whose generators draw other numbers).
pub fn init_device(device: &Device) -> Device {
    match (on_cube(device), device.is_autodiff()) {
        (false, _) => device.clone(),
        (true, false) => Device::flex(),
        (true, true) => Device::flex().autodiff(),
    }
}

/// A model for `device` built by `init` on [`init_device`] with its generator seeded with
/// `seed`, every parameter drawn right away, then moved to `device`: one seed gives the same
/// initial weights on every device.
///
/// burn draws a parameter lazily, at its first use, from the generator of the device it sits
/// on then: without drawing them here, a model moved to a GPU would draw on the GPU, and a
/// generator seeded between the initialisation and the first forward pass would decide the
/// weights instead of `seed`.
pub fn init_model<M: burn::module::Module>(
    device: &Device,
    seed: u64,
    init: impl FnOnce(&Device) -> M,
) -> M {
    /// Reads every float parameter once (which draws a lazy one).
    struct DrawNow;
    impl burn::module::ModuleVisitor for DrawNow {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    let on = init_device(device);
    on.seed(seed);
    let model = init(&on);
    model.visit(&mut DrawNow);
    model.fork(device)
}

/// One line naming a device for logs: the spec, burn's device and, on a Cube device, the
/// adapter and the runtime's compiler (e.g. `llvmpipe (LLVM 15.0.6, 256 bits)` on
/// `wgpu<wgsl>`). Opens the device.
pub fn describe_device(spec: DeviceSpec, device: &Device) -> String {
    #[cfg(feature = "cube")]
    if let burn::backend::DispatchDevice::Cube(cube) = device.as_dispatch() {
        let name = device.identity().map(|i| i.name).unwrap_or_default();
        return format!("{spec} ({name} on {})", cube.client().name());
    }
    format!("{spec} ({device:?})")
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

/// Whether `device` (with or without autodiff) is a device of burn's Cube backend (wgpu, CUDA;
/// train's `wgpu` / `cuda` features). Every fused op of [`crate::ops`] checks it: on a Cube
/// device the selective scan runs its CubeCL kernels ([`crate::ops::scan`]), every other op its
/// composition from burn's tensor ops (the `*_reference` function of its module, which its
/// fused CPU kernel is tested against), computed by burn's own Cube kernels and differentiated
/// by burn's autodiff. Without a Cube runtime in the build it is `false`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let cases = [
            ("cpu", DeviceSpec::Cpu),
            ("flex", DeviceSpec::Cpu),
            (" CPU ", DeviceSpec::Cpu),
            ("ndarray", DeviceSpec::NdArray),
            ("wgpu", DeviceSpec::Wgpu(Adapter::Default)),
            ("wgpu:1", DeviceSpec::Wgpu(Adapter::Discrete(1))),
            ("wgpu:cpu", DeviceSpec::Wgpu(Adapter::Cpu)),
            ("Vulkan", DeviceSpec::Vulkan(Adapter::Default)),
            ("vulkan:0", DeviceSpec::Vulkan(Adapter::Discrete(0))),
            ("vulkan:CPU", DeviceSpec::Vulkan(Adapter::Cpu)),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_device(text), Ok(want), "{text:?}");
            assert_eq!(text.parse::<DeviceSpec>(), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn rejects_unknown_names_with_the_accepted_forms() {
        for bad in [
            "",
            "gpu",
            "cuda:",
            "cuda:x",
            "cuda:-1",
            "cuda:cpu",
            "cpu:0",
            "flex:1",
            "wgpu:",
            "wgpu:gpu",
            "vulkan:1:2",
            "metal",
            "ndarray:0",
        ] {
            let err = parse_device(bad).unwrap_err();
            assert_eq!(err, DeviceSpecError::Unknown(bad.to_string()));
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("`{bad}`")) && msg.contains("vulkan:cpu"),
                "{msg}"
            );
        }
    }

    #[test]
    fn display_reads_back_to_the_same_spec() {
        for spec in [
            DeviceSpec::Cpu,
            DeviceSpec::NdArray,
            DeviceSpec::Wgpu(Adapter::Default),
            DeviceSpec::Wgpu(Adapter::Discrete(2)),
            DeviceSpec::Vulkan(Adapter::Cpu),
            DeviceSpec::Cuda(1),
        ] {
            assert_eq!(parse_device(&spec.to_string()), Ok(spec), "{spec}");
        }
        assert_eq!(DeviceSpec::Cuda(0).to_string(), "cuda:0");
        assert_eq!(DeviceSpec::Vulkan(Adapter::Cpu).to_string(), "vulkan:cpu");
    }

    #[test]
    fn flag_then_env_then_recorded_then_legacy_then_cpu() {
        let wgpu = DeviceSpec::Wgpu(Adapter::Default);
        let cuda = DeviceSpec::Cuda(1);
        let r = resolve_from;
        assert_eq!(r(None, None, None, None), Ok(DeviceSpec::Cpu));
        assert_eq!(r(Some("wgpu"), Some("cuda:1"), Some("cpu"), None), Ok(wgpu));
        assert_eq!(r(None, Some("cuda:1"), Some("wgpu"), None), Ok(cuda));
        assert_eq!(r(None, Some("  "), Some("wgpu"), None), Ok(wgpu));
        assert_eq!(r(None, None, Some("cuda:1"), Some("ndarray")), Ok(cuda));
        assert_eq!(
            r(None, None, None, Some("NdArray")),
            Ok(DeviceSpec::NdArray)
        );
        assert_eq!(r(None, None, None, Some("flex")), Ok(DeviceSpec::Cpu));
        assert_eq!(
            r(None, Some("tpu"), None, None),
            Err(DeviceSpecError::Unknown("tpu".into()))
        );
    }

    #[test]
    fn cpu_opens_and_gpu_specs_need_their_feature() {
        assert_eq!(DeviceSpec::Cpu.device(), Ok(Device::flex()));
        assert!(!DeviceSpec::Cpu.is_gpu() && DeviceSpec::Cuda(0).is_gpu());
        #[cfg(not(feature = "wgpu"))]
        {
            let err = DeviceSpec::Vulkan(Adapter::Cpu).device().unwrap_err();
            assert!(err.to_string().contains("--features wgpu"), "{err}");
            assert!(open_device(DeviceSpec::Wgpu(Adapter::Default)).is_err());
        }
        #[cfg(not(feature = "cuda"))]
        {
            let err = DeviceSpec::Cuda(0).device().unwrap_err();
            assert_eq!(
                err,
                DeviceSpecError::NotBuilt {
                    spec: DeviceSpec::Cuda(0),
                    feature: "cuda"
                }
            );
        }
        let (dev, line) = open_device(DeviceSpec::Cpu).unwrap();
        assert_eq!(dev, Device::flex());
        assert!(line.starts_with("cpu ("), "{line}");
    }
}
