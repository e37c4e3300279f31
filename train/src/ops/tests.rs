//! Direct depthwise kernels vs burn's grouped convolutions (forward and autodiff gradients) and
//! central finite differences of an independent f64 loop.

use super::{
    DepthwiseError, depthwise_conv1d_causal, depthwise_conv1d_causal_reference, depthwise_conv2d,
    depthwise_conv2d_reference, try_depthwise_conv1d_causal, try_depthwise_conv2d,
};
use crate::test_util::{host, rel_err};
use asc_kernels::math;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// One 2-D test case: `[B, C, H, W]`, kernel, stride, padding.
#[derive(Clone, Copy, Debug)]
struct Case {
    shape: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
}

const CASES: [Case; 6] = [
    Case {
        shape: [2, 3, 7, 9],
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
    },
    Case {
        shape: [2, 4, 9, 11],
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1, 1],
    },
    Case {
        shape: [1, 5, 8, 7],
        kernel: [3, 3],
        stride: [1, 1],
        padding: [0, 0],
    },
    Case {
        shape: [3, 2, 10, 13],
        kernel: [3, 3],
        stride: [2, 1],
        padding: [0, 1],
    },
    Case {
        shape: [2, 3, 5, 21],
        kernel: [1, 4],
        stride: [1, 2],
        padding: [0, 3],
    },
    Case {
        shape: [1, 6, 12, 5],
        kernel: [5, 3],
        stride: [1, 1],
        padding: [2, 1],
    },
];

/// Host inputs `(x, w, bias)` of a case with `c_out` output channels.
fn inputs(case: &Case, c_out: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let [b, c, h, w] = case.shape;
    let [kh, kw] = case.kernel;
    (
        rand_vec(&mut rng, b * c * h * w),
        rand_vec(&mut rng, c_out * kh * kw),
        rand_vec(&mut rng, c_out),
    )
}

/// Output `y`, the loss weights `g`, and gradients `(dx, dw, db)` of `sum(g ⊙ y)` through the
/// fused op or burn's reference, on an autodiff device.
fn run2d(case: &Case, seed: u64, fused: bool) -> (Vec<f32>, [Vec<f32>; 3]) {
    run2d_multiplier(case, case.shape[1], seed, fused)
}

/// [`run2d`] with `c_out` output channels (a multiple of the input's).
fn run2d_multiplier(
    case: &Case,
    c_out: usize,
    seed: u64,
    fused: bool,
) -> (Vec<f32>, [Vec<f32>; 3]) {
    let device = Device::default().autodiff();
    let (xv, wv, bv) = inputs(case, c_out, seed);
    let [b, c, h, w] = case.shape;
    let [kh, kw] = case.kernel;
    let x = Tensor::<4>::from_data(TensorData::new(xv, [b, c, h, w]), &device).require_grad();
    let wt =
        Tensor::<4>::from_data(TensorData::new(wv, [c_out, 1, kh, kw]), &device).require_grad();
    let bt = Tensor::<1>::from_data(TensorData::new(bv, [c_out]), &device).require_grad();
    let f = if fused {
        depthwise_conv2d
    } else {
        depthwise_conv2d_reference
    };
    let y = f(
        x.clone(),
        wt.clone(),
        Some(bt.clone()),
        case.stride,
        case.padding,
    );
    let mut rng = StdRng::seed_from_u64(seed + 1000);
    let dims = y.dims();
    let g = rand_vec(&mut rng, dims.iter().product());
    let gt = Tensor::<4>::from_data(TensorData::new(g, dims), &device);
    let grads = (y.clone() * gt).sum().backward();
    let grad = |t: Option<Tensor<4>>| host(t.expect("gradient"));
    (
        host(y),
        [
            grad(x.grad(&grads)),
            grad(wt.grad(&grads)),
            host(bt.grad(&grads).expect("bias gradient")),
        ],
    )
}

#[test]
fn forward_and_gradients_match_burn_grouped_conv2d() {
    for (i, case) in CASES.iter().enumerate() {
        let (yf, gf) = run2d(case, i as u64, true);
        let (yr, gr) = run2d(case, i as u64, false);
        let e = rel_err(&yf, &yr);
        assert!(e <= 1e-5, "{case:?}: forward rel err {e}");
        for (k, name) in ["x", "weight", "bias"].iter().enumerate() {
            let e = rel_err(&gf[k], &gr[k]);
            assert!(e <= 1e-4, "{case:?}: d{name} rel err {e}");
        }
    }
}

/// A channel multiplier (`C_out = m C_in`, as the stem's 1 -> 8 first conv): output, `dx`
/// (summed over each input channel's outputs), `dw`, `db` against burn's grouped conv.
#[test]
fn channel_multiplier_matches_burn_grouped_conv2d() {
    let cases = [
        (CASES[1], 8), // 4 input channels, multiplier 2, stride 2
        (
            Case {
                shape: [3, 1, 10, 7],
                kernel: [3, 3],
                stride: [2, 2],
                padding: [1, 1],
            },
            4,
        ),
    ];
    for (i, (case, c_out)) in cases.iter().enumerate() {
        let (yf, gf) = run2d_multiplier(case, *c_out, 50 + i as u64, true);
        let (yr, gr) = run2d_multiplier(case, *c_out, 50 + i as u64, false);
        let e = rel_err(&yf, &yr);
        assert!(e <= 1e-5, "{case:?} x {c_out}: forward rel err {e}");
        for (k, name) in ["x", "weight", "bias"].iter().enumerate() {
            let e = rel_err(&gf[k], &gr[k]);
            assert!(e <= 1e-4, "{case:?} x {c_out}: d{name} rel err {e}");
        }
    }
}

/// Independent f64 loop: `sum(g ⊙ conv(x, w) + bias)` with one input replaced.
fn loss_f64(case: &Case, x: &[f64], w: &[f64], bias: &[f64], g: &[f64], out: [usize; 2]) -> f64 {
    let [bs, c, h, wd] = case.shape;
    let [kh, kw] = case.kernel;
    let [sh, sw] = case.stride;
    let [ph, pw] = case.padding;
    let [oh_n, ow_n] = out;
    let mut loss = 0.0;
    for b in 0..bs {
        for ch in 0..c {
            for oh in 0..oh_n {
                for ow in 0..ow_n {
                    let mut y = bias[ch];
                    for i in 0..kh {
                        for j in 0..kw {
                            let ih = (oh * sh + i) as isize - ph as isize;
                            let iw = (ow * sw + j) as isize - pw as isize;
                            if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < wd {
                                y += w[(ch * kh + i) * kw + j]
                                    * x[((b * c + ch) * h + ih as usize) * wd + iw as usize];
                            }
                        }
                    }
                    loss += g[((b * c + ch) * oh_n + oh) * ow_n + ow] * y;
                }
            }
        }
    }
    loss
}

#[test]
fn gradients_match_f64_central_differences() {
    for (ci, case) in [CASES[1], CASES[4]].iter().enumerate() {
        let seed = 77 + ci as u64;
        let (xv, wv, bv) = inputs(case, case.shape[1], seed);
        let (y, gf) = run2d(case, seed, true);
        let [b, c, ..] = case.shape;
        let out_plane = y.len() / (b * c);
        // Output size from the reference formula.
        let oh = (case.shape[2] + 2 * case.padding[0] - case.kernel[0]) / case.stride[0] + 1;
        let ow = (case.shape[3] + 2 * case.padding[1] - case.kernel[1]) / case.stride[1] + 1;
        assert_eq!(oh * ow, out_plane);
        let mut rng = StdRng::seed_from_u64(seed + 1000);
        let g: Vec<f64> = rand_vec(&mut rng, y.len())
            .into_iter()
            .map(f64::from)
            .collect();
        let to64 = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        let (x, w, bias) = (to64(&xv), to64(&wv), to64(&bv));
        let eps = 1e-4;
        for (which, len) in [(0usize, x.len()), (1, w.len()), (2, bias.len())] {
            for idx in [0, len / 3, len / 2 + 1, len - 1] {
                let perturbed = |delta: f64| {
                    let (mut x, mut w, mut bias) = (x.clone(), w.clone(), bias.clone());
                    [&mut x, &mut w, &mut bias][which][idx] += delta;
                    loss_f64(case, &x, &w, &bias, &g, [oh, ow])
                };
                let fd = (perturbed(eps) - perturbed(-eps)) / (2.0 * eps);
                let an = gf[which][idx] as f64;
                assert!(
                    (fd - an).abs() <= 1e-3 * (1.0 + fd.abs()),
                    "{case:?}: input {which} index {idx}: analytic {an} vs finite difference {fd}"
                );
            }
        }
    }
}

#[test]
fn causal_conv1d_matches_burn_conv1d_with_and_without_autodiff() {
    let (b, c, len, k) = (3, 5, 37, 4);
    let mut rng = StdRng::seed_from_u64(5);
    let (xv, wv, bv) = (
        rand_vec(&mut rng, b * c * len),
        rand_vec(&mut rng, c * k),
        rand_vec(&mut rng, c),
    );
    let g = rand_vec(&mut rng, b * c * len);
    let run = |fused: bool| {
        let device = Device::default().autodiff();
        let x = Tensor::<3>::from_data(TensorData::new(xv.clone(), [b, c, len]), &device)
            .require_grad();
        let w =
            Tensor::<3>::from_data(TensorData::new(wv.clone(), [c, 1, k]), &device).require_grad();
        let bias = Tensor::<1>::from_data(TensorData::new(bv.clone(), [c]), &device).require_grad();
        let f = if fused {
            depthwise_conv1d_causal
        } else {
            depthwise_conv1d_causal_reference
        };
        let y = f(x.clone(), w.clone(), Some(bias.clone()));
        let gt = Tensor::<3>::from_data(TensorData::new(g.clone(), [b, c, len]), &device);
        let grads = (y.clone() * gt).sum().backward();
        (
            host(y),
            host(x.grad(&grads).expect("dx")),
            host(w.grad(&grads).expect("dw")),
            host(bias.grad(&grads).expect("db")),
        )
    };
    let (yf, dxf, dwf, dbf) = run(true);
    let (yr, dxr, dwr, dbr) = run(false);
    assert_eq!(yf.len(), b * c * len);
    assert!(rel_err(&yf, &yr) <= 1e-5, "forward");
    assert!(rel_err(&dxf, &dxr) <= 1e-4, "dx");
    assert!(rel_err(&dwf, &dwr) <= 1e-4, "dw");
    assert!(rel_err(&dbf, &dbr) <= 1e-4, "db");
    // Causality, by hand: y[.., 0] only sees x[.., 0] through the last tap.
    for ch in 0..c {
        let want = bv[ch] + wv[ch * k + k - 1] * xv[ch * len];
        assert!((yf[ch * len] - want).abs() <= 1e-6);
    }
    // Without autodiff (plain inference device) and without a bias.
    let device = Device::default();
    let x = Tensor::<3>::from_data(TensorData::new(xv.clone(), [b, c, len]), &device);
    let w = Tensor::<3>::from_data(TensorData::new(wv.clone(), [c, 1, k]), &device);
    let y0 = host(depthwise_conv1d_causal(x.clone(), w.clone(), None));
    let r0 = host(depthwise_conv1d_causal_reference(x, w, None));
    assert!(rel_err(&y0, &r0) <= 1e-5, "inference forward");
}

#[test]
fn untracked_input_and_inference_device() {
    // Only the weight requires a gradient (the model's first layer): dw still matches burn.
    let case = CASES[0];
    let (xv, wv, _) = inputs(&case, case.shape[1], 9);
    let [b, c, h, w] = case.shape;
    let run = |fused: bool| {
        let device = Device::default().autodiff();
        let x = Tensor::<4>::from_data(TensorData::new(xv.clone(), [b, c, h, w]), &device);
        let wt = Tensor::<4>::from_data(TensorData::new(wv.clone(), [c, 1, 3, 3]), &device)
            .require_grad();
        let f = if fused {
            depthwise_conv2d
        } else {
            depthwise_conv2d_reference
        };
        let y = f(x.clone(), wt.clone(), None, [1, 1], [1, 1]);
        let grads = (y.clone() * y).sum().backward();
        assert!(x.grad(&grads).is_none());
        host(wt.grad(&grads).expect("dw"))
    };
    assert!(rel_err(&run(true), &run(false)) <= 1e-4);
    let device = Device::default();
    let x = Tensor::<4>::from_data(TensorData::new(xv.clone(), [b, c, h, w]), &device);
    let wt = Tensor::<4>::from_data(TensorData::new(wv.clone(), [c, 1, 3, 3]), &device);
    let yf = host(depthwise_conv2d(
        x.clone(),
        wt.clone(),
        None,
        [2, 2],
        [1, 1],
    ));
    let yr = host(depthwise_conv2d_reference(x, wt, None, [2, 2], [1, 1]));
    assert!(rel_err(&yf, &yr) <= 1e-5);
}

#[test]
fn bad_shapes_are_typed_errors() {
    let device = Device::default();
    let x = Tensor::<4>::zeros([1, 3, 4, 4], &device);
    let bad_w = Tensor::<4>::zeros([2, 1, 3, 3], &device);
    assert!(matches!(
        try_depthwise_conv2d(x.clone(), bad_w, None, [1, 1], [1, 1]),
        Err(DepthwiseError::Weight { channels: 3, .. })
    ));
    let w = Tensor::<4>::zeros([3, 1, 3, 3], &device);
    let bad_b = Tensor::<1>::zeros([4], &device);
    assert!(matches!(
        try_depthwise_conv2d(x.clone(), w.clone(), Some(bad_b), [1, 1], [1, 1]),
        Err(DepthwiseError::Bias { .. })
    ));
    assert!(matches!(
        try_depthwise_conv2d(x.clone(), w.clone(), None, [0, 1], [1, 1]),
        Err(DepthwiseError::Geometry { .. })
    ));
    let big = Tensor::<4>::zeros([3, 1, 9, 9], &device);
    assert!(matches!(
        try_depthwise_conv2d(x, big, None, [1, 1], [1, 1]),
        Err(DepthwiseError::Geometry { .. })
    ));
    let x1 = Tensor::<3>::zeros([1, 3, 8], &device);
    let w1 = Tensor::<3>::zeros([3, 2, 4], &device);
    assert!(matches!(
        try_depthwise_conv1d_causal(x1, w1, None),
        Err(DepthwiseError::Weight { .. })
    ));
}

#[test]
fn module_helpers_match_the_modules_own_forward() {
    use super::{conv1d_causal_forward, conv2d_forward};
    use burn::nn::conv::{Conv1dConfig, Conv2dConfig};
    use burn::nn::{PaddingConfig1d, PaddingConfig2d};
    let device = Device::default();
    let mut rng = StdRng::seed_from_u64(3);
    let x = Tensor::<4>::from_data(
        TensorData::new(rand_vec(&mut rng, 2 * 6 * 9 * 7), [2, 6, 9, 7]),
        &device,
    );
    // Depthwise (fused path) with and without bias, and a dense conv (burn's path).
    for (groups, c_out, bias, stride) in [
        (6, 6, false, [2, 2]),
        (6, 6, true, [1, 2]),
        (1, 4, true, [1, 1]),
    ] {
        let conv = Conv2dConfig::new([6, c_out], [3, 3])
            .with_groups(groups)
            .with_stride(stride)
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(bias)
            .init(&device);
        let got = host(conv2d_forward(&conv, x.clone()));
        let want = host(conv.forward(x.clone()));
        assert!(rel_err(&got, &want) <= 1e-5, "groups {groups} bias {bias}");
    }
    let x1 = Tensor::<3>::from_data(
        TensorData::new(rand_vec(&mut rng, 2 * 8 * 19), [2, 8, 19]),
        &device,
    );
    let conv = Conv1dConfig::new(8, 8, 4)
        .with_groups(8)
        .with_padding(PaddingConfig1d::Explicit(3, 0))
        .with_bias(true)
        .init(&device);
    let got = host(conv1d_causal_forward(&conv, x1.clone()));
    let want = host(conv.forward(x1));
    assert!(rel_err(&got, &want) <= 1e-5);
}

/// Fused BatchNorm (+ ReLU) vs burn's own `batch_norm_train` (+ `relu`): output, batch
/// statistics and gradients for a random upstream gradient.
fn bn_case(shape: [usize; 4], relu: bool, fused: bool, seed: u64) -> [Vec<f32>; 6] {
    let device = Device::default().autodiff();
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let c = shape[1];
    // Channel offsets and scales so that the statistics are not trivial.
    let xv: Vec<f32> = (0..n)
        .map(|i| {
            let ch = (i / (shape[2] * shape[3])) % c;
            3.0 * ch as f32 - 2.0 + (1.0 + ch as f32) * rng.random_range(-1.0f32..1.0)
        })
        .collect();
    let x = Tensor::<4>::from_data(TensorData::new(xv, shape), &device).require_grad();
    let gamma =
        Tensor::<1>::from_data(TensorData::new(rand_vec(&mut rng, c), [c]), &device).require_grad();
    let beta =
        Tensor::<1>::from_data(TensorData::new(rand_vec(&mut rng, c), [c]), &device).require_grad();
    let (y, mean, var) = if fused {
        super::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5, relu)
    } else {
        let r =
            burn::tensor::module::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5);
        let y = if relu {
            burn::tensor::activation::relu(r.output)
        } else {
            r.output
        };
        (y, r.mean, r.variance)
    };
    let g = rand_vec(&mut rng, n);
    let gt = Tensor::<4>::from_data(TensorData::new(g, shape), &device);
    let grads = (y.clone() * gt).sum().backward();
    [
        host(y),
        host(mean),
        host(var),
        host(x.grad(&grads).expect("dx")),
        host(gamma.grad(&grads).expect("dgamma")),
        host(beta.grad(&grads).expect("dbeta")),
    ]
}

#[test]
fn batch_norm_matches_burn_batch_norm_train_with_and_without_relu() {
    for (shape, relu) in [
        ([4, 3, 5, 7], false),
        ([4, 3, 5, 7], true),
        ([2, 16, 8, 33], true),
        ([7, 5, 1, 1], false),
    ] {
        let ours = bn_case(shape, relu, true, 11);
        let burn_ref = bn_case(shape, relu, false, 11);
        let names = ["y", "mean", "var", "dx", "dgamma", "dbeta"];
        for ((a, b), name) in ours.iter().zip(&burn_ref).zip(names) {
            let e = rel_err(a, b);
            assert!(e < 2e-5, "{shape:?} relu {relu}: {name} rel err {e}");
        }
    }
}

#[test]
fn batch_norm_statistics_match_an_f64_loop_on_a_3d_input() {
    let (b, c, l) = (3usize, 4usize, 10usize);
    let mut rng = StdRng::seed_from_u64(5);
    let xv: Vec<f32> = (0..b * c * l)
        .map(|_| 10.0 + rng.random_range(-1.0f32..1.0))
        .collect();
    let dev = Device::default();
    let x = Tensor::<3>::from_data(TensorData::new(xv.clone(), [b, c, l]), &dev);
    let gamma = Tensor::<1>::from_data(TensorData::new(vec![2.0f32; c], [c]), &dev);
    let beta = Tensor::<1>::from_data(TensorData::new(vec![0.5f32; c], [c]), &dev);
    let (y, mean, var) = super::batch_norm_train(x, gamma, beta, 1e-5, false);
    let (y, mean, var) = (host(y), host(mean), host(var));
    for ch in 0..c {
        let vals: Vec<f64> = (0..b)
            .flat_map(|bi| (0..l).map(move |t| (bi, t)))
            .map(|(bi, t)| xv[(bi * c + ch) * l + t] as f64)
            .collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let v = vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / vals.len() as f64;
        assert!((mean[ch] as f64 - m).abs() < 1e-5, "mean {ch}");
        assert!((var[ch] as f64 - v).abs() < 1e-5 * v.max(1.0), "var {ch}");
        for bi in 0..b {
            for t in 0..l {
                let i = (bi * c + ch) * l + t;
                let want = 2.0 * (xv[i] as f64 - m) / (v + 1e-5).sqrt() + 0.5;
                assert!((y[i] as f64 - want).abs() < 1e-4, "y[{i}]");
            }
        }
    }
}

#[test]
fn conv_bn_training_forward_updates_running_stats_as_burn_batch_norm() {
    use crate::model::conv_bn::ConvBnConfig;
    let device = Device::default().autodiff();
    let cb = ConvBnConfig::new(3, 4, 1).init(&device);
    // A fresh BN equals the ConvBn's (gamma 1, beta 0, running mean 0, var 1) and shares no
    // running state with it (clones of a module would share it).
    let reference = burn::nn::BatchNormConfig::new(4).init(&device);
    let x = Tensor::<4>::random(
        [2, 3, 5, 6],
        burn::tensor::Distribution::Normal(1.0, 2.0),
        &device,
    );
    let z = cb.conv.forward(x.clone());
    let want = burn::tensor::activation::relu(reference.forward(z));
    let got = cb.forward(x);
    assert!(rel_err(&host(got), &host(want)) < 2e-5);
    let fresh = burn::nn::BatchNormConfig::new(4).init(&device);
    let untouched = host(fresh.running_var.value());
    assert!(rel_err(&host(cb.bn.running_var.value_sync()), &untouched) > 1e-3);
    for (a, b) in [
        (
            cb.bn.running_mean.value_sync(),
            reference.running_mean.value_sync(),
        ),
        (
            cb.bn.running_var.value_sync(),
            reference.running_var.value_sync(),
        ),
    ] {
        assert!(rel_err(&host(a), &host(b)) < 1e-5);
    }
}

#[test]
fn pointwise_conv_matches_burn_conv2d_forward_and_gradients() {
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    let device = Device::default().autodiff();
    let mut rng = StdRng::seed_from_u64(21);
    for (bias, padding) in [
        (false, PaddingConfig2d::Explicit(0, 0, 0, 0)),
        (true, PaddingConfig2d::Valid),
    ] {
        let conv = Conv2dConfig::new([5, 7], [1, 1])
            .with_padding(padding)
            .with_bias(bias)
            .init(&device);
        // 3 batch elements, and 37 (more than the 16 groups of the weight-gradient sum, in
        // groups of unequal size).
        for (b, h, w) in [(3, 4, 6), (37, 3, 5)] {
            let xv = rand_vec(&mut rng, b * 5 * h * w);
            let gv = rand_vec(&mut rng, b * 7 * h * w);
            let run = |fused: bool| {
                let x = Tensor::<4>::from_data(TensorData::new(xv.clone(), [b, 5, h, w]), &device)
                    .require_grad();
                let y = if fused {
                    super::conv2d_forward(&conv, x.clone())
                } else {
                    conv.forward(x.clone())
                };
                let g = Tensor::<4>::from_data(TensorData::new(gv.clone(), [b, 7, h, w]), &device);
                let grads = (y.clone() * g).sum().backward();
                let mut out = vec![
                    host(y),
                    host(x.grad(&grads).expect("dx")),
                    host(conv.weight.val().grad(&grads).expect("dw")),
                ];
                if let Some(bias) = &conv.bias {
                    out.push(host(bias.val().grad(&grads).expect("db")));
                }
                out
            };
            let (ours, reference) = (run(true), run(false));
            assert_eq!(ours.len(), reference.len());
            for (i, (a, r)) in ours.iter().zip(&reference).enumerate() {
                let e = rel_err(a, r);
                assert!(e < 1e-5, "bias {bias}, batch {b}: output {i} rel err {e}");
            }
        }
    }
}

#[test]
fn linear_tokens_matches_burn_linear_forward_and_gradients() {
    use burn::module::Module;
    use burn::nn::LinearConfig;
    let device = Device::default().autodiff();
    let mut rng = StdRng::seed_from_u64(22);
    for (bias, [s, l, d_in, d_out]) in [(false, [3, 7, 5, 9]), (true, [40, 2, 6, 4])] {
        let lin = LinearConfig::new(d_in, d_out).with_bias(bias).init(&device);
        let xv = rand_vec(&mut rng, s * l * d_in);
        let gv = rand_vec(&mut rng, s * l * d_out);
        let run = |fused: bool| {
            let x = Tensor::<3>::from_data(TensorData::new(xv.clone(), [s, l, d_in]), &device)
                .require_grad();
            let y = if fused {
                super::linear_tokens(&lin, x.clone())
            } else {
                lin.forward(x.clone())
            };
            let g = Tensor::<3>::from_data(TensorData::new(gv.clone(), [s, l, d_out]), &device);
            let grads = (y.clone() * g).sum().backward();
            let mut out = vec![
                host(y),
                host(x.grad(&grads).expect("dx")),
                host(lin.weight.val().grad(&grads).expect("dw")),
            ];
            if let Some(b) = &lin.bias {
                out.push(host(b.val().grad(&grads).expect("db")));
            }
            out
        };
        let (ours, reference) = (run(true), run(false));
        assert_eq!(ours.len(), reference.len());
        for (i, (a, r)) in ours.iter().zip(&reference).enumerate() {
            let e = rel_err(a, r);
            assert!(
                e < 1e-5,
                "linear {s}x{l}x{d_in}->{d_out}: output {i} rel err {e}"
            );
        }
        // Without autodiff: the same values.
        let plain = Device::default();
        let x = Tensor::<3>::from_data(TensorData::new(xv.clone(), [s, l, d_in]), &plain);
        let lin_plain = lin.valid();
        let e = rel_err(
            &host(super::linear_tokens(&lin_plain, x.clone())),
            &host(lin_plain.forward(x)),
        );
        assert!(e < 1e-6, "inference linear rel err {e}");
    }
}

#[test]
fn fused_layer_norm_matches_burn_layer_norm_values_and_gradients() {
    use burn::module::{Module, Param};
    use burn::nn::LayerNormConfig;
    let device = Device::default().autodiff();
    let mut rng = StdRng::seed_from_u64(23);
    // More rows than one rayon block (256), rows with a large offset (cancellation).
    for (i, [s, l, c]) in [[2, 5, 7], [3, 200, 24]].into_iter().enumerate() {
        let mut norm = LayerNormConfig::new(c).init(&device);
        norm.gamma = Param::from_tensor(Tensor::from_data(
            TensorData::new(rand_vec(&mut rng, c), [c]),
            &device,
        ));
        norm.beta = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(rand_vec(&mut rng, c), [c]),
            &device,
        )));
        let xv: Vec<f32> = rand_vec(&mut rng, s * l * c)
            .iter()
            .map(|v| v * 3.0 + 10.0 * i as f32)
            .collect();
        let gv = rand_vec(&mut rng, s * l * c);
        let run = |fused: bool| {
            let x = Tensor::<3>::from_data(TensorData::new(xv.clone(), [s, l, c]), &device)
                .require_grad();
            let y = if fused {
                super::layer_norm(&norm, 1e-5, x.clone())
            } else {
                norm.forward(x.clone())
            };
            let g = Tensor::<3>::from_data(TensorData::new(gv.clone(), [s, l, c]), &device);
            let grads = (y.clone() * g).sum().backward();
            vec![
                host(y),
                host(x.grad(&grads).expect("dx")),
                host(norm.gamma.val().grad(&grads).expect("dgamma")),
                host(
                    norm.beta
                        .as_ref()
                        .expect("beta")
                        .val()
                        .grad(&grads)
                        .expect("dbeta"),
                ),
            ]
        };
        let (ours, reference) = (run(true), run(false));
        for (k, (a, r)) in ours.iter().zip(&reference).enumerate() {
            let e = rel_err(a, r);
            assert!(e < 1e-5, "layer norm {s}x{l}x{c}: output {k} rel err {e}");
        }
        let plain = Device::default();
        let x = Tensor::<3>::from_data(TensorData::new(xv.clone(), [s, l, c]), &plain);
        let valid = norm.valid();
        let e = rel_err(
            &host(super::layer_norm(&valid, 1e-5, x.clone())),
            &host(valid.forward(x)),
        );
        assert!(e < 1e-6, "inference layer norm rel err {e}");
    }
}

/// The fused max pooling against burn's `MaxPool2d` (kernel = stride, floor mode): outputs on
/// the inference and autodiff devices and the input gradient of a weighted sum, for square
/// and rectangular windows and inputs the windows do not tile (left-out rows and columns get
/// zero gradient); plus a window with a tie, whose gradient goes to its first maximum.
#[test]
fn max_pool_matches_burn_max_pool2d_values_and_gradients() {
    use burn::nn::pool::MaxPool2dConfig;
    let mut rng = StdRng::seed_from_u64(23);
    for (shape, size) in [
        ([2, 3, 8, 6], [2, 2]),
        ([1, 4, 9, 7], [2, 2]),
        ([3, 2, 6, 10], [3, 2]),
        ([2, 2, 5, 4], [1, 4]),
    ] {
        let n: usize = shape.iter().product();
        let xv = rand_vec(&mut rng, n);
        let reference = MaxPool2dConfig::new(size).with_strides(size).init();
        for device in [Device::default(), Device::default().autodiff()] {
            let tracked = device.is_autodiff();
            let x = Tensor::<4>::from_data(TensorData::new(xv.clone(), shape), &device);
            let (x1, x2) = if tracked {
                (x.clone().require_grad(), x.require_grad())
            } else {
                (x.clone(), x)
            };
            let got = super::max_pool2d(x1.clone(), size);
            let want = reference.forward(x2.clone());
            assert_eq!(got.dims(), want.dims(), "{shape:?} {size:?}");
            assert_eq!(host(got.clone()), host(want.clone()), "{shape:?} {size:?}");
            if tracked {
                let wv = rand_vec(&mut rng, got.dims().iter().product());
                let w = Tensor::<4>::from_data(TensorData::new(wv, got.dims()), &device);
                let g1 = (got * w.clone()).sum().backward();
                let g2 = (want * w).sum().backward();
                let (d1, d2) = (
                    host(x1.grad(&g1).expect("dx")),
                    host(x2.grad(&g2).expect("dx")),
                );
                assert_eq!(d1, d2, "{shape:?} {size:?}: dx");
            }
        }
    }
    // A tie: the gradient goes to the first maximum of the window.
    let x = Tensor::<4>::from_data(
        TensorData::new(vec![1.0f32, 3.0, 3.0, 2.0], [1, 1, 2, 2]),
        &Device::default().autodiff(),
    )
    .require_grad();
    let g = super::max_pool2d(x.clone(), [2, 2]).sum().backward();
    assert_eq!(host(x.grad(&g).expect("dx")), vec![0.0, 1.0, 0.0, 0.0]);
}

/// `swap_mid` against burn's `swap_dims(1, 2)`: values on both devices and the input gradient
/// of a weighted sum, for `Z = 1` (register-tile transposes, sizes off the 8 x 8 tiles) and
/// `Z > 1` (row copies).
#[test]
fn swap_mid_matches_burn_swap_dims_values_and_gradients() {
    let mut rng = StdRng::seed_from_u64(29);
    for shape in [[2, 19, 13, 1], [3, 16, 8, 1], [2, 5, 3, 4], [1, 7, 2, 9]] {
        let n: usize = shape.iter().product();
        let xv = rand_vec(&mut rng, n);
        for device in [Device::default(), Device::default().autodiff()] {
            let x = Tensor::<4>::from_data(TensorData::new(xv.clone(), shape), &device);
            let (x1, x2) = if device.is_autodiff() {
                (x.clone().require_grad(), x.require_grad())
            } else {
                (x.clone(), x)
            };
            let got = super::swap_mid(x1.clone());
            let want = x2.clone().swap_dims(1, 2);
            assert_eq!(got.dims(), want.dims(), "{shape:?}");
            assert_eq!(host(got.clone()), host(want.clone()), "{shape:?}");
            if device.is_autodiff() {
                let wv = rand_vec(&mut rng, n);
                let w = Tensor::<4>::from_data(TensorData::new(wv, got.dims()), &device);
                let g1 = (got * w.clone()).sum().backward();
                let g2 = (want * w).sum().backward();
                let d1 = host(x1.grad(&g1).expect("dx"));
                let d2 = host(x2.grad(&g2).expect("dx"));
                assert_eq!(d1, d2, "{shape:?}: dx");
            }
        }
    }
}

/// `scaled_add` against burn's `a + r * s` (broadcast scalar): values and the gradients of a
/// weighted sum for `a`, `r` and `s`, on sizes within and past one rayon block.
#[test]
fn scaled_add_matches_burn_values_and_gradients() {
    let mut rng = StdRng::seed_from_u64(31);
    for shape in [[2, 3, 5], [3, 70, 100]] {
        let n: usize = shape.iter().product();
        let (av, rv, wv) = (
            rand_vec(&mut rng, n),
            rand_vec(&mut rng, n),
            rand_vec(&mut rng, n),
        );
        let device = Device::default().autodiff();
        let t = |v: &[f32]| Tensor::<3>::from_data(TensorData::new(v.to_vec(), shape), &device);
        let s = || Tensor::<1>::from_data(TensorData::new(vec![0.7f32], [1]), &device);
        let w = t(&wv);
        let (a1, r1, s1) = (
            t(&av).require_grad(),
            t(&rv).require_grad(),
            s().require_grad(),
        );
        let (a2, r2, s2) = (
            t(&av).require_grad(),
            t(&rv).require_grad(),
            s().require_grad(),
        );
        let got = super::scaled_add(a1.clone(), r1.clone(), s1.clone());
        let want = a2.clone() + r2.clone() * s2.clone().reshape([1, 1, 1]);
        assert!(
            rel_err(&host(got.clone()), &host(want.clone())) < 1e-6,
            "{shape:?}"
        );
        let g1 = (got * w.clone()).sum().backward();
        let g2 = (want * w).sum().backward();
        for (name, x, y) in [
            (
                "da",
                host(a1.grad(&g1).expect("da")),
                host(a2.grad(&g2).expect("da")),
            ),
            (
                "dr",
                host(r1.grad(&g1).expect("dr")),
                host(r2.grad(&g2).expect("dr")),
            ),
        ] {
            assert!(rel_err(&x, &y) < 1e-6, "{shape:?}: {name}");
        }
        let (ds1, ds2) = (
            host(s1.grad(&g1).expect("ds")),
            host(s2.grad(&g2).expect("ds")),
        );
        assert!(
            rel_err(&ds1, &ds2) < 1e-5,
            "{shape:?}: ds {ds1:?} vs {ds2:?}"
        );
    }
}

/// The kernels' SiLU and softplus (and their derivatives) against an f64 evaluation and burn's
/// own activations and autodiff derivatives.
#[test]
fn silu_and_softplus_match_f64_and_burn_values_and_gradients() {
    let device = Device::default().autodiff();
    let mut rng = StdRng::seed_from_u64(8);
    // Wide range, including large magnitudes where the naive formulas overflow.
    let mut xv: Vec<f32> = (0..3 * 5 * 41)
        .map(|_| rng.random_range(-12.0..12.0))
        .collect();
    xv[..6].copy_from_slice(&[-100.0, -30.0, 0.0, 1e-6, 30.0, 100.0]);
    for softplus in [false, true] {
        let (y, dx): (Vec<f32>, Vec<f32>) = xv
            .iter()
            .map(|&v| {
                if softplus {
                    (math::softplus::<false>(v), math::sigmoid::<false>(v))
                } else {
                    (math::silu::<false>(v), math::silu_grad::<false>(v))
                }
            })
            .unzip();
        // Elementwise, against an f64 evaluation where burn's composition overflows.
        for i in 0..xv.len() {
            let v = xv[i] as f64;
            let s = 1.0 / (1.0 + (-v).exp());
            let (want, dwant) = if softplus {
                (v.max(0.0) + (-v.abs()).exp().ln_1p(), s)
            } else {
                (v * s, s * (1.0 + v * (1.0 - s)))
            };
            assert!(
                (y[i] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                "y({v})"
            );
            assert!(
                (dx[i] as f64 - dwant).abs() <= 1e-5 * dwant.abs().max(1.0),
                "dy({v})"
            );
        }
        // And burn's own ops (values, autodiff derivatives) away from the extremes.
        let x =
            Tensor::<1>::from_data(TensorData::new(xv.clone(), [xv.len()]), &device).require_grad();
        let y_ref = if softplus {
            burn::tensor::activation::softplus(x.clone(), 1.0)
        } else {
            burn::tensor::activation::silu(x.clone())
        };
        let grads = y_ref.clone().sum().backward();
        let (y_ref, dx_ref) = (host(y_ref), host(x.grad(&grads).expect("dx")));
        assert!(rel_err(&y[6..], &y_ref[6..]) < 1e-5, "softplus {softplus}");
        assert!(
            rel_err(&dx[6..], &dx_ref[6..]) < 1e-5,
            "softplus {softplus}"
        );
    }
}
