//! The fast paths against Burn's own operations on Flex (and, with the `ndarray` feature, the
//! fused operations' tests again on NdArray).

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use proptest::prelude::*;

use crate::flex::few_rows_matmul;
use crate::host::is_flex;
use crate::{linear, matmul, with_fast_paths};

type B = Flex;
type A = Autodiff<Flex>;

/// The smallest adapter rank the fused tests try (Flex multiplies empty matrices).
const MIN_RANK: usize = 0;

/// The float types other than `f32` that the fused tests try on `B` (Flex has all of them).
const OTHER_FLOATS: &[(burn::tensor::FloatDType, f32)] = &[
    (burn::tensor::FloatDType::F16, 2e-3),
    (burn::tensor::FloatDType::BF16, 1e-2),
];

/// Values in `[-1, 1)` from `seed` (a SplitMix64 sequence): the same tensor for the same seed,
/// whatever the tests running beside reseed in the backend's shared generator.
fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
    random_on(shape, seed)
}

/// [`random`] on any backend.
fn random_on<Bk: Backend, const D: usize>(shape: [usize; D], seed: u64) -> Tensor<Bk, D> {
    let mut state = seed;
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn values<Bk: Backend, const D: usize>(tensor: Tensor<Bk, D>) -> Vec<f32> {
    tensor.into_data().to_vec().unwrap()
}

/// The sums differ from `gemm`'s by rounding order only: values in [-1, 1], at most 200 terms,
/// so every difference is far below 1e-4, and a wrong index far above it.
fn assert_close(actual: Vec<f32>, expected: Vec<f32>) -> Result<(), TestCaseError> {
    prop_assert_eq!(actual.len(), expected.len());
    for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
        prop_assert!(
            (a - e).abs() <= 1e-4,
            "value {}: {} against Burn's {}",
            i,
            a,
            e
        );
    }
    Ok(())
}

/// Runs `body` with the fast paths on a pool of `threads` threads, as Flex's own kernels would.
fn on_threads<T: Send>(threads: usize, body: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(|| with_fast_paths::<B, _>(body))
}

#[test]
fn flex_is_recognised_and_its_decorators_are_not() {
    assert!(is_flex::<Flex>());
    assert!(!is_flex::<Autodiff<Flex>>());
}

#[test]
fn the_kernels_take_few_rows_of_f32_in_either_orientation_and_nothing_else() {
    let w = random([64, 100], 1);
    assert!(few_rows_matmul(&random([1, 64], 2), &w).is_some());
    assert!(few_rows_matmul(&random([16, 64], 2), &w).is_some());
    let tied = random([600, 64], 3).transpose();
    assert!(few_rows_matmul(&random([1, 64], 2), &tied).is_some());
    assert!(few_rows_matmul(&random([16, 64], 2), &tied).is_some());
    // Too many rows, a permuted input, another float type, autodiff: Burn's product.
    assert!(few_rows_matmul(&random([17, 64], 2), &w).is_none());
    assert!(few_rows_matmul(&random([64, 2], 2).transpose(), &w).is_none());
    let half = burn::tensor::FloatDType::F16;
    assert!(few_rows_matmul(&random([1, 64], 2).cast(half), &w.clone().cast(half)).is_none());
    let device = Default::default();
    let x = Tensor::<Autodiff<Flex>, 2>::ones([1, 64], &device);
    let wa = Tensor::<Autodiff<Flex>, 2>::ones([64, 100], &device);
    assert!(few_rows_matmul(&x, &wa).is_none());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Row-major weights (a `Linear`'s), transposed views (tied embeddings) and column slices
    /// of either, every size around the kernel's blocks, any thread count.
    #[test]
    fn matmul_matches_burns(
        m in 1usize..20,
        k in 1usize..200,
        n in 1usize..700,
        pad in 0usize..20,
        threads in 1usize..5,
        transposed in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let x = random([m, k], seed);
        let offset = pad / 2;
        let w = if transposed {
            random([n + pad, k], seed + 1).narrow(0, offset, n).transpose()
        } else {
            random([k, n + pad], seed + 1).narrow(1, offset, n)
        };
        let expected = values(x.clone().matmul(w.clone()));
        let actual = values(on_threads(threads, || matmul(x, w)));
        assert_close(actual, expected)?;
    }

    /// `linear` on inputs of rank 3 with few rows or many, with and without a bias.
    #[test]
    fn linear_matches_burns(
        rows in 1usize..24,
        k in 1usize..64,
        n in 1usize..300,
        bias in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let x = random([rows, 1, k], seed);
        let w = random([k, n], seed + 1);
        let b = bias.then(|| random([n], seed + 2));
        let expected = values(burn::tensor::module::linear(x.clone(), w.clone(), b.clone()));
        let actual = values(on_threads(2, || linear(x, w, b)));
        assert_close(actual, expected)?;
    }
}

#[test]
fn a_row_of_rank_one_keeps_its_rank() {
    let x = Tensor::<B, 1>::from_data(TensorData::from([1.0f32, 2.0]), &Default::default());
    let w = random([2, 600], 5);
    let out = on_threads(2, || linear(x.clone(), w.clone(), None));
    assert_eq!(out.dims(), [600]);
    let expected = values(burn::tensor::module::linear(x, w, None));
    assert_close(values(out), expected).unwrap();
}

#[test]
fn non_finite_values_propagate_as_in_burns_product() {
    let x = Tensor::<B, 2>::from_data(
        TensorData::from([[f32::INFINITY, 1.0, f32::NAN, 0.0]]),
        &Default::default(),
    );
    let w = random([4, 40], 6);
    let expected = values(x.clone().matmul(w.clone()));
    let actual = values(with_fast_paths::<B, _>(|| matmul(x, w)));
    for (a, e) in actual.iter().zip(&expected) {
        assert!(a.is_nan() && e.is_nan() || a == e, "{a} against {e}");
    }
}

#[test]
fn outside_the_scope_everything_is_burns_operation_bit_for_bit() {
    let (x, w, b) = (random([3, 40], 7), random([40, 300], 8), random([300], 9));
    assert_eq!(
        values(linear(x.clone(), w.clone(), Some(b.clone()))),
        values(burn::tensor::module::linear(x.clone(), w.clone(), Some(b)))
    );
    assert_eq!(values(matmul(x.clone(), w.clone())), values(x.matmul(w)));
}

#[test]
fn the_scope_ends_with_its_body_even_when_it_panics() {
    assert!(!crate::scope::fast_paths_enabled());
    let inside = with_fast_paths::<B, _>(crate::scope::fast_paths_enabled);
    assert!(inside);
    let panicked = std::panic::catch_unwind(|| {
        with_fast_paths::<Autodiff<B>, _>(|| panic!("inside the scope"))
    });
    assert!(panicked.is_err());
    assert!(!crate::scope::fast_paths_enabled());
}

#[test]
fn on_compute_threads_runs_the_body_on_the_pool_and_returns_its_value() {
    assert_eq!(rayon::current_thread_index(), None);
    let index = crate::on_compute_threads(rayon::current_thread_index);
    assert!(index.is_some());
    // Already on the pool: the body runs right there.
    let nested = crate::on_compute_threads(|| {
        let outer = rayon::current_thread_index();
        (
            outer,
            crate::on_compute_threads(rayon::current_thread_index),
        )
    });
    assert_eq!(nested.0, nested.1);
}

mod slice_assign {
    use super::*;
    use crate::slice_assign;

    fn burns<const D: usize>(
        tensor: Tensor<B, D>,
        ranges: [core::ops::Range<usize>; D],
        values: Tensor<B, D>,
    ) -> Vec<f32> {
        super::values(tensor.slice_assign(ranges, values))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every region of a 4-D tensor, the source contiguous or permuted: Burn's values.
        #[test]
        fn matches_burns(
            dims in proptest::array::uniform4(1usize..6),
            starts in proptest::array::uniform4(0usize..6),
            lens in proptest::array::uniform4(1usize..6),
            permuted in any::<bool>(),
            seed in 0u64..1000,
        ) {
            let ranges: [core::ops::Range<usize>; 4] = core::array::from_fn(|i| {
                let start = starts[i] % dims[i];
                start..(start + lens[i]).min(dims[i])
            });
            let shape = ranges.clone().map(|r| r.len());
            let values = if permuted {
                random([shape[0], shape[1], shape[3], shape[2]], seed).swap_dims(2, 3)
            } else {
                random(shape, seed)
            };
            let tensor = random(dims, seed + 1);
            let expected = burns(tensor.clone(), ranges.clone(), values.clone());
            // `tensor` is held here too: the shared buffer takes Burn's path, unchanged.
            let shared = super::values(slice_assign(tensor.clone(), ranges.clone(), values.clone()));
            prop_assert_eq!(&shared, &expected);
            let unique = random(dims, seed + 1);
            prop_assert_eq!(super::values(slice_assign(unique, ranges, values)), expected);
        }
    }

    #[test]
    fn a_shared_destination_is_left_unchanged() {
        let tensor = Tensor::<B, 2>::zeros([2, 3], &Default::default());
        let holder = tensor.clone();
        let written = slice_assign(
            tensor,
            [0..1, 1..3],
            Tensor::ones([1, 2], &Default::default()),
        );
        assert_eq!(super::values(holder), vec![0.0; 6]);
        assert_eq!(super::values(written), vec![0.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn a_unique_destination_is_written_where_it_lies() {
        let device = Default::default();
        let tensor = Tensor::<B, 3>::zeros([2, 4, 3], &device);
        let before = tensor.clone().into_primitive().tensor().bytes().as_ptr();
        let written = slice_assign(tensor, [1..2, 2..4, 0..3], Tensor::ones([1, 2, 3], &device));
        let after = written.clone().into_primitive().tensor().bytes().as_ptr();
        assert_eq!(before, after, "the buffer was copied");
        let values = super::values(written);
        assert_eq!(values.iter().sum::<f32>(), 6.0);
        assert_eq!(&values[18..24], &[1.0; 6]);
    }
}

mod fused;
#[cfg(feature = "ndarray")]
mod ndarray;
