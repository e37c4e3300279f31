//! QAT and int8 export: fake quantization against the closed-form quantize/dequantize, conv+BN
//! folding against conv then BN, the straight-through gradient, and the exported int8 engine
//! against the fake-quantized burn model on random students (shared and unshared Mambas).

use burn::module::{Param, RunningState};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use asc_int8::builder::quantize_weight;
use asc_int8::{Int8Model, QParams};
use train::export::export_int8;
use train::model::{ConvBnConfig, IrMambaConfig, Model, ModelConfig, PmbStageConfig};
use train::qat::reference::qat_forward_reference;
use train::qat::{
    ACT_QMAX, ACT_QMIN, Observers, QatModel, conv_options, fake_quant_act, fake_quant_weight,
    fold_conv_bn, qat_forward,
};

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 tensor")
}

fn uniform(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

#[test]
fn activation_fake_quant_is_the_quantize_dequantize_formula() {
    let dev = Device::flex();
    let mut rng = StdRng::seed_from_u64(1);
    let v = uniform(&mut rng, 4000, -3.0, 7.0);
    // Observer range narrower than the data: values outside clamp to the range ends.
    let q = QParams::from_min_max(-1.5, 5.0, ACT_QMIN, ACT_QMAX);
    let t = Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), &dev);
    let got = host(fake_quant_act(t, &q));
    for (x, g) in v.iter().zip(&got) {
        // Independent closed form: (clamp(round_half_even(x / s) + z, 0, 127) - z) * s.
        let code = ((x / q.scale).round_ties_even() + q.zero_point as f32).clamp(0.0, 127.0);
        let want = (code - q.zero_point as f32) * q.scale;
        assert!(
            (g - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{x}: {g} vs {want}"
        );
    }
    // The grid: 128 codes at most, and the extremes are the clamped range ends.
    let lo = got.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = got.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert!((lo - q.dequantize(0)).abs() < 1e-6 && (hi - q.dequantize(127)).abs() < 1e-5);
}

#[test]
fn weight_fake_quant_is_per_channel_symmetric() {
    let dev = Device::flex();
    let mut rng = StdRng::seed_from_u64(2);
    let (cout, cin, k) = (6, 4, 3);
    let mut w = uniform(&mut rng, cout * cin * k * k, -1.0, 1.0);
    // Channels with very different magnitudes: a per-tensor scale would flatten channel 5.
    for v in &mut w[5 * cin * k * k..] {
        *v *= 1e-3;
    }
    let t = Tensor::<4>::from_data(TensorData::new(w.clone(), [cout, cin, k, k]), &dev);
    let got = host(fake_quant_weight(t, 0));
    let (codes, scales) = quantize_weight(&w, cout);
    for (i, g) in got.iter().enumerate() {
        let want = codes[i] as f32 * scales[i / (cin * k * k)];
        assert!(
            (g - want).abs() <= 1e-6 * want.abs().max(1e-6),
            "{i}: {g} vs {want}"
        );
    }
    // Linear layout [d_in, d_out]: output channels along axis 1.
    let (din, dout) = (5, 3);
    let lw = uniform(&mut rng, din * dout, -2.0, 2.0);
    let t = Tensor::<2>::from_data(TensorData::new(lw.clone(), [din, dout]), &dev);
    let got = host(fake_quant_weight(t, 1));
    let torch: Vec<f32> = (0..dout)
        .flat_map(|o| (0..din).map(move |i| (i, o)))
        .map(|(i, o)| lw[i * dout + o])
        .collect();
    let (codes, scales) = quantize_weight(&torch, dout);
    for o in 0..dout {
        for i in 0..din {
            let want = codes[o * din + i] as f32 * scales[o];
            assert!((got[i * dout + o] - want).abs() <= 1e-6 * want.abs().max(1e-6));
        }
    }
}

#[test]
fn straight_through_gradient_is_identity() {
    let dev = Device::flex().autodiff();
    let v: Vec<f32> = (0..50).map(|i| -1.0 + 0.07 * i as f32).collect();
    let x = Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), &dev).require_grad();
    let q = QParams::from_min_max(-1.0, 2.5, ACT_QMIN, ACT_QMAX);
    let weights = Tensor::<1>::from_data(
        TensorData::new((0..50).map(|i| i as f32).collect::<Vec<_>>(), [50]),
        &dev,
    );
    let g = (fake_quant_act(x.clone(), &q) * weights).sum().backward();
    let grad = host(x.grad(&g).expect("gradient of x"));
    for (i, gi) in grad.iter().enumerate() {
        assert_eq!(*gi, i as f32, "d(sum w * fq(x))/dx_i must be w_i");
    }
    // Weights too.
    let w = Tensor::<2>::from_data(TensorData::new(v.clone(), [10, 5]), &dev).require_grad();
    let g = fake_quant_weight(w.clone(), 1).sum().backward();
    assert!(
        host(w.grad(&g).expect("gradient of w"))
            .iter()
            .all(|&d| d == 1.0)
    );
}

#[test]
fn folded_conv_bn_equals_conv_then_bn() {
    let _rng = device_rng();
    let dev = Device::flex();
    let mut rng = StdRng::seed_from_u64(3);
    for (cfg, cin) in [
        (ConvBnConfig::new(4, 8, 3).with_stride([2, 1]), 4),
        (ConvBnConfig::new(6, 6, 3).depthwise(), 6),
        (ConvBnConfig::new(5, 7, 1), 5),
    ] {
        let mut cb = cfg.init(&dev);
        let c = cb.bn.gamma.dims()[0];
        let t = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [c]), &dev);
        cb.bn.gamma = Param::from_tensor(t(uniform(&mut rng, c, 0.5, 1.5)));
        cb.bn.beta = Param::from_tensor(t(uniform(&mut rng, c, -0.5, 0.5)));
        cb.bn.running_mean = RunningState::new(t(uniform(&mut rng, c, -0.3, 0.3)));
        cb.bn.running_var = RunningState::new(t(uniform(&mut rng, c, 0.2, 2.0)));
        let x = Tensor::<4>::random([2, cin, 9, 7], Distribution::Normal(0.0, 1.0), &dev);
        let reference = host(cb.forward(x.clone())); // conv, BN (eval), ReLU
        let (w, b) = fold_conv_bn(&cb);
        let folded = burn::tensor::activation::relu(burn::tensor::module::conv2d(
            x,
            w,
            Some(b),
            conv_options(&cb),
        ));
        let got = host(folded);
        let max = reference
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max < 1e-4, "folded conv+BN differs by {max}");
    }
}

/// A small student: the s1/s2 op mix with narrower widths.
fn small_student(shared: bool) -> IrMambaConfig {
    let mut c = IrMambaConfig::s1();
    c.stem_channels = [4, 8];
    c.irb_channels = [8, 8];
    c.irb_expansion = [2.0, 2.0, 2.0];
    c.stages = vec![
        PmbStageConfig {
            channels: 8,
            groups: vec![2],
        },
        PmbStageConfig {
            channels: 12,
            groups: vec![2],
        },
    ];
    c.shared_mamba = shared;
    c.final_channels = 16;
    c.d_state = 4;
    c.time_multiple = 16;
    c
}

/// The device's random generator is process-wide, burn initializes parameters lazily (at their
/// first use), and the test harness runs tests on parallel threads: every test that draws from
/// the generator holds this lock for its whole run, so that a seeded model is the same in every
/// run (without it the students differed from run to run, and with them the count of near-tie
/// predictions that flip under quantization).
static DEVICE_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn device_rng() -> std::sync::MutexGuard<'static, ()> {
    DEVICE_RNG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Random BN statistics so that folding matters, then QAT observers calibrated on `batches`.
/// Callers hold [`device_rng`].
fn random_student(shared: bool, seed: u64, dev: &Device) -> Model {
    dev.seed(seed);
    let cfg = ModelConfig::IrMamba(small_student(shared));
    cfg.init(10, dev)
}

fn logmels(rng: &mut StdRng, n: usize, n_mels: usize, n_frames: usize) -> Vec<f32> {
    // Log-mel-like: a smooth per-band level plus noise.
    let mut out = Vec::with_capacity(n * n_mels * n_frames);
    for _ in 0..n {
        let level = rng.random_range(-2.0f32..2.0);
        for m in 0..n_mels {
            let band = level - 0.03 * m as f32;
            for _ in 0..n_frames {
                out.push(band + rng.random_range(-1.0f32..1.0));
            }
        }
    }
    out
}

fn engine_vs_fake_quant(shared: bool, act_qmax: i32) {
    let _rng = device_rng();
    let dev = Device::flex();
    let model = random_student(shared, 7, &dev);
    let Model::IrMamba(m) = &model else {
        unreachable!()
    };
    let (n_mels, n_frames, n) = (32, 33, 200);
    let mut rng = StdRng::seed_from_u64(11);
    let mut obs = Observers::new(0.1);
    obs.act_qmax = act_qmax;
    for _ in 0..4 {
        let x = logmels(&mut rng, 16, n_mels, n_frames);
        let x = Tensor::<4>::from_data(TensorData::new(x, [16, 1, n_mels, n_frames]), &dev);
        qat_forward(m, x, &mut obs);
    }
    obs.frozen = true;
    let qm = QatModel {
        model: model.clone(),
        observers: obs,
    };
    let mut fe = data_specs::FrontEndConfig::dcase2024();
    fe.n_mels = n_mels;
    let frames = fe.n_frames();
    assert!(frames >= 16, "front end with {frames} frames");
    let labels = data_specs::Vocabulary((0..10).map(|i| format!("class{i}")).collect());
    // Build at the test's frame count: export uses the front end's n_frames, so feed that.
    let x = logmels(&mut rng, n, n_mels, frames);
    let int8 = export_int8(&qm, "test", serde_json::Value::Null, fe, labels).expect("export");
    let (im, it) = int8.input_shape();
    assert_eq!((im, it), (n_mels, frames - frames % 16));
    // The file quantizes on the grid QAT simulated.
    for b in &int8.graph().buffers {
        if let asc_int8::graph::BufKind::Quant { q } = b.kind {
            assert_eq!((q.qmin, q.qmax), (ACT_QMIN, act_qmax), "buffer {}", b.name);
        }
    }
    let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [n, 1, n_mels, frames]), &dev);
    let fq = host(qm.forward(xt).expect("student"));
    let (mut agree, mut max_diff, mut max_logit) = (0usize, 0.0f32, 0.0f32);
    for (i, clip) in x.chunks_exact(n_mels * frames).enumerate() {
        let e = int8.infer_logmel(clip).expect("infer");
        let f = &fq[i * 10..(i + 1) * 10];
        let am = |v: &[f32]| {
            (0..v.len())
                .max_by(|&a, &b| v[a].total_cmp(&v[b]))
                .unwrap_or(0)
        };
        agree += usize::from(am(&e) == am(f));
        for (a, b) in e.iter().zip(f) {
            max_diff = max_diff.max((a - b).abs());
            max_logit = max_logit.max(b.abs());
        }
    }
    eprintln!(
        "shared={shared} codes 0..={act_qmax}: int8 engine vs fake-quant: {agree}/{n} same predictions, max |logit \
         diff| {max_diff:.5} (max |logit| {max_logit:.3})"
    );
    assert!(agree * 100 >= 99 * n, "{agree}/{n} predictions agree");
    assert!(
        max_diff <= 0.05 * max_logit.max(1.0),
        "logits differ by {max_diff} (max |logit| {max_logit})"
    );

    // The saved file round-trips; a truncated copy is refused with a clear error.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.asc8");
    int8.save(&path).expect("save");
    let back = Int8Model::load(&path).expect("load");
    let clip = &x[..n_mels * frames];
    assert_eq!(
        back.infer_logmel(clip).expect("infer"),
        int8.infer_logmel(clip).expect("infer")
    );
    let bytes = std::fs::read(&path).expect("read");
    let cut = dir.path().join("cut.asc8");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let err = Int8Model::load(&cut).expect_err("truncated file must be refused");
    let msg = err.to_string();
    assert!(msg.contains("cut.asc8"), "{msg}");
}

#[test]
fn int8_engine_matches_fake_quant_student_unshared_mambas() {
    engine_vs_fake_quant(false, ACT_QMAX);
}

#[test]
fn int8_engine_matches_fake_quant_student_full_code_range() {
    engine_vs_fake_quant(false, 255);
}

#[test]
fn int8_engine_matches_fake_quant_student_shared_mamba() {
    engine_vs_fake_quant(true, ACT_QMAX);
}

#[test]
fn export_without_observers_is_refused() {
    let _rng = device_rng();
    let dev = Device::flex();
    let model = random_student(false, 3, &dev);
    let qm = QatModel {
        model,
        observers: Observers::default(),
    };
    let err = export_int8(
        &qm,
        "x",
        serde_json::Value::Null,
        data_specs::FrontEndConfig::dcase2024(),
        data_specs::Vocabulary::tau22_labels(),
    )
    .expect_err("no ranges");
    assert!(err.to_string().contains("no activation range"), "{err}");
}

/// The QAT forward on the fused ops (fused convolutions, LayerNorm, layout changes, products,
/// fake-quant ops) against the composition from burn's generic ops that it replaced: the
/// observers' ranges, the logits and the gradients of the parameters, over three training-like
/// steps (observers updating) on random students with trained-like BN statistics.
fn fused_vs_composed(shared: bool) {
    let _rng = device_rng();
    let dev = Device::flex().autodiff();
    let model = random_student(shared, 21, &dev);
    let Model::IrMamba(m) = &model else {
        unreachable!()
    };
    let (n_mels, n_frames, b) = (32, 33, 6);
    let mut rng = StdRng::seed_from_u64(5);
    let (mut of, mut oc) = (Observers::new(0.1), Observers::new(0.1));
    for step in 0..3 {
        let x = logmels(&mut rng, b, n_mels, n_frames);
        let x = Tensor::<4>::from_data(TensorData::new(x, [b, 1, n_mels, n_frames]), &dev);
        let w = Tensor::<2>::random([b, 10], Distribution::Normal(0.0, 1.0), &dev);
        let yf = qat_forward(m, x.clone(), &mut of);
        let yc = qat_forward_reference(m, x, &mut oc);
        let (hf, hc) = (host(yf.clone()), host(yc.clone()));
        let scale = hc.iter().fold(0.0f32, |a, v| a.max(v.abs())).max(1e-3);
        let max = hf
            .iter()
            .zip(&hc)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!(
            "shared={shared} step {step}: max |logit diff| {max:.2e} (max |logit| {scale:.3})"
        );
        // The fused kernels sum in another order than burn's: a value that lands next to a
        // rounding boundary of a fake-quant grid may move by one step; nothing more.
        assert!(max <= 0.02 * scale, "step {step}: logits differ by {max}");
        assert_eq!(of.ranges.len(), oc.ranges.len());
        for ((k, f), (k2, c)) in of.ranges.iter().zip(&oc.ranges) {
            assert_eq!(k, k2);
            let span = (c.1 - c.0).abs().max(1e-3);
            assert!(
                (f.0 - c.0).abs() <= 0.02 * span && (f.1 - c.1).abs() <= 0.02 * span,
                "observer {k}: {f:?} vs {c:?}"
            );
        }
        let gf = (yf * w.clone()).sum().backward();
        let gc = (yc * w).sum().backward();
        let mb = &m.stages[1].blocks[0];
        let pairs: Vec<(&str, Vec<f32>, Vec<f32>)> = vec![
            grads2("stem.dw1.weight", &m.stem.dw1.conv.weight.val(), &gf, &gc),
            grads1(
                "irb1.depthwise.gamma",
                &m.irb1.depthwise.bn.gamma.val(),
                &gf,
                &gc,
            ),
            grads1("irb2.project.beta", &m.irb2.project.bn.beta.val(), &gf, &gc),
            grads2(
                "pvm.mamba.0.in_proj",
                &mb.mamba[0].in_proj.weight.val(),
                &gf,
                &gc,
            ),
            grads2("pvm.mamba.0.a_log", &mb.mamba[0].a_log.val(), &gf, &gc),
            grads1("pvm.norm.gamma", &mb.norm.gamma.val(), &gf, &gc),
            grads1("pvm.skip_scale", &mb.skip_scale.val(), &gf, &gc),
            grads2("pvm.proj.weight", &mb.proj.weight.val(), &gf, &gc),
            grads2("head.conv.weight", &m.head.conv.conv.weight.val(), &gf, &gc),
        ];
        for (name, f, c) in pairs {
            let num: f64 = f
                .iter()
                .zip(&c)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            let den: f64 = c.iter().map(|b| (*b as f64).powi(2)).sum();
            let e = (num / den.max(1e-24)).sqrt();
            eprintln!("  grad {name}: rel err {e:.2e}");
            assert!(
                e < 1e-2,
                "step {step}: gradient of {name} differs, rel err {e}"
            );
        }
    }
}

fn grads2<const D: usize>(
    name: &'static str,
    p: &Tensor<D>,
    gf: &burn::tensor::Gradients,
    gc: &burn::tensor::Gradients,
) -> (&'static str, Vec<f32>, Vec<f32>) {
    (
        name,
        host(p.grad(gf).expect("fused gradient")),
        host(p.grad(gc).expect("composed gradient")),
    )
}

fn grads1(
    name: &'static str,
    p: &Tensor<1>,
    gf: &burn::tensor::Gradients,
    gc: &burn::tensor::Gradients,
) -> (&'static str, Vec<f32>, Vec<f32>) {
    grads2(name, p, gf, gc)
}

#[test]
fn fused_qat_forward_matches_the_composition_unshared_mambas() {
    fused_vs_composed(false);
}

#[test]
fn fused_qat_forward_matches_the_composition_shared_mamba() {
    fused_vs_composed(true);
}

/// The float control of the QAT measurements is the float model in eval mode: the folded,
/// frozen BatchNorm and no quantization reproduce `Model::forward` on the inference device; the
/// observers still record ranges, and those of the input are the batch's.
#[test]
fn float_control_forward_is_the_float_model_in_eval_mode() {
    let _rng = device_rng();
    let dev = Device::flex();
    let model = random_student(false, 9, &dev);
    let Model::IrMamba(m) = &model else {
        unreachable!()
    };
    let mut rng = StdRng::seed_from_u64(13);
    let (n_mels, n_frames, b) = (32, 33, 5);
    let xv = logmels(&mut rng, b, n_mels, n_frames);
    let x = Tensor::<4>::from_data(TensorData::new(xv.clone(), [b, 1, n_mels, n_frames]), &dev);
    let mut obs = Observers::new(0.01);
    obs.float_control = true;
    let got = host(qat_forward(m, x.clone(), &mut obs));
    let want = host(model.forward(x));
    let e = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        e < 1e-4,
        "float control differs from the eval-mode model by {e}"
    );
    // Input range: the cropped input's min and max (first batch sets the range).
    let keep = n_frames - n_frames % 16;
    let cropped: Vec<f32> = xv
        .chunks_exact(n_frames)
        .flat_map(|row| row[..keep].iter().copied())
        .collect();
    let lo = cropped.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = cropped.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(obs.ranges[train::qat::INPUT_KEY], (lo, hi));
    assert!(obs.ranges.len() > 20, "every quantization point observed");
}

/// Observers written before the code range was recorded load with fbgemm's `0..=127`.
#[test]
fn observers_without_a_code_range_load_with_the_reduced_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("observers.json");
    std::fs::write(
        &path,
        r#"{"momentum": 0.01, "frozen": true, "ranges": {"input.q": [-1.0, 2.0]}}"#,
    )
    .expect("write");
    let obs = Observers::load(&path).expect("load");
    assert_eq!(obs.act_qmax, ACT_QMAX);
    assert!(!obs.float_control);
    let mut full = obs.clone();
    full.act_qmax = 255;
    full.save(&path).expect("save");
    assert_eq!(Observers::load(&path).expect("load").act_qmax, 255);
}
