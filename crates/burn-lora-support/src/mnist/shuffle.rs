//! Seeded shuffling: SplitMix64 and Fisher–Yates, so epochs are reproducible without `rand`.

use super::idx::invalid;
use crate::error::Result;

/// SplitMix64 (Steele, Lea and Flood 2014): a tiny, well-mixed 64-bit generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..bound` (`bound` > 0), without modulo bias (Lemire's method).
    fn below(&mut self, bound: u64) -> u64 {
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(bound);
            if product as u64 >= threshold {
                return (product >> 64) as u64;
            }
        }
    }
}

/// The numbers `0..len` in an order shuffled by `seed` (Fisher–Yates); the same seed gives the
/// same order.
pub fn permutation(len: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = SplitMix64(seed);
    for i in (1..len).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// [`permutation`]`(len, seed)` cut into batches of `batch_size`, the last one shorter if
/// `len` is not a multiple; every index appears exactly once.
///
/// Errors with [`DataError::InvalidData`](crate::DataError::InvalidData) (path `batch_size`)
/// when `batch_size` is 0.
pub fn shuffled_batches(len: usize, batch_size: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
    if batch_size == 0 {
        return Err(invalid("batch_size", "must be at least 1, got 0".into()));
    }
    Ok(permutation(len, seed)
        .chunks(batch_size)
        .map(<[usize]>::to_vec)
        .collect())
}
