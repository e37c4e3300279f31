//! Recording-device models: band limits, EQ, noise floor, gain and soft clipping.
//!
//! Device `a` is a flat wide-band reference; `b` and `c` are phones; `s1`-`s3` simulated devices
//! seen in training; `s4`-`s6` simulated devices seen only in the test set, with characters
//! (narrow band, strong resonance, heavy low end, harder clipping) unlike the seen ones.

use super::dsp::{Biquad, Osc, brown, normalize_rms, pink, soft_clip, white};
use super::rng::Rng;

/// Colour of a device's self-noise.
#[derive(Debug, Clone, Copy)]
pub enum NoiseColour {
    /// Flat spectrum.
    White,
    /// 1/f.
    Pink,
    /// 1/f^2.
    Brown,
}

/// One EQ band.
#[derive(Debug, Clone, Copy)]
pub enum Eq {
    /// Peaking band (Hz, Q, dB).
    Peak(f64, f64, f64),
    /// Low shelf (Hz, dB).
    LowShelf(f64, f64),
    /// High shelf (Hz, dB).
    HighShelf(f64, f64),
}

/// The transfer chain of one recording device.
#[derive(Debug, Clone)]
pub struct Device {
    /// Device name (`a`, `b`, `c`, `s1`-`s6`).
    pub name: &'static str,
    /// High-pass corner (Hz) and number of Butterworth biquad sections.
    pub highpass: (f64, usize),
    /// Low-pass corner (Hz) and number of Butterworth biquad sections.
    pub lowpass: (f64, usize),
    /// EQ bands.
    pub eq: &'static [Eq],
    /// Self-noise level (dBFS RMS) and colour.
    pub noise: (f64, NoiseColour),
    /// Mains hum (50 Hz and harmonics) level, dBFS, if any.
    pub mains_dbfs: Option<f64>,
    /// Gain, dB.
    pub gain_db: f64,
    /// Soft-clipping drive (`tanh(d x) / d`), if any.
    pub clip_drive: Option<f64>,
}

/// The nine TAU22 devices, in `TAU22_DEVICES` order.
pub const DEVICES: [Device; 9] = [
    Device {
        name: "a",
        highpass: (12.0, 1),
        lowpass: (20_000.0, 1),
        eq: &[],
        noise: (-96.0, NoiseColour::White),
        mains_dbfs: None,
        gain_db: 0.0,
        clip_drive: None,
    },
    Device {
        name: "b",
        highpass: (150.0, 1),
        lowpass: (10_500.0, 2),
        eq: &[Eq::Peak(2800.0, 1.0, 4.0), Eq::LowShelf(400.0, -2.0)],
        noise: (-72.0, NoiseColour::Pink),
        mains_dbfs: None,
        gain_db: -1.0,
        clip_drive: None,
    },
    Device {
        name: "c",
        highpass: (220.0, 1),
        lowpass: (9_000.0, 2),
        eq: &[Eq::Peak(1100.0, 0.8, -3.0), Eq::Peak(4500.0, 2.0, 3.0)],
        noise: (-68.0, NoiseColour::White),
        mains_dbfs: None,
        gain_db: 2.0,
        clip_drive: Some(1.5),
    },
    Device {
        name: "s1",
        highpass: (100.0, 1),
        lowpass: (12_000.0, 2),
        eq: &[Eq::LowShelf(250.0, 3.0), Eq::HighShelf(6000.0, -4.0)],
        noise: (-78.0, NoiseColour::Pink),
        mains_dbfs: None,
        gain_db: -3.0,
        clip_drive: None,
    },
    Device {
        name: "s2",
        highpass: (250.0, 1),
        lowpass: (7_200.0, 2),
        eq: &[Eq::Peak(1800.0, 1.2, 6.0)],
        noise: (-70.0, NoiseColour::White),
        mains_dbfs: None,
        gain_db: 1.0,
        clip_drive: Some(2.5),
    },
    Device {
        name: "s3",
        highpass: (70.0, 1),
        lowpass: (15_000.0, 1),
        eq: &[Eq::HighShelf(3500.0, -6.0), Eq::Peak(700.0, 1.0, 3.0)],
        noise: (-80.0, NoiseColour::Brown),
        mains_dbfs: None,
        gain_db: 0.0,
        clip_drive: None,
    },
    Device {
        name: "s4",
        highpass: (450.0, 2),
        lowpass: (5_500.0, 3),
        eq: &[Eq::Peak(3200.0, 2.0, 8.0)],
        noise: (-62.0, NoiseColour::White),
        mains_dbfs: None,
        gain_db: -2.0,
        clip_drive: Some(2.0),
    },
    Device {
        name: "s5",
        highpass: (45.0, 1),
        lowpass: (4_200.0, 2),
        eq: &[Eq::LowShelf(200.0, 6.0)],
        noise: (-74.0, NoiseColour::Brown),
        mains_dbfs: Some(-58.0),
        gain_db: 3.0,
        clip_drive: Some(3.0),
    },
    Device {
        name: "s6",
        highpass: (150.0, 2),
        lowpass: (11_000.0, 2),
        eq: &[Eq::Peak(1200.0, 1.5, -8.0), Eq::Peak(6000.0, 3.0, 6.0)],
        noise: (-60.0, NoiseColour::Pink),
        mains_dbfs: None,
        gain_db: -4.0,
        clip_drive: Some(4.0),
    },
];

/// The model of a device by name.
pub fn device(name: &str) -> Option<&'static Device> {
    DEVICES.iter().find(|d| d.name == name)
}

impl Device {
    /// Records `scene` (the sound pressure at the microphone, in full-scale units) with this
    /// device: band limits, EQ, gain, self-noise, mains hum, soft clipping, then a hard limit
    /// to [-1, 1].
    pub fn record(&self, scene: &[f64], rng: &mut Rng) -> Vec<f64> {
        let n = scene.len();
        let mut x = scene.to_vec();
        let q = std::f64::consts::FRAC_1_SQRT_2;
        let mut chain: Vec<Biquad> = Vec::new();
        chain.extend((0..self.highpass.1).map(|_| Biquad::highpass(self.highpass.0, q)));
        chain.extend((0..self.lowpass.1).map(|_| Biquad::lowpass(self.lowpass.0, q)));
        for e in self.eq {
            chain.push(match *e {
                Eq::Peak(f, q, g) => Biquad::peaking(f, q, g),
                Eq::LowShelf(f, g) => Biquad::low_shelf(f, g),
                Eq::HighShelf(f, g) => Biquad::high_shelf(f, g),
            });
        }
        for f in chain.iter_mut() {
            f.run(&mut x);
        }
        let g = 10f64.powf(self.gain_db / 20.0);
        let mut noise = match self.noise.1 {
            NoiseColour::White => white(rng, n),
            NoiseColour::Pink => pink(rng, n),
            NoiseColour::Brown => brown(rng, n),
        };
        normalize_rms(&mut noise, 10f64.powf(self.noise.0 / 20.0));
        let mains = self
            .mains_dbfs
            .map(|db| 10f64.powf(db / 20.0))
            .unwrap_or(0.0);
        let (mut m1, mut m3) = (Osc::new(50.0, 0.0), Osc::new(150.0, 0.0));
        for (i, v) in x.iter_mut().enumerate() {
            let hum = if mains > 0.0 {
                mains * (m1.next_sin() + 0.5 * m3.next_sin())
            } else {
                0.0
            };
            let mut y = g * *v + noise[i] + hum;
            if let Some(d) = self.clip_drive {
                y = soft_clip(y, d);
            }
            *v = y.clamp(-1.0, 1.0);
        }
        x
    }
}
