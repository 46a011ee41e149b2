//! Helpers for tests: a seeded host-side RNG, exact and approximate tensor comparisons, and the
//! tolerance the selected backend's matmuls need.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// A seeded standard-normal tensor on the default device.
///
/// The values are drawn on the host (SplitMix64 and Box-Muller), so the same seed gives the same
/// tensor on every backend and at every call. Backends' own generators differ, and on CUDA
/// two tensors drawn after the same `seed` came out different.
pub fn randn<B: Backend, const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
    let count = shape.iter().product();
    Tensor::from_data(
        TensorData::new(randn_values(count, seed), shape),
        &Default::default(),
    )
}

/// `count` seeded standard-normal values (see [`randn`]).
pub fn randn_values(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut uniform = move || {
        // SplitMix64; the top 24 bits as a float in (0, 1].
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f64 + 1.0) / (1u64 << 24) as f64
    };
    (0..count)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

/// Absolute tolerance for results of f32 matmuls whose CPU error bound is `cpu`. On an H200 the
/// CUDA backend's LoRA-against-dense-reference comparisons differed by up to 0.04 on outputs of
/// magnitude 10-50, about TF32 precision (10-bit mantissa).
pub fn matmul_tol(cpu: f32) -> f32 {
    if cfg!(feature = "cuda") {
        cpu.max(0.1)
    } else {
        cpu
    }
}

/// The raw f32 values of a tensor.
pub fn values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor.into_data().to_vec::<f32>().expect("f32 tensor")
}

/// Asserts two tensors hold exactly the same bits.
pub fn assert_bit_identical<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) {
    let (a, b): (TensorData, TensorData) = (a.into_data(), b.into_data());
    assert_eq!(a.shape, b.shape, "shapes differ");
    let a = a.to_vec::<f32>().expect("f32");
    let b = b.to_vec::<f32>().expect("f32");
    let differing = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(differing, 0, "{differing} of {} values differ", a.len());
}

/// [`assert_bit_identical`] on the CPU backends; on a GPU backend (the `wgpu` or `cuda`
/// feature), equal within 16 units of f32 rounding (`2⁻¹⁹`) of the largest magnitude of `b`.
///
/// For two results of the same arithmetic whose sums (a DoRA column norm, a matrix product's
/// dot products) may run in different kernels: on the CPU both run the same loops and agree bit
/// for bit; a GPU backend compiles a reduction into a different kernel depending on what
/// surrounds it (fusion: a norm of `W + s·A B` fused on read, a norm of `W` alone; a `[rows, d]`
/// product against a broadcast batched one) or on what its autotuning measured, and a sum in
/// another order rounds differently in its last bits.
pub fn assert_same_up_to_reduction_order<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
) {
    if !cfg!(any(feature = "wgpu", feature = "cuda")) {
        return assert_bit_identical(a, b);
    }
    let (a, b) = (values(a), values(b));
    let largest = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff_values(&a, &b);
    let bound = largest * f32::EPSILON * 16.0;
    assert!(diff <= bound, "off by {diff}, more than {bound}");
}

/// Largest absolute difference between two tensors.
pub fn max_abs_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    max_abs_diff_values(&values(a), &values(b))
}

/// Largest absolute difference between two lists of values (which must be as long).
pub fn max_abs_diff_values(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "the two lists differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
