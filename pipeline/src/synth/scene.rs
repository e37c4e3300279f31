//! Physically motivated soundscape models of the ten TAU22 scenes.
//!
//! A scene is a [`Profile`]: the levels and parameters of a dozen sound components (background
//! noise, engine hum, motor whine, rail clacks, babble, birds, footsteps, chimes, announcements,
//! music, passing vehicles, distant traffic, wind, reverberation). Each scene has an archetype;
//! every city perturbs it, every location perturbs the city's profile, every 10 s segment the
//! location's. Secondary components may be absent in a city or a location. So no single
//! component identifies a scene, and scenes that share components overlap (metro vs
//! metro_station, street_pedestrian vs public_square, bus vs tram), as real recordings do.

use std::f64::consts::PI;

use super::dsp::{
    Biquad, FS, Osc, brown, brown_of, cascade, fdn_reverb, mix_into, normalize_rms, pink, pink_of,
    rms, slow_lfo, smooth_curve, white,
};
use super::rng::Rng;

/// Component level meaning "absent" (dB relative to the background).
pub const OFF_DB: f64 = -120.0;

/// Components below this relative level are not rendered.
const AUDIBLE_DB: f64 = -40.0;

/// Parameters of one soundscape. Levels are in dB relative to the background noise (rendered
/// at unit RMS); `level_dbfs` is the RMS of the whole mix.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Overall RMS level of the mix, dBFS.
    pub level_dbfs: f64,
    /// Background: weights of white, pink and brown noise.
    pub bg_mix: [f64; 3],
    /// Background low-pass corner, Hz.
    pub bg_lp: f64,
    /// Background spectral tilt: high-shelf gain above 2 kHz, dB.
    pub bg_tilt_db: f64,
    /// Engine / ventilation hum level, dB.
    pub hum_db: f64,
    /// Hum fundamental, Hz.
    pub hum_f0: f64,
    /// Amplitude ratio between successive hum harmonics.
    pub hum_rolloff: f64,
    /// Relative frequency excursion of the hum (rpm changes).
    pub hum_drift: f64,
    /// Amplitude-modulation rate of the hum, Hz.
    pub hum_am_rate: f64,
    /// Electric motor whine level, dB.
    pub whine_db: f64,
    /// Motor whine frequency, Hz.
    pub whine_f: f64,
    /// Relative sweep of the whine over a segment (acceleration).
    pub whine_sweep: f64,
    /// Rail clack level, dB.
    pub rail_db: f64,
    /// Wheel-over-joint rate (bogie pairs per second).
    pub rail_rate: f64,
    /// Centre frequency of the clack resonance, Hz.
    pub rail_bright: f64,
    /// Level of wheel squeal on curves (tram), dB.
    pub squeal_db: f64,
    /// Babble level, dB.
    pub babble_db: f64,
    /// Number of simultaneous talkers.
    pub talkers: f64,
    /// Bird song level, dB.
    pub birds_db: f64,
    /// Bird phrases per second.
    pub birds_rate: f64,
    /// Footstep level, dB.
    pub steps_db: f64,
    /// Walkers passing per 10 s.
    pub walkers: f64,
    /// Footstep brightness (impact resonance), Hz: hard indoor floors ring higher.
    pub steps_bright: f64,
    /// Chime level, dB.
    pub chime_db: f64,
    /// Chimes per second.
    pub chime_rate: f64,
    /// Public-address announcement level, dB.
    pub announce_db: f64,
    /// Announcements per second.
    pub announce_rate: f64,
    /// Background music level, dB.
    pub music_db: f64,
    /// Passing-vehicle level, dB.
    pub traffic_db: f64,
    /// Vehicles passing per second.
    pub traffic_rate: f64,
    /// Closest distance of passing vehicles, m.
    pub traffic_dist: f64,
    /// Distant traffic rumble level, dB.
    pub rumble_db: f64,
    /// Rumble low-pass corner, Hz.
    pub rumble_lp: f64,
    /// Wind level, dB.
    pub wind_db: f64,
    /// Gustiness (depth of the wind envelope in nepers).
    pub wind_gust: f64,
    /// Reverberation time RT60, s.
    pub rt60: f64,
    /// Wet/dry gain of the reverberation.
    pub reverb_wet: f64,
    /// Room size (delay-line scale).
    pub room_size: f64,
}

impl Profile {
    fn base() -> Self {
        Self {
            level_dbfs: -22.0,
            bg_mix: [0.2, 1.0, 0.4],
            bg_lp: 8000.0,
            bg_tilt_db: 0.0,
            hum_db: OFF_DB,
            hum_f0: 60.0,
            hum_rolloff: 0.7,
            hum_drift: 0.05,
            hum_am_rate: 2.0,
            whine_db: OFF_DB,
            whine_f: 600.0,
            whine_sweep: 0.1,
            rail_db: OFF_DB,
            rail_rate: 1.0,
            rail_bright: 2000.0,
            squeal_db: OFF_DB,
            babble_db: OFF_DB,
            talkers: 4.0,
            birds_db: OFF_DB,
            birds_rate: 0.5,
            steps_db: OFF_DB,
            walkers: 3.0,
            steps_bright: 900.0,
            chime_db: OFF_DB,
            chime_rate: 0.05,
            announce_db: OFF_DB,
            announce_rate: 0.05,
            music_db: OFF_DB,
            traffic_db: OFF_DB,
            traffic_rate: 0.2,
            traffic_dist: 8.0,
            rumble_db: OFF_DB,
            rumble_lp: 300.0,
            wind_db: OFF_DB,
            wind_gust: 0.8,
            rt60: 0.3,
            reverb_wet: 0.0,
            room_size: 1.0,
        }
    }

    /// The archetype of a TAU22 scene (index into `TAU22_LABELS`).
    pub fn archetype(scene: &str) -> Self {
        let b = Self::base();
        match scene {
            "airport" => Self {
                level_dbfs: -24.0,
                bg_mix: [0.1, 1.0, 0.3],
                bg_lp: 6000.0,
                hum_db: -12.0,
                hum_f0: 95.0,
                hum_rolloff: 0.5,
                babble_db: -1.0,
                talkers: 14.0,
                steps_db: -9.0,
                walkers: 6.0,
                steps_bright: 2200.0,
                chime_db: -5.0,
                chime_rate: 0.12,
                announce_db: -3.0,
                announce_rate: 0.08,
                rumble_db: -14.0,
                rumble_lp: 150.0,
                rt60: 1.6,
                reverb_wet: 0.55,
                room_size: 1.7,
                ..b
            },
            "bus" => Self {
                level_dbfs: -19.0,
                bg_mix: [0.1, 0.5, 1.0],
                bg_lp: 4000.0,
                bg_tilt_db: -3.0,
                hum_db: 0.0,
                hum_f0: 55.0,
                hum_rolloff: 0.75,
                hum_drift: 0.25,
                hum_am_rate: 4.0,
                rail_db: -14.0,
                rail_rate: 0.7,
                rail_bright: 900.0,
                babble_db: -10.0,
                talkers: 3.0,
                announce_db: -9.0,
                announce_rate: 0.03,
                traffic_db: -12.0,
                traffic_rate: 0.1,
                traffic_dist: 4.0,
                rt60: 0.4,
                reverb_wet: 0.25,
                room_size: 0.35,
                ..b
            },
            "metro" => Self {
                level_dbfs: -16.0,
                bg_mix: [0.3, 0.8, 1.0],
                bg_lp: 6000.0,
                hum_db: -5.0,
                hum_f0: 120.0,
                hum_rolloff: 0.6,
                hum_drift: 0.15,
                whine_db: -5.0,
                whine_f: 900.0,
                whine_sweep: 0.4,
                rail_db: 0.0,
                rail_rate: 2.0,
                rail_bright: 1800.0,
                babble_db: -13.0,
                talkers: 4.0,
                announce_db: -9.0,
                announce_rate: 0.04,
                chime_db: -12.0,
                chime_rate: 0.03,
                rt60: 0.5,
                reverb_wet: 0.3,
                room_size: 0.45,
                ..b
            },
            "metro_station" => Self {
                level_dbfs: -21.0,
                bg_mix: [0.2, 1.0, 0.5],
                bg_lp: 7000.0,
                hum_db: -10.0,
                hum_f0: 110.0,
                hum_drift: 0.1,
                whine_db: -11.0,
                whine_f: 800.0,
                whine_sweep: 0.5,
                rail_db: -7.0,
                rail_rate: 1.2,
                rail_bright: 1600.0,
                babble_db: -3.0,
                talkers: 8.0,
                steps_db: -7.0,
                walkers: 6.0,
                steps_bright: 2000.0,
                announce_db: -4.0,
                announce_rate: 0.06,
                chime_db: -8.0,
                chime_rate: 0.06,
                rt60: 2.0,
                reverb_wet: 0.6,
                room_size: 1.4,
                ..b
            },
            "park" => Self {
                level_dbfs: -29.0,
                bg_mix: [0.5, 1.0, 0.3],
                bg_lp: 10000.0,
                birds_db: 0.0,
                birds_rate: 1.2,
                wind_db: -3.0,
                wind_gust: 1.0,
                rumble_db: -6.0,
                rumble_lp: 250.0,
                babble_db: -15.0,
                talkers: 2.0,
                steps_db: -16.0,
                walkers: 2.0,
                steps_bright: 700.0,
                rt60: 0.2,
                reverb_wet: 0.0,
                ..b
            },
            "public_square" => Self {
                level_dbfs: -24.0,
                bg_mix: [0.3, 1.0, 0.4],
                bg_lp: 9000.0,
                babble_db: -3.0,
                talkers: 6.0,
                steps_db: -9.0,
                walkers: 5.0,
                steps_bright: 1100.0,
                birds_db: -9.0,
                birds_rate: 0.4,
                rumble_db: -4.0,
                rumble_lp: 300.0,
                traffic_db: -13.0,
                traffic_rate: 0.06,
                traffic_dist: 15.0,
                wind_db: -8.0,
                rt60: 0.6,
                reverb_wet: 0.1,
                room_size: 2.0,
                ..b
            },
            "shopping_mall" => Self {
                level_dbfs: -23.0,
                bg_mix: [0.1, 1.0, 0.2],
                bg_lp: 7000.0,
                hum_db: -13.0,
                hum_f0: 75.0,
                hum_rolloff: 0.5,
                babble_db: 0.0,
                talkers: 12.0,
                music_db: -8.0,
                steps_db: -8.0,
                walkers: 6.0,
                steps_bright: 2400.0,
                chime_db: -10.0,
                chime_rate: 0.04,
                announce_db: -8.0,
                announce_rate: 0.03,
                rt60: 1.3,
                reverb_wet: 0.45,
                room_size: 1.2,
                ..b
            },
            "street_pedestrian" => Self {
                level_dbfs: -22.0,
                bg_mix: [0.3, 1.0, 0.5],
                bg_lp: 8000.0,
                babble_db: -2.0,
                talkers: 4.0,
                steps_db: -4.0,
                walkers: 7.0,
                steps_bright: 1200.0,
                traffic_db: -10.0,
                traffic_rate: 0.1,
                traffic_dist: 10.0,
                rumble_db: -4.0,
                rumble_lp: 350.0,
                birds_db: -16.0,
                birds_rate: 0.2,
                wind_db: -9.0,
                rt60: 0.5,
                reverb_wet: 0.12,
                room_size: 1.5,
                ..b
            },
            "street_traffic" => Self {
                level_dbfs: -18.0,
                bg_mix: [0.2, 0.8, 1.0],
                bg_lp: 6000.0,
                hum_db: -8.0,
                hum_f0: 35.0,
                hum_rolloff: 0.8,
                hum_drift: 0.2,
                traffic_db: 0.0,
                traffic_rate: 0.45,
                traffic_dist: 5.0,
                rumble_db: 0.0,
                rumble_lp: 400.0,
                steps_db: -18.0,
                walkers: 2.0,
                babble_db: -18.0,
                talkers: 2.0,
                wind_db: -6.0,
                rt60: 0.4,
                reverb_wet: 0.08,
                room_size: 1.8,
                ..b
            },
            "tram" => Self {
                level_dbfs: -19.0,
                bg_mix: [0.2, 0.7, 1.0],
                bg_lp: 5000.0,
                bg_tilt_db: -2.0,
                hum_db: -6.0,
                hum_f0: 100.0,
                hum_rolloff: 0.55,
                hum_drift: 0.08,
                whine_db: -5.0,
                whine_f: 500.0,
                whine_sweep: 0.3,
                rail_db: -4.0,
                rail_rate: 1.0,
                rail_bright: 1300.0,
                squeal_db: -10.0,
                babble_db: -9.0,
                talkers: 4.0,
                announce_db: -8.0,
                announce_rate: 0.04,
                chime_db: -9.0,
                chime_rate: 0.04,
                traffic_db: -14.0,
                traffic_rate: 0.1,
                rt60: 0.45,
                reverb_wet: 0.25,
                room_size: 0.45,
                ..b
            },
            _ => b,
        }
    }

    /// A perturbed copy: the hierarchy city -> location -> segment calls this with decreasing
    /// `k`. Levels move additively in dB, frequencies and rates multiplicatively; secondary
    /// components (below -6 dB) disappear with probability `p_drop`.
    pub fn perturb(&self, rng: &mut Rng, k: f64, p_drop: f64) -> Self {
        let mut p = self.clone();
        let db = |rng: &mut Rng, v: f64, s: f64| -> f64 {
            if v <= AUDIBLE_DB {
                v
            } else if v < -6.0 && rng.chance(p_drop) {
                OFF_DB
            } else {
                v + s * k * rng.normal()
            }
        };
        let fr = |rng: &mut Rng, v: f64, s: f64| rng.jitter(v, s * k);
        p.level_dbfs += 2.0 * k * rng.normal();
        for w in p.bg_mix.iter_mut() {
            *w = rng.jitter(*w, 0.5 * k);
        }
        p.bg_lp = fr(rng, p.bg_lp, 0.25).clamp(1500.0, 18000.0);
        p.bg_tilt_db += 2.5 * k * rng.normal();
        p.hum_db = db(rng, p.hum_db, 3.0);
        p.hum_f0 = fr(rng, p.hum_f0, 0.18);
        p.hum_rolloff = fr(rng, p.hum_rolloff, 0.1).clamp(0.2, 0.92);
        p.hum_drift = fr(rng, p.hum_drift, 0.3).min(0.5);
        p.hum_am_rate = fr(rng, p.hum_am_rate, 0.3);
        p.whine_db = db(rng, p.whine_db, 3.0);
        p.whine_f = fr(rng, p.whine_f, 0.2);
        p.whine_sweep = fr(rng, p.whine_sweep, 0.3).min(0.8);
        p.rail_db = db(rng, p.rail_db, 3.0);
        p.rail_rate = fr(rng, p.rail_rate, 0.2);
        p.rail_bright = fr(rng, p.rail_bright, 0.2);
        p.squeal_db = db(rng, p.squeal_db, 3.0);
        p.babble_db = db(rng, p.babble_db, 3.0);
        p.talkers = fr(rng, p.talkers, 0.3).clamp(1.0, 24.0);
        p.birds_db = db(rng, p.birds_db, 3.5);
        p.birds_rate = fr(rng, p.birds_rate, 0.35);
        p.steps_db = db(rng, p.steps_db, 3.0);
        p.walkers = fr(rng, p.walkers, 0.3).clamp(1.0, 16.0);
        p.steps_bright = fr(rng, p.steps_bright, 0.2);
        p.chime_db = db(rng, p.chime_db, 3.0);
        p.chime_rate = fr(rng, p.chime_rate, 0.3);
        p.announce_db = db(rng, p.announce_db, 3.0);
        p.announce_rate = fr(rng, p.announce_rate, 0.3);
        p.music_db = db(rng, p.music_db, 3.0);
        p.traffic_db = db(rng, p.traffic_db, 3.0);
        p.traffic_rate = fr(rng, p.traffic_rate, 0.35);
        p.traffic_dist = fr(rng, p.traffic_dist, 0.3);
        p.rumble_db = db(rng, p.rumble_db, 3.0);
        p.rumble_lp = fr(rng, p.rumble_lp, 0.25);
        p.wind_db = db(rng, p.wind_db, 4.0);
        p.wind_gust = fr(rng, p.wind_gust, 0.3);
        p.rt60 = fr(rng, p.rt60, 0.2).clamp(0.1, 4.0);
        p.reverb_wet = fr(rng, p.reverb_wet, 0.3).min(0.9);
        p.room_size = fr(rng, p.room_size, 0.15);
        p
    }
}

/// Gain of a level in dB.
fn gain(db: f64) -> f64 {
    10f64.powf(db / 20.0)
}

/// Smooth ramp from `a` to `b` across the buffer (acceleration / deceleration):
/// `a + (b - a) (1 - cos(pi t / T)) / 2`.
fn ramp(n: usize, a: f64, b: f64) -> Vec<f64> {
    let len = n.max(1) as f64;
    smooth_curve(n, |i| {
        a + (b - a) * (0.5 - 0.5 * (PI * i as f64 / len).cos())
    })
}

/// Harmonic tone with a time-varying fundamental `f(i)`; harmonics `k = 1..=nh` with amplitude
/// `rolloff^(k-1)`, generated by the Chebyshev recurrence `sin(k phi) = 2 cos(phi) sin((k-1) phi)
/// - sin((k-2) phi)` (one sin/cos per sample).
fn harmonic_tone(
    n: usize,
    nh: usize,
    rolloff: f64,
    f: impl Fn(usize) -> f64,
    ph0: f64,
) -> Vec<f64> {
    let mut out = vec![0.0; n];
    let mut phase = ph0;
    for (i, o) in out.iter_mut().enumerate() {
        let fk = f(i);
        phase += 2.0 * PI * fk / FS;
        if phase > 2.0 * PI {
            phase -= 2.0 * PI;
        }
        let (s1, c1) = phase.sin_cos();
        let (mut sm2, mut sm1) = (0.0, s1);
        let mut acc = s1;
        let mut a = 1.0;
        for k in 2..=nh {
            if fk * k as f64 > 0.45 * FS {
                break;
            }
            let sk = 2.0 * c1 * sm1 - sm2;
            a *= rolloff;
            acc += a * sk;
            sm2 = sm1;
            sm1 = sk;
        }
        *o = acc;
    }
    out
}

/// Engine or ventilation hum: harmonics of `hum_f0` with rpm drift and amplitude modulation
/// (firing irregularity), plus combustion noise band-passed at twice the fundamental.
fn hum(rng: &mut Rng, p: &Profile, n: usize) -> Vec<f64> {
    let lfo = slow_lfo(rng, n, 0.03, 0.3);
    let r = ramp(n, rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0));
    let (f0, drift) = (p.hum_f0, p.hum_drift);
    let mut x = harmonic_tone(
        n,
        12,
        p.hum_rolloff,
        |i| f0 * (1.0 + drift * (0.6 * r[i] + 0.4 * lfo[i])).max(0.3),
        rng.uniform(0.0, 2.0 * PI),
    );
    let am_depth = rng.uniform(0.1, 0.35);
    let mut am = Osc::new(p.hum_am_rate, rng.uniform(0.0, 2.0 * PI));
    for v in x.iter_mut() {
        *v *= 1.0 + am_depth * am.next_sin();
    }
    normalize_rms(&mut x, 1.0);
    let mut noise = white(rng, n);
    Biquad::bandpass(2.0 * f0, 3.0).run(&mut noise);
    normalize_rms(&mut noise, 0.4);
    mix_into(&mut x, &noise, 1.0);
    normalize_rms(&mut x, 1.0);
    x
}

/// Electric traction-motor whine: a tone and two harmonics sweeping with the train's speed.
fn whine(rng: &mut Rng, p: &Profile, n: usize) -> Vec<f64> {
    let a = rng.uniform(-1.0, 1.0);
    let b = (a + rng.uniform(-1.5, 1.5)).clamp(-1.0, 1.0);
    let r = ramp(n, a, b);
    let (f, sw) = (p.whine_f, p.whine_sweep);
    let mut x = harmonic_tone(
        n,
        3,
        0.4,
        |i| f * (1.0 + sw * r[i]).max(0.2),
        rng.uniform(0.0, 2.0 * PI),
    );
    // Speed-dependent loudness.
    for (i, v) in x.iter_mut().enumerate() {
        *v *= 0.5 + 0.5 * (1.0 + r[i]) / 2.0;
    }
    normalize_rms(&mut x, 1.0);
    x
}

/// Adds a decaying noise burst (an impact) at sample `at`: `a * w[n] * exp(-n / (tau fs))`.
fn add_impact(rng: &mut Rng, buf: &mut [f64], at: usize, a: f64, tau: f64) {
    let len = ((5.0 * tau * FS) as usize).max(8);
    // exp(-j / (tau fs)) by recursion.
    let k = (-1.0 / (tau * FS)).exp();
    let mut decay = 1.0;
    for j in 0..len {
        if at + j >= buf.len() {
            break;
        }
        buf[at + j] += a * rng.noise() * decay;
        decay *= k;
    }
}

/// Rail rhythm: pairs of wheel-over-joint clacks (two axles of a bogie) at `rail_rate`, each an
/// impact ringing at `rail_bright`, plus the low thump of the car body.
fn rail(rng: &mut Rng, p: &Profile, n: usize) -> Vec<f64> {
    let mut exc = vec![0.0; n];
    let gap = rng.uniform(0.08, 0.18) / p.rail_rate.sqrt();
    let mut t = rng.uniform(0.0, 1.0 / p.rail_rate);
    while t < n as f64 / FS {
        let i = (t * FS) as usize;
        let a = rng.uniform(0.6, 1.0);
        let tau = rng.uniform(0.006, 0.015);
        add_impact(rng, &mut exc, i, a, tau);
        let a2 = a * rng.uniform(0.7, 1.0);
        add_impact(rng, &mut exc, i + (gap * FS) as usize, a2, tau);
        t += (1.0 / p.rail_rate) * (1.0 + 0.06 * rng.normal()).max(0.5);
    }
    let mut hi = exc.clone();
    Biquad::bandpass(p.rail_bright, 1.5).run(&mut hi);
    let mut lo = exc;
    Biquad::lowpass(120.0, 0.9).run(&mut lo);
    normalize_rms(&mut hi, 1.0);
    normalize_rms(&mut lo, 0.8);
    mix_into(&mut hi, &lo, 1.0);
    normalize_rms(&mut hi, 1.0);
    hi
}

/// Wheel squeal on a curve: a 2-5 kHz tone with vibrato swelling over one to three seconds.
fn squeal(rng: &mut Rng, n: usize) -> Vec<f64> {
    let mut x = vec![0.0; n];
    if !rng.chance(0.6) {
        return x;
    }
    let f = rng.uniform(2000.0, 5000.0);
    let dur = rng.uniform(1.0, 3.0);
    let start = rng.uniform(0.0, (n as f64 / FS - dur).max(0.0));
    let (a, len) = ((start * FS) as usize, (dur * FS) as usize);
    let mut ph = 0.0;
    let vib = rng.uniform(4.0, 9.0);
    for j in 0..len.min(n - a) {
        let t = j as f64 / FS;
        ph += 2.0 * PI * f * (1.0 + 0.01 * (2.0 * PI * vib * t).sin()) / FS;
        let env = (PI * j as f64 / len as f64).sin().powi(2);
        x[a + j] = env * ph.sin();
    }
    let r = rms(&x[a..(a + len).min(n)]);
    if r > 0.0 {
        x.iter_mut().for_each(|v| *v /= r);
    }
    x
}

/// Vowel formants (F1, F2, F3) in Hz of a few open, mid and closed vowels.
const VOWELS: [[f64; 3]; 8] = [
    [730.0, 1090.0, 2440.0],
    [530.0, 1840.0, 2480.0],
    [270.0, 2290.0, 3010.0],
    [570.0, 840.0, 2410.0],
    [300.0, 870.0, 2240.0],
    [660.0, 1720.0, 2410.0],
    [490.0, 1350.0, 1690.0],
    [440.0, 1020.0, 2240.0],
];

/// One talker: a glottal pulse train at `f0` (with jitter) plus aspiration noise through three
/// formant resonators whose vowel changes every syllable, gated by talk spurts and a syllabic
/// envelope. When `continuous` the talker never pauses (announcements).
fn talker(rng: &mut Rng, n: usize, continuous: bool) -> Vec<f64> {
    let mut out = vec![0.0; n];
    let f0 = rng.log_uniform(95.0, 240.0);
    let syl_rate = rng.uniform(3.0, 6.0);
    let formant_shift = rng.uniform(0.85, 1.2);
    let mut i = if continuous {
        0
    } else {
        (rng.uniform(0.0, 2.0) * FS) as usize
    };
    let mut spurt_end = if continuous {
        n
    } else {
        i + (rng.uniform(0.8, 3.5) * FS) as usize
    };
    let mut phase = 0.0;
    while i < n {
        if i >= spurt_end {
            i += (rng.uniform(0.3, 2.5) * FS) as usize;
            spurt_end = i + (rng.uniform(0.8, 3.5) * FS) as usize;
            continue;
        }
        let len = ((rng.uniform(0.6, 1.4) / syl_rate) * FS) as usize;
        let v = VOWELS[rng.below(VOWELS.len())];
        let mut res: Vec<Biquad> = v
            .iter()
            .enumerate()
            .map(|(k, f)| Biquad::bandpass(f * formant_shift, [6.0, 9.0, 12.0][k]))
            .collect();
        let fa = [1.0, 0.6, 0.3];
        let voiced = rng.chance(0.8);
        let pitch = f0 * (1.0 + 0.1 * rng.normal());
        let amp = rng.uniform(0.5, 1.0);
        // Syllabic envelope sin(pi j / len).
        let mut env_osc = Osc::new(0.5 * FS / len.max(1) as f64, 0.0);
        for j in 0..len {
            if i + j >= n {
                break;
            }
            let env = env_osc.next_sin();
            phase += pitch / FS;
            let mut e = 0.3 * rng.noise();
            if voiced && phase >= 1.0 {
                e += 8.0;
            }
            if phase >= 1.0 {
                phase -= 1.0;
            }
            let y: f64 = res.iter_mut().zip(fa).map(|(r, a)| a * r.tick(e)).sum();
            out[i + j] += amp * env * y;
        }
        i += len;
    }
    normalize_rms(&mut out, 1.0);
    out
}

/// Babble: the sum of `talkers` talkers at random distances (far ones quieter and duller).
fn babble(rng: &mut Rng, p: &Profile, n: usize) -> Vec<f64> {
    let k = (p.talkers.round() as usize).max(1);
    let mut out = vec![0.0; n];
    for _ in 0..k {
        let mut t = talker(rng, n, false);
        let dist = rng.log_uniform(1.0, 12.0);
        if dist > 4.0 {
            Biquad::lowpass(12000.0 / dist.sqrt(), 0.7).run(&mut t);
        }
        mix_into(&mut out, &t, 1.0 / dist);
    }
    normalize_rms(&mut out, 1.0);
    out
}

/// Public-address announcements: a continuous talker band-limited to 300-3400 Hz (horn
/// loudspeaker), lightly overdriven. Each announcement lasts 2-5 s.
fn announcements(rng: &mut Rng, p: &Profile, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n];
    let mut t = rng.exp_wait(p.announce_rate);
    while t < n as f64 / FS {
        let len = ((rng.uniform(2.0, 5.0) * FS) as usize).min(n - (t * FS) as usize);
        let mut x = talker(rng, len, true);
        let mut f = [
            Biquad::highpass(300.0, 0.7),
            Biquad::highpass(300.0, 0.7),
            Biquad::lowpass(3400.0, 0.7),
            Biquad::lowpass(3400.0, 0.7),
            Biquad::peaking(1500.0, 1.0, 5.0),
        ];
        cascade(&mut x, &mut f);
        normalize_rms(&mut x, 1.0);
        let a = (t * FS) as usize;
        for (j, v) in x.iter().enumerate() {
            out[a + j] += (1.5 * v).tanh() / 1.5;
        }
        t += len as f64 / FS + rng.exp_wait(p.announce_rate);
    }
    out
}

/// Chimes: a location-specific "ding-dong" of two or three bell notes (inharmonic partials
/// 1, 2, 2.76, 5.4 with exponential decay).
fn chimes(rng: &mut Rng, melody: &[f64], p: &Profile, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n];
    let mut t = rng.exp_wait(p.chime_rate);
    const PARTIALS: [(f64, f64); 4] = [(1.0, 1.0), (2.0, 0.5), (2.76, 0.3), (5.4, 0.15)];
    while t < n as f64 / FS {
        for (k, &f) in melody.iter().enumerate() {
            let a = ((t + 0.6 * k as f64) * FS) as usize;
            let tau = rng.uniform(0.5, 1.2);
            // Partial h decays as exp(-t h / tau): per-sample factor exp(-h / (tau fs)).
            let mut osc: Vec<(Osc, f64, f64)> = PARTIALS
                .iter()
                .map(|&(h, g)| (Osc::new(f * h, 0.0), g, (-h / (tau * FS)).exp()))
                .collect();
            let mut dec = [1.0f64; 4];
            for j in 0..((3.0 * tau * FS) as usize) {
                if a + j >= n {
                    break;
                }
                let attack = (j as f64 / (0.005 * FS)).min(1.0);
                let mut s = 0.0;
                for (k, (o, g, d)) in osc.iter_mut().enumerate() {
                    s += *g * o.next_sin() * dec[k];
                    dec[k] *= *d;
                }
                out[a + j] += 2.0 * attack * s;
            }
        }
        t += 0.6 * melody.len() as f64 + rng.exp_wait(p.chime_rate);
    }
    out
}

/// Bird song: phrases of frequency-modulated chirps (trills), each bird of the location with its
/// own pitch, chirp length and sweep.
fn birds(rng: &mut Rng, species: &[(f64, f64, f64)], p: &Profile, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n];
    let mut t = rng.exp_wait(p.birds_rate);
    while t < n as f64 / FS {
        let (f, dur, sweep) = species[rng.below(species.len())];
        let notes = 2 + rng.below(7);
        let gap = rng.uniform(0.04, 0.12);
        let amp = rng.uniform(0.3, 1.0);
        let mut a = (t * FS) as usize;
        for _ in 0..notes {
            let len = (dur * FS * rng.uniform(0.8, 1.2)) as usize;
            let mut ph = 0.0;
            let fb = f * rng.uniform(0.95, 1.05);
            for j in 0..len {
                if a + j >= n {
                    break;
                }
                let u = j as f64 / len as f64;
                let fi = fb * (1.0 + sweep * (u - 0.5));
                ph += 2.0 * PI * fi / FS;
                let env = (PI * u).sin().powi(2);
                out[a + j] += amp * env * (ph.sin() + 0.25 * (2.0 * ph).sin());
            }
            a += len + (gap * FS) as usize;
        }
        t += rng.exp_wait(p.birds_rate) + notes as f64 * (dur + gap);
    }
    out
}

/// Footsteps: walkers passing by, each stepping at 1.6-2.2 Hz; a step is a heel impact ringing
/// at the floor's resonance plus a low thud; the walker's distance shapes the loudness.
fn footsteps(rng: &mut Rng, p: &Profile, n: usize) -> Vec<f64> {
    let dur = n as f64 / FS;
    let k = (p.walkers.round() as usize).max(1);
    let mut exc = vec![0.0; n];
    for _ in 0..k {
        let rate = rng.uniform(1.6, 2.2);
        let t0 = rng.uniform(-2.0, dur + 2.0);
        let width = rng.uniform(1.5, 4.0);
        let mut t = (t0 - 2.0 * width).max(0.0);
        while t < (t0 + 2.0 * width).min(dur) {
            let a = (-((t - t0) / width).powi(2)).exp();
            let tau = rng.uniform(0.004, 0.012);
            add_impact(rng, &mut exc, (t * FS) as usize, a, tau);
            t += 1.0 / rate * (1.0 + 0.04 * rng.normal());
        }
    }
    let mut hi = exc.clone();
    Biquad::bandpass(p.steps_bright, 1.2).run(&mut hi);
    let mut lo = exc;
    Biquad::lowpass(180.0, 0.8).run(&mut lo);
    mix_into(&mut hi, &lo, 0.6);
    hi
}

/// Background music (shopping mall): triads of soft sawtooth-like tones changing every beat,
/// and a bass line, through a dull loudspeaker.
fn music(rng: &mut Rng, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n];
    let root = rng.uniform(110.0, 220.0);
    let beat = rng.uniform(0.4, 0.8);
    let mut i = 0;
    let scale = [0.0, 2.0, 4.0, 5.0, 7.0, 9.0, 11.0];
    while i < n {
        let len = ((beat * 2.0) * FS) as usize;
        let deg = rng.below(7);
        let notes: Vec<f64> = [0, 2, 4]
            .iter()
            .map(|d| root * 2f64.powf(scale[(deg + d) % 7] / 12.0 + ((deg + d) / 7) as f64))
            .collect();
        let mut osc: Vec<(Osc, f64)> = notes
            .iter()
            .flat_map(|&f| (1..=4).map(move |h| (Osc::new(f * h as f64, 0.0), 1.0 / h as f64)))
            .collect();
        osc.push((Osc::new(notes[0] / 2.0, 0.0), 1.5));
        let (k_att, k_dec) = ((-1.0 / (0.02 * FS)).exp(), (-1.0 / (1.5 * FS)).exp());
        let (mut att, mut dec) = (1.0, 1.0);
        for j in 0..len.min(n - i) {
            let env = (1.0 - att) * dec;
            att *= k_att;
            dec *= k_dec;
            let s: f64 = osc.iter_mut().map(|(o, g)| *g * o.next_sin()).sum();
            out[i + j] = env * s;
        }
        i += len;
    }
    Biquad::lowpass(4000.0, 0.7).run(&mut out);
    normalize_rms(&mut out, 1.0);
    out
}

/// Passing vehicles: tyre noise and engine harmonics, with the spherical-spreading envelope
/// `1 / r(t)`, `r(t) = sqrt(d^2 + (v (t - t0))^2)`, and the Doppler shift
/// `f = f0 c / (c + dr/dt)` (c = 343 m/s).
fn traffic(rng: &mut Rng, p: &Profile, n: usize) -> Vec<f64> {
    let dur = n as f64 / FS;
    let mut out = vec![0.0; n];
    let mut t0 = -3.0 + rng.exp_wait(p.traffic_rate);
    while t0 < dur + 3.0 {
        let v = rng.uniform(7.0, 17.0);
        let d = rng.jitter(p.traffic_dist, 0.3).max(1.5);
        let f0 = rng.uniform(25.0, 70.0);
        let heavy = rng.chance(0.2);
        let a0 = ((t0 - 4.0).max(0.0) * FS) as usize;
        let a1 = (((t0 + 4.0).min(dur)) * FS) as usize;
        if a1 > a0 {
            let len = a1 - a0;
            let mut tyre = pink(rng, len);
            let mut f = [
                Biquad::bandpass(rng.uniform(600.0, 1400.0), 0.6),
                Biquad::lowpass(rng.uniform(3000.0, 6000.0), 0.7),
            ];
            cascade(&mut tyre, &mut f);
            normalize_rms(&mut tyre, 1.0);
            let mut ph = 0.0;
            let eng_gain = if heavy { 1.5 } else { 0.5 };
            for j in 0..len {
                let t = (a0 + j) as f64 / FS - t0;
                let x = v * t;
                let r = (d * d + x * x).sqrt();
                let drdt = v * x / r;
                let f = f0 * 343.0 / (343.0 + drdt);
                ph += 2.0 * PI * f / FS;
                let (s1, c1) = ph.sin_cos();
                let s2 = 2.0 * s1 * c1;
                let s3 = 2.0 * c1 * s2 - s1;
                let eng = s1 + 0.5 * s2 + 0.3 * s3;
                out[a0 + j] += (d / r) * (tyre[j] + eng_gain * eng);
            }
        }
        t0 += rng.exp_wait(p.traffic_rate);
    }
    out
}

/// Distant traffic rumble: low-passed brown noise with a slow swell.
fn rumble(rng: &mut Rng, p: &Profile, n: usize) -> Vec<f64> {
    let mut x = brown(rng, n);
    let mut f = [
        Biquad::lowpass(p.rumble_lp, 0.7),
        Biquad::highpass(25.0, 0.7),
    ];
    cascade(&mut x, &mut f);
    let lfo = slow_lfo(rng, n, 0.05, 0.3);
    for (v, l) in x.iter_mut().zip(&lfo) {
        *v *= (0.35 * l).exp();
    }
    normalize_rms(&mut x, 1.0);
    x
}

/// Wind on the microphone: gusty low-frequency noise (`exp(gust * lfo)` envelope) plus leaf
/// rustle (band-passed white noise following the same gusts).
fn wind(rng: &mut Rng, p: &Profile, n: usize) -> Vec<f64> {
    let mut x = brown(rng, n);
    let mut f = [Biquad::lowpass(rng.uniform(150.0, 400.0), 0.7)];
    cascade(&mut x, &mut f);
    normalize_rms(&mut x, 1.0);
    let mut rustle = white(rng, n);
    Biquad::bandpass(rng.uniform(3000.0, 7000.0), 0.7).run(&mut rustle);
    normalize_rms(&mut rustle, 0.3);
    let lfo = slow_lfo(rng, n, 0.08, 0.6);
    for ((v, r), l) in x.iter_mut().zip(&rustle).zip(&lfo) {
        let e = (p.wind_gust * l).exp();
        *v = e * (*v + r);
    }
    normalize_rms(&mut x, 1.0);
    x
}

/// The fixed character of a location: what its chimes and birds sound like.
#[derive(Debug, Clone)]
pub struct LocationVoice {
    /// Chime melody (Hz).
    pub melody: Vec<f64>,
    /// Bird species: (pitch Hz, chirp duration s, relative sweep).
    pub species: Vec<(f64, f64, f64)>,
}

impl LocationVoice {
    /// Draws the voice of a location.
    pub fn draw(rng: &mut Rng) -> Self {
        let base = rng.uniform(450.0, 900.0);
        let steps = [1.0, 0.8, 0.667, 1.25, 1.5];
        let notes = 2 + rng.below(2);
        let melody = (0..notes)
            .map(|_| base * steps[rng.below(steps.len())])
            .collect();
        let species = (0..1 + rng.below(3))
            .map(|_| {
                (
                    rng.uniform(2000.0, 7000.0),
                    rng.uniform(0.03, 0.18),
                    rng.uniform(-0.6, 0.8),
                )
            })
            .collect();
        Self { melody, species }
    }
}

/// Renders `n` samples of a soundscape at 44.1 kHz, normalised to the profile's level.
pub fn render(rng: &mut Rng, p: &Profile, voice: &LocationVoice, n: usize) -> Vec<f64> {
    // Background noise: a mix of white, pink and brown noise, low-passed and tilted.
    let w = white(rng, n);
    let pk = pink_of(&w);
    let br = brown_of(&w);
    let mut bg: Vec<f64> = (0..n)
        .map(|i| p.bg_mix[0] * w[i] + p.bg_mix[1] * pk[i] + p.bg_mix[2] * br[i])
        .collect();
    let mut f = [
        Biquad::lowpass(p.bg_lp, 0.7),
        Biquad::high_shelf(2000.0, p.bg_tilt_db),
        Biquad::highpass(20.0, 0.7),
    ];
    cascade(&mut bg, &mut f);
    normalize_rms(&mut bg, 1.0);

    let mut dry = vec![0.0; n];
    let audible = |db: f64| db > AUDIBLE_DB;
    if audible(p.hum_db) {
        mix_into(&mut dry, &hum(rng, p, n), gain(p.hum_db));
    }
    if audible(p.whine_db) {
        mix_into(&mut dry, &whine(rng, p, n), gain(p.whine_db));
    }
    if audible(p.rail_db) {
        mix_into(&mut dry, &rail(rng, p, n), gain(p.rail_db));
    }
    if audible(p.squeal_db) {
        mix_into(&mut dry, &squeal(rng, n), gain(p.squeal_db));
    }
    if audible(p.babble_db) {
        mix_into(&mut dry, &babble(rng, p, n), gain(p.babble_db));
    }
    if audible(p.announce_db) {
        mix_into(&mut dry, &announcements(rng, p, n), gain(p.announce_db));
    }
    if audible(p.chime_db) {
        mix_into(
            &mut dry,
            &chimes(rng, &voice.melody, p, n),
            gain(p.chime_db),
        );
    }
    if audible(p.music_db) {
        mix_into(&mut dry, &music(rng, n), gain(p.music_db));
    }
    if audible(p.steps_db) {
        mix_into(&mut dry, &footsteps(rng, p, n), gain(p.steps_db));
    }
    if audible(p.birds_db) {
        mix_into(
            &mut dry,
            &birds(rng, &voice.species, p, n),
            gain(p.birds_db),
        );
    }
    if audible(p.traffic_db) {
        mix_into(&mut dry, &traffic(rng, p, n), gain(p.traffic_db));
    }
    if audible(p.rumble_db) {
        mix_into(&mut dry, &rumble(rng, p, n), gain(p.rumble_db));
    }
    // Reverberation of the sources in the room (the background is already diffuse).
    if p.reverb_wet > 0.01 {
        let wet = fdn_reverb(&dry, p.rt60, p.room_size, rng.uniform(0.2, 0.6));
        let g = p.reverb_wet * rms(&dry) / rms(&wet).max(1e-12);
        mix_into(&mut dry, &wet, g);
    }
    if audible(p.wind_db) {
        mix_into(&mut dry, &wind(rng, p, n), gain(p.wind_db));
    }
    mix_into(&mut dry, &bg, 1.0);
    normalize_rms(&mut dry, gain(p.level_dbfs));
    dry
}
