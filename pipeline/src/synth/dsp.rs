//! Signal-processing building blocks of the demo soundscapes and device models: RBJ biquads,
//! coloured noise, a feedback delay network reverb, soft clipping.

use std::f64::consts::PI;

use super::rng::Rng;

/// Sample rate of the generated audio (TAU22: 44.1 kHz).
pub const FS: f64 = 44_100.0;

/// A second-order IIR section (direct form I), coefficients normalised by `a0`.
///
/// Designs follow R. Bristow-Johnson's "Audio EQ Cookbook".
#[derive(Debug, Clone, Copy)]
pub struct Biquad {
    b0: f64,
    b1: f64,
    b2: f64,
    a1: f64,
    a2: f64,
    x1: f64,
    x2: f64,
    y1: f64,
    y2: f64,
}

impl Biquad {
    fn from_coeffs(b: [f64; 3], a: [f64; 3]) -> Self {
        Self {
            b0: b[0] / a[0],
            b1: b[1] / a[0],
            b2: b[2] / a[0],
            a1: a[1] / a[0],
            a2: a[2] / a[0],
            x1: 0.0,
            x2: 0.0,
            y1: 0.0,
            y2: 0.0,
        }
    }

    /// `w0 = 2 pi f / fs` (frequency clamped below Nyquist), `alpha = sin(w0) / (2 q)`.
    fn w0_alpha(f: f64, q: f64) -> (f64, f64) {
        let w0 = 2.0 * PI * f.clamp(1.0, 0.49 * FS) / FS;
        (w0, w0.sin() / (2.0 * q))
    }

    /// Low-pass: `H(s) = 1 / (s^2 + s/Q + 1)`.
    pub fn lowpass(f: f64, q: f64) -> Self {
        let (w0, al) = Self::w0_alpha(f, q);
        let c = w0.cos();
        Self::from_coeffs(
            [(1.0 - c) / 2.0, 1.0 - c, (1.0 - c) / 2.0],
            [1.0 + al, -2.0 * c, 1.0 - al],
        )
    }

    /// High-pass: `H(s) = s^2 / (s^2 + s/Q + 1)`.
    pub fn highpass(f: f64, q: f64) -> Self {
        let (w0, al) = Self::w0_alpha(f, q);
        let c = w0.cos();
        Self::from_coeffs(
            [(1.0 + c) / 2.0, -(1.0 + c), (1.0 + c) / 2.0],
            [1.0 + al, -2.0 * c, 1.0 - al],
        )
    }

    /// Band-pass with 0 dB peak gain: `H(s) = (s/Q) / (s^2 + s/Q + 1)`.
    pub fn bandpass(f: f64, q: f64) -> Self {
        let (w0, al) = Self::w0_alpha(f, q);
        let c = w0.cos();
        Self::from_coeffs([al, 0.0, -al], [1.0 + al, -2.0 * c, 1.0 - al])
    }

    /// Peaking EQ of `gain_db` at `f`.
    pub fn peaking(f: f64, q: f64, gain_db: f64) -> Self {
        let (w0, al) = Self::w0_alpha(f, q);
        let c = w0.cos();
        let a = 10f64.powf(gain_db / 40.0);
        Self::from_coeffs(
            [1.0 + al * a, -2.0 * c, 1.0 - al * a],
            [1.0 + al / a, -2.0 * c, 1.0 - al / a],
        )
    }

    /// Low shelf of `gain_db` below `f` (shelf slope S = 1).
    pub fn low_shelf(f: f64, gain_db: f64) -> Self {
        let a = 10f64.powf(gain_db / 40.0);
        let (w0, _) = Self::w0_alpha(f, 1.0);
        let (c, s) = (w0.cos(), w0.sin());
        let al = s / 2.0 * 2f64.sqrt();
        let sq = 2.0 * a.sqrt() * al;
        Self::from_coeffs(
            [
                a * ((a + 1.0) - (a - 1.0) * c + sq),
                2.0 * a * ((a - 1.0) - (a + 1.0) * c),
                a * ((a + 1.0) - (a - 1.0) * c - sq),
            ],
            [
                (a + 1.0) + (a - 1.0) * c + sq,
                -2.0 * ((a - 1.0) + (a + 1.0) * c),
                (a + 1.0) + (a - 1.0) * c - sq,
            ],
        )
    }

    /// High shelf of `gain_db` above `f` (shelf slope S = 1).
    pub fn high_shelf(f: f64, gain_db: f64) -> Self {
        let a = 10f64.powf(gain_db / 40.0);
        let (w0, _) = Self::w0_alpha(f, 1.0);
        let (c, s) = (w0.cos(), w0.sin());
        let al = s / 2.0 * 2f64.sqrt();
        let sq = 2.0 * a.sqrt() * al;
        Self::from_coeffs(
            [
                a * ((a + 1.0) + (a - 1.0) * c + sq),
                -2.0 * a * ((a - 1.0) + (a + 1.0) * c),
                a * ((a + 1.0) + (a - 1.0) * c - sq),
            ],
            [
                (a + 1.0) - (a - 1.0) * c + sq,
                2.0 * ((a - 1.0) - (a + 1.0) * c),
                (a + 1.0) - (a - 1.0) * c - sq,
            ],
        )
    }

    /// Filters one sample.
    #[inline]
    pub fn tick(&mut self, x: f64) -> f64 {
        let y = self.b0 * x + self.b1 * self.x1 + self.b2 * self.x2
            - self.a1 * self.y1
            - self.a2 * self.y2;
        self.x2 = self.x1;
        self.x1 = x;
        self.y2 = self.y1;
        self.y1 = y;
        y
    }

    /// Filters a buffer in place.
    pub fn run(&mut self, buf: &mut [f64]) {
        for v in buf.iter_mut() {
            *v = self.tick(*v);
        }
    }
}

/// Applies a cascade of biquads in place.
pub fn cascade(buf: &mut [f64], filters: &mut [Biquad]) {
    for f in filters.iter_mut() {
        f.run(buf);
    }
}

/// White noise of unit variance.
pub fn white(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.noise()).collect()
}

/// Pink (1/f) noise, roughly unit RMS.
pub fn pink(rng: &mut Rng, n: usize) -> Vec<f64> {
    pink_of(&white(rng, n))
}

/// Pink filter applied to a unit-variance white signal: Paul Kellet's "refined" filter
/// (six one-pole sections plus a direct term), scaled to roughly unit RMS.
pub fn pink_of(w: &[f64]) -> Vec<f64> {
    let (mut b0, mut b1, mut b2, mut b3, mut b4, mut b5, mut b6) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    w.iter()
        .map(|&w| {
            b0 = 0.99886 * b0 + w * 0.0555179;
            b1 = 0.99332 * b1 + w * 0.0750759;
            b2 = 0.96900 * b2 + w * 0.1538520;
            b3 = 0.86650 * b3 + w * 0.3104856;
            b4 = 0.55000 * b4 + w * 0.5329522;
            b5 = -0.7616 * b5 - w * 0.0168980;
            let y = b0 + b1 + b2 + b3 + b4 + b5 + b6 + w * 0.5362;
            b6 = w * 0.115926;
            y * 0.3
        })
        .collect()
}

/// Brown (1/f^2) noise of unit variance.
pub fn brown(rng: &mut Rng, n: usize) -> Vec<f64> {
    brown_of(&white(rng, n))
}

/// Brown filter: leaky integration `y[n] = 0.997 y[n-1] + 0.0775 w[n]` of a unit-variance white
/// signal (unit variance: `0.0775^2 / (1 - 0.997^2) ~ 1`).
pub fn brown_of(w: &[f64]) -> Vec<f64> {
    let mut y = 0.0;
    w.iter()
        .map(|&w| {
            y = 0.997 * y + 0.0775 * w;
            y
        })
        .collect()
}

/// A smooth random envelope: sum of a few sinusoids with random rates in `[f_lo, f_hi]` Hz and
/// random phases, scaled to [-1, 1] (approximately). Evaluated every 32 samples and linearly
/// interpolated (the rates are below 10 Hz).
pub fn slow_lfo(rng: &mut Rng, n: usize, f_lo: f64, f_hi: f64) -> Vec<f64> {
    let parts: Vec<(f64, f64)> = (0..3)
        .map(|_| (rng.log_uniform(f_lo, f_hi), rng.uniform(0.0, 2.0 * PI)))
        .collect();
    let at = |i: usize| {
        let t = i as f64 / FS;
        parts
            .iter()
            .map(|(f, p)| (2.0 * PI * f * t + p).sin())
            .sum::<f64>()
            / 3.0
    };
    smooth_curve(n, at)
}

/// Samples a slowly varying curve `f(i)` every 32 samples and interpolates linearly.
pub fn smooth_curve(n: usize, f: impl Fn(usize) -> f64) -> Vec<f64> {
    const STEP: usize = 32;
    let knots: Vec<f64> = (0..=n / STEP + 1).map(|k| f(k * STEP)).collect();
    (0..n)
        .map(|i| {
            let (k, r) = (i / STEP, (i % STEP) as f64 / STEP as f64);
            knots[k] + r * (knots[k + 1] - knots[k])
        })
        .collect()
}

/// Sinusoidal oscillator by phasor rotation: `z[n+1] = z[n] e^{i w}` (one complex multiply per
/// sample instead of a `sin`), renormalised every 1024 samples against rounding drift.
#[derive(Debug, Clone, Copy)]
pub struct Osc {
    re: f64,
    im: f64,
    cr: f64,
    ci: f64,
    count: u32,
}

impl Osc {
    /// An oscillator at `freq` Hz starting at `phase` radians.
    pub fn new(freq: f64, phase: f64) -> Self {
        let w = 2.0 * PI * freq / FS;
        Self {
            re: phase.cos(),
            im: phase.sin(),
            cr: w.cos(),
            ci: w.sin(),
            count: 0,
        }
    }

    /// The current `sin(phase)`, then advances one sample.
    #[inline]
    pub fn next_sin(&mut self) -> f64 {
        let s = self.im;
        let re = self.re * self.cr - self.im * self.ci;
        self.im = self.re * self.ci + self.im * self.cr;
        self.re = re;
        self.count += 1;
        if self.count == 1024 {
            self.count = 0;
            let m = (self.re * self.re + self.im * self.im).sqrt();
            self.re /= m;
            self.im /= m;
        }
        s
    }
}

/// Root mean square.
pub fn rms(x: &[f64]) -> f64 {
    (x.iter().map(|v| v * v).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// Adds `gain * src` to `dst`.
pub fn mix_into(dst: &mut [f64], src: &[f64], gain: f64) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += gain * s;
    }
}

/// Scales `x` to the given RMS (no-op for silence).
pub fn normalize_rms(x: &mut [f64], target: f64) {
    let r = rms(x);
    if r > 1e-12 {
        let g = target / r;
        x.iter_mut().for_each(|v| *v *= g);
    }
}

/// Soft clipping `tanh(drive x) / drive` (unity gain for small signals).
#[inline]
pub fn soft_clip(x: f64, drive: f64) -> f64 {
    (drive * x).tanh() / drive
}

/// Feedback delay network reverb (Jot & Chaigne 1991): four delay lines with mutually prime
/// lengths, a 4x4 Hadamard feedback matrix (orthogonal, scaled by 1/2), per-line gains
/// `g_i = 10^(-3 d_i / (RT60 fs))` for a decay of 60 dB in `rt60` seconds, and a one-pole
/// low-pass in each loop for air/wall absorption. Returns the wet signal.
pub fn fdn_reverb(x: &[f64], rt60: f64, size: f64, damping: f64) -> Vec<f64> {
    const BASE: [f64; 4] = [1116.0, 1356.0, 1617.0, 1873.0];
    let lens: Vec<usize> = BASE
        .iter()
        .map(|b| ((b * size).round() as usize).max(64) | 1)
        .collect();
    let gains: Vec<f64> = lens
        .iter()
        .map(|&d| 10f64.powf(-3.0 * d as f64 / (rt60.max(0.05) * FS)))
        .collect();
    let mut lines: Vec<Vec<f64>> = lens.iter().map(|&d| vec![0.0; d]).collect();
    let mut pos = [0usize; 4];
    let mut lp = [0.0f64; 4];
    let mut out = vec![0.0; x.len()];
    for (n, &xin) in x.iter().enumerate() {
        let mut o = [0.0; 4];
        for i in 0..4 {
            o[i] = lines[i][pos[i]];
            lp[i] = (1.0 - damping) * o[i] + damping * lp[i];
        }
        let y = lp[0] + lp[1] + lp[2] + lp[3];
        // Hadamard H4 / 2.
        let h = [
            (lp[0] + lp[1] + lp[2] + lp[3]) * 0.5,
            (lp[0] - lp[1] + lp[2] - lp[3]) * 0.5,
            (lp[0] + lp[1] - lp[2] - lp[3]) * 0.5,
            (lp[0] - lp[1] - lp[2] + lp[3]) * 0.5,
        ];
        for i in 0..4 {
            lines[i][pos[i]] = xin + gains[i] * h[i];
            pos[i] = (pos[i] + 1) % lens[i];
        }
        out[n] = y * 0.25;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Magnitude response of a biquad at `f`, measured by driving it with a sinusoid.
    fn measured_gain(mut bq: Biquad, f: f64) -> f64 {
        let n = 44_100;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(bq.tick((2.0 * PI * f * i as f64 / FS).sin()));
        }
        rms(&out[n / 2..]) * 2f64.sqrt()
    }

    #[test]
    fn biquads_match_their_design() {
        // Butterworth low-pass (Q = 1/sqrt 2): -3 dB at the corner, ~1 in the passband.
        let q = std::f64::consts::FRAC_1_SQRT_2;
        assert!((measured_gain(Biquad::lowpass(1000.0, q), 1000.0) - q).abs() < 0.01);
        assert!((measured_gain(Biquad::lowpass(1000.0, q), 100.0) - 1.0).abs() < 0.01);
        assert!((measured_gain(Biquad::highpass(1000.0, q), 1000.0) - q).abs() < 0.01);
        let g = measured_gain(Biquad::peaking(2000.0, 1.0, 6.0), 2000.0);
        assert!((20.0 * g.log10() - 6.0).abs() < 0.1, "{g}");
        let g = measured_gain(Biquad::low_shelf(300.0, -6.0), 30.0);
        assert!((20.0 * g.log10() + 6.0).abs() < 0.3, "{g}");
        let g = measured_gain(Biquad::high_shelf(3000.0, 6.0), 15000.0);
        assert!((20.0 * g.log10() - 6.0).abs() < 0.3, "{g}");
    }

    #[test]
    fn phasor_oscillator_matches_sin() {
        let mut o = Osc::new(440.0, 0.3);
        for i in 0..100_000 {
            let want = (2.0 * PI * 440.0 * i as f64 / FS + 0.3).sin();
            assert!((o.next_sin() - want).abs() < 1e-9, "sample {i}");
        }
    }

    #[test]
    fn fdn_decays_at_rt60() {
        let mut x = vec![0.0; 3 * 44_100];
        x[0] = 1.0;
        let y = fdn_reverb(&x, 1.0, 1.0, 0.0);
        // Energy in a 100 ms window 0.2 s and 1.2 s after onset: 60 dB per second of decay.
        let e = |t: f64| {
            let a = (t * FS) as usize;
            rms(&y[a..a + 4410])
        };
        let drop_db = 20.0 * (e(0.2) / e(1.2)).log10();
        assert!((drop_db - 60.0).abs() < 6.0, "decay {drop_db} dB/s");
    }
}
