//! Timing of the trainer's per-batch building blocks on the paper's batch shape
//! (`[256, 1, 256, 65]` log-mel, 10 classes), Flex CPU backend.
//!
//! `cargo bench -p train --bench trainer_blocks`

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use train::augment::{
    Augment, FreqMixStyle, MixDraw, freq_mask, freq_mask_host, freq_mixstyle_host,
    freq_mixstyle_with, time_roll, time_roll_host,
};
use train::loss::kd_loss;
use train::metrics::EvalAccumulator;

fn time<T>(name: &str, reps: usize, mut f: impl FnMut() -> T) {
    let _ = f(); // warm-up
    let t0 = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(f());
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
    println!("{name:<48} {ms:9.2} ms");
}

fn main() {
    let device = Device::flex();
    let (b, f, t, k) = (256usize, 256usize, 65usize, 10usize);
    let mut rng = StdRng::seed_from_u64(0);
    let host: Vec<f32> = (0..b * f * t)
        .map(|_| rng.random_range(-11.0..2.0))
        .collect();
    let x = || Tensor::<4>::from_data(TensorData::new(host.clone(), [b, 1, f, t]), &device);
    let sync = |y: Tensor<4>| y.slice([0..1, 0..1, 0..1, 0..1]).into_scalar::<f32>();

    time("upload only", 10, || sync(x()));
    let shifts: Vec<i64> = (0..b as i64).map(|i| i % 21 - 10).collect();
    time("time_roll (grouped by shift)", 10, || {
        sync(time_roll(x(), &shifts))
    });
    let bands: Vec<(usize, usize)> = (0..b).map(|i| (i % 200, i % 49)).collect();
    time("freq_mask (mask_fill)", 10, || {
        sync(freq_mask(x(), &bands, 0.0))
    });
    let draw = MixDraw {
        lambdas: vec![0.3; b],
        perm: (0..b).rev().collect(),
    };
    time("freq_mixstyle_with", 10, || {
        sync(freq_mixstyle_with(x(), &draw, 1e-6))
    });
    let aug = Augment {
        freq_mixstyle: FreqMixStyle {
            p: 1.0,
            ..FreqMixStyle::default()
        },
        ..Augment::default()
    };
    let mut arng = StdRng::seed_from_u64(1);
    time("Augment::apply (roll + mask + FMS p=1)", 10, || {
        sync(aug.apply(x(), &mut arng))
    });

    let mut buf = host.clone();
    time("time_roll_host + freq_mask_host (in place)", 10, || {
        time_roll_host(&mut buf, [b, 1, f, t], &shifts);
        freq_mask_host(&mut buf, [b, 1, f, t], &bands, 0.0);
    });
    let mut hrng = StdRng::seed_from_u64(1);
    time("freq_mixstyle_host (in place)", 10, || {
        freq_mixstyle_host(&mut buf, [b, 1, f, t], &draw, 1e-6)
    });
    time("Augment::apply_host (FMS p=1) + upload", 10, || {
        let mut buf = host.clone();
        aug.apply_host(&mut buf, [b, 1, f, t], &mut hrng);
        sync(Tensor::<4>::from_data(
            TensorData::new(buf, [b, 1, f, t]),
            &device,
        ))
    });

    let ad = Device::flex().autodiff();
    let logits: Vec<f32> = (0..b * k).map(|_| rng.random_range(-3.0..3.0)).collect();
    let teacher: Vec<f32> = (0..b * k).map(|_| rng.random_range(-3.0..3.0)).collect();
    let labels: Vec<i64> = (0..b as i64).map(|i| i % k as i64).collect();
    time("kd_loss forward + backward [256, 10]", 20, || {
        let y = Tensor::<2>::from_data(TensorData::new(logits.clone(), [b, k]), &ad).require_grad();
        let tl = Tensor::<2>::from_data(TensorData::new(teacher.clone(), [b, k]), &ad);
        let l = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [b]), &ad);
        let m = Tensor::<1>::ones([b], &ad);
        let loss = kd_loss(y.clone(), l, tl, m, 0.02, 2.0);
        let g = loss.backward();
        y.grad(&g).map(|g| g.into_scalar_sum())
    });

    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let devices = names(&data_specs::TAU22_DEVICES);
    let dev_of: Vec<&str> = (0..b).map(|i| data_specs::TAU22_DEVICES[i % 9]).collect();
    time("EvalAccumulator::push_batch x 100 (25,600 rows)", 5, || {
        let mut acc = EvalAccumulator::new(
            names(&data_specs::TAU22_LABELS),
            devices.clone(),
            ["a", "b", "c"].iter().map(|s| s.to_string()).collect(),
        );
        let labels: Vec<usize> = (0..b).map(|i| i % k).collect();
        for _ in 0..100 {
            acc.push_batch(&logits, &labels, &dev_of).unwrap();
        }
        acc.finish().macro_accuracy
    });
}

trait SumScalar {
    fn into_scalar_sum(self) -> f32;
}

impl SumScalar for Tensor<2> {
    fn into_scalar_sum(self) -> f32 {
        self.sum().into_scalar::<f32>()
    }
}
