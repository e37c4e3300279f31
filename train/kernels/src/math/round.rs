//! Rounding to the nearest integer, ties to even, by the `1.5 * 2^23` trick.

/// `1.5 * 2^23`: adding it rounds an `|x| < 2^22` to an integer held in the low mantissa bits.
const MAGIC: f32 = 12_582_912.0;

/// Rounds to the nearest integer, ties to even, for `|x| < 2^22` (the rounding of PyTorch's
/// `nearbyint`). Larger magnitudes must be clamped by the caller.
#[inline(always)]
pub fn round_even(x: f32) -> f32 {
    (x + MAGIC) - MAGIC
}

/// [`round_even`] as an integer, read from the mantissa bits (no float-to-int conversion,
/// which would be a saturating scalar instruction and stop vectorisation).
#[inline(always)]
pub fn round_even_i32(x: f32) -> i32 {
    (x + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

#[cfg(test)]
mod tests {
    #[test]
    fn rounds_half_to_even() {
        for (x, want) in [
            (0.5, 0.0),
            (1.5, 2.0),
            (2.5, 2.0),
            (-0.5, -0.0),
            (-1.5, -2.0),
        ] {
            assert_eq!(super::round_even(x), want, "{x}");
            assert_eq!(super::round_even_i32(x), want as i32, "{x}");
        }
        for i in -3000..3000 {
            let x = i as f32 * 0.37;
            assert_eq!(super::round_even_i32(x) as f32, x.round_ties_even(), "{x}");
        }
    }
}
