//! Throughput of the signal-processing stages, in clips per second (1 s clips at 32 kHz):
//! log-mel (`dcase2024`) on one core and on all cores, resampling 44.1 kHz -> 32 kHz (with its
//! quality against the ideal band-limited result), and DIR convolution with a MicIRP response.
//!
//! Run with `cargo bench -p pipeline --bench logmel`.

use std::time::Instant;

use data_specs::FrontEndConfig;
use pipeline::dir::{convolve_causal, default_dir_folder, load_dir_set};
use pipeline::logmel::LogMel;
use pipeline::resample::resample;
use rayon::prelude::*;

fn clips(n: usize, len: usize) -> Vec<Vec<f32>> {
    // Deterministic pseudo-noise plus a tone (content does not change the cost).
    (0..n)
        .map(|c| {
            let mut s = 0x1234_5678u32.wrapping_add(c as u32);
            (0..len)
                .map(|i| {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    0.1 * ((s as f32 / u32::MAX as f32) - 0.5) + 0.3 * (i as f32 * 0.05).sin()
                })
                .collect()
        })
        .collect()
}

/// Runs `f` over all clips in `pool`, returns clips per second (best of `reps`).
fn rate<F: Fn(&[f32]) + Sync>(
    pool: &rayon::ThreadPool,
    data: &[Vec<f32>],
    reps: usize,
    f: F,
) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        pool.install(|| data.par_iter().for_each(|c| f(c)));
        best = best.min(t.elapsed().as_secs_f64());
    }
    data.len() as f64 / best
}

fn main() {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let all = rayon::ThreadPoolBuilder::new().build().unwrap();
    let n_all = all.current_num_threads();

    let cfg = FrontEndConfig::dcase2024();
    let lm = LogMel::new(&cfg);
    let data = clips(64, cfg.clip_samples);
    // Warm up the thread-local scratch of every worker.
    rate(&all, &data, 1, |c| {
        std::hint::black_box(lm.compute(c));
    });
    let f = |c: &[f32]| {
        thread_local! {
            static OUT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        OUT.with(|o| {
            let mut o = o.borrow_mut();
            o.resize(cfg.logmel_len(), 0.0);
            lm.compute_into(c, &mut o);
            std::hint::black_box(&*o);
        });
    };
    let r1 = rate(&one, &data, 3, f);
    let rn = rate(&all, &data, 3, f);
    println!(
        "log-mel dcase2024 (256x65):  1 thread {r1:8.1} clips/s   {n_all} threads {rn:8.1} clips/s"
    );
    let cp = LogMel::new(&FrontEndConfig::cpjku());
    let r1 = rate(&one, &data, 3, |c| {
        std::hint::black_box(cp.compute(c));
    });
    println!("log-mel cpjku     (256x65):  1 thread {r1:8.1} clips/s");

    let data44 = clips(32, 44_100);
    rate(&all, &data44[..n_all.min(32)], 1, |c| {
        std::hint::black_box(resample(c, 44_100, 32_000).unwrap());
    });
    let r1 = rate(&one, &data44, 2, |c| {
        std::hint::black_box(resample(c, 44_100, 32_000).unwrap());
    });
    let rn = rate(&all, &data44, 2, |c| {
        std::hint::black_box(resample(c, 44_100, 32_000).unwrap());
    });
    let poly = pipeline::resample::polyphase(44_100, 32_000).expect("44.1 kHz -> 32 kHz");
    println!(
        "resample 44.1k -> 32k (1 s, polyphase FIR, {} taps): 1 thread {r1:8.1} clips/s   {n_all} threads {rn:8.1} clips/s",
        poly.taps()
    );
    let q = pipeline::resample::measure_quality(44_100, 32_000, 24).expect("quality");
    println!(
        "resample 44.1k -> 32k quality vs the ideal band-limited result: passband (to {:.0} Hz) \
         gain error {:.1e} dB, phase {:.1e} rad; alias rejection (16-21.8 kHz tones) {:.1} dB",
        q.passband_hz, q.passband_error_db, q.passband_phase_rad, q.rejection_db
    );

    let irs = load_dir_set(&default_dir_folder(), 32_000).expect("MicIRP set");
    let longest = irs.iter().max_by_key(|r| r.samples.len()).unwrap();
    let r1 = rate(&one, &data, 3, |c| {
        std::hint::black_box(convolve_causal(c, &longest.samples));
    });
    let rn = rate(&all, &data, 3, |c| {
        std::hint::black_box(convolve_causal(c, &longest.samples));
    });
    println!(
        "DIR convolution (IR {} taps): 1 thread {r1:8.1} clips/s   {n_all} threads {rn:8.1} clips/s",
        longest.samples.len()
    );
}
