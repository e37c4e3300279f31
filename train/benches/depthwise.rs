//! Direct depthwise convolution (`train::ops`) vs burn's grouped convolution on the Flex backend,
//! at the shapes of the `s1` student at batch 64: forward (inference device) and forward +
//! backward (autodiff device, gradients for input, weight and bias), milliseconds per call.
//!
//! `cargo bench -p train --bench depthwise`; `ASC_BENCH_ITERS` (default 5) timed iterations
//! after one warm-up.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use train::ops::{
    depthwise_conv1d_causal, depthwise_conv1d_causal_reference, depthwise_conv2d,
    depthwise_conv2d_reference,
};

fn iters() -> usize {
    std::env::var("ASC_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// Mean milliseconds of `f` over [`iters`] calls after one warm-up.
fn time_ms(mut f: impl FnMut()) -> f64 {
    f();
    let t0 = Instant::now();
    for _ in 0..iters() {
        f();
    }
    t0.elapsed().as_secs_f64() * 1e3 / iters() as f64
}

fn rand<const D: usize>(shape: [usize; D], dev: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), dev)
}

/// A 2-D depthwise case: name, input `[B, C, H, W]`, stride (3x3 kernel, padding 1).
fn bench2d(name: &str, shape: [usize; 4], stride: [usize; 2]) {
    let c = shape[1];
    let mut row = Vec::new();
    for fused in [true, false] {
        let f = if fused {
            depthwise_conv2d
        } else {
            depthwise_conv2d_reference
        };
        let dev = Device::flex();
        let (x, w, b) = (rand(shape, &dev), rand([c, 1, 3, 3], &dev), rand([c], &dev));
        let fwd = time_ms(|| {
            let _: f32 = f(x.clone(), w.clone(), Some(b.clone()), stride, [1, 1])
                .sum()
                .into_scalar();
        });
        let dev = Device::flex().autodiff();
        let x = rand(shape, &dev).require_grad();
        let w = rand([c, 1, 3, 3], &dev).require_grad();
        let b = rand([c], &dev).require_grad();
        let fb = time_ms(|| {
            let y = f(x.clone(), w.clone(), Some(b.clone()), stride, [1, 1]);
            let _g = (y.clone() * y).sum().backward();
        });
        row.push((fwd, fb));
    }
    report(name, &format!("{shape:?} s{stride:?}"), &row);
}

/// Mamba's causal conv1d: input `[B, C, L]`, kernel `k`.
fn bench1d(name: &str, shape: [usize; 3], k: usize) {
    let c = shape[1];
    let mut row = Vec::new();
    for fused in [true, false] {
        let f = if fused {
            depthwise_conv1d_causal
        } else {
            depthwise_conv1d_causal_reference
        };
        let dev = Device::flex();
        let (x, w, b) = (rand(shape, &dev), rand([c, 1, k], &dev), rand([c], &dev));
        let fwd = time_ms(|| {
            let _: f32 = f(x.clone(), w.clone(), Some(b.clone())).sum().into_scalar();
        });
        let dev = Device::flex().autodiff();
        let x = rand(shape, &dev).require_grad();
        let w = rand([c, 1, k], &dev).require_grad();
        let b = rand([c], &dev).require_grad();
        let fb = time_ms(|| {
            let y = f(x.clone(), w.clone(), Some(b.clone()));
            let _g = (y.clone() * y).sum().backward();
        });
        row.push((fwd, fb));
    }
    report(name, &format!("{shape:?} k{k}"), &row);
}

fn report(name: &str, what: &str, row: &[(f64, f64)]) {
    let [(ff, fb), (rf, rb)] = [row[0], row[1]];
    println!(
        "{name:<10} {what:<28} direct fwd {ff:>7.2} ms  fwd+bwd {fb:>7.2} ms | burn fwd {rf:>7.2} ms  fwd+bwd {rb:>7.2} ms | speed-up fwd+bwd {:>5.1}x",
        rb / fb
    );
}

/// The kernels alone on host buffers (no tensor transfers): forward and backward.
fn bench_kernel(name: &str, shape: [usize; 4], stride: [usize; 2]) {
    use asc_kernels::depthwise::{DwDims, backward, forward};
    let [b, c, h, w] = shape;
    let out = [(h + 2 - 3) / stride[0] + 1, (w + 2 - 3) / stride[1] + 1];
    let d = DwDims {
        batch: b,
        channels: c,
        in_channels: c,
        input: [h, w],
        kernel: [3, 3],
        stride,
        pad: [1, 1],
        output: out,
    };
    let x: Vec<f32> = (0..d.x_len()).map(|i| (i % 7) as f32 * 0.1).collect();
    let wt: Vec<f32> = (0..d.w_len()).map(|i| (i % 5) as f32 * 0.1).collect();
    let bias = vec![0.5f32; c];
    let mut y = vec![0.0f32; d.y_len()];
    let fwd = time_ms(|| forward(d, &x, &wt, &bias, &mut y));
    let dy = y.clone();
    let bwd = time_ms(|| {
        let g = backward(d, &x, &wt, &bias, &dy, true);
        std::hint::black_box(g);
    });
    println!("{name:<10} kernel only: forward {fwd:>7.2} ms  backward {bwd:>7.2} ms");
}

fn main() {
    train::backend::keep_freed_buffers();
    println!(
        "{} threads, {} timed iterations after a warm-up (Flex backend)",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        iters()
    );
    bench_kernel("irb1.dw", [64, 64, 64, 16], [1, 1]);
    bench_kernel("irb2.dw", [64, 120, 64, 16], [2, 1]);
    if std::env::var_os("ASC_BENCH_KERNEL_ONLY").is_some() {
        return;
    }
    bench2d("stem.dw2", [64, 8, 128, 32], [2, 2]);
    bench2d("irb1.dw", [64, 64, 64, 16], [1, 1]);
    bench2d("irb2.dw", [64, 120, 64, 16], [2, 1]);
    bench1d("pmb0.conv", [128, 48, 512], 4);
    bench1d("pmb1.conv", [128, 64, 128], 4);
}
