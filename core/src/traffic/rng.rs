//! The seeded generator behind the traffic: xoshiro256++ (`rand_xoshiro`), seeded through
//! SplitMix64.
//!
//! A fixed algorithm rather than `rand`'s `StdRng` so that a seed names the same traffic on every
//! build and platform whatever crate versions the lock file holds (`rand` documents `StdRng` and
//! its distributions as not reproducible across versions); the few draws the traffic needs
//! (uniform, exponential, an integer range) are written below on top of it.

use rand_xoshiro::Xoshiro256PlusPlus;
use rand_xoshiro::rand_core::{RngCore, SeedableRng};

/// One independent stream per `(seed, stream)`.
#[derive(Clone, Debug)]
pub(crate) struct Rng(Xoshiro256PlusPlus);

impl Rng {
    /// The generator for `stream` of `seed`; different streams are unrelated sequences.
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        Self(Xoshiro256PlusPlus::seed_from_u64(
            seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03),
        ))
    }

    #[cfg(test)]
    fn from_state(s: [u64; 4]) -> Self {
        let mut bytes = [0u8; 32];
        for (c, v) in bytes.chunks_exact_mut(8).zip(s) {
            c.copy_from_slice(&v.to_le_bytes());
        }
        Self(Xoshiro256PlusPlus::from_seed(bytes))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)`, 53 bits.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Exponential with mean 1: `-ln(1 - U)`, finite and non-negative.
    pub(crate) fn exp1(&mut self) -> f64 {
        -(1.0 - self.unit()).ln()
    }

    /// Uniform in `[min, max]` (`min ≤ max`), unbiased (Lemire's multiply and reject).
    pub(crate) fn range_inclusive(&mut self, min: u32, max: u32) -> u32 {
        debug_assert!(min <= max);
        let span = u64::from(max - min) + 1; // at most 2^32
        let mut m = u128::from(self.next_u64()) * u128::from(span);
        if (m as u64) < span {
            let threshold = span.wrapping_neg() % span;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(span);
            }
        }
        // `m >> 64` < span ≤ 2^32, so it fits and `min + it` ≤ max.
        min + (m >> 64) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro256plusplus_reference_outputs() {
        // The reference implementation's first outputs from the state {1, 2, 3, 4}.
        let mut r = Rng::from_state([1, 2, 3, 4]);
        let want = [
            41943041,
            58720359,
            3588806011781223,
            3591011842654386,
            9228616714210784205,
            9973669472204895162,
            14011001112246962877,
            12406186145184390807,
            15849039046786891736,
            10450023813501588000,
        ];
        for w in want {
            assert_eq!(r.next_u64(), w);
        }
    }

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7, 0).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut x = Rng::new(7, 0);
        let mut y = Rng::new(7, 1);
        let mut z = Rng::new(8, 0);
        let (x, y, z) = (x.next_u64(), y.next_u64(), z.next_u64());
        assert!(x != y && x != z && y != z);
    }

    #[test]
    fn ranges_cover_their_ends_and_stay_inside() {
        let mut r = Rng::new(1, 0);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let v = r.range_inclusive(3, 7);
            assert!((3..=7).contains(&v));
            seen[(v - 3) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(r.range_inclusive(9, 9), 9);
        let v = r.range_inclusive(0, u32::MAX);
        let _ = v; // the whole range: no overflow
        for _ in 0..1000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            let e = r.exp1();
            assert!(e.is_finite() && e >= 0.0);
        }
    }
}
