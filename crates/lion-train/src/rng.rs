//! The seeded random number generator (SplitMix64) of data splits, shuffles and negative draws:
//! `lion_rng`'s, the one every crate uses.

pub use lion_rng::SplitMix64;
