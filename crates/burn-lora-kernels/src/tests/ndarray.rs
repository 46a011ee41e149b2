//! The fused operations' tests (`fused.rs`) again on NdArray and `Autodiff<NdArray>`: the
//! same kernels, the tensors' buffers moved into Flex's and back.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::Tensor;

use super::{assert_close, random_on, values};

type B = NdArray;
type A = Autodiff<NdArray>;

/// NdArray 0.21's product of an empty matrix divides by zero (`ops/matmul.rs`), in Burn's
/// reference path; the fused path multiplies rank 0 on Flex's tests.
const MIN_RANK: usize = 1;

/// NdArray has no half-precision floats.
const OTHER_FLOATS: &[(burn::tensor::FloatDType, f32)] = &[];

fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
    random_on(shape, seed)
}

// The one test file, compiled again against this module's `B` and `A`: what clippy's
// `duplicate_mod` warns of is what is meant here.
#[allow(clippy::duplicate_mod)]
#[path = "fused.rs"]
mod fused;
