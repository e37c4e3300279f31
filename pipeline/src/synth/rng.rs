//! A small, explicitly specified random number generator for the demo dataset.
//!
//! The generator must give byte-identical datasets for a seed across platforms, thread counts
//! and dependency upgrades, so it does not rely on `rand`'s `StdRng` (whose algorithm may change
//! between releases). Streams are xoshiro256++ (Blackman & Vigna, 2019) seeded through
//! SplitMix64; every segment and device gets its own stream derived from the seed and a key.

use data_specs::hash::{fnv1a64, splitmix64};

/// xoshiro256++ random stream with the few distributions the generator needs.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
    /// Cached second Box-Muller value.
    spare: Option<f64>,
}

impl Rng {
    /// A stream from a 64-bit seed.
    pub fn new(seed: u64) -> Self {
        let mut st = seed;
        let s = [
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
        ];
        Self { s, spare: None }
    }

    /// An independent stream for `key` under the dataset seed.
    pub fn derive(seed: u64, key: &str) -> Self {
        // The key's FNV-1a hash names the stream.
        let key = fnv1a64(key.as_bytes());
        let mut st = seed ^ key.rotate_left(17);
        Self::new(splitmix64(&mut st) ^ key)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Log-uniform in [lo, hi) (both > 0): uniform on a logarithmic axis (frequencies, rates).
    pub fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + (hi.ln() - lo.ln()) * self.unit()).exp()
    }

    /// Uniform integer in [0, n) (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64) * n as f64) as usize
            % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Standard normal (Box-Muller, polar form).
    pub fn normal(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        loop {
            let u = 2.0 * self.unit() - 1.0;
            let v = 2.0 * self.unit() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let m = (-2.0 * s.ln() / s).sqrt();
                self.spare = Some(v * m);
                return u * m;
            }
        }
    }

    /// Fast unit-variance white-noise sample: uniform on `[-sqrt 3, sqrt 3)`. Audio noise is
    /// filtered afterwards, which makes it Gaussian-like; its spectrum is flat either way.
    #[inline]
    pub fn noise(&mut self) -> f64 {
        const SQRT12: f64 = 3.464_101_615_137_754_5;
        (self.unit() - 0.5) * SQRT12
    }

    /// `x * exp(sigma * N(0,1))`: a multiplicative (log-normal) perturbation.
    pub fn jitter(&mut self, x: f64, sigma: f64) -> f64 {
        x * (sigma * self.normal()).exp()
    }

    /// Exponential waiting time with the given rate (events per second).
    pub fn exp_wait(&mut self, rate: f64) -> f64 {
        -(1.0 - self.unit()).ln() / rate.max(1e-9)
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_is_deterministic_and_uniform() {
        let mut a = Rng::derive(7, "seg");
        let mut b = Rng::derive(7, "seg");
        let mut c = Rng::derive(7, "seg2");
        let xa: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let xb: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let xc: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
        let mut r = Rng::new(1);
        let n = 100_000;
        let (mut m, mut m2) = (0.0, 0.0);
        for _ in 0..n {
            let z = r.normal();
            m += z;
            m2 += z * z;
        }
        m /= n as f64;
        m2 /= n as f64;
        assert!(m.abs() < 0.02, "mean {m}");
        assert!((m2 - 1.0).abs() < 0.03, "var {m2}");
    }
}
