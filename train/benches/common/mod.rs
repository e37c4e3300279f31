//! Wall-clock timing shared by the bench binaries (each includes it as `mod common;` and uses
//! what it needs).

#![allow(dead_code)]

use std::time::Instant;

/// Median, mean and minimum seconds per call of `f` over `n` calls after `warm` warm-up calls
/// (`f` gets the call's index, warm-ups included).
pub fn time(n: usize, warm: usize, mut f: impl FnMut(usize)) -> (f64, f64, f64) {
    for i in 0..warm {
        f(i);
    }
    let mut t: Vec<f64> = (0..n)
        .map(|i| {
            let s = Instant::now();
            f(i);
            s.elapsed().as_secs_f64()
        })
        .collect();
    let mean = t.iter().sum::<f64>() / n as f64;
    t.sort_by(f64::total_cmp);
    (t[n / 2], mean, t[0])
}

/// Minimum seconds per call of `f` over `n` calls after one warm-up (the least disturbed run
/// on a shared machine).
pub fn min_time(n: usize, mut f: impl FnMut()) -> f64 {
    time(n, 1, |_| f()).2
}

/// Median wall time in ms of `reps` runs after one warm-up.
pub fn time_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    time(reps, 1, |_| f()).0 * 1e3
}
