//! QAT training-step throughput against the float training step, interleaved in one run:
//! samples/s of the float step (forward with training-mode BatchNorm, backward, AdamW), the QAT
//! step on the fused ops ([`train::qat::qat_forward`]) and, unless `ASC_BENCH_QAT_FAST=1`, the
//! QAT step composed from burn's generic ops ([`train::qat::reference::qat_forward_reference`],
//! the implementation before the fused ops), each on a pool worker as the trainers run them.
//!
//! `cargo bench -p train --bench qat`; `ASC_BENCH_ITERS` (default 3) rounds, each timing one
//! step of every variant in turn after one warm-up step each; `ASC_BENCH_BATCH` (default 64)
//! rows per step; `ASC_BENCH_MODEL` (default `s1`) the preset. Prints the median and range of
//! samples/s per variant and the ratio of the QAT (fused) step time to the float step time.

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Distribution, Int, Tensor};
use train::backend::training_device;
use train::model::{Model, ModelConfig};
use train::qat::{Observers, qat_forward, reference::qat_forward_reference, student};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn batch(b: usize, dev: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let x = Tensor::<4>::random([b, 1, 256, 65], Distribution::Normal(0.0, 1.0), dev);
    let y = Tensor::<1, Int>::random([b], Distribution::Uniform(0.0, 10.0), dev);
    (x, y)
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Float,
    QatFused,
    QatComposed,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Float => "float step",
            Variant::QatFused => "QAT step (fused ops)",
            Variant::QatComposed => "QAT step (composed, before)",
        }
    }
}

struct Runner {
    model: Option<Model>,
    optim: ModuleOptimizer,
    obs: Observers,
}

fn step(r: &mut Runner, v: Variant, x: &Tensor<4>, y: &Tensor<1, Int>, dev: &Device) {
    let ce = CrossEntropyLossConfig::new().init(dev);
    let model = r.model.take().expect("model");
    let (optim, obs) = (&mut r.optim, &mut r.obs);
    let next = train::backend::in_pool(|| {
        let logits = match v {
            Variant::Float => model.forward(x.clone()),
            Variant::QatFused => qat_forward(student(&model).expect("IRMamba"), x.clone(), obs),
            Variant::QatComposed => {
                qat_forward_reference(student(&model).expect("IRMamba"), x.clone(), obs)
            }
        };
        let loss = ce.forward(logits, y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let m = optim.step(1e-4, model, grads);
        let _: f32 = loss.into_scalar();
        m
    });
    r.model = Some(next);
}

fn main() {
    train::backend::keep_freed_buffers();
    let rounds = env("ASC_BENCH_ITERS", 3).max(1);
    let b = env("ASC_BENCH_BATCH", 64);
    let preset = std::env::var("ASC_BENCH_MODEL").unwrap_or_else(|_| "s1".into());
    let cfg = ModelConfig::preset(&preset).expect("ASC_BENCH_MODEL: a preset name");
    let dev = training_device();
    dev.seed(1);
    let mut variants = vec![Variant::Float, Variant::QatFused];
    if std::env::var("ASC_BENCH_QAT_FAST").is_err() {
        variants.push(Variant::QatComposed);
    }
    let model = cfg.init(10, &dev);
    let mut runners: Vec<Runner> = variants
        .iter()
        .map(|_| Runner {
            model: Some(model.clone()),
            optim: AdamWConfig::new().init(),
            obs: Observers::default(),
        })
        .collect();
    let (x, y) = batch(b, &dev);
    println!(
        "QAT vs float training step, model {preset}, batch {b}, {rounds} rounds, {} rayon threads",
        rayon::current_num_threads()
    );
    for (r, &v) in runners.iter_mut().zip(&variants) {
        step(r, v, &x, &y, &dev); // warm-up (and the observers' first ranges)
    }
    let mut rates = vec![Vec::new(); variants.len()];
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let mut line = format!("round {}:", round + 1);
        for ((r, &v), rate) in runners.iter_mut().zip(&variants).zip(&mut rates) {
            let t0 = Instant::now();
            step(r, v, &x, &y, &dev);
            let s = b as f64 / t0.elapsed().as_secs_f64();
            rate.push(s);
            line += &format!("  {} {s:.1}", v.name());
        }
        let ratio = rates[0][round] / rates[1][round];
        ratios.push(ratio);
        println!("{line}  samples/s; QAT (fused) / float step time {ratio:.2}x");
    }
    for (rate, &v) in rates.iter_mut().zip(&variants) {
        rate.sort_by(f64::total_cmp);
        println!(
            "{:<28} median {:>7.1} samples/s (range {:.1} .. {:.1})",
            v.name(),
            rate[rate.len() / 2],
            rate[0],
            rate[rate.len() - 1]
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "QAT (fused) / float step time: median {:.2}x (range {:.2} .. {:.2})",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
}
