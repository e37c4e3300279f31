//! Model tests: shapes through every block, the baseline's published complexity, the presets'
//! budgets, and one optimiser step that lowers the loss.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

use super::*;
use data_specs::limits::MAX_MACS;

fn device() -> Device {
    Device::flex()
}

fn input(batch: usize, device: &Device) -> Tensor<4> {
    Tensor::random([batch, 1, 256, 65], Distribution::Normal(0.0, 1.0), device)
}

#[test]
fn irmamba_shapes_follow_table_1() {
    let dev = device();
    let IrMamba {
        stem,
        irb1,
        irb2,
        stages,
        irb3,
        head,
        ..
    } = IrMambaConfig::s1().init(10, &dev);
    let x = input(2, &dev).narrow(3, 0, 64);
    let x = stem.forward(x);
    assert_eq!(x.dims(), [2, 32, 64, 16]);
    let x = irb1.forward(x);
    assert_eq!(x.dims(), [2, 48, 64, 16]);
    let mut x = irb2.forward(x);
    assert_eq!(x.dims(), [2, 48, 32, 16]);
    let expected = [
        ([2, 48, 32, 16], [2, 48, 16, 8]),
        ([2, 64, 16, 8], [2, 64, 8, 4]),
        ([2, 72, 8, 4], [2, 72, 4, 2]),
    ];
    for (stage, (after_pmb, after_pool)) in stages.iter().zip(expected) {
        for b in &stage.blocks {
            x = b.forward(x);
        }
        assert_eq!(x.dims(), after_pmb);
        x = stage.pool.forward(x);
        assert_eq!(x.dims(), after_pool);
    }
    let x = irb3.forward(x);
    assert_eq!(x.dims(), [2, 128, 4, 2]);
    let y = head.forward(x);
    assert_eq!(y.dims(), [2, 10]);
}

#[test]
fn every_model_maps_log_mel_to_logits() {
    let dev = device();
    for name in ["s1", "s2", "s3", "baseline", "teacher"] {
        let model = ModelConfig::preset(name).unwrap().init(10, &dev);
        let y = model.forward(input(2, &dev));
        assert_eq!(y.dims(), [2, 10], "{name}");
        let v: Vec<f32> = y.into_data().try_to_vec::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name}: non-finite logits");
    }
}

#[test]
fn mamba_matches_parameter_formula_and_keeps_shape() {
    // 6 d^2 + 4 d R + 110 d (reference doc), d = 24, R = 2.
    let dev = device();
    let m = MambaConfig::new(24).init(&dev);
    assert_eq!(m.num_params(), 6 * 24 * 24 + 4 * 24 * 2 + 110 * 24);
    let u = Tensor::<3>::random([2, 10, 24], Distribution::Normal(0.0, 1.0), &dev);
    assert_eq!(m.forward(u).dims(), [2, 10, 24]);
    // A_log = ln(n + 1); dt bias = softplus^-1(dt) with dt in [1e-3, 0.1].
    let a: Vec<f32> = m.a_log.val().into_data().try_to_vec::<f32>().unwrap();
    assert!((a[3] - 4f32.ln()).abs() < 1e-6);
    let bias: Vec<f32> = m
        .dt_proj
        .bias
        .as_ref()
        .unwrap()
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    for b in bias {
        let dt = (b.exp() + 1.0).ln();
        assert!((9.9e-4..=0.1001).contains(&dt), "dt {dt}");
    }
}

#[test]
fn mamba_is_causal() {
    // Changing the last token must not change earlier outputs.
    let dev = device();
    let m = MambaConfig::new(16).init(&dev);
    let u = Tensor::<3>::random([1, 12, 16], Distribution::Normal(0.0, 1.0), &dev);
    let v = u
        .clone()
        .slice_assign([0..1, 11..12, 0..16], Tensor::ones([1, 1, 16], &dev) * 5.0);
    let (a, b) = (m.forward(u), m.forward(v));
    let diff: f32 = (a.clone().narrow(1, 0, 11) - b.clone().narrow(1, 0, 11))
        .abs()
        .max()
        .into_scalar();
    let last: f32 = (a.narrow(1, 11, 1) - b.narrow(1, 11, 1))
        .abs()
        .max()
        .into_scalar();
    assert!(diff < 1e-5, "earlier outputs changed by {diff}");
    assert!(last > 1e-3, "last output unchanged");
}

#[test]
fn shared_and_unshared_pmb_agree_when_weights_agree() {
    // An unshared PMB whose per-group Mambas are copies of one Mamba equals the shared PMB.
    let dev = device();
    let shared = ParallelMambaConfig {
        c_in: 32,
        c_out: 40,
        groups: 2,
        shared: true,
        d_state: 16,
    }
    .init(&dev);
    let mut unshared = ParallelMambaConfig {
        c_in: 32,
        c_out: 40,
        groups: 2,
        shared: false,
        d_state: 16,
    }
    .init(&dev);
    unshared.mamba = vec![shared.mamba[0].clone(), shared.mamba[0].clone()];
    unshared.norm = shared.norm.clone();
    unshared.proj = shared.proj.clone();
    let x = Tensor::<4>::random([2, 32, 4, 3], Distribution::Normal(0.0, 1.0), &dev);
    let d: f32 = (shared.forward(x.clone()) - unshared.forward(x))
        .abs()
        .max()
        .into_scalar();
    assert!(d < 1e-4, "max difference {d}");
}

/// The PMB's forward (layout ops on the rayon pool, fused skip) against the block written with
/// burn's own ops (swap_dims, chunk, `+ g * skip`, cat, burn's LayerNorm), for shared and
/// per-group Mambas: outputs and the gradients of the input and the skip scale.
#[test]
fn parallel_mamba_matches_a_burn_ops_composition() {
    let dev = device().autodiff();
    for shared in [true, false] {
        let pmb = ParallelMambaConfig {
            c_in: 32,
            c_out: 40,
            groups: 2,
            shared,
            d_state: 16,
        }
        .init(&dev);
        let reference = |x: Tensor<4>| {
            let [b, c, h, w] = x.dims();
            let (len, p) = (h * w, pmb.groups);
            let tokens = pmb.norm.forward(x.reshape([b, c, len]).swap_dims(1, 2));
            let skip = pmb.skip_scale.val().reshape([1, 1, 1]);
            let outs = tokens
                .chunk(p, 2)
                .into_iter()
                .enumerate()
                .map(|(g, t)| {
                    let m = &pmb.mamba[if shared { 0 } else { g }];
                    m.forward(t.clone()) + t * skip.clone()
                })
                .collect();
            let y = pmb.proj.forward(pmb.norm.forward(Tensor::cat(outs, 2)));
            let c_out = y.dims()[2];
            y.swap_dims(1, 2).reshape([b, c_out, h, w])
        };
        let xv = Tensor::<4>::random([2, 32, 4, 3], Distribution::Normal(0.0, 1.0), &dev);
        let wv = Tensor::<4>::random([2, 40, 4, 3], Distribution::Normal(0.0, 1.0), &dev);
        let (x1, x2) = (xv.clone().require_grad(), xv.require_grad());
        let (y1, y2) = (pmb.forward(x1.clone()), reference(x2.clone()));
        let d: f32 = (y1.clone() - y2.clone()).abs().max().into_scalar();
        assert!(d < 1e-4, "shared {shared}: max output difference {d}");
        let g1 = (y1 * wv.clone()).sum().backward();
        let g2 = (y2 * wv).sum().backward();
        let dx: f32 = (x1.grad(&g1).expect("dx") - x2.grad(&g2).expect("dx"))
            .abs()
            .max()
            .into_scalar();
        assert!(dx < 1e-4, "shared {shared}: max dx difference {dx}");
        let skip = |g: &_| {
            let v: f32 = pmb.skip_scale.grad(g).expect("d skip").into_scalar();
            v
        };
        let (s1, s2) = (skip(&g1), skip(&g2));
        assert!(
            (s1 - s2).abs() <= 1e-4 * s2.abs().max(1.0),
            "shared {shared}: d skip {s1} vs {s2}"
        );
    }
}

#[test]
fn baseline_matches_published_complexity() {
    // DCASE2024 Task 1 baseline: 61,148 parameters, 29,419,156 MACs (torchinfo) on 1x256x65.
    let r = ModelConfig::preset("baseline")
        .unwrap()
        .complexity(10, 256, 65);
    assert_eq!(r.params(), 61_148);
    assert_eq!(r.params() + r.buffers, r.module_params);
    assert_eq!(r.macs(), 29_419_156);
    assert_eq!(r.torchinfo_macs(), 29_419_156);
    assert_eq!(r.scan_macs(), 0);
}

#[test]
fn presets_meet_the_report_budgets() {
    for (name, target) in [("s1", 107_460.0), ("s2", 121_900.0), ("s3", 126_410.0)] {
        let cfg = ModelConfig::preset(name).unwrap();
        let r = cfg.complexity(10, 256, 65);
        assert_eq!(
            r.params() + r.buffers,
            r.module_params,
            "{name}: table misses parameters"
        );
        let rel = (r.params() as f64 - target).abs() / target;
        assert!(rel < 0.05, "{name}: {} params vs {target}", r.params());
        assert!(r.macs() <= MAX_MACS, "{name}: {} MACs", r.macs());
        assert!(r.scan_macs() > 0);
        assert!(r.within_limits());
    }
    let ModelConfig::IrMamba(s1) = ModelConfig::preset("s1").unwrap() else {
        unreachable!()
    };
    assert_eq!((s1.pmbn(), s1.vssn()), (3, 6));
    let ModelConfig::IrMamba(s2) = ModelConfig::preset("s2").unwrap() else {
        unreachable!()
    };
    assert_eq!((s2.pmbn(), s2.vssn()), (5, 17));
}

#[test]
fn teacher_and_table_agree() {
    let r = ModelConfig::preset("teacher")
        .unwrap()
        .complexity(10, 256, 65);
    assert_eq!(r.params() + r.buffers, r.module_params);
    assert!((150_000..1_000_000).contains(&r.params()), "{}", r.params());
    let text = r.to_string();
    assert!(text.contains("stage1.0.conv1") && text.contains("total"));
}

#[test]
fn config_round_trips_through_toml_and_rejects_bad_groups() {
    for name in ["s1", "s2", "s3", "baseline", "teacher"] {
        let cfg = ModelConfig::preset(name).unwrap();
        let back = ModelConfig::from_toml_str(&cfg.to_toml_string()).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(back.name(), name);
    }
    let partial = ModelConfig::from_toml_str("kind = \"ir_mamba\"\nshared_mamba = true\n").unwrap();
    let ModelConfig::IrMamba(c) = partial else {
        panic!("wrong kind")
    };
    assert!(c.shared_mamba);
    assert_eq!(c.stages, IrMambaConfig::s1().stages);
    let bad = "kind = \"ir_mamba\"\nstages = [{ channels = 48, groups = [5] }]\n";
    assert!(matches!(
        ModelConfig::from_toml_str(bad),
        Err(ModelConfigError::Invalid(_))
    ));
    assert!(matches!(
        ModelConfig::from_toml_str("kind = \"nope\""),
        Err(ModelConfigError::Toml { .. })
    ));
    assert!(matches!(
        ModelConfig::preset("s9"),
        Err(ModelConfigError::UnknownPreset(_))
    ));
}

fn loss_of(model: &Model, x: Tensor<4>, y: Tensor<1, Int>) -> Tensor<1> {
    let dev = x.device();
    CrossEntropyLossConfig::new()
        .init(&dev)
        .forward(model.forward(x), y)
}

#[test]
fn one_adamw_step_lowers_the_loss() {
    let dev = device().autodiff();
    dev.seed(7);
    for name in ["s1", "baseline", "teacher"] {
        let mut model = ModelConfig::preset(name).unwrap().init(10, &dev);
        let x = Tensor::<4>::random([4, 1, 256, 65], Distribution::Normal(0.0, 1.0), &dev);
        let y = Tensor::<1, Int>::from_data(TensorData::from([1i64, 3, 5, 7]), &dev);
        let mut optim = AdamWConfig::new().init();
        let loss = loss_of(&model, x.clone(), y.clone());
        let before: f32 = loss.clone().into_scalar();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
        let after: f32 = loss_of(&model, x, y).into_scalar();
        assert!(
            after.is_finite() && after < before,
            "{name}: loss {before} -> {after}"
        );
    }
}
