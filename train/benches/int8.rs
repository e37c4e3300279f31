//! Per-clip inference time of the int8 engine on one core for a network with IRMamba's shapes
//! (Table 1: 256 x 64 input, channels 8, 32, 48, 48, 64, 72, 128, 10; PVM with P = 4, d_state 16,
//! expand 2; random weights), next to the same network in plain f32 and in fake-quant f32
//! (the reference executor), plus the batch throughput on all cores.
//!
//! Run: `cargo bench -p train --bench int8` (`ASC_BENCH_KERNEL_ONLY=mixer`, `=dw` or `=stem2`:
//! one kernel alone, for profilers; `ASC_BENCH_INT8_MODEL=MODEL.asc8`: an exported model).

mod common;

use asc_int8::builder::{CHUNK_SEP, RandomNetConfig, calibrate, quantize_model, random_irmamba};
use asc_int8::engine::Reference;
use asc_int8::{ExecMode, ModelMeta, QParams};
use asc_kernels::Isa;
use asc_kernels::mixer::inference::MambaKernel;
use asc_kernels::quant::{ConvGeom, FixedMul, QConvKernel};
use common::{min_time, time};
use data_specs::{FrontEndConfig, Vocabulary};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn logmel(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| -4.0 + 3.0 * ((i % 23) as f32 / 23.0) + rng.random_range(-2.0f32..2.0))
        .collect()
}

/// Integer multiply-adds of the convolutions and linear layers, and state updates of the scans.
fn work(g: &asc_int8::Graph, t: &asc_int8::graph::TensorMap) -> (usize, usize) {
    use asc_int8::Op;
    let (mut macs, mut scan) = (0, 0);
    for op in &g.ops {
        match op {
            Op::QConv2d { output, weight, .. } | Op::QLinear { output, weight, .. } => {
                let per_out: usize = t[weight].shape[1..].iter().product();
                macs += g.buffers[*output].numel() * per_out;
            }
            Op::MambaMixer { output, a_log, .. } => {
                scan += g.buffers[*output].numel() * t[a_log].shape[1]
            }
            _ => {}
        }
    }
    (macs, scan)
}

/// The per-layer profile at the dispatched ISA: every op (the P chunks of a PVM summed, keyed by
/// output name up to the chunk separator) above 5 us, then the sum per block (name up to the first
/// dot: stem1, irb2, pmb1, ...).
fn per_layer(model: &asc_int8::Int8Model, clip: &[f32]) {
    // Per op, the minimum over 100 single runs (the least disturbed on a shared machine).
    let mut ops = model.profile_ops(clip, 1).expect("runs");
    for _ in 0..100 {
        for (o, n) in ops
            .iter_mut()
            .zip(model.profile_ops(clip, 1).expect("runs"))
        {
            o.2 = o.2.min(n.2);
        }
    }
    let total: f64 = ops.iter().map(|o| o.2).sum();
    let mut layers: Vec<(String, &str, usize, f64)> = Vec::new();
    let mut blocks: Vec<(String, f64)> = Vec::new();
    for (name, kind, t) in ops {
        let layer = name.split(CHUNK_SEP).next().unwrap_or(&name).to_string();
        match layers.iter_mut().find(|l| l.0 == layer && l.1 == kind) {
            Some(l) => {
                l.2 += 1;
                l.3 += t;
            }
            None => layers.push((layer.clone(), kind, 1, t)),
        }
        let block = layer.split('.').next().unwrap_or(&layer).to_string();
        match blocks.iter_mut().find(|b| b.0 == block) {
            Some(b) => b.1 += t,
            None => blocks.push((block, t)),
        }
    }
    println!(
        "per-layer profile ({}, 1 clip, min of 100 runs per op, sum {:.3} ms; ops under 5 us not listed):",
        model.isa().name(),
        total * 1e3
    );
    for (layer, kind, n, t) in layers.iter().filter(|l| l.3 >= 5e-6) {
        println!("    {layer:<36} {kind:<12} x{n:<2} {:>7.3} ms", t * 1e3);
    }
    let line: Vec<String> = blocks
        .iter()
        .map(|(b, t)| format!("{b} {:.3}", t * 1e3))
        .collect();
    println!("  per block (ms): {}", line.join(", "));
}

/// The Mamba mixer of `pmb1` (d_inner 24, d_state 16, dt_rank 1, L 512) with random weights.
fn pmb1_mixer(rng: &mut StdRng) -> MambaKernel {
    let mut randv =
        |n: usize, a: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-a..=a)).collect() };
    let (di, n, r, l) = (24, 16, 1, 512);
    MambaKernel {
        di,
        n,
        r,
        k: 4,
        l,
        conv_w: randv(di * 4, 0.8),
        conv_b: randv(di, 0.2),
        x_proj: randv((r + 2 * n) * di, 0.5),
        dt_w: randv(di * r, 0.7),
        dt_b: randv(di, 2.0),
        a: (0..di * n).map(|i| -((i % n + 1) as f32)).collect(),
        d: randv(di, 1.0),
    }
}

/// `ASC_BENCH_KERNEL_ONLY=mixer` (the `pmb1` mixer), `=dw` (the 3x3 depthwise of `irb1`) or
/// `=stem2` (the stride-2 depthwise of `stem2`): that kernel alone, 20000 runs (median, and the mixer's minimum, in us).
fn kernel_only(kernel: &str) {
    let mut rng = StdRng::seed_from_u64(9);
    let mk = pmb1_mixer(&mut rng);
    let xz: Vec<f32> = (0..2 * mk.di * mk.l)
        .map(|_| rng.random_range(-2.0f32..=2.0))
        .collect();
    let mut scratch = vec![0.0; mk.scratch_len()];
    let mut y = vec![0.0; mk.di * mk.l];
    let isa = Isa::detect();
    // Depthwise 3x3: irb1's (64 channels on 64 x 16) or stem2's (8 channels on 128 x 32,
    // stride 2).
    let dw = match kernel {
        "dw" => Some((64, 64, 16, 1)),
        "stem2" => Some((8, 128, 32, 2)),
        _ => None,
    };
    if let Some((c, h, w, s)) = dw {
        let geom = ConvGeom {
            cin: c,
            cout: c,
            groups: c,
            h,
            w,
            kh: 3,
            kw: 3,
            sh: s,
            sw: s,
            ph: 1,
            pw: 1,
        };
        let k = QConvKernel::new(
            geom,
            (0..c * 9)
                .map(|_| rng.random_range(-128i16..=127))
                .collect(),
            (0..c).map(|_| rng.random_range(-3000..3000)).collect(),
            (0..c)
                .map(|_| FixedMul::new(rng.random_range(1e-4..4e-3)))
                .collect(),
            3,
            0,
            0,
            127,
        );
        let x: Vec<u8> = (0..c * h * w).map(|i| (i * 7 % 128) as u8).collect();
        let mut out = vec![0u8; c * geom.ho() * geom.wo()];
        let (mut xp, mut acc) = (vec![0i16; k.xp_len()], vec![0i32; k.acc_len()]);
        let (med, _, _) = time(20000, 100, |_| {
            k.run_isa(isa, &x, &mut out, &mut xp, &mut acc)
        });
        println!(
            "depthwise {c}ch {h}x{w} stride {s}: median {:.1} us",
            med * 1e6
        );
        return;
    }
    let (med, _, _) = time(20000, 100, |_| mk.run_isa(isa, &xz, &mut y, &mut scratch));
    let min = min_time(2000, || mk.run_isa(isa, &xz, &mut y, &mut scratch));
    println!(
        "mixer(24x512) {}: min {:.1} us, median {:.1} us",
        isa.name(),
        min * 1e6,
        med * 1e6
    );
}

/// The hot kernels alone at IRMamba's largest shapes, per ISA (minimum over runs, in us): the
/// Mamba mixer of `pmb1` (d_inner 24, d_state 16, L 512), the depthwise 3x3 of `irb1`
/// (64 x 64 x 16), the stride-2 stem conv (1 -> 8 on 256 x 64) and the pointwise expand of
/// `irb2` (48 -> 96 on 64 x 16).
fn kernel_table(best: Isa) {
    let mut rng = StdRng::seed_from_u64(9);
    let mk = pmb1_mixer(&mut rng);
    let (di, l) = (mk.di, mk.l);
    let xz: Vec<f32> = (0..2 * di * l)
        .map(|_| rng.random_range(-2.0f32..=2.0))
        .collect();
    let mut scratch = vec![0.0; mk.scratch_len()];
    let mut y = vec![0.0; di * l];
    let conv = |cin: usize, cout: usize, groups: usize, h: usize, w: usize, k: usize, s: usize| {
        let geom = ConvGeom {
            cin,
            cout,
            groups,
            h,
            w,
            kh: k,
            kw: k,
            sh: s,
            sw: s,
            ph: k / 2,
            pw: k / 2,
        };
        let mut r = StdRng::seed_from_u64(cin as u64 * 131 + cout as u64);
        QConvKernel::new(
            geom,
            (0..cout * cin / groups * k * k)
                .map(|_| r.random_range(-128i16..=127))
                .collect(),
            (0..cout).map(|_| r.random_range(-3000..3000)).collect(),
            (0..cout)
                .map(|_| FixedMul::new(r.random_range(1e-4..4e-3)))
                .collect(),
            3,
            0,
            0,
            127,
        )
    };
    let convs = [
        ("irb1.dw 3x3 64ch 64x16", conv(64, 64, 64, 64, 16, 3, 1)),
        ("stem1 3x3/2 1->8 256x64", conv(1, 8, 1, 256, 64, 3, 2)),
        (
            "irb2.expand 1x1 48->96 64x16",
            conv(48, 96, 1, 64, 16, 1, 1),
        ),
    ];
    println!("kernels alone (min of 200 runs, us):");
    for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni] {
        if !isa.is_available() || isa > best {
            continue;
        }
        let mut line = format!("    {:<11}", isa.name());
        let t = min_time(200, || mk.run_isa(isa, &xz, &mut y, &mut scratch));
        line += &format!(" mixer(24x512) {:7.1}", t * 1e6);
        for (name, k) in &convs {
            let g = k.geom;
            let x: Vec<u8> = (0..g.cin * g.h * g.w)
                .map(|i| (i * 7 % 128) as u8)
                .collect();
            let mut out = vec![0u8; g.cout * g.ho() * g.wo()];
            let (mut xp, mut acc) = (vec![0i16; k.xp_len()], vec![0i32; k.acc_len()]);
            let t = min_time(200, || k.run_isa(isa, &x, &mut out, &mut xp, &mut acc));
            line += &format!(" | {name} {:6.1}", t * 1e6);
        }
        println!("{line}");
    }
}

/// `ASC_BENCH_INT8_MODEL=MODEL.asc8`: an exported model instead of the random network (one
/// thread: median, mean and minimum per clip over random log-mel clips, then its per-layer
/// profile).
fn exported_model(path: &str) {
    let model = asc_int8::Int8Model::load(std::path::Path::new(path)).expect("loads");
    let pm = model.param_memory();
    println!(
        "{path}: {} ops, {} params, {} B at 8 bit",
        model.graph().ops.len(),
        pm.params(),
        pm.dcase_8bit_bytes()
    );
    let mut rng = StdRng::seed_from_u64(1);
    let clips: Vec<Vec<f32>> = (0..64)
        .map(|_| logmel(&mut rng, model.input_len()))
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    for _ in 0..3 {
        let (med, mean, min) = pool.install(|| {
            time(400, 20, |i| {
                drop(model.infer(&clips[i % clips.len()]).expect("runs"))
            })
        });
        println!(
            "int8 engine, {} 1 thread: median {:.3} ms/clip, mean {:.3} ms/clip, min {:.3} ms/clip",
            model.isa().name(),
            med * 1e3,
            mean * 1e3,
            min * 1e3
        );
    }
    per_layer(&model, &clips[0]);
}

fn main() {
    if let Ok(path) = std::env::var("ASC_BENCH_INT8_MODEL") {
        exported_model(&path);
        return;
    }
    if let Ok(kernel) = std::env::var("ASC_BENCH_KERNEL_ONLY") {
        // One hot kernel alone at the dispatched ISA, for profilers.
        kernel_only(&kernel);
        return;
    }
    let cfg = RandomNetConfig::irmamba();
    let (graph, tensors) = random_irmamba(&cfg, 42);
    let len = cfg.n_mels * cfg.n_frames;
    let mut rng = StdRng::seed_from_u64(1);
    let clips: Vec<Vec<f32>> = (0..64).map(|_| logmel(&mut rng, len)).collect();
    let ranges = calibrate(
        &graph,
        &tensors,
        clips[..16].iter().map(Vec::as_slice),
        None,
    )
    .expect("calibrates");
    let meta = ModelMeta {
        name: "irmamba-shaped-random".into(),
        config: serde_json::json!({ "bench": true }),
        frontend: FrontEndConfig::dcase2024(),
        labels: Vocabulary::tau22_labels(),
    };
    let mut model =
        quantize_model(meta, &graph, &tensors, &ranges, QParams::REDUCED).expect("quantizes");
    let pm = model.param_memory();
    println!(
        "network: {} ops, {} params ({} int8 weights, {} i32 biases, {} f32), {} B as stored, {} B at 8 bit (limit 128000)",
        model.graph().ops.len(),
        pm.params(),
        pm.int8_weights,
        pm.int_biases,
        pm.float_params,
        pm.stored_bytes(),
        pm.dcase_8bit_bytes()
    );
    let (int_macs, scan_updates) = work(model.graph(), model.tensors());
    println!(
        "work per clip: {:.2} M integer MACs (convolutions and linear layers), {:.2} M selective-scan state updates (one exp each)",
        int_macs as f64 / 1e6,
        scan_updates as f64 / 1e6
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let n = 200;
    let best = Isa::detect();
    println!("CPU kernels: {} (dispatched at run time)", best.name());
    for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni] {
        if !isa.is_available() || isa > best {
            continue;
        }
        model.set_isa(isa);
        let (med, mean, min) = pool.install(|| {
            time(n, 20, |i| {
                drop(model.infer(&clips[i % clips.len()]).expect("runs"))
            })
        });
        println!(
            "int8 engine, {:<8} 1 thread: median {:.3} ms/clip, mean {:.3} ms/clip, min {:.3} ms/clip",
            isa.name(),
            med * 1e3,
            mean * 1e3,
            min * 1e3
        );
        println!("  time per op kind (1 clip):");
        for (op, t) in model.profile(&clips[0], 50).expect("runs") {
            println!("    {op:<16} {:.3} ms", t * 1e3);
        }
    }
    model.set_isa(best);
    per_layer(&model, &clips[0]);
    kernel_table(best);
    let mut fl = Reference::new(&graph, &tensors, false).expect("valid");
    let (med, mean, _) = time(n / 2, 10, |i| {
        std::hint::black_box(fl.run(&clips[i % clips.len()], ExecMode::Float, None));
    });
    println!(
        "plain f32 reference ({} mixer), 1 thread: median {:.3} ms/clip, mean {:.3} ms/clip",
        best.name(),
        med * 1e3,
        mean * 1e3
    );
    let mut fq = Reference::new(model.graph(), model.tensors(), true).expect("valid");
    let (med, mean, _) = time(n / 4, 5, |i| {
        std::hint::black_box(fq.run(&clips[i % clips.len()], ExecMode::FakeQuant, None));
    });
    println!(
        "fake-quant f32 reference:        median {:.3} ms/clip, mean {:.3} ms/clip",
        med * 1e3,
        mean * 1e3
    );
    let batch: Vec<f32> = clips.concat();
    let threads = rayon::current_num_threads();
    let (med, _, _) = time(10, 2, |_| drop(model.infer_batch(&batch).expect("runs")));
    println!(
        "int8 infer_batch, {threads} threads:     {:.3} ms/clip ({:.0} clips/s)",
        med * 1e3 / clips.len() as f64,
        clips.len() as f64 / med
    );
}
