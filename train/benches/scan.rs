//! Selective scan timings: fused kernel vs the per-timestep tensor-op graph, forward and
//! forward+backward, at the sizes of IRMamba's first parallel Mamba block (P = 4 groups folded
//! into the batch, d_inner 24, d_state 16, L = 32 x 16 tokens = 512; also L 128 and 32), on 1 and
//! 2 rayon threads.
//!
//! `cargo bench -p train --bench scan`. The naive graph is slow: by default it only runs where
//! batch * L <= 256 * 128; set `SCAN_BENCH_FULL=1` to run it everywhere.
//!
//! A first table times the bare kernels ([`asc_kernels::scan::forward`] / `backward` on host
//! buffers, every available instruction set) at the training sizes, in ms and ns per state update
//! (`batch * d_inner * d_state * L` updates per pass). `SCAN_BENCH_KERNEL_ONLY=1` stops after it.

mod common;

use asc_kernels::Isa;
use asc_kernels::scan::{self as cpu, ScanDims};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use common::time_ms;
use train::ops::scan::{selective_scan, selective_scan_naive};

type ScanFn = fn(Tensor<3>, Tensor<3>, Tensor<2>, Tensor<3>, Tensor<3>, Tensor<1>) -> Tensor<3>;

const D_INNER: usize = 24;
const D_STATE: usize = 16;

/// Forward-only and forward+backward times of `scan` at `[batch, D_INNER, len]`.
fn bench(scan: ScanFn, batch: usize, len: usize, reps: usize) -> (f64, f64) {
    let inputs = |device: &Device, grad: bool| {
        let rg3 = |t: Tensor<3>| if grad { t.require_grad() } else { t };
        let u = rg3(Tensor::<3>::random(
            [batch, D_INNER, len],
            Distribution::Normal(0.0, 1.0),
            device,
        ));
        // softplus'ed steps in roughly (0.001, 0.1)
        let delta = rg3(Tensor::<3>::random(
            [batch, D_INNER, len],
            Distribution::Uniform(0.001, 0.1),
            device,
        ));
        // S4D-real initialisation: A[:, n] = -(n + 1).
        let a_host: Vec<f32> = (0..D_INNER * D_STATE)
            .map(|i| -((i % D_STATE) as f32 + 1.0))
            .collect();
        let a = Tensor::<2>::from_data(TensorData::new(a_host, [D_INNER, D_STATE]), device);
        let a = if grad { a.require_grad() } else { a };
        let b = rg3(Tensor::<3>::random(
            [batch, D_STATE, len],
            Distribution::Normal(0.0, 1.0),
            device,
        ));
        let c = rg3(Tensor::<3>::random(
            [batch, D_STATE, len],
            Distribution::Normal(0.0, 1.0),
            device,
        ));
        let d = Tensor::<1>::ones([D_INNER], device);
        let d = if grad { d.require_grad() } else { d };
        (u, delta, a, b, c, d)
    };
    let device = Device::default();
    let (u, dl, a, b, c, d) = inputs(&device, false);
    let fwd = time_ms(reps, || {
        let y = scan(
            u.clone(),
            dl.clone(),
            a.clone(),
            b.clone(),
            c.clone(),
            d.clone(),
        );
        std::hint::black_box(y.into_data());
    });
    let device = Device::default().autodiff();
    let (u, dl, a, b, c, d) = inputs(&device, true);
    let w = Tensor::<3>::random(
        [batch, D_INNER, len],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let fwd_bwd = time_ms(reps, || {
        let y = scan(
            u.clone(),
            dl.clone(),
            a.clone(),
            b.clone(),
            c.clone(),
            d.clone(),
        );
        let grads = (y * w.clone()).sum().backward();
        let gu = u.grad(&grads).expect("du");
        let gb = b.grad(&grads).expect("dB");
        std::hint::black_box((gu.into_data(), gb.into_data()));
    });
    (fwd, fwd_bwd)
}

/// Deterministic pseudo-random host buffer in `[lo, hi)` (xorshift; no allocation in the timing).
fn host_buf(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + (hi - lo) * ((x >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// Bare-kernel timings (forward, backward) in ms at `dims` with instruction set `isa`.
fn bench_kernel(dims: ScanDims, isa: Isa, reps: usize) -> (f64, f64) {
    let ScanDims {
        batch,
        d_inner,
        d_state,
        len,
    } = dims;
    let nbl = batch * d_inner * len;
    let u = host_buf(nbl, 1, -2.0, 2.0);
    let delta = host_buf(nbl, 2, 0.001, 0.1);
    let a: Vec<f32> = (0..d_inner * d_state)
        .map(|i| -((i % d_state) as f32 + 1.0))
        .collect();
    let b = host_buf(batch * d_state * len, 3, -1.5, 1.5);
    let c = host_buf(batch * d_state * len, 4, -1.5, 1.5);
    let d = vec![1.0f32; d_inner];
    let dy = host_buf(nbl, 5, -1.0, 1.0);
    let mut y = vec![0.0f32; nbl];
    let fwd = time_ms(reps, || {
        cpu::forward_with(isa, dims, &u, &delta, &a, &b, &c, &d, &mut y);
        std::hint::black_box(&y);
    });
    let bwd = time_ms(reps, || {
        let g = cpu::backward_with(isa, dims, &u, &delta, &a, &b, &c, &d, &dy);
        std::hint::black_box(&g);
    });
    (fwd, bwd)
}

/// Prints the bare-kernel table.
fn kernel_table() {
    let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2, Isa::Portable]
        .into_iter()
        .filter(|i| i.is_available())
        .collect();
    println!("bare kernels (host buffers), median ms; ns/upd = ms * 1e6 / (B * D * N * L)");
    println!(
        "{:>6} {:>4} {:>3} {:>4} {:>3} {:>9} | {:>9} {:>9} {:>9} | {:>7} {:>7}",
        "batch", "D", "N", "L", "thr", "isa", "fwd", "bwd", "fwd+bwd", "ns fwd", "ns f+b"
    );
    for &(batch, d_inner) in &[(512, 48), (1024, 24)] {
        let dims = ScanDims {
            batch,
            d_inner,
            d_state: D_STATE,
            len: 512,
        };
        let updates = (batch * d_inner * D_STATE * 512) as f64;
        for &threads in &[1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("rayon pool");
            for &isa in &isas {
                let (f, b) = pool.install(|| bench_kernel(dims, isa, 3));
                println!(
                    "{:>6} {:>4} {:>3} {:>4} {:>3} {:>9} | {:>9.1} {:>9.1} {:>9.1} | {:>7.2} {:>7.2}",
                    batch,
                    d_inner,
                    D_STATE,
                    512,
                    threads,
                    format!("{isa:?}"),
                    f,
                    b,
                    f + b,
                    f * 1e6 / updates,
                    (f + b) * 1e6 / updates,
                );
            }
        }
    }
}

fn main() {
    kernel_table();
    if std::env::var("SCAN_BENCH_KERNEL_ONLY").is_ok_and(|v| v == "1") {
        return;
    }
    let full = std::env::var("SCAN_BENCH_FULL").is_ok_and(|v| v == "1");
    println!(
        "selective scan, d_inner {D_INNER}, d_state {D_STATE}; median ms (ratio = naive / fused)"
    );
    println!(
        "{:>7} {:>4} {:>4} | {:>10} {:>10} {:>6} | {:>10} {:>10} {:>6}",
        "batch", "L", "thr", "fused fwd", "naive fwd", "ratio", "fused f+b", "naive f+b", "ratio"
    );
    for &batch in &[64 * 4, 256 * 4] {
        for &len in &[32, 128, 512] {
            for &threads in &[1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("rayon pool");
                pool.install(|| {
                    let reps = if batch * len >= 1024 * 128 { 3 } else { 5 };
                    let (ff, fb) = bench(selective_scan, batch, len, reps);
                    let run_naive = full || batch * len <= 256 * 128;
                    let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
                    let (nf, nb) = if run_naive {
                        let (nf, nb) = bench(selective_scan_naive, batch, len, 1);
                        (Some(nf), Some(nb))
                    } else {
                        (None, None)
                    };
                    println!(
                        "{:>7} {:>4} {:>4} | {:>10.1} {:>10} {:>6} | {:>10.1} {:>10} {:>6}",
                        batch,
                        len,
                        threads,
                        ff,
                        fmt(nf),
                        fmt(nf.map(|v| v / ff)),
                        fb,
                        fmt(nb),
                        fmt(nb.map(|v| v / fb)),
                    );
                });
            }
        }
    }
}
