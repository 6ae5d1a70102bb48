//! Deterministic pseudo-random numbers for simulators, workloads and seeded tests: one
//! [`SplitMix64`], and the xoshiro256** generator [`Rng`] seeded through it. Same seed,
//! same sequence, on every platform. Not for keys or anything secret.
//!
//! Protocol code never draws randomness; the simulator and load generators do, and a
//! failing seed must replay exactly, so these streams are part of what a seed means:
//! changing them changes every recorded seed's run.

/// SplitMix64's increment: 2^64 divided by the golden ratio, odd. Also a good
/// constant to spread nearby seeds (`seed ^ index * GOLDEN_GAMMA`).
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijection of `u64` that mixes every input bit into
/// every output bit (used alone to scramble a value, e.g. a time-based id).
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64 (Steele, Lea and Flood): a 64-bit state advanced by [`GOLDEN_GAMMA`]
/// and mixed by [`mix64`]. Small and fast; seeds [`Rng`] and seeded tests.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose stream is fixed by `seed` (any value, 0 included).
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }
}

/// xoshiro256** (Blackman and Vigna), its state seeded by four [`SplitMix64`] outputs
/// so that nearby seeds give unrelated streams.
#[derive(Debug, Clone)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// A generator whose whole stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut seeder = SplitMix64::new(seed);
        let state = [seeder.next_u64(), seeder.next_u64(), seeder.next_u64(), seeder.next_u64()];
        // mix64 is a bijection and the four SplitMix64 states differ, so at most one
        // word is zero; xoshiro's all-zero state (a fixed point) cannot occur.
        assert!(state.iter().any(|&word| word != 0), "xoshiro needs a non-zero state");
        Self { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `low..=high` (by remainder: the bias is below 2^-64 * span).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "empty range");
        let span = high - low;
        if span == u64::MAX {
            return self.next_u64();
        }
        low + self.next_u64() % (span + 1)
    }

    /// A uniform integer in `0..bound` (multiply-shift). `bound` must be positive.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "an empty range has no element");
        // The bias is below 2^-64 * bound, invisible at our sizes.
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// A uniform float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.next_u64() % 1000 < per_mille
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_stream() {
        // First outputs for seed 1234567 from the reference C implementation
        // (Vigna, splitmix64.c).
        let mut rng = SplitMix64::new(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
        assert_eq!(rng.next_u64(), 9_817_491_932_198_370_423);
    }

    #[test]
    fn same_seed_gives_same_sequence_and_ranges_hold() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let mut c = Rng::new(43);
        let xs: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..16).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        for _ in 0..1000 {
            assert!((3..=7).contains(&a.range(3, 7)));
            assert!(a.below(5) < 5);
            assert!((0.0..1.0).contains(&a.next_f64()));
        }
        assert_eq!(a.range(9, 9), 9);
        assert_eq!(a.bytes(7).len(), 7);
        assert!(!a.chance(0));
        assert!(a.chance(1000));
    }

    #[test]
    fn mix64_is_the_splitmix64_output_function() {
        let mut rng = SplitMix64::new(7);
        assert_eq!(rng.next_u64(), mix64(7u64.wrapping_add(GOLDEN_GAMMA)));
        assert_eq!(mix64(0), 0, "zero is mix64's fixed point");
    }
}
