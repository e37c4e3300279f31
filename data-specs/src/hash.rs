//! The stable hashes of the toolkit: FNV-1a 64 and SplitMix64.
//!
//! Partitions, seeds and location folds must not change between runs, platforms or Rust
//! versions, so they use these two fixed algorithms instead of `std`'s `Hash` (randomly keyed)
//! or `rand`'s generators (whose algorithms may change between releases). Every crate of the
//! toolkit takes them from here.
//!
//! - FNV-1a 64 (Fowler, Noll, Vo): offset basis `0xcbf29ce484222325`, prime `0x100000001b3`;
//!   `h = (h ^ byte) * prime` per byte.
//! - SplitMix64 (Steele, Lea & Flood 2014, the generator of Java's `SplittableRandom`): the
//!   state advances by the golden gamma `0x9E3779B97F4A7C15`, each output is the state through
//!   the finaliser [`splitmix64_mix`] (Stafford's "Mix13").

/// FNV-1a 64 offset basis.
pub const FNV1A64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
pub const FNV1A64_PRIME: u64 = 0x0000_0100_0000_01b3;
/// The SplitMix64 state increment (`2^64 / phi`, odd).
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV1A64_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV1A64_PRIME)
    })
}

/// The SplitMix64 finaliser: a bijective 64-bit mix,
/// `z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^ (z >> 31)`.
pub fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One SplitMix64 step: advances `state` by [`GOLDEN_GAMMA`] and returns the mixed state.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN_GAMMA);
    splitmix64_mix(*state)
}

/// The first output of SplitMix64 seeded with `seed`: a stable 64-bit hash of a `u64`.
pub fn splitmix64_hash(seed: u64) -> u64 {
    let mut state = seed;
    splitmix64(&mut state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // FNV-1a 64 reference values (Fowler-Noll-Vo test suite).
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn splitmix64_matches_the_reference_implementation() {
        // The first output of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        assert_eq!(splitmix64_hash(0), 0xE220_A839_7B1D_CDAF);
        // Seeded with 1234567: the published C code's first outputs.
        let mut s = 1_234_567u64;
        assert_eq!(splitmix64(&mut s), 6_457_827_717_110_365_317);
        assert_eq!(splitmix64(&mut s), 3_203_168_211_198_807_973);
    }
}
