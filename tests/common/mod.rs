//! Helpers shared by the integration tests.
#![allow(dead_code, unused_imports)]

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};

pub use burn_lora::backend::{Inference as B, Train as AB};

/// A seeded standard-normal tensor on the test device.
pub fn randn<Bk: Backend, const D: usize>(shape: [usize; D], seed: u64) -> Tensor<Bk, D> {
    let device = Default::default();
    Bk::seed(&device, seed);
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device)
}

/// The raw f32 values of a tensor.
pub fn values<Bk: Backend, const D: usize>(tensor: Tensor<Bk, D>) -> Vec<f32> {
    tensor.into_data().to_vec::<f32>().expect("f32 tensor")
}

/// Asserts two tensors hold exactly the same bits.
pub fn assert_bit_identical<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) {
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

/// Largest absolute difference between two tensors.
pub fn max_abs_diff<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) -> f32 {
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
