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

/// The few-rows products read NdArray's weights where they lie, row-major or transposed (tied
/// embeddings), and give Burn's product, a column slice of a wider weight included.
mod few_rows {
    use burn::tensor::Tensor;
    use proptest::prelude::*;

    use super::{assert_close, random, values, B};
    use crate::flex::few_rows_matmul;
    use crate::{linear, with_fast_paths};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn few_rows_match_burns_product(
            m in 1usize..17,
            k in 1usize..120,
            n in 1usize..400,
            transposed in any::<bool>(),
            seed in 0u64..1000,
        ) {
            let x = random([m, k], seed);
            let w: Tensor<B, 2> = if transposed {
                random([n, k], seed + 1).transpose()
            } else {
                random([k, n], seed + 1)
            };
            let expected = values(x.clone().matmul(w.clone()));
            let fast = few_rows_matmul(&x, &w);
            prop_assert!(fast.is_some(), "not taken for [{}, {}] · [{}, {}]", m, k, k, n);
            assert_close(values(fast.unwrap()), expected.clone())?;
            let through_linear = with_fast_paths::<B, _>(|| values(linear(x, w, None)));
            assert_close(through_linear, expected)?;
        }
    }

    #[test]
    fn a_column_slice_gives_burns_product() {
        let x = random([3, 20], 1);
        let wide = random([20, 30], 2);
        let w = wide.slice([0..20, 5..25]);
        let expected = values(x.clone().matmul(w.clone()));
        let actual = with_fast_paths::<B, _>(|| values(linear(x, w, None)));
        assert_close(actual, expected).unwrap();
    }
}
