//! Throughput of the signal-processing stages, in clips per second of wall time and per
//! CPU-second of the process (the rate of one busy core, less sensitive to other load on a
//! shared machine) (1 s clips at 32 kHz):
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

/// CPU seconds used by this process so far (every thread; `CLOCK_PROCESS_CPUTIME_ID`).
fn cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Clips per second of wall time, and clips per CPU-second (the rate of one busy core,
/// whatever else the machine is doing; the calling thread only waits for the pool).
#[derive(Clone, Copy)]
struct Rate {
    wall: f64,
    cpu: f64,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:8.1} clips/s ({:6.0} per CPU-s)", self.wall, self.cpu)
    }
}

/// Runs `f` over all clips in `pool`, returns the rates (best of `reps` each).
fn rate<F: Fn(&[f32]) + Sync>(
    pool: &rayon::ThreadPool,
    data: &[Vec<f32>],
    reps: usize,
    f: F,
) -> Rate {
    let (mut wall, mut cpu) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..reps {
        let (t, c) = (Instant::now(), cpu_seconds());
        pool.install(|| data.par_iter().for_each(|c| f(c)));
        wall = wall.min(t.elapsed().as_secs_f64());
        cpu = cpu.min(cpu_seconds() - c);
    }
    Rate {
        wall: data.len() as f64 / wall,
        cpu: data.len() as f64 / cpu,
    }
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
    println!("log-mel dcase2024 (256x65):  1 thread {r1}   {n_all} threads {rn}");
    let cp = LogMel::new(&FrontEndConfig::cpjku());
    let r1 = rate(&one, &data, 3, |c| {
        std::hint::black_box(cp.compute(c));
    });
    println!("log-mel cpjku     (256x65):  1 thread {r1}");

    let data44 = clips(128, 44_100);
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
        "resample 44.1k -> 32k (1 s, polyphase FIR, {} taps): 1 thread {r1}   {n_all} threads {rn}",
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
        "DIR convolution (IR {} taps): 1 thread {r1}   {n_all} threads {rn}",
        longest.samples.len()
    );
}
