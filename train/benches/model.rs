//! Model throughput on the device named by `ASC_DEVICE` (default `cpu`, the Flex backend; a GPU
//! device with train's `wgpu` / `cuda` feature, e.g. `ASC_DEVICE=vulkan cargo bench -p train
//! --features wgpu --bench model`), printed first:
//! - training step (forward, backward, AdamW step) samples/s for `s1` at batch 64 and 256,
//! - inference samples/s (`model.valid()`),
//! - a per-block forward / forward+backward time profile of `s1` (stem, IRBs, each PMB, head).
//!
//! `cargo bench -p train --bench model`; `ASC_BENCH_ITERS` (default 3) timed iterations after
//! one warm-up; `ASC_BENCH_MODEL` (default `s1`) picks the preset; `ASC_BENCH_TRAIN_ONLY=1`
//! stops after the training steps; `ASC_BENCH_SYSTEM_MALLOC=1` leaves glibc's allocator as it
//! is (the trainer calls [`train::backend::keep_freed_buffers`]); `ASC_BENCH_BLOCK=irb2` (or
//! any block name of the profile) times only that block, five rounds (for profilers);
//! `ASC_BENCH_BATCH=64` times the training step at that batch size only.

use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor};
use train::backend::{default_device, training_device};
use train::model::{Model, ModelConfig};

fn iters() -> usize {
    std::env::var("ASC_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn sync(t: Tensor<2>) {
    // Reading a value forces any lazy computation to finish.
    let _: Vec<f32> = t.into_data().try_to_vec::<f32>().unwrap_or_default();
}

fn batch(b: usize, dev: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let x = Tensor::<4>::random([b, 1, 256, 65], Distribution::Normal(0.0, 1.0), dev);
    let y = Tensor::<1, Int>::random([b], Distribution::Uniform(0.0, 10.0), dev);
    (x, y)
}

fn train_step_rate(cfg: &ModelConfig, b: usize) -> f64 {
    let dev = training_device();
    let mut model = cfg.init(10, &dev);
    let mut optim = AdamWConfig::new().init();
    let (x, y) = batch(b, &dev);
    let ce = CrossEntropyLossConfig::new().init(&dev);
    // On a pool worker, as the trainer runs its steps (`train::backend::in_pool`).
    let mut step = |model: Model| {
        train::backend::in_pool(|| {
            let loss = ce.forward(model.forward(x.clone()), y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let m = optim.step(1e-3, model, grads);
            let _: f32 = loss.into_scalar();
            m
        })
    };
    model = step(model); // warm-up
    let t0 = Instant::now();
    for _ in 0..iters() {
        model = step(model);
    }
    (b * iters()) as f64 / t0.elapsed().as_secs_f64()
}

fn inference_rate(cfg: &ModelConfig, b: usize) -> f64 {
    let model = cfg.init(10, &training_device()).valid();
    let dev = default_device();
    let (x, _) = batch(b, &dev);
    sync(model.forward(x.clone()));
    let t0 = Instant::now();
    for _ in 0..iters() {
        sync(model.forward(x.clone()));
    }
    (b * iters()) as f64 / t0.elapsed().as_secs_f64()
}

/// Times `f` unless `only` names another block: forward only on the inference device, forward
/// + backward of `sum()` on the training device, in milliseconds per call.
fn time_block<M: Module>(
    only: Option<&str>,
    name: &str,
    block: &M,
    shape: [usize; 4],
    f: impl Fn(&M, Tensor<4>) -> Tensor<4>,
) {
    if only.is_some_and(|o| o != name) {
        return;
    }
    let n = iters();
    let dev = training_device();
    let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &dev).require_grad();
    let run = || {
        let y = f(block, x.clone());
        let _g = y.sum().backward();
    };
    run();
    let t0 = Instant::now();
    for _ in 0..n {
        run();
    }
    let fb = t0.elapsed().as_secs_f64() * 1e3 / n as f64;
    let xi = x.inner();
    let valid = block.valid();
    let fwd = || {
        let y = f(&valid, xi.clone());
        let _: f32 = y.sum().into_scalar();
    };
    fwd();
    let t0 = Instant::now();
    for _ in 0..n {
        fwd();
    }
    let fo = t0.elapsed().as_secs_f64() * 1e3 / n as f64;
    println!(
        "  {name:<14} in {:<18} fwd {fo:>8.1} ms   fwd+bwd {fb:>8.1} ms",
        format!("{shape:?}")
    );
}

fn profile_blocks(cfg: &ModelConfig, b: usize, only: Option<&str>) {
    let dev = training_device();
    let Model::IrMamba(m) = cfg.init(10, &dev) else {
        println!("(per-block profile only for IRMamba presets)");
        return;
    };
    if only.is_none() {
        println!("per-block profile, batch {b} (autodiff device; forward on the same weights)");
    }
    time_block(only, "stem", &m.stem, [b, 1, 256, 64], |s, x| s.forward(x));
    time_block(only, "irb1", &m.irb1, [b, 32, 64, 16], |s, x| s.forward(x));
    time_block(only, "irb2", &m.irb2, [b, 48, 64, 16], |s, x| s.forward(x));
    let mut shape = [b, 48, 32, 16];
    for (i, st) in m.stages.iter().enumerate() {
        for (j, blk) in st.blocks.iter().enumerate() {
            time_block(only, &format!("pmb.{i}.{j}"), blk, shape, |s, x| {
                s.forward(x)
            });
            shape[1] = blk.proj.weight.dims()[1];
        }
        shape = [b, shape[1], shape[2] / 2, shape[3] / 2];
    }
    time_block(only, "irb3", &m.irb3, shape, |s, x| s.forward(x));
    let c = m.irb3.project.conv.weight.dims()[0];
    time_block(only, "head", &m.head, [b, c, shape[2], shape[3]], |s, x| {
        let y = s.forward(x);
        let [bb, k] = y.dims();
        y.reshape([bb, k, 1, 1])
    });
}

/// Cumulative forward + backward times of the pieces of one PMB (shared-weight formulation on
/// its first Mamba): where the time of a Mamba block goes.
fn profile_pmb(cfg: &ModelConfig, b: usize) {
    let dev = training_device();
    let Model::IrMamba(m) = cfg.init(10, &dev) else {
        return;
    };
    let blk = &m.stages[0].blocks[0];
    let mb = &blk.mamba[0];
    let [c, h, w] = [48, 32, 16];
    let (len, p) = (h * w, blk.groups);
    let d = c / p;
    let x = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &dev).require_grad();
    // Stages: 0 LayerNorm + group reshape, 1 in_proj, 2 the fused mixer (conv1d, SiLU,
    // x_proj, dt_proj, softplus, scan, gate), 3 out_proj.
    let upto = |stage: usize| -> Tensor<3> {
        // As `ParallelMamba::forward`: the fused LayerNorm and shared-weight products.
        let tokens = train::ops::layer_norm(
            &blk.norm,
            train::model::pvm::LAYER_NORM_EPS,
            x.clone().reshape([b, c, len]).swap_dims(1, 2),
        );
        let g = tokens
            .reshape([b, len, p, d])
            .swap_dims(1, 2)
            .reshape([b * p, len, d]);
        if stage == 0 {
            return g;
        }
        let xz = train::ops::linear_tokens(&mb.in_proj, g);
        if stage == 1 {
            return xz;
        }
        let y = mb.mixer(xz);
        if stage == 2 {
            return y;
        }
        train::ops::linear_tokens(&mb.out_proj, y)
    };
    println!(
        "PMB breakdown, batch {b} ({} sequences of {len} tokens, d_inner {}), cumulative fwd+bwd:",
        b * p,
        mb.d_inner
    );
    let names = ["norm+reshape", "+in_proj", "+mixer", "+out_proj"];
    for (stage, name) in names.iter().enumerate() {
        let run = || {
            let _g = upto(stage).sum().backward();
        };
        run();
        let t0 = Instant::now();
        for _ in 0..iters() {
            run();
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3 / iters() as f64;
        println!("  {name:<16} {ms:>8.1} ms");
    }
}

fn main() {
    if std::env::var_os("ASC_BENCH_SYSTEM_MALLOC").is_none() {
        train::backend::keep_freed_buffers();
    }
    let name = std::env::var("ASC_BENCH_MODEL").unwrap_or_else(|_| "s1".into());
    let cfg = ModelConfig::preset(&name).expect("ASC_BENCH_MODEL: a preset name");
    if let Ok(only) = std::env::var("ASC_BENCH_BLOCK") {
        // One block's forward + backward alone (batch 64), five rounds, for profilers.
        for _ in 0..5 {
            profile_blocks(&cfg, 64, Some(&only));
        }
        return;
    }
    let spec = train::backend::current_spec();
    println!(
        "model {name} on {}, {} threads, {} timed iterations after a warm-up",
        train::backend::describe_device(spec, &default_device()),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        iters()
    );
    let batches: Vec<usize> = std::env::var("ASC_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(vec![64, 256], |b| vec![b]);
    for b in batches {
        println!(
            "train step  batch {b:>3}: {:>8.1} samples/s",
            train_step_rate(&cfg, b)
        );
    }
    if std::env::var_os("ASC_BENCH_TRAIN_ONLY").is_some() {
        return;
    }
    println!(
        "inference   batch 256: {:>8.1} samples/s",
        inference_rate(&cfg, 256)
    );
    profile_blocks(&cfg, 64, None);
    profile_pmb(&cfg, 64);
}
