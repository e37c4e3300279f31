//! Where does the int8 model lose accuracy, per layer and per device (issue 23)?
//! `cargo run --release -p train --example qat_study -- RUN [SHARDS]` (RUN with a `qat/` folder).
//!
//! For every test clip: the float graph of the QAT model (folded BN, QAT weights, no quant) in
//! plain f32, and the int8 model's graph in fake-quant mode (the float simulation of the int8
//! engine), per quantized buffer: SQNR (accumulated error), local SQNR (that buffer's own
//! rounding) and fraction of float values outside the observer range, seen vs unseen devices;
//! accuracies per device of float graph / fake-quant / int8 engine and the agreement of the int8
//! and float-graph predictions. STUDY_PER_DEVICE=1 adds clip% / SQNR of the first layers per
//! device.

use std::collections::BTreeMap;
use std::path::PathBuf;

use asc_int8::Int8Model;
use asc_int8::engine::{ExecMode, Reference};
use asc_int8::graph::BufKind;
use data_specs::{ClipSet, Variant};
use rayon::prelude::*;
use train::TrainConfig;
use train::loader::{Loader, LoaderConfig, ShardSet};
use train::qat::QatModel;

#[derive(Default, Clone)]
struct Stat {
    local2: f64,
    err2: f64,
    sig2: f64,
    clipped: u64,
    n: u64,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let run = PathBuf::from(&args[1]);
    let cfg = TrainConfig::load(&run)?;
    let shards = args.get(2).map(PathBuf::from).unwrap_or(cfg.shards.clone());
    let set = ShardSet::open(&shards, None)?;
    let meta = set.meta();
    let dev = train::backend::default_device();
    let qm = QatModel::load(&run, &cfg.model, meta.n_classes(), &dev)?;
    let int8 = Int8Model::load(&run.join("qat").join("model.asc8"))?;
    let m = train::qat::student(&qm.model)?;
    let (n_mels, n_frames) = (meta.frontend.n_mels, meta.frontend.n_frames());
    let (fg, ft) = train::export::float_graph(m, n_mels, n_frames)?;
    let fref = Reference::new(&fg, &ft, false).map_err(anyhow::Error::msg)?;
    let qref = Reference::new(int8.graph(), int8.tensors(), true).map_err(anyhow::Error::msg)?;
    let seen = train::run::seen_devices(&set, cfg.split);
    let ig = int8.graph();
    // Quantized buffers: (index in float graph, index in int8 graph, name, lo, hi).
    let mut bufs = Vec::new();
    for (qi, b) in ig.buffers.iter().enumerate() {
        if let BufKind::Quant { q } = b.kind
            && let Some(fi) = fg.buffers.iter().position(|f| f.name == b.name)
        {
            bufs.push((
                fi,
                qi,
                b.name.clone(),
                q.dequantize(q.qmin),
                q.dequantize(q.qmax),
                q,
            ));
        }
    }
    let loader = Loader::new(
        &set,
        train::loader::Selection::originals(ClipSet::Test),
        LoaderConfig {
            batch_size: 64,
            shuffle: false,
            drop_last: false,
            ..LoaderConfig::default()
        },
    )?;
    let keep = int8.input_shape().1;
    let k = meta.n_classes();
    // device -> per buffer stats; device -> (n, correct float graph, correct fq, correct int8,
    // int8 prediction = float-graph prediction)
    let mut stats: BTreeMap<String, Vec<Stat>> = BTreeMap::new();
    let mut acc: BTreeMap<String, [u64; 5]> = BTreeMap::new();
    let am = |v: &[f32]| {
        (0..v.len())
            .max_by(|&a, &b| v[a].total_cmp(&v[b]))
            .unwrap_or(0)
    };
    for batch in loader.epoch(0) {
        let batch = batch?;
        let f = n_frames;
        let clips: Vec<(u32, i64, &[f32])> = batch
            .rows()
            .iter()
            .zip(batch.labels())
            .zip(batch.logmel().chunks_exact(n_mels * f))
            .map(|((r, y), x)| (*r, *y, x))
            .collect();
        let results: Vec<(String, i64, [usize; 3], Vec<Stat>)> = clips
            .par_iter()
            .map_init(
                || (fref.clone(), qref.clone()),
                |(fr, qr), &(row, y, x)| {
                    let mut inp = vec![0.0f32; n_mels * keep];
                    for (d, s) in inp.chunks_exact_mut(keep).zip(x.chunks_exact(f)) {
                        d.copy_from_slice(&s[..keep]);
                    }
                    let lf = fr.run(&inp, ExecMode::Float, None).to_vec();
                    let lq = qr.run(&inp, ExecMode::FakeQuant, None).to_vec();
                    let li = int8.infer_logmel(x).expect("int8");
                    let mut st = vec![Stat::default(); bufs.len()];
                    for (s, (fi, qi, _, lo, hi, q)) in st.iter_mut().zip(&bufs) {
                        let (a, b) = (fr.buffer(*fi), qr.buffer(*qi));
                        for (&u, &v) in a.iter().zip(b) {
                            s.local2 += ((q.fake_quant(u) - u) as f64).powi(2);
                            s.err2 += ((u - v) as f64).powi(2);
                            s.sig2 += (u as f64).powi(2);
                            s.clipped += u64::from(u < *lo || u > *hi);
                        }
                        s.n += a.len() as u64;
                    }
                    let dev = set.row_info(row).device.to_string();
                    (dev, y, [am(&lf), am(&lq), am(&li)], st)
                },
            )
            .collect();
        for (d, y, p, st) in results {
            let a = acc.entry(d.clone()).or_default();
            a[0] += 1;
            for i in 0..3 {
                a[i + 1] += u64::from(p[i] as i64 == y);
            }
            a[4] += u64::from(p[0] == p[2]);
            let e = stats
                .entry(d)
                .or_insert_with(|| vec![Stat::default(); bufs.len()]);
            for (a, b) in e.iter_mut().zip(st) {
                a.local2 += b.local2;
                a.err2 += b.err2;
                a.sig2 += b.sig2;
                a.clipped += b.clipped;
                a.n += b.n;
            }
        }
        let _ = k;
    }
    println!(
        "accuracy per device (%): float graph of the QAT weights / fake-quant / int8; \
         agreement of the int8 and float-graph predictions"
    );
    let mut by_group: BTreeMap<&str, [u64; 5]> = BTreeMap::new();
    for (d, a) in &acc {
        let s = if seen.contains(d) { "seen" } else { "unseen" };
        let g = by_group.entry(s).or_default();
        for (x, y) in g.iter_mut().zip(a) {
            *x += y;
        }
        println!(
            "{d:>4} {s:>6} n {:>4}  {:>6.2} {:>6.2} {:>6.2}  agree {:>6.2}",
            a[0],
            100.0 * a[1] as f64 / a[0] as f64,
            100.0 * a[2] as f64 / a[0] as f64,
            100.0 * a[3] as f64 / a[0] as f64,
            100.0 * a[4] as f64 / a[0] as f64
        );
    }
    for (s, a) in &by_group {
        println!(
            "{s:>11} n {:>4}  {:>6.2} {:>6.2} {:>6.2}  agree {:>6.2} (micro)",
            a[0],
            100.0 * a[1] as f64 / a[0] as f64,
            100.0 * a[2] as f64 / a[0] as f64,
            100.0 * a[3] as f64 / a[0] as f64,
            100.0 * a[4] as f64 / a[0] as f64
        );
    }
    let group = |want_seen: bool| -> Vec<Stat> {
        let mut out = vec![Stat::default(); bufs.len()];
        for (d, st) in &stats {
            if seen.contains(d) == want_seen {
                for (a, b) in out.iter_mut().zip(st) {
                    a.local2 += b.local2;
                    a.err2 += b.err2;
                    a.sig2 += b.sig2;
                    a.clipped += b.clipped;
                    a.n += b.n;
                }
            }
        }
        out
    };
    let (gs, gu) = (group(true), group(false));
    println!(
        "\n{:<40} {:>16}  {:>7} {:>7}  {:>7} {:>7}  {:>7} {:>7}",
        "buffer", "range", "SQNR s", "SQNR u", "local s", "local u", "clip% s", "clip% u"
    );
    let lq = |s: &Stat| 10.0 * (s.sig2 / s.local2.max(1e-30)).log10();
    let sq = |s: &Stat| 10.0 * (s.sig2 / s.err2.max(1e-30)).log10();
    let cp = |s: &Stat| 100.0 * s.clipped as f64 / s.n.max(1) as f64;
    for (i, (_, _, name, lo, hi, _)) in bufs.iter().enumerate() {
        println!(
            "{name:<40} {:>16}  {:>7.1} {:>7.1}  {:>7.1} {:>7.1}  {:>7.3} {:>7.3}",
            format!("{lo:.2}..{hi:.2}"),
            sq(&gs[i]),
            sq(&gu[i]),
            lq(&gs[i]),
            lq(&gu[i]),
            cp(&gs[i]),
            cp(&gu[i])
        );
    }
    if std::env::var("STUDY_PER_DEVICE").is_ok() {
        println!("\nper device clip% / SQNR of the input and the first layers");
        for (d, st) in &stats {
            let cells: Vec<String> = st
                .iter()
                .take(6)
                .map(|s| format!("{:.2}%/{:.1}", cp(s), sq(s)))
                .collect();
            println!("{d:>4} {}", cells.join("  "));
        }
    }
    let _ = Variant::Original;
    Ok(())
}
