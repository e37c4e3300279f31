//! Tests of the int8 engine against independent references: naive loops, closed forms, the
//! float fake-quant simulation, and corrupted files.

use std::collections::BTreeMap;
use std::path::Path;

use data_specs::{FrontEndConfig, Vocabulary};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::builder::{GraphBuilder, RandomNetConfig, calibrate, quantize_model, random_irmamba};
use super::engine::{ExecMode, Reference};
use super::format::{self, FORMAT_VERSION};
use super::graph::{Activation, BufKind, Graph, ModelMeta, TensorMap};
use super::{Int8Error, Int8Model, QParams};

fn meta(n_mels: usize, n_classes: usize) -> ModelMeta {
    let frontend = FrontEndConfig {
        n_mels,
        ..FrontEndConfig::dcase2024()
    };
    let labels = Vocabulary((0..n_classes).map(|i| format!("class{i}")).collect());
    ModelMeta {
        name: "test".into(),
        config: serde_json::json!({"kind": "test"}),
        frontend,
        labels,
    }
}

fn randv(rng: &mut StdRng, n: usize, a: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-a..=a)).collect()
}

#[test]
fn crc32_matches_the_check_value() {
    // The standard CRC-32 check value of "123456789".
    assert_eq!(format::crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(format::crc32(b""), 0);
}

/// Builds `input -> quantize -> body -> dequantize`, calibrates on `inputs`, and checks that
/// the int8 engine's output is within one output step of the fake-quant float reference.
fn check_op(
    name: &str,
    shape: [usize; 3],
    body: impl FnOnce(&mut GraphBuilder, usize) -> usize,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut b, input) = GraphBuilder::with_input(shape.to_vec());
    let x = b.quantize("x", input);
    let out_q = body(&mut b, x);
    let out = b.dequantize("out", out_q);
    let (graph, tensors): (Graph, TensorMap) = b.finish(input, out);
    let n_out = graph.buffers[out].numel();
    let inputs: Vec<Vec<f32>> = (0..8)
        .map(|_| randv(&mut rng, shape.iter().product(), 2.0))
        .collect();
    let ranges =
        calibrate(&graph, &tensors, inputs.iter().map(Vec::as_slice), None).expect("calibrates");
    let mut m = meta(shape[1], n_out);
    m.frontend.n_mels = shape.iter().product::<usize>() / shape[2];
    let model = quantize_model(m, &graph, &tensors, &ranges, QParams::REDUCED)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let BufKind::Quant { q } = model.graph().buffers[out_q].kind else {
        panic!()
    };
    let mut reference = Reference::new(model.graph(), model.tensors(), true).expect("valid");
    let (mut worst, mut off, mut total) = (0.0f32, 0, 0);
    for x in &inputs {
        let got = model.infer(x).expect("runs");
        let want = reference.run(x, ExecMode::FakeQuant, None);
        for (a, b) in got.iter().zip(want) {
            let steps = (a - b).abs() / q.scale;
            worst = worst.max(steps);
            off += (steps > 0.5) as usize;
            total += 1;
        }
    }
    eprintln!("{name}: {off}/{total} outputs one step off, worst {worst:.3} steps");
    assert!(
        worst <= 1.0 + 1e-3,
        "{name}: int8 differs from fake-quant by {worst} steps"
    );
    // Off-by-one only at rounding ties (half up vs half even) and multiplier rounding: rare.
    assert!(
        off * 100 <= total,
        "{name}: {off}/{total} outputs off by one step"
    );
}

#[allow(clippy::too_many_arguments)]
fn conv_body(
    cin: usize,
    cout: usize,
    k: usize,
    groups: usize,
    stride: [usize; 2],
    pad: usize,
    act: Activation,
    seed: u64,
) -> impl FnOnce(&mut GraphBuilder, usize) -> usize {
    move |b: &mut GraphBuilder, x: usize| {
        let mut rng = StdRng::seed_from_u64(seed);
        let w = randv(&mut rng, cout * cin / groups * k * k, 0.5);
        let bias = randv(&mut rng, cout, 0.5);
        b.conv2d(
            "conv",
            x,
            w,
            [cout, cin / groups, k, k],
            bias,
            groups,
            stride,
            [pad, pad],
            act,
        )
    }
}

#[test]
fn int8_convolutions_match_fake_quant_within_one_step() {
    check_op(
        "conv3x3",
        [3, 12, 10],
        conv_body(3, 6, 3, 1, [1, 1], 1, Activation::None, 10),
        11,
    );
    check_op(
        "conv3x3 stride 2 relu",
        [1, 16, 8],
        conv_body(1, 8, 3, 1, [2, 2], 1, Activation::Relu, 12),
        13,
    );
    check_op(
        "depthwise stride 2,1 relu6",
        [8, 12, 6],
        conv_body(8, 8, 3, 8, [2, 1], 1, Activation::Relu6, 14),
        15,
    );
    check_op(
        "pointwise",
        [16, 6, 5],
        conv_body(16, 24, 1, 1, [1, 1], 0, Activation::None, 16),
        17,
    );
    check_op(
        "grouped",
        [4, 6, 6],
        conv_body(4, 8, 3, 2, [1, 1], 1, Activation::Relu, 18),
        19,
    );
}

#[test]
fn int8_linear_add_and_pools_match_fake_quant_within_one_step() {
    check_op(
        "linear",
        [12, 5, 7],
        |b, x| {
            let mut rng = StdRng::seed_from_u64(20);
            let w = randv(&mut rng, 20 * 12, 0.4);
            let bias = randv(&mut rng, 20, 0.3);
            b.linear(
                "lin",
                "lin",
                x,
                &w,
                Some(&bias),
                vec![20, 35],
                Activation::None,
            )
        },
        21,
    );
    check_op(
        "add",
        [4, 6, 6],
        |b, x| {
            let mut rng = StdRng::seed_from_u64(22);
            let w = randv(&mut rng, 4 * 4, 0.8);
            let c = b.conv2d(
                "pw",
                x,
                w,
                [4, 4, 1, 1],
                vec![0.3; 4],
                1,
                [1, 1],
                [0, 0],
                Activation::Relu,
            );
            b.add("add", x, c)
        },
        23,
    );
    check_op(
        "max pool",
        [5, 8, 6],
        |b, x| b.max_pool("mp", x, [2, 2], [2, 2]),
        24,
    );
    check_op(
        "avg pool",
        [7, 6, 4],
        |b, x| {
            let mut rng = StdRng::seed_from_u64(25);
            let w = randv(&mut rng, 7 * 7, 0.8);
            let c = b.conv2d(
                "pw",
                x,
                w,
                [7, 7, 1, 1],
                vec![0.1; 7],
                1,
                [1, 1],
                [0, 0],
                Activation::None,
            );
            b.avg_pool("gap", c)
        },
        26,
    );
}

fn logmel_like(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| -4.0 + 3.0 * ((i % 17) as f32 / 17.0) + rng.random_range(-2.0f32..2.0))
        .collect()
}

fn small_model() -> (Int8Model, Graph, TensorMap) {
    let cfg = RandomNetConfig::small();
    let (graph, tensors) = random_irmamba(&cfg, 7);
    let mut rng = StdRng::seed_from_u64(8);
    let cal: Vec<Vec<f32>> = (0..64)
        .map(|_| logmel_like(&mut rng, cfg.n_mels * cfg.n_frames))
        .collect();
    let ranges =
        calibrate(&graph, &tensors, cal.iter().map(Vec::as_slice), None).expect("calibrates");
    let model = quantize_model(
        meta(cfg.n_mels, cfg.n_classes),
        &graph,
        &tensors,
        &ranges,
        QParams::REDUCED,
    )
    .expect("quantizes");
    (model, graph, tensors)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
}

#[test]
fn end_to_end_int8_matches_fake_quant_simulation() {
    let (model, graph, tensors) = small_model();
    let cfg = RandomNetConfig::small();
    let mut fq = Reference::new(model.graph(), model.tensors(), true).expect("valid");
    let mut fl = Reference::new(&graph, &tensors, false).expect("valid");
    let mut rng = StdRng::seed_from_u64(9);
    let n = 200;
    let (mut agree_fq, mut agree_float, mut max_diff, mut max_logit) = (0, 0, 0.0f32, 0.0f32);
    let mut batch = Vec::new();
    let mut singles = Vec::new();
    for _ in 0..n {
        let x = logmel_like(&mut rng, cfg.n_mels * cfg.n_frames);
        let got = model.infer(&x).expect("runs");
        let want = fq.run(&x, ExecMode::FakeQuant, None).to_vec();
        let float = fl.run(&x, ExecMode::Float, None).to_vec();
        agree_fq += (argmax(&got) == argmax(&want)) as usize;
        agree_float += (argmax(&got) == argmax(&float)) as usize;
        for (a, b) in got.iter().zip(&want) {
            max_diff = max_diff.max((a - b).abs());
            max_logit = max_logit.max(b.abs());
        }
        batch.extend_from_slice(&x);
        singles.extend(got);
    }
    eprintln!(
        "int8 vs fake-quant: argmax agreement {agree_fq}/{n}, max |logit diff| {max_diff:.5} (max |logit| {max_logit:.3}); int8 vs float: argmax agreement {agree_float}/{n}"
    );
    assert!(
        agree_fq as f64 >= 0.99 * n as f64,
        "argmax agreement {agree_fq}/{n}"
    );
    assert!(
        max_diff <= 0.05 * max_logit.max(1.0),
        "max logit diff {max_diff}"
    );
    // The batch path gives the same logits as single clips.
    assert_eq!(model.infer_batch(&batch).expect("runs"), singles);
}

#[test]
fn save_load_round_trip_and_corruption_is_refused() {
    let (model, _, _) = small_model();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.asc8");
    model.save(&path).expect("saves");
    assert!(!dir.path().join("model.asc8.tmp").exists());
    let loaded = Int8Model::load(&path).expect("loads");
    assert_eq!(loaded.graph(), model.graph());
    assert_eq!(loaded.tensors(), model.tensors());
    assert_eq!(loaded.meta(), model.meta());
    let x = vec![-3.0; model.input_len()];
    assert_eq!(loaded.infer(&x).unwrap(), model.infer(&x).unwrap());

    let bytes = std::fs::read(&path).unwrap();
    let bad = |b: &[u8]| {
        format::from_bytes(Path::new("bad.asc8"), b)
            .map(|_| ())
            .unwrap_err()
    };
    let mut m = bytes.clone();
    m[0] = b'X';
    assert!(matches!(bad(&m), Int8Error::BadMagic { .. }));
    let mut v = bytes.clone();
    v[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    assert!(matches!(bad(&v), Int8Error::Version { found, .. } if found == FORMAT_VERSION + 1));
    let e = bad(&bytes[..bytes.len() - 100]);
    assert!(matches!(e, Int8Error::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("bad.asc8"), "{e}");
    let mut c = bytes.clone();
    let mid = bytes.len() - 200;
    c[mid] ^= 0x5a;
    assert!(matches!(bad(&c), Int8Error::Checksum { .. }));
    // A file whose tensor disagrees with its op is refused by the loader, naming the file.
    let mut tensors = model.tensors().clone();
    let key = tensors
        .keys()
        .find(|k| k.ends_with("head.bias"))
        .cloned()
        .unwrap();
    tensors.get_mut(&key).unwrap().shape = vec![1, 10];
    format::write(&path, model.meta(), model.graph(), &tensors).unwrap();
    let e = Int8Model::load(&path).unwrap_err();
    assert!(
        matches!(e, Int8Error::Invalid { .. })
            && e.to_string().contains("model.asc8")
            && e.to_string().contains("head.bias"),
        "{e}"
    );
    // Wrong input length is an error, not a panic.
    assert!(matches!(
        model.infer(&[0.0; 3]),
        Err(Int8Error::InputLength { .. })
    ));
}

#[test]
fn quantize_model_requires_every_range() {
    let (graph, tensors) = random_irmamba(&RandomNetConfig::small(), 1);
    let e = quantize_model(
        meta(32, 10),
        &graph,
        &tensors,
        &BTreeMap::new(),
        QParams::REDUCED,
    )
    .unwrap_err();
    assert!(e.to_string().contains("no activation range"), "{e}");
}

#[test]
fn irmamba_shaped_network_fits_the_parameter_budget() {
    let cfg = RandomNetConfig::irmamba();
    let (graph, tensors) = random_irmamba(&cfg, 3);
    let mut ranges = BTreeMap::new();
    for b in &graph.buffers {
        ranges.insert(
            super::builder::range_key(&b.name).to_string(),
            (-4.0f32, 4.0f32),
        );
    }
    let model = quantize_model(meta(256, 10), &graph, &tensors, &ranges, QParams::REDUCED)
        .expect("quantizes");
    let pm = model.param_memory();
    eprintln!(
        "IRMamba-shaped random net: {pm:?}, params {}, stored {} B, 8-bit {} B",
        pm.params(),
        pm.stored_bytes(),
        pm.dcase_8bit_bytes()
    );
    assert!(pm.dcase_8bit_bytes() < 128_000);
    let out = model.infer(&vec![-2.0; 256 * 64]).expect("runs");
    assert_eq!(out.len(), 10);
    assert!(out.iter().all(|v| v.is_finite()));
}

#[test]
fn a_full_front_end_log_mel_is_cropped_inside_the_engine() {
    let (model, _, _) = small_model();
    // The DCASE2024 front end's 65 frames, the network's first 16 of them.
    assert_eq!(model.logmel_shape(), (32, 65));
    assert_eq!(model.input_shape(), (32, 16));
    let mut rng = StdRng::seed_from_u64(31);
    let full: Vec<Vec<f32>> = (0..3).map(|_| logmel_like(&mut rng, 32 * 65)).collect();
    for x in &full {
        // The crop by hand: the first 16 values of every mel row.
        let crop: Vec<f32> = x.chunks_exact(65).flat_map(|r| r[..16].to_vec()).collect();
        let want = model.infer(&crop).expect("runs");
        assert_eq!(model.infer_logmel(x).expect("runs"), want);
        let p = model.classify(x).expect("runs");
        assert_eq!(p.logits, want);
        assert_eq!(p.class, argmax(&want));
        assert_eq!(p.label, format!("class{}", p.class));
        let total: f32 = p.probs.iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "probabilities sum to {total}");
    }
    let batch: Vec<f32> = full.concat();
    let singles: Vec<f32> = full
        .iter()
        .flat_map(|x| model.infer_logmel(x).expect("runs"))
        .collect();
    assert_eq!(model.infer_logmel_batch(&batch).expect("runs"), singles);
    // A cropped input is not a full log-mel: a clear error naming the expected shape.
    let err = model
        .classify(&full[0][..32 * 16])
        .expect_err("wrong length");
    assert!(
        matches!(&err, Int8Error::InputLength { got: 512, expected: 2080, shape } if shape == &[32, 65]),
        "{err}"
    );
    assert!(model.infer_logmel_batch(&batch[1..]).is_err());
}
