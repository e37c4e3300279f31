//! Fused Mamba mixer kernel timings ([`asc_kernels::mixer::training`]) at the sizes of IRMamba's
//! parallel Mamba blocks at batch 64 (2 groups folded into the sequences): forward and backward per
//! instruction set, in ms per call and µs per sequence; the bare scan at the same sizes for
//! comparison.
//!
//! `cargo bench -p train --bench mixer`

mod common;

use asc_kernels::Isa;
use asc_kernels::mixer::training::{self as cpu, MixerDims, MixerWeights};
use asc_kernels::scan::{self, ScanDims};
use common::time_ms;
use rand::{Rng, SeedableRng, rngs::StdRng};

fn main() {
    train::backend::keep_freed_buffers();
    let mut rng = StdRng::seed_from_u64(0);
    let mut uni = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
        (0..n).map(|_| rng.random_range(lo..hi)).collect()
    };
    println!(
        "{:<30} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "sizes", "isa", "fwd ms", "bwd ms", "scan fwd", "scan bwd"
    );
    for (seqs, len, di) in [(128, 512, 48), (128, 128, 48), (128, 32, 64)] {
        let (n, r, k) = (16, 2, 4);
        let dims = MixerDims {
            seqs,
            len,
            d_inner: di,
            d_state: n,
            dt_rank: r,
            d_conv: k,
        };
        let xz = uni(seqs * len * 2 * di, -2.0, 2.0);
        let conv_w = uni(di * k, -0.5, 0.5);
        let conv_b = uni(di, -0.3, 0.3);
        let x_proj = uni(di * (r + 2 * n), -0.15, 0.15);
        let dt_proj = uni(r * di, -0.7, 0.7);
        let dt_b = uni(di, -4.6, -2.3);
        let a: Vec<f32> = (0..di * n).map(|i| -((i % n) as f32 + 1.0)).collect();
        let d = uni(di, 0.5, 1.5);
        let dout = uni(seqs * len * di, -1.0, 1.0);
        let w = MixerWeights {
            conv_w: &conv_w,
            conv_b: &conv_b,
            x_proj: &x_proj,
            dt_proj: &dt_proj,
            dt_b: &dt_b,
            a: &a,
            d: &d,
        };
        // The bare scan on the same sizes (channel-major inputs).
        let sd = ScanDims {
            batch: seqs,
            d_inner: di,
            d_state: n,
            len,
        };
        let u = uni(seqs * di * len, -1.0, 1.0);
        let delta = uni(seqs * di * len, 0.001, 0.1);
        let bm = uni(seqs * n * len, -1.0, 1.0);
        let cm = uni(seqs * n * len, -1.0, 1.0);
        let only = std::env::var("MIXER_BENCH_ISA").ok();
        for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
            if !isa.is_available() || only.as_ref().is_some_and(|o| *o != format!("{isa:?}")) {
                continue;
            }
            let mut saved = Vec::new();
            let f = time_ms(5, || {
                saved = cpu::forward_with(isa, dims, &w, &xz, true).1.unwrap()
            });
            let b = time_ms(5, || {
                std::hint::black_box(cpu::backward_with(isa, dims, &w, &xz, &saved, &dout));
            });
            let mut y = vec![0.0f32; seqs * di * len];
            let sf = time_ms(5, || {
                scan::forward_with(isa, sd, &u, &delta, &a, &bm, &cm, &d, &mut y);
            });
            let sb = time_ms(5, || {
                std::hint::black_box(scan::backward_with(
                    isa, sd, &u, &delta, &a, &bm, &cm, &d, &dout,
                ));
            });
            println!(
                "{:<30} {:>8} {f:>10.2} {b:>10.2} {sf:>10.2} {sb:>10.2}",
                format!("S {seqs} L {len} d_inner {di}"),
                format!("{isa:?}")
            );
        }
    }
}
