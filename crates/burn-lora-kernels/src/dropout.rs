//! Dropout with a mask drawn from a seed, in parallel, and applied in the same pass.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Mask values per generator: value `i` of a mask comes from the generator of block
/// `i / MASK_BLOCK`, seeded from the mask's seed and the block's index, so that the blocks are
/// drawn in parallel and the mask does not depend on the number of threads.
pub(crate) const MASK_BLOCK: usize = 1 << 14;

/// The dropout mask of `len` values for `seed`: each `1 / keep` with probability `keep`, `0`
/// otherwise. Each value compares 32 random bits with `keep · 2³²` (two values per 64-bit draw)
/// from a small fast generator (`rand`'s `SmallRng`) per block of [`MASK_BLOCK`] values.
pub fn dropout_mask(len: usize, keep: f64, seed: u64) -> Vec<f32> {
    let mut mask = vec![0.0f32; len];
    let fill = |(block, values): (usize, &mut [f32])| {
        let mut draws = MaskDraws::new(keep, seed, block);
        values.iter_mut().for_each(|v| *v = draws.next_value());
    };
    #[cfg(feature = "flex")]
    {
        use rayon::prelude::*;
        mask.par_chunks_mut(MASK_BLOCK).enumerate().for_each(fill);
    }
    #[cfg(not(feature = "flex"))]
    mask.chunks_mut(MASK_BLOCK).enumerate().for_each(fill);
    mask
}

/// The mask values of one block, in order.
pub(crate) struct MaskDraws {
    rng: SmallRng,
    threshold: u64,
    scale: f32,
    /// The upper half of the last 64-bit draw, not yet used.
    pending: Option<u64>,
}

impl MaskDraws {
    /// The draws of block `block` of the mask of `seed`.
    pub(crate) fn new(keep: f64, seed: u64, block: usize) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed.wrapping_add(block as u64)),
            threshold: (keep * 4_294_967_296.0) as u64,
            scale: (1.0 / keep) as f32,
            pending: None,
        }
    }

    /// The next mask value: `1 / keep` or `0`.
    #[inline]
    pub(crate) fn next_value(&mut self) -> f32 {
        let bits = match self.pending.take() {
            Some(bits) => bits,
            None => {
                let bits = self.rng.next_u64();
                self.pending = Some(bits >> 32);
                bits & 0xffff_ffff
            }
        };
        if bits < self.threshold {
            self.scale
        } else {
            0.0
        }
    }
}

/// `x ⊙ m`, `m` the [`dropout_mask`] of `keep` and `seed` (`keep` in `(0, 1]`).
///
/// On Flex and `Autodiff<Flex>` in `f32` the mask is drawn while it is applied, in parallel,
/// and never stored: the backward draws it again from the seed. Elsewhere the mask is built on
/// the host and multiplied (for backends whose tensors live in host memory; others should draw
/// their mask on the device). The result is the same on every path, bit for bit, inside
/// [`with_fast_paths`](crate::with_fast_paths) or not.
///
/// # Shapes
/// - x: any
/// - output: the input's shape
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, keep: f64, seed: u64) -> Tensor<B, D> {
    let op = run_fused!(
        B,
        Some(crate::flex::Dropout { keep, seed }),
        [x.into_primitive().tensor()]
    );
    match op {
        Ok(output) => Tensor::from_primitive(TensorPrimitive::Float(output)),
        Err([x]) => {
            let x = Tensor::<B, D>::from_primitive(TensorPrimitive::Float(x));
            let shape = x.shape();
            let mask = TensorData::new(dropout_mask(shape.num_elements(), keep, seed), shape);
            let mask = Tensor::from_data(mask, (&x.device(), x.dtype()));
            x * mask
        }
    }
}
