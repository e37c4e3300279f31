//! SiLU, its derivative, sigmoid and softplus as branch-free scalar functions that vectorise
//! inside the fused kernels' loops (the Mamba mixer, [`crate::mixer::cpu`]):
//!
//! - SiLU `y = x sigma(x)`, `dy/dx = sigma(x) (1 + x (1 - sigma(x)))`;
//! - softplus `y = ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|)`, `dy/dx = sigma(x)`;
//!
//! with `sigma(x) = 1 / (1 + e^-x)` and `exp` the polynomial `crate::scan::cpu::exp_poly`
//! (`FMA`: fused multiply-adds, only inside `target_feature(fma)` code).

use crate::scan::cpu::exp_poly;

/// `ln(1 + e)` for `e` in `[0, 1]`: the int8 engine's polynomial
/// ([`crate::int8::kernels::ln_1p_unit_with`], relative error below 2e-7, no division).
#[inline(always)]
pub(crate) fn ln_1p_unit<const FMA: bool>(e: f32) -> f32 {
    use crate::int8::kernels::{Fused, Plain, ln_1p_unit_with};
    if FMA {
        ln_1p_unit_with::<Fused>(e)
    } else {
        ln_1p_unit_with::<Plain>(e)
    }
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
    x.max(0.0) + ln_1p_unit::<FMA>(exp_poly::<FMA>(-x.abs()))
}

#[cfg(test)]
mod tests {
    use crate::test_util::{host, rel_err};
    use burn::tensor::{Device, Tensor, TensorData};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn ln_1p_unit_matches_f64_ln_1p_on_the_unit_interval() {
        // Relative error, on a uniform grid and down to tiny arguments.
        let mut worst = 0f64;
        let tiny = (1..40).map(|k| 2f32.powi(-k));
        for e in (0..=100_000).map(|i| i as f32 / 100_000.0).chain(tiny) {
            let want = (e as f64).ln_1p();
            for got in [super::ln_1p_unit::<false>(e), super::ln_1p_unit::<true>(e)] {
                if e > 0.0 {
                    worst = worst.max((got as f64 / want - 1.0).abs());
                } else {
                    assert_eq!(got, 0.0);
                }
            }
        }
        assert!(worst < 2.5e-7, "max relative error {worst}");
    }

    #[test]
    fn silu_and_softplus_match_f64_and_burn_values_and_gradients() {
        let device = Device::flex().autodiff();
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
