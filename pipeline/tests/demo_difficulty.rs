//! The demo dataset is learnable but not trivial: a nearest-centroid classifier on the mean
//! log-mel (per mel bin, mean over frames; DCASE2024 front end) trained on the training clips
//! scores well above chance and far from perfect on the test clips, and worse on the unseen
//! devices s4-s6 than on the reference device a.
//!
//! Seed: `DEMO_SEED` (default 2024) to check other seeds by hand.

use std::collections::BTreeMap;
use std::path::Path;

use data_specs::{FrontEndConfig, TAU22_LABELS, TAU22_UNSEEN_DEVICES, TauFileName};
use pipeline::logmel::LogMel;
use pipeline::resample::resample;
use pipeline::synth::{SynthArgs, generate};
use rayon::prelude::*;

fn read_list(path: &Path) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let mut it = l.split('\t');
            let f = it.next().unwrap().to_string();
            let label = it.next().unwrap();
            let y = TAU22_LABELS.iter().position(|x| *x == label).unwrap();
            (f, y)
        })
        .collect()
}

/// Mean log-mel of a clip (256 values).
fn embed(root: &Path, file: &str, lm: &LogMel, cfg: &FrontEndConfig) -> Vec<f64> {
    let r = hound::WavReader::open(root.join(file)).unwrap();
    let x: Vec<f32> = r
        .into_samples::<i32>()
        .map(|v| v.unwrap() as f32 / 8_388_608.0)
        .collect();
    let x32 = resample(&x, 44_100, 32_000).unwrap();
    let m = lm.compute(&x32);
    let t = cfg.n_frames();
    (0..cfg.n_mels)
        .map(|b| m[b * t..(b + 1) * t].iter().map(|&v| v as f64).sum::<f64>() / t as f64)
        .collect()
}

/// Macro accuracy (mean of per-class accuracies) of (truth, prediction) pairs.
fn macro_accuracy(pairs: &[(usize, usize)]) -> f64 {
    let mut per = vec![(0usize, 0usize); TAU22_LABELS.len()];
    for &(y, p) in pairs {
        per[y].1 += 1;
        if y == p {
            per[y].0 += 1;
        }
    }
    let present: Vec<f64> = per
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(c, n)| *c as f64 / *n as f64)
        .collect();
    present.iter().sum::<f64>() / present.len() as f64
}

#[test]
fn nearest_centroid_on_mean_logmel_is_above_chance_but_not_perfect() {
    let seed = std::env::var("DEMO_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2024);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("demo");
    generate(&SynthArgs {
        out: root.clone(),
        seed,
        scale: 1.0,
        force: false,
        threads: None,
    })
    .unwrap();
    let cfg = FrontEndConfig::dcase2024();
    let lm = LogMel::new(&cfg);
    let train = read_list(&root.join("evaluation_setup/fold1_train.csv"));
    let test = read_list(&root.join("evaluation_setup/fold1_evaluate.csv"));
    let feats = |list: &[(String, usize)]| -> Vec<Vec<f64>> {
        list.par_iter()
            .map(|(f, _)| embed(&root, f, &lm, &cfg))
            .collect()
    };
    let (ftr, fte) = (feats(&train), feats(&test));

    let dim = cfg.n_mels;
    let mut centroids = vec![vec![0.0; dim]; TAU22_LABELS.len()];
    let mut counts = vec![0usize; TAU22_LABELS.len()];
    for ((_, y), f) in train.iter().zip(&ftr) {
        counts[*y] += 1;
        for (c, v) in centroids[*y].iter_mut().zip(f) {
            *c += v;
        }
    }
    for (c, n) in centroids.iter_mut().zip(&counts) {
        assert!(*n > 0);
        c.iter_mut().for_each(|v| *v /= *n as f64);
    }
    let predict = |f: &Vec<f64>| {
        (0..centroids.len())
            .min_by(|&a, &b| {
                let d = |c: &Vec<f64>| c.iter().zip(f).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
                d(&centroids[a]).total_cmp(&d(&centroids[b]))
            })
            .unwrap()
    };
    let mut groups: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
    for ((f, y), x) in test.iter().zip(&fte) {
        let dev = TauFileName::parse(f).unwrap().device;
        let p = predict(x);
        let group = if dev == "a" {
            "a"
        } else if TAU22_UNSEEN_DEVICES.contains(&dev.as_str()) {
            "unseen s4-s6"
        } else {
            "seen b,c,s1-s3"
        };
        groups.entry(group).or_default().push((*y, p));
        groups.entry("all").or_default().push((*y, p));
    }
    let acc: BTreeMap<&str, f64> = groups
        .iter()
        .map(|(k, v)| (*k, macro_accuracy(v)))
        .collect();
    println!(
        "demo difficulty (seed {seed}, {} train / {} test clips): nearest-centroid mean log-mel macro accuracy",
        train.len(),
        test.len()
    );
    for (k, v) in &acc {
        println!("  {k:<16} {:.1} %", 100.0 * v);
    }
    assert!(acc["all"] > 0.25, "too hard: {:.3}", acc["all"]);
    assert!(acc["all"] < 0.85, "too easy: {:.3}", acc["all"]);
    assert!(
        acc["unseen s4-s6"] < acc["a"],
        "unseen devices should be harder than device a"
    );
}
