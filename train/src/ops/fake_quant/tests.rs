//! The fused fake-quant ops against their compositions from burn's ops (the QAT forward before
//! the fused ops: broadcast bias add, ReLU, [`crate::qat::fake_quant_act`] /
//! [`crate::qat::fake_quant_weight`]): values, the observers' batch range, and the
//! straight-through gradients.

use super::{act_min_max, fake_quant_act, fake_quant_weight};
use crate::backend::{default_device, training_device};
use crate::test_util::{host, rel_err};
use asc_int8::QParams;
use burn::tensor::activation::relu;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn uniform(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// `relu?(x + bias)` with the bias broadcast along `axis`, from burn's ops.
fn composed_pre<const D: usize>(
    x: Tensor<D>,
    bias: Option<Tensor<1>>,
    axis: usize,
    use_relu: bool,
) -> Tensor<D> {
    let y = match bias {
        Some(b) => {
            let mut shape = [1usize; D];
            shape[axis] = b.dims()[0];
            x + b.reshape(shape)
        }
        None => x,
    };
    if use_relu { relu(y) } else { y }
}

fn check_act<const D: usize>(shape: [usize; D], axis: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let c = shape[axis];
    let xv = uniform(&mut rng, n, -3.0, 5.0);
    let bv = uniform(&mut rng, c, -1.0, 1.0);
    let wv = uniform(&mut rng, n, -2.0, 2.0); // weights of the loss: distinct gradients
    // A range narrower than the data, so that clamping is exercised, and one that contains it.
    for (lo, hi) in [(-1.0f32, 3.0f32), (-4.0, 7.0)] {
        let q = QParams::from_min_max(lo, hi, 0, 127);
        for (with_bias, use_relu) in [(false, false), (true, false), (false, true), (true, true)] {
            let case =
                format!("{shape:?} axis {axis} bias {with_bias} relu {use_relu} ({lo}, {hi})");
            let dev = training_device();
            let x = Tensor::<D>::from_data(TensorData::new(xv.clone(), shape), &dev).require_grad();
            let b = Tensor::<1>::from_data(TensorData::new(bv.clone(), [c]), &dev).require_grad();
            let w = Tensor::<D>::from_data(TensorData::new(wv.clone(), shape), &dev);
            let bias = with_bias.then(|| b.clone());

            let fused = fake_quant_act(x.clone(), bias.clone(), axis, use_relu, q.grid());
            let pre = composed_pre(x.clone(), bias.clone(), axis, use_relu);
            let composed = crate::qat::fake_quant_act(pre.clone(), &q);
            assert_eq!(
                host(fused.clone()),
                host(composed.clone()),
                "values differ: {case}"
            );

            // The observers' batch range of act(x + bias).
            let (mn, mx) = act_min_max(&x, bias.as_ref(), axis, use_relu);
            let p = host(pre);
            let want = p
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, z), &v| {
                    (a.min(v), z.max(v))
                });
            assert_eq!((mn, mx), want, "range: {case}");

            // Straight-through gradients of sum(w * fq(.)).
            let gf = (fused * w.clone()).sum().backward();
            let gc = (composed * w).sum().backward();
            let dx_f = host(x.grad(&gf).expect("dx fused"));
            let dx_c = host(x.grad(&gc).expect("dx composed"));
            assert_eq!(dx_f, dx_c, "dx: {case}");
            if with_bias {
                let db_f = host(b.grad(&gf).expect("dbias fused"));
                let db_c = host(b.grad(&gc).expect("dbias composed"));
                let e = rel_err(&db_f, &db_c);
                assert!(e < 1e-5, "dbias rel err {e}: {case}");
            }
        }
    }
}

#[test]
fn activation_fake_quant_matches_the_composition_channels_first() {
    // [B, C, H, W] with the bias along C (a folded conv's output).
    check_act([3, 5, 7, 9], 1, 1);
    // Planes larger than one task of the kernel.
    check_act([2, 3, 80, 90], 1, 2);
}

#[test]
fn activation_fake_quant_matches_the_composition_channels_last() {
    // Token-major [S, L, C] with the bias along C (a linear layer's output).
    check_act([4, 33, 12], 2, 3);
    check_act([2, 700, 24], 2, 4);
}

#[test]
fn activation_fake_quant_without_autodiff_equals_the_formula() {
    let dev = default_device();
    let mut rng = StdRng::seed_from_u64(5);
    let v = uniform(&mut rng, 1000, -5.0, 5.0);
    let q = QParams::from_min_max(-2.0, 2.5, 0, 127);
    let x = Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), &dev);
    let got = host(fake_quant_act(x, None, 0, false, q.grid()));
    for (a, g) in v.iter().zip(&got) {
        // Independent closed form, PyTorch's fake_quantize_per_tensor_affine.
        let code = ((a / q.scale).round_ties_even() + q.zero_point as f32).clamp(0.0, 127.0);
        assert_eq!(*g, (code - q.zero_point as f32) * q.scale, "{a}");
    }
}

#[test]
fn weight_fake_quant_matches_the_composition() {
    let mut rng = StdRng::seed_from_u64(6);
    let dev = training_device();
    // Conv weight [C_out, C_in, kh, kw], channels along axis 0, one channel tiny.
    let mut wv = uniform(&mut rng, 6 * 4 * 3 * 3, -1.0, 1.0);
    wv[..36].iter_mut().for_each(|v| *v *= 1e-3);
    let w = Tensor::<4>::from_data(TensorData::new(wv.clone(), [6, 4, 3, 3]), &dev).require_grad();
    let g = Tensor::<4>::from_data(
        TensorData::new(uniform(&mut rng, wv.len(), -1.0, 1.0), [6, 4, 3, 3]),
        &dev,
    );
    let f = fake_quant_weight(w.clone(), 0);
    let c = crate::qat::fake_quant_weight(w.clone(), 0);
    assert_eq!(host(f.clone()), host(c.clone()));
    let gf = (f * g.clone()).sum().backward();
    let gc = (c * g).sum().backward();
    assert_eq!(
        host(w.grad(&gf).expect("dw")),
        host(w.grad(&gc).expect("dw"))
    );
    // Linear weight [d_in, d_out], channels along axis 1.
    let lv = uniform(&mut rng, 7 * 5, -2.0, 2.0);
    let l = Tensor::<2>::from_data(TensorData::new(lv, [7, 5]), &dev).require_grad();
    let f = fake_quant_weight(l.clone(), 1);
    let c = crate::qat::fake_quant_weight(l.clone(), 1);
    assert_eq!(host(f.clone()), host(c));
    let gf = (f * 3.0).sum().backward();
    assert!(host(l.grad(&gf).expect("dl")).iter().all(|&d| d == 3.0));
}
