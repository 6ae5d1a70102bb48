//! The simulator's only source of randomness: `dura_core`'s xoshiro256** seeded
//! through SplitMix64. Same seed, same sequence, on every platform: a failing seed
//! replays exactly.

pub use dura_core::rng::Rng;
