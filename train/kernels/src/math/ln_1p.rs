//! `ln(1 + e)` on the unit interval, softplus' logarithm (`e = exp(-|x|)`).

use super::madd;

/// Coefficients of the degree-8 polynomial `q(e) ~ ln(1 + e) / e` on `[0, 1]` (`c0 + c1 e +
/// ...`), fitted for the least maximal relative error (Lawson-weighted least squares on
/// Chebyshev nodes; the ratio is analytic on the interval, its nearest singularity at -1).
pub const LN_1P_POLY: [f32; 9] = [
    0.999_999_94,
    -0.499_994_93,
    0.333_191_04,
    -0.248_430_31,
    0.191_061_97,
    -0.136_636_5,
    0.078_230_69,
    -0.029_508_136,
    0.005_233_414_5,
];

/// `ln(1 + e)` for `e` in `[0, 1]` as `e q(e)` ([`LN_1P_POLY`]): relative error below 2e-7 in
/// f32 down to the smallest `e` (where `ln(1 + e) ~ e`), nine multiply-adds and no division,
/// exponent split or branch.
#[inline(always)]
pub fn ln_1p_unit<const FMA: bool>(e: f32) -> f32 {
    let mut p = LN_1P_POLY[8];
    for &c in LN_1P_POLY[..8].iter().rev() {
        p = madd::<FMA>(p, e, c);
    }
    e * p
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_f64_ln_1p_on_the_unit_interval() {
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
}
