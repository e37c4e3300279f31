//! SiLU, its derivative, sigmoid and softplus as branch-free scalar functions that vectorise
//! inside the fused kernels' loops (the Mamba mixer, [`crate::mixer::cpu`]):
//!
//! - SiLU `y = x sigma(x)`, `dy/dx = sigma(x) (1 + x (1 - sigma(x)))`;
//! - softplus `y = ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|)`, `dy/dx = sigma(x)`;
//!
//! with `sigma(x) = 1 / (1 + e^-x)` and `exp` the polynomial [`crate::scan::cpu::exp_poly`]
//! (`FMA`: fused multiply-adds, only inside `target_feature(fma)` code).

use crate::scan::cpu::exp_poly;

/// `ln(1 + e)` for `e` in `[0, 1]`, branch-free so that loops vectorise: with `y = 1 + e`
/// scaled into `[1/sqrt 2, sqrt 2]` (`y = 2^k m`, `k` in {0, 1}), `ln m = 2 atanh(s)`,
/// `s = (m - 1) / (m + 1)`, `|s| <= 0.172`, by its odd series to `s^9` (truncation < 1e-9).
/// Absolute error below 1e-7 (for `e < 1e-7`, `1 + e` rounds to 1 and the result is 0).
#[inline(always)]
pub(crate) fn ln_1p_unit(e: f32) -> f32 {
    let y = 1.0 + e;
    let k = if y > std::f32::consts::SQRT_2 {
        1.0
    } else {
        0.0
    };
    let m = y * (1.0 - 0.5 * k);
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let p = 1.0 / 9.0;
    let p = p * s2 + 1.0 / 7.0;
    let p = p * s2 + 1.0 / 5.0;
    let p = p * s2 + 1.0 / 3.0;
    let p = p * s2 + 1.0;
    2.0 * s * p + k * std::f32::consts::LN_2
}

/// `sigma(x) = 1 / (1 + e^-x)`.
#[inline(always)]
pub(crate) fn sigmoid<const FMA: bool>(x: f32) -> f32 {
    1.0 / (1.0 + exp_poly::<FMA>(-x))
}

/// SiLU `x sigma(x)`.
#[inline(always)]
pub(crate) fn silu<const FMA: bool>(x: f32) -> f32 {
    x * sigmoid::<FMA>(x)
}

/// The derivative of SiLU, `sigma(x) (1 + x (1 - sigma(x)))`.
#[inline(always)]
pub(crate) fn silu_grad<const FMA: bool>(x: f32) -> f32 {
    let s = sigmoid::<FMA>(x);
    s * (1.0 + x * (1.0 - s))
}

/// Softplus `ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|)` (its derivative is [`sigmoid`]).
#[inline(always)]
pub(crate) fn softplus<const FMA: bool>(x: f32) -> f32 {
    x.max(0.0) + ln_1p_unit(exp_poly::<FMA>(-x.abs()))
}

#[cfg(test)]
mod tests {
    use crate::test_util::{host, rel_err};
    use burn::tensor::{Device, Tensor, TensorData};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn ln_1p_unit_matches_f64_ln_1p_on_the_unit_interval() {
        let mut worst = 0f64;
        for i in 0..=100_000 {
            let e = i as f32 / 100_000.0;
            let err = (super::ln_1p_unit(e) as f64 - (e as f64).ln_1p()).abs();
            worst = worst.max(err);
        }
        assert!(worst < 2e-7, "max abs error {worst}");
    }

    #[test]
    fn silu_and_softplus_match_f64_and_burn_values_and_gradients() {
        let device = Device::default().autodiff();
        let mut rng = StdRng::seed_from_u64(8);
        // Wide range, including large magnitudes where the naive formulas overflow.
        let mut xv: Vec<f32> = (0..3 * 5 * 41)
            .map(|_| rng.random_range(-12.0..12.0))
            .collect();
        xv[..6].copy_from_slice(&[-100.0, -30.0, 0.0, 1e-6, 30.0, 100.0]);
        for softplus in [false, true] {
            let (y, dx): (Vec<f32>, Vec<f32>) = xv
                .iter()
                .map(|&v| {
                    if softplus {
                        (super::softplus::<false>(v), super::sigmoid::<false>(v))
                    } else {
                        (super::silu::<false>(v), super::silu_grad::<false>(v))
                    }
                })
                .unzip();
            // Elementwise, against an f64 evaluation where burn's composition overflows.
            for i in 0..xv.len() {
                let v = xv[i] as f64;
                let s = 1.0 / (1.0 + (-v).exp());
                let (want, dwant) = if softplus {
                    (v.max(0.0) + (-v.abs()).exp().ln_1p(), s)
                } else {
                    (v * s, s * (1.0 + v * (1.0 - s)))
                };
                assert!(
                    (y[i] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "y({v})"
                );
                assert!(
                    (dx[i] as f64 - dwant).abs() <= 1e-5 * dwant.abs().max(1.0),
                    "dy({v})"
                );
            }
            // And burn's own ops (values, autodiff derivatives) away from the extremes.
            let x = Tensor::<1>::from_data(TensorData::new(xv.clone(), [xv.len()]), &device)
                .require_grad();
            let y_ref = if softplus {
                burn::tensor::activation::softplus(x.clone(), 1.0)
            } else {
                burn::tensor::activation::silu(x.clone())
            };
            let grads = y_ref.clone().sum().backward();
            let (y_ref, dx_ref) = (host(y_ref), host(x.grad(&grads).expect("dx")));
            assert!(rel_err(&y[6..], &y_ref[6..]) < 1e-5, "softplus {softplus}");
            assert!(
                rel_err(&dx[6..], &dx_ref[6..]) < 1e-5,
                "softplus {softplus}"
            );
        }
    }
}
