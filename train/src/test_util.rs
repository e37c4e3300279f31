//! Helpers shared by the unit tests of the fused ops (scan, mixer, convolutions).

use burn::tensor::Tensor;

/// A tensor's values on the host.
pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("f32 tensor")
}

/// Norm-based relative error `||x - y|| / max(||y||, 1e-12)`.
pub fn rel_err(x: &[f32], y: &[f32]) -> f64 {
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
