//! Helpers of the unit tests.

use rand::Rng;
use rand::rngs::StdRng;

use crate::Isa;

/// `n` values uniform in `[-a, a]`.
pub(crate) fn randv(rng: &mut StdRng, n: usize, a: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-a..=a)).collect()
}

/// The levels above [`Isa::Portable`] this CPU runs.
pub(crate) fn levels() -> Vec<Isa> {
    [Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni]
        .into_iter()
        .filter(|i| i.is_available())
        .collect()
}

/// `n` values uniform in `[-1, 1)`.
pub(crate) fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Norm-based relative error `||x - y|| / max(||y||, 1e-12)`.
pub(crate) fn rel_err(x: &[f32], y: &[f32]) -> f64 {
    assert_eq!(x.len(), y.len());
    let num: f64 = x
        .iter()
        .zip(y)
        .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = y.iter().map(|&q| (q as f64).powi(2)).sum::<f64>().sqrt();
    num / den.max(1e-12)
}
