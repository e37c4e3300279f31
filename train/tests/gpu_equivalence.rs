//! The Cube (GPU) path against the CPU path: CubeCL kernels vs the CPU kernels and the burn-op
//! references, values and gradients, on the device `ASC_GPU_TEST_DEVICE` (default `vulkan:cpu`:
//! Mesa's lavapipe, a software Vulkan driver, so this runs on machines without a GPU).
//!
//! Built only with train's `wgpu` feature; run it through `scripts/ci-gpu-test.sh` (`make
//! test-gpu`), which installs lavapipe when it is missing.

use burn::backend::DispatchDevice;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};
use train::backend::{DeviceSpec, describe_device, parse_device};
use train::ops::mixer::ScanFn;
use train::ops::scan::{selective_scan, selective_scan_naive};

/// The device under test (`ASC_GPU_TEST_DEVICE`, default `vulkan:cpu`).
fn gpu_spec() -> DeviceSpec {
    let name = std::env::var("ASC_GPU_TEST_DEVICE").unwrap_or_else(|_| "vulkan:cpu".into());
    let spec = parse_device(&name).unwrap_or_else(|e| panic!("ASC_GPU_TEST_DEVICE: {e}"));
    assert!(
        spec.is_gpu(),
        "ASC_GPU_TEST_DEVICE={name} is not a GPU device"
    );
    spec
}

fn gpu() -> Device {
    gpu_spec()
        .device()
        .expect("this build has the device's backend")
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("f32 tensor")
}

/// Norm-based relative error `||x - y|| / max(||y||, 1e-12)`.
fn rel_err(x: &[f32], y: &[f32]) -> f64 {
    assert_eq!(x.len(), y.len());
    let num: f64 = x
        .iter()
        .zip(y)
        .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = y.iter().map(|&q| (q as f64).powi(2)).sum::<f64>().sqrt();
    num / den.max(1e-12)
}

#[test]
fn the_device_is_the_one_asked_for() {
    let spec = gpu_spec();
    let device = gpu();
    let line = describe_device(spec, &device);
    eprintln!("device under test: {line}");
    let DispatchDevice::Cube(cube) = device.as_dispatch() else {
        panic!("{spec} is not a Cube device: {device:?}");
    };
    let identity = device.identity().expect("a Cube device names its adapter");
    if let DeviceSpec::Vulkan(adapter) = spec {
        // Pinned to Vulkan: no silent fallback to GL (llvmpipe over EGL) or another API.
        let burn::backend::CubeDevice::Wgpu(w) = cube else {
            panic!("vulkan device {cube:?} is not a wgpu device");
        };
        assert_eq!(w.backend, burn::backend::WgpuBackend::Vulkan, "{cube:?}");
        if adapter == train::backend::Adapter::Cpu {
            assert!(
                identity.name.contains("llvmpipe"),
                "expected Mesa's lavapipe (llvmpipe) adapter, got {:?}",
                identity.name
            );
        }
    }
    // A real computation comes back right: a small matmul against the host.
    let a = Tensor::<2>::from_data(
        TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]),
        &device,
    );
    assert_eq!(host(a.clone().matmul(a)), vec![7.0, 10.0, 15.0, 22.0]);
}

/// Host inputs of one scan call: `[batch, d_inner, d_state, len]` and the six buffers.
struct Inputs {
    dims: [usize; 4],
    bufs: [Vec<f32>; 6],
}

/// The ranges of `train`'s scan unit tests: steps (softplus outputs) of 0.001-0.1, `A = -(1..N)`
/// jittered, `u`, `B`, `C` uniform, `D` around 1.
fn random_inputs(seed: u64, batch: usize, d_inner: usize, d_state: usize, len: usize) -> Inputs {
    let mut rng = StdRng::seed_from_u64(seed);
    let nbl = batch * d_inner * len;
    let u = (0..nbl).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let delta = (0..nbl)
        .map(|_| rng.random_range(0.001f32.ln()..0.1f32.ln()).exp())
        .collect();
    let a = (0..d_inner * d_state)
        .map(|i| -((i % d_state) as f32 + 1.0) * (0.9 + 0.2 * ((i * 7 % 5) as f32) / 5.0))
        .collect();
    let nsl = batch * d_state * len;
    let b = (0..nsl).map(|_| rng.random_range(-1.5f32..1.5)).collect();
    let c = (0..nsl).map(|_| rng.random_range(-1.5f32..1.5)).collect();
    let d = (0..d_inner)
        .map(|_| rng.random_range(0.5f32..1.5))
        .collect();
    Inputs {
        dims: [batch, d_inner, d_state, len],
        bufs: [u, delta, a, b, c, d],
    }
}

/// `y` and, on an autodiff device, the gradients of `sum(w ⊙ y)` for all six inputs.
fn run_scan(
    x: &Inputs,
    w: &[f32],
    f: ScanFn,
    device: &Device,
) -> (Vec<f32>, Vec<Option<Vec<f32>>>) {
    let [bs, di, ds, l] = x.dims;
    let ad = device.is_autodiff();
    fn rg<const D: usize>(t: Tensor<D>, on: bool) -> Tensor<D> {
        if on { t.require_grad() } else { t }
    }
    let t3 = |v: &Vec<f32>, s: [usize; 3]| {
        rg(
            Tensor::<3>::from_data(TensorData::new(v.clone(), s), device),
            ad,
        )
    };
    let [u, dl, a, b, c, d] = &x.bufs;
    let (u, dl) = (t3(u, [bs, di, l]), t3(dl, [bs, di, l]));
    let a = rg(
        Tensor::<2>::from_data(TensorData::new(a.clone(), [di, ds]), device),
        ad,
    );
    let (b, c) = (t3(b, [bs, ds, l]), t3(c, [bs, ds, l]));
    let d = rg(
        Tensor::<1>::from_data(TensorData::new(d.clone(), [di]), device),
        ad,
    );
    let y = f(
        u.clone(),
        dl.clone(),
        a.clone(),
        b.clone(),
        c.clone(),
        d.clone(),
    );
    if !ad {
        return (host(y), Vec::new());
    }
    let wt = Tensor::<3>::from_data(TensorData::new(w.to_vec(), [bs, di, l]), device);
    let g = (y.clone() * wt).sum().backward();
    let grads = vec![
        u.grad(&g).map(host),
        dl.grad(&g).map(host),
        a.grad(&g).map(host),
        b.grad(&g).map(host),
        c.grad(&g).map(host),
        d.grad(&g).map(host),
    ];
    (host(y), grads)
}

const NAMES: [&str; 6] = ["u", "delta", "A", "B", "C", "D"];

/// Shapes `(batch, d_inner, d_state, L)`: one step; lengths that are not a multiple of the
/// kernels' time chunks; `d_state` 13 (not a power of two) and 4; `d_inner` 70 (two channel
/// blocks in the backward kernel, an idle tail of units) and 5; an s1-like Mamba block.
const SHAPES: [(usize, usize, usize, usize); 6] = [
    (2, 4, 16, 1),
    (3, 8, 16, 7),
    (2, 5, 13, 37),
    (2, 70, 4, 19),
    (1, 3, 16, 64),
    (4, 32, 16, 32),
];

#[test]
fn scan_kernel_matches_the_cpu_kernel_and_the_naive_scan() {
    let gpu = gpu().autodiff();
    let cpu = Device::flex().autodiff();
    let (mut worst_y, mut worst_g) = (0.0f64, [0.0f64; 6]);
    for (i, &(bs, di, ds, l)) in SHAPES.iter().enumerate() {
        let x = random_inputs(100 + i as u64, bs, di, ds, l);
        let w: Vec<f32> = {
            let mut rng = StdRng::seed_from_u64(200 + i as u64);
            (0..bs * di * l)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect()
        };
        let t = std::time::Instant::now();
        let (yg, gg) = run_scan(&x, &w, selective_scan, &gpu);
        let t_gpu = t.elapsed().as_secs_f64();
        let (yc, gc) = run_scan(&x, &w, selective_scan, &cpu);
        let t = std::time::Instant::now();
        let (yn, gn) = run_scan(&x, &w, selective_scan_naive, &cpu);
        let t_naive = t.elapsed().as_secs_f64();
        let ey = rel_err(&yg, &yc).max(rel_err(&yg, &yn));
        worst_y = worst_y.max(ey);
        assert!(ey <= 1e-5, "y ({bs},{di},{ds},{l}): relative error {ey:e}");
        let mut report = vec![format!("y {ey:.1e}")];
        for k in 0..6 {
            let g = gg[k].as_ref().expect("GPU gradient");
            let c = gc[k].as_ref().expect("CPU gradient");
            let mut e = rel_err(g, c);
            // At L = 1 the naive graph never uses A (h_0 = 0): no gradient there, and the
            // kernels must return exact zeros.
            match gn[k].as_ref() {
                Some(n) => e = e.max(rel_err(g, n)),
                None => assert!(g.iter().all(|&v| v == 0.0), "d{} must vanish", NAMES[k]),
            }
            worst_g[k] = worst_g[k].max(e);
            assert!(
                e <= 1e-4,
                "d{} ({bs},{di},{ds},{l}): relative error {e:e}",
                NAMES[k]
            );
            report.push(format!("d{} {e:.1e}", NAMES[k]));
        }
        eprintln!(
            "scan ({bs},{di},{ds},{l}) GPU vs CPU/naive: {} [GPU {t_gpu:.1} s, naive {t_naive:.1} s]",
            report.join(", ")
        );
    }
    let worst_g = worst_g.map(|e| format!("{e:.1e}"));
    eprintln!("scan worst: y {worst_y:.1e}, grads (u, delta, A, B, C, D) {worst_g:?}");
}

#[test]
fn scan_kernel_agrees_with_the_naive_scan_on_the_gpu_and_without_autodiff() {
    // The burn-op reference on the same device (burn's own Cube kernels) and the inference
    // path (no autodiff).
    let gpu = gpu();
    let x = random_inputs(7, 2, 6, 16, 21);
    let (yk, _) = run_scan(&x, &[], selective_scan, &gpu);
    let (yn, _) = run_scan(&x, &[], selective_scan_naive, &gpu);
    let (yc, _) = run_scan(&x, &[], selective_scan, &Device::flex());
    let (e_naive, e_cpu) = (rel_err(&yk, &yn), rel_err(&yk, &yc));
    eprintln!("scan inference on the GPU: vs GPU naive {e_naive:.1e}, vs CPU kernel {e_cpu:.1e}");
    assert!(e_naive <= 1e-5 && e_cpu <= 1e-5, "{e_naive:e} {e_cpu:e}");
}

/// `(module path, gradient)` of every float parameter (`None`: not reached).
type ParamGrads = Vec<(String, Option<Vec<f32>>)>;

/// Every float parameter's module path and gradient (`None`: not reached), in visiting order.
struct GradCollector<'a> {
    grads: &'a burn::tensor::Gradients,
    path: Vec<String>,
    out: ParamGrads,
}

impl burn::module::ModuleVisitor for GradCollector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        let grad = param.val().grad(self.grads).map(host);
        self.out.push((self.path.join("."), grad));
    }
}

/// Logits, loss and all parameter gradients of one training step (forward in training mode,
/// cross-entropy, backward) of `model` on `x`, `labels` (host values, moved to `device`).
fn training_step(
    model: &train::model::Model,
    x: &[f32],
    shape: [usize; 4],
    labels: &[i64],
    device: &Device,
) -> (Vec<f32>, f32, ParamGrads) {
    use burn::module::Module;
    let model = model.clone().fork(device);
    let x = Tensor::<4>::from_data(TensorData::new(x.to_vec(), shape), device);
    let labels = Tensor::<1, burn::tensor::Int>::from_data(
        TensorData::new(labels.to_vec(), [labels.len()]),
        device,
    );
    let logits = model.forward(x);
    let loss = train::loss::cross_entropy(logits.clone(), labels);
    let loss_value: f32 = loss.clone().into_scalar();
    let grads = loss.backward();
    let mut c = GradCollector {
        grads: &grads,
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut c);
    (host(logits), loss_value, c.out)
}

#[test]
fn s1_training_step_matches_the_cpu() {
    // The whole IRMamba s1 (stem, inverted residual blocks, parallel Mamba blocks with the scan
    // kernel, pooling, head) in training mode: every fused op takes its Cube path.
    let cpu = Device::flex().autodiff();
    cpu.seed(1);
    let model = train::model::ModelConfig::preset("s1")
        .expect("s1 preset")
        .init(10, &cpu);
    let shape = [2, 1, 256, 65];
    let mut rng = StdRng::seed_from_u64(5);
    let x: Vec<f32> = (0..shape.iter().product())
        .map(|_| rng.random_range(-2.0f32..2.0))
        .collect();
    let labels = [3i64, 7];
    let t = std::time::Instant::now();
    let (lg, loss_g, gg) = training_step(&model, &x, shape, &labels, &gpu().autodiff());
    let gpu_s = t.elapsed().as_secs_f64();
    let (lc, loss_c, gc) = training_step(&model, &x, shape, &labels, &cpu);
    let e_logits = rel_err(&lg, &lc);
    let e_loss = ((loss_g - loss_c) / loss_c).abs() as f64;
    assert_eq!(gg.len(), gc.len());
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let largest = gc
        .iter()
        .filter_map(|(_, c)| c.as_deref().map(norm))
        .fold(0.0, f64::max);
    // Gradients that vanish in exact arithmetic (a BatchNorm's scale or shift feeding a
    // depthwise conv and another BatchNorm, a bias before a BatchNorm: the output does not
    // depend on them) are rounding noise on both devices: both must be tiny on the scale of
    // the largest gradient. Every other gradient must agree.
    let tiny = 1e-5 * largest;
    let (mut worst, mut n_params, mut n_zero) = (0.0f64, 0usize, 0usize);
    for ((name, g), (_, c)) in gg.iter().zip(&gc) {
        match (g, c) {
            (Some(g), Some(c)) if norm(c) < tiny => {
                assert!(
                    norm(g) < tiny,
                    "{name}: GPU gradient {:e}, CPU {:e}",
                    norm(g),
                    norm(c)
                );
                n_zero += 1;
            }
            (Some(g), Some(c)) => {
                let e = rel_err(g, c);
                worst = worst.max(e);
                n_params += 1;
                assert!(e <= 1e-3, "{name}: gradient relative error {e:e}");
            }
            (None, None) => {}
            _ => panic!("{name}: gradient on one device only"),
        }
    }
    eprintln!(
        "s1 step on the GPU ({gpu_s:.1} s): logits {e_logits:.1e}, loss {e_loss:.1e}, \
         {n_params} parameter gradients, worst {worst:.1e} ({n_zero} vanishing ones below \
         {tiny:.1e} on both)"
    );
    assert!(e_logits <= 1e-4, "logits: relative error {e_logits:e}");
    assert!(e_loss <= 1e-4, "loss {loss_g} vs {loss_c}");
    assert!(n_params > 50, "only {n_params} parameters had gradients");
}

#[test]
fn mamba_mixer_matches_the_cpu_mixer() {
    // S 3 sequences of L 24 tokens, d_inner 16, N 16, dt_rank 2, conv width 4.
    let (s, l, di, n, r, k) = (3, 24, 16, 16, 2, 4);
    let mut rng = StdRng::seed_from_u64(11);
    let mut v = |len: usize, lo: f32, hi: f32| -> Vec<f32> {
        (0..len).map(|_| rng.random_range(lo..hi)).collect()
    };
    let xz = v(s * l * 2 * di, -1.5, 1.5);
    let host_params = [
        (v(di * k, -0.5, 0.5), vec![di, 1, k]),
        (v(di, -0.1, 0.1), vec![di]),
        (v(di * (r + 2 * n), -0.3, 0.3), vec![di, r + 2 * n]),
        (v(r * di, -0.5, 0.5), vec![r, di]),
        (v(di, -4.0, -2.0), vec![di]),
        (
            (0..di * n).map(|i| -((i % n) as f32 + 1.0)).collect(),
            vec![di, n],
        ),
        (v(di, 0.5, 1.5), vec![di]),
    ];
    let wv = v(s * l * di, -1.0, 1.0);
    let run = |device: &Device| -> Vec<Vec<f32>> {
        let p3 = |i: usize| {
            let (vals, sh) = &host_params[i];
            Tensor::<3>::from_data(TensorData::new(vals.clone(), [sh[0], sh[1], sh[2]]), device)
                .require_grad()
        };
        let p2 = |i: usize| {
            let (vals, sh) = &host_params[i];
            Tensor::<2>::from_data(TensorData::new(vals.clone(), [sh[0], sh[1]]), device)
                .require_grad()
        };
        let p1 = |i: usize| {
            let (vals, _) = &host_params[i];
            Tensor::<1>::from_data(TensorData::new(vals.clone(), [vals.len()]), device)
                .require_grad()
        };
        let x = Tensor::<3>::from_data(TensorData::new(xz.clone(), [s, l, 2 * di]), device)
            .require_grad();
        let p = train::ops::mixer::MixerParams {
            conv_w: p3(0),
            conv_b: p1(1),
            x_proj: p2(2),
            dt_proj: p2(3),
            dt_b: p1(4),
            a: p2(5),
            d: p1(6),
        };
        let y = train::ops::mixer::mamba_mixer(x.clone(), p.clone());
        let w = Tensor::<3>::from_data(TensorData::new(wv.clone(), [s, l, di]), device);
        let g = (y.clone() * w).sum().backward();
        let grad = |t: Option<Vec<f32>>| t.expect("gradient");
        vec![
            host(y),
            grad(x.grad(&g).map(host)),
            grad(p.conv_w.grad(&g).map(host)),
            grad(p.conv_b.grad(&g).map(host)),
            grad(p.x_proj.grad(&g).map(host)),
            grad(p.dt_proj.grad(&g).map(host)),
            grad(p.dt_b.grad(&g).map(host)),
            grad(p.a.grad(&g).map(host)),
            grad(p.d.grad(&g).map(host)),
        ]
    };
    let g = run(&gpu().autodiff());
    let c = run(&Device::flex().autodiff());
    let names = [
        "y", "dxz", "dconv_w", "dconv_b", "dx_proj", "ddt_proj", "ddt_b", "dA", "dD",
    ];
    let mut report = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let e = rel_err(&g[i], &c[i]);
        report.push(format!("{name} {e:.1e}"));
        assert!(e <= 1e-4, "{name}: relative error {e:e}");
    }
    eprintln!("mixer GPU vs CPU: {}", report.join(", "));
}

/// A tiny IRMamba (QAT and the int8 export take IRMamba only): a 4/8-channel stem, one PMB
/// stage of two Mambas with `d_state` 4, 16 channels before the head.
const TINY_IRMAMBA: &str = r#"
kind = "ir_mamba"
stem_channels = [4, 8]
irb_channels = [8, 8]
stages = [{ channels = 8, groups = [2] }]
final_channels = 16
d_state = 4
"#;

/// Runs the `train` binary of this build (with the `wgpu` feature) and returns its stdout;
/// panics with its stderr when it fails.
fn train_cli(args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_train"))
        .args(args)
        .env_remove("ASC_DEVICE")
        .env_remove("ASC_BACKEND")
        .output()
        .expect("run train");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "train {args:?} failed:\n{stderr}\n{stdout}"
    );
    (stdout, stderr)
}

/// `(train_loss, test_log_loss)` of every epoch in a run's metrics.jsonl.
fn epoch_losses(run: &std::path::Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {l}"));
            (f("train_loss"), f("test_log_loss"))
        })
        .collect()
}

#[test]
fn cli_trains_evaluates_predicts_and_quantizes_on_the_gpu_as_on_the_cpu() {
    // The whole CLI path on the GPU device: training with precise BN and evaluation, QAT with
    // the fake-quant graph, the int8 export, `eval` and `predict` in separate processes. The
    // same run on the CPU is the reference: one seed gives one initial model on every device
    // (`backend::init_device`) and the loader and augmentations draw on the host, so the two
    // runs see the same batches.
    let spec = gpu_spec().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    let synth = train::loader::synth::SynthSpec {
        frontend: data_specs::FrontEndConfig {
            n_mels: 32,
            clip_samples: 16_000,
            ..data_specs::FrontEndConfig::dcase2024()
        },
        n_clips: 48,
        n_shards: 1,
        row_group_rows: 16,
        dir_per_clip: 1,
        replay_every: 0,
        test_every: 4,
        missing_teacher_every: 0,
    };
    train::loader::synth::write_shard_set(&shards, &synth).expect("synthetic shards");
    let model = tmp.path().join("tiny.toml");
    std::fs::write(&model, TINY_IRMAMBA).unwrap();
    let runs = tmp.path().join("runs");
    let path = |p: &std::path::Path| p.to_str().expect("UTF-8 path").to_string();
    let (shards_s, model_s, runs_s) = (path(&shards), path(&model), path(&runs));
    let t = std::time::Instant::now();
    for (name, device) in [("cpu", "cpu"), ("gpu", spec.as_str())] {
        let (_, stderr) = train_cli(&[
            "--device",
            device,
            "--shards",
            &shards_s,
            "--model",
            &model_s,
            "--epochs",
            "2",
            "--batch-size",
            "36",
            "--precise-bn-rows",
            "24",
            "--qat-epochs",
            "1",
            "--runs",
            &runs_s,
            "--name",
            name,
            "--quiet",
        ]);
        assert!(
            stderr.contains(&format!("device: {device} (")),
            "the run names its device:\n{stderr}"
        );
        let config = std::fs::read_to_string(runs.join(name).join("config.toml")).unwrap();
        assert!(
            config.contains(&format!("device = \"{device}\"")),
            "config.toml records the device:\n{config}"
        );
        assert!(runs.join(name).join("qat").join("model.asc8").is_file());
    }
    let train_s = t.elapsed().as_secs_f64();
    // One update per epoch (36 training rows, batch 36): epoch 1's training loss is the loss
    // of the initial model on the first batch, the same computation on both devices. After
    // AdamW's first steps (about lr times the sign of each gradient) the runs drift apart where
    // a gradient is rounding noise on both devices, so the later losses only stay close.
    let (lc, lg) = (
        epoch_losses(&runs.join("cpu")),
        epoch_losses(&runs.join("gpu")),
    );
    assert_eq!((lc.len(), lg.len()), (2, 2));
    let rel = |a: f64, b: f64| ((a - b) / a).abs();
    let e_first = rel(lc[0].0, lg[0].0);
    let e_later = [
        rel(lc[0].1, lg[0].1),
        rel(lc[1].0, lg[1].0),
        rel(lc[1].1, lg[1].1),
    ]
    .into_iter()
    .fold(0.0f64, f64::max);
    eprintln!("losses (train, test) per epoch: CPU {lc:?}, GPU {lg:?}");
    assert!(
        e_first <= 1e-5,
        "first training loss: relative error {e_first:e}"
    );
    assert!(e_later <= 5e-2, "later losses: relative error {e_later:e}");
    // `predict` of the GPU-trained model on both devices: the same logits.
    let run_gpu = path(&runs.join("gpu"));
    let logits = |device: &str| {
        let out = tmp
            .path()
            .join(format!("logits-{}.parquet", device.replace(':', "-")));
        train_cli(&[
            "predict",
            "--device",
            device,
            "--shards",
            &shards_s,
            "--model",
            &run_gpu,
            "--out",
            &path(&out),
            "--set",
            "all",
        ]);
        pipeline::teachers::TeacherLogits::load(&out, &[], 10).expect("logits table")
    };
    let (pc, pg) = (logits("cpu"), logits(&spec));
    let set = train::loader::ShardSet::open(&shards, None).expect("shards");
    let ids: Vec<String> = set
        .rows()
        .filter(|r| r.variant == data_specs::Variant::Original)
        .map(|r| r.clip_id.to_string())
        .collect();
    assert_eq!((ids.len(), pc.len(), pg.len()), (48, 48, 48));
    let (mut vc, mut vg) = (Vec::new(), Vec::new());
    for id in &ids {
        vc.extend_from_slice(pc.get(id).expect("CPU logits"));
        vg.extend_from_slice(pg.get(id).unwrap_or_else(|| panic!("GPU logits of {id}")));
    }
    let e_predict = rel_err(&vg, &vc);
    assert!(
        e_predict <= 1e-4,
        "predict logits: relative error {e_predict:e}"
    );
    // `eval` on the GPU: the report of the run's own final evaluation.
    let (report, _) = train_cli(&[
        "eval", "--device", &spec, "--shards", &shards_s, "--model", &run_gpu,
    ]);
    let ll = report
        .split_whitespace()
        .skip_while(|w| *w != "log-loss")
        .nth(1)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no log-loss in\n{report}"));
    assert!(
        (ll - lg[1].1).abs() <= 1e-3,
        "eval log-loss {ll} vs the run's {}",
        lg[1].1
    );
    eprintln!(
        "CLI on {spec} vs cpu: first training loss {e_first:.1e}, later losses {e_later:.1e}, \
         predict logits {e_predict:.1e}, eval log-loss {ll:.4} ({train_s:.0} s for both \
         training runs)"
    );
}
