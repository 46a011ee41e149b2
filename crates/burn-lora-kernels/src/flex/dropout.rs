//! Dropout's mask drawn and applied in one parallel pass, forward and backward, never stored.

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorMetadata;

use super::fused::{build, contiguous, values, FusedOp};
use crate::dropout::{MaskDraws, MASK_BLOCK};

/// `x ⊙ m` for the mask of `keep` and `seed` (see [`crate::dropout`]).
#[derive(Debug)]
pub(crate) struct Dropout {
    pub(crate) keep: f64,
    pub(crate) seed: u64,
}

impl Dropout {
    /// `t ⊙ m`, the blocks of the mask in parallel.
    fn apply(&self, t: &FlexTensor) -> FlexTensor {
        let t = contiguous(t);
        let ts = values(&t);
        build(t.shape().as_slice(), MASK_BLOCK, |start, out| {
            let mut draws = MaskDraws::new(self.keep, self.seed, start / MASK_BLOCK);
            for (out, &v) in out.iter_mut().zip(&ts[start..]) {
                *out = v * draws.next_value();
            }
        })
    }
}

impl FusedOp<1> for Dropout {
    type State = ();

    const DIFFERENTIABLE: [bool; 1] = [true];

    fn forward(&self, [x]: [FlexTensor; 1]) -> (FlexTensor, Self::State) {
        (self.apply(&x), ())
    }

    /// `∂x = dy ⊙ m`, the mask drawn again.
    fn backward(&self, _: (), grad: FlexTensor, [need]: [bool; 1]) -> [Option<FlexTensor>; 1] {
        [need.then(|| self.apply(&grad))]
    }
}
