//! Fused mixer vs the composed reference (burn's conv1d, activations and matmuls, the
//! per-timestep scan): outputs and the gradients of all eight inputs, on every instruction set.

use super::{MixerParams, MixerShapeError, mamba_mixer, mamba_mixer_reference, try_mamba_mixer};
use crate::test_util::{host, rel_err};
use asc_kernels::mixer::training::MixerDims;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Host values of one call: `xz` then the seven parameters, in the API's layouts.
struct Case {
    dims: MixerDims,
    v: [Vec<f32>; 8],
}

/// Realistic ranges: the dt bias puts softplus(dt) near Mamba's initial time steps, `A` =
/// -(1..N) jittered, weights of unit-variance-preserving scale.
fn random_case(seed: u64, seqs: usize, len: usize, di: usize, n: usize, r: usize) -> Case {
    let k = 4;
    let dims = MixerDims {
        seqs,
        len,
        d_inner: di,
        d_state: n,
        dt_rank: r,
        d_conv: k,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut uni = |count: usize, lo: f32, hi: f32| -> Vec<f32> {
        (0..count).map(|_| rng.random_range(lo..hi)).collect()
    };
    let xz = uni(seqs * len * 2 * di, -2.0, 2.0);
    let conv_w = uni(di * k, -0.5, 0.5);
    let conv_b = uni(di, -0.3, 0.3);
    let sx = (di as f32).powf(-0.5);
    let x_proj = uni(di * (r + 2 * n), -sx, sx);
    let sr = (r as f32).powf(-0.5);
    let dt_proj = uni(r * di, -sr, sr);
    let dt_b = uni(di, -4.6, -2.3); // softplus^-1 of dt in about [0.01, 0.1]
    let a = (0..di * n)
        .map(|i| -((i % n) as f32 + 1.0) * (0.8 + 0.4 * ((i * 7 % 5) as f32) / 5.0))
        .collect();
    let d = uni(di, 0.5, 1.5);
    Case {
        dims,
        v: [xz, conv_w, conv_b, x_proj, dt_proj, dt_b, a, d],
    }
}

/// The case's tensors on `device` (all tracked when `grad`).
fn params(case: &Case, device: &Device, grad: bool) -> (Tensor<3>, MixerParams) {
    let sh = case.dims.shapes();
    let t = |i: usize| TensorData::new(case.v[i].clone(), sh[i].clone());
    fn rg<const D: usize>(t: Tensor<D>, on: bool) -> Tensor<D> {
        if on { t.require_grad() } else { t }
    }
    let xz = rg(Tensor::from_data(t(0), device), grad);
    let p = MixerParams {
        conv_w: rg(Tensor::from_data(t(1), device), grad),
        conv_b: rg(Tensor::from_data(t(2), device), grad),
        x_proj: rg(Tensor::from_data(t(3), device), grad),
        dt_proj: rg(Tensor::from_data(t(4), device), grad),
        dt_b: rg(Tensor::from_data(t(5), device), grad),
        a: rg(Tensor::from_data(t(6), device), grad),
        d: rg(Tensor::from_data(t(7), device), grad),
    };
    (xz, p)
}

/// Output and the gradients of `sum(w ⊙ out)` for all eight inputs.
fn run(case: &Case, w: &[f32], fused: bool) -> (Vec<f32>, Vec<Vec<f32>>) {
    let device = Device::default().autodiff();
    let (xz, p) = params(case, &device, true);
    let leaves = (
        xz.clone(),
        p.conv_w.clone(),
        p.conv_b.clone(),
        p.x_proj.clone(),
        p.dt_proj.clone(),
        p.dt_b.clone(),
        p.a.clone(),
        p.d.clone(),
    );
    let out = if fused {
        mamba_mixer(xz, p)
    } else {
        mamba_mixer_reference(xz, p)
    };
    let dims = out.dims();
    let wt = Tensor::<3>::from_data(TensorData::new(w.to_vec(), dims), &device);
    let values = host(out.clone().inner());
    let g = (out * wt).sum().backward();
    let grad = |v: Option<Vec<f32>>| v.expect("tracked input has a gradient");
    let gradients = vec![
        grad(leaves.0.grad(&g).map(host)),
        grad(leaves.1.grad(&g).map(host)),
        grad(leaves.2.grad(&g).map(host)),
        grad(leaves.3.grad(&g).map(host)),
        grad(leaves.4.grad(&g).map(host)),
        grad(leaves.5.grad(&g).map(host)),
        grad(leaves.6.grad(&g).map(host)),
        grad(leaves.7.grad(&g).map(host)),
    ];
    (values, gradients)
}

const NAMES: [&str; 8] = [
    "xz", "conv_w", "conv_b", "x_proj", "dt_proj", "dt_b", "A", "D",
];

fn out_weights(case: &Case, seed: u64) -> Vec<f32> {
    let MixerDims {
        seqs, len, d_inner, ..
    } = case.dims;
    let mut rng = StdRng::seed_from_u64(seed);
    (0..seqs * len * d_inner)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect()
}

#[test]
fn fused_mixer_matches_the_composed_reference_forward_and_backward() {
    // d_state 16 (one full block) and 5 (a padded block), dt_rank 1 and 2, sequences shorter
    // and longer than the conv; d_inner 40: the time-major AVX-512 kernels' two full channel
    // blocks and a masked one (the sums over channels across blocks).
    for (i, &(seqs, len, di, n, r)) in [
        (3, 24, 8, 16, 2),
        (2, 37, 12, 5, 1),
        (2, 3, 4, 16, 2),
        (2, 19, 40, 16, 2),
    ]
    .iter()
    .enumerate()
    {
        let case = random_case(40 + i as u64, seqs, len, di, n, r);
        let w = out_weights(&case, 90 + i as u64);
        let (y_f, g_f) = run(&case, &w, true);
        let (y_r, g_r) = run(&case, &w, false);
        let e = rel_err(&y_f, &y_r);
        assert!(e <= 1e-5, "case {i}: output relative error {e:e}");
        for (k, (gf, gr)) in g_f.iter().zip(&g_r).enumerate() {
            let e = rel_err(gf, gr);
            assert!(e <= 1e-4, "case {i}: d{} relative error {e:e}", NAMES[k]);
        }
    }
}

#[test]
fn inconsistent_shapes_are_a_typed_error() {
    let case = random_case(1, 2, 8, 4, 16, 1);
    let device = Device::default();
    let (xz, mut p) = params(&case, &device, false);
    p.x_proj = Tensor::zeros([4, 30], &device);
    let err = try_mamba_mixer(xz.clone(), p.clone()).unwrap_err();
    assert_eq!(
        err,
        MixerShapeError::Mismatch {
            input: "x_proj",
            actual: vec![4, 30],
            expected: vec![4, 33],
        }
    );
    let (_, p) = params(&case, &device, false);
    let bad = xz.narrow(2, 0, 6);
    assert!(matches!(
        try_mamba_mixer(bad, p),
        Err(MixerShapeError::Mismatch { input: "xz", .. })
    ));
}
