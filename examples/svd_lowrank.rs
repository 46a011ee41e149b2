//! Why LoRA works, in one 10x10 matrix: a weight of low rank is exactly two thin factors.
//!
//! The first part of the LoRA notebook: build a 10x10 matrix `W` of rank 2, find its rank from
//! its singular values, factor it by truncated SVD into `B = U_r S_r` `[10, 2]` and `A = V_rᵀ`
//! `[2, 10]`, and check that a linear layer computes the same output with `B A` in place of `W`
//! from 40% of the parameters.
//!
//! This follows the notebook's orientation, `y = W x + b` with `W: [d, k]`. (Burn's `Linear`
//! computes `y = x W + b` with `W: [d_in, d_out]`; there LoRA's `A` is the `[d_in, r]` factor
//! and `B` the `[r, d_out]` one: `truncated_svd`'s `left` and `right`, in that order.)
//!
//! ```text
//! cargo run --release --example svd_lowrank
//! ```

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use burn_lora::{numerical_rank, singular_values, truncated_svd, LoraError};
use burn_lora_support::backend::Inference;

fn main() -> Result<(), LoraError> {
    let device = burn_lora_support::backend::device();
    Inference::seed(&device, 0);
    let normal = Distribution::Normal(0.0, 1.0);

    // A rank-deficient matrix: 10x10, but the product of [10, 2] and [2, 10], so rank 2.
    let (d, k, w_rank) = (10, 10, 2);
    let w = Tensor::<Inference, 2>::random([d, w_rank], normal, &device).matmul(Tensor::random(
        [w_rank, k],
        normal,
        &device,
    ));
    print_matrix("W", &w);

    // Its rank, read off the singular values: only two are far above rounding noise.
    let sigma = singular_values(w.clone())?;
    let formatted: Vec<String> = sigma.iter().map(|s| format!("{s:.3e}")).collect();
    println!("Singular values of W: [{}]", formatted.join(", "));
    let rank = numerical_rank(w.clone(), None)?;
    println!("Rank of matrix W: {rank}\n");

    // Keep the first r singular values: B = U_r S_r and A = V_rᵀ, so that W = B A.
    let factors = truncated_svd(w.clone(), rank)?;
    let (b, a) = (factors.left.clone(), factors.right.clone());
    print_matrix("B = U_r S_r", &b);
    print_matrix("A = V_rᵀ", &a);
    let error = max_abs(w.clone() - b.clone().matmul(a.clone()));
    println!("Reconstruction: max |W - B A| = {error:.2e}");
    println!(
        "Best rank-r error (Eckart–Young): √(σ_{}² + … + σ_{}²) = {:.2e}, f32 rounding noise\n",
        rank + 1,
        sigma.len(),
        factors.truncation_error()
    );

    // A linear layer with W, and the same layer with B A in its place.
    let bias = Tensor::<Inference, 1>::random([d], normal, &device);
    let x = Tensor::<Inference, 1>::random([k], normal, &device);
    let y = matvec(w.clone(), x.clone()) + bias.clone();
    let y_prime = matvec(b.clone().matmul(a.clone()), x) + bias;
    println!("{:>14}  {:>14}", "y = W x + b", "y' = B A x + b");
    for (yi, ypi) in values(y.clone()).iter().zip(values(y_prime.clone())) {
        println!("{yi:>14.4}  {ypi:>14.4}");
    }
    println!("max |y - y'| = {:.2e}\n", max_abs(y - y_prime));

    let w_params = w.shape().num_elements();
    let ba_params = b.shape().num_elements() + a.shape().num_elements();
    println!("Total number of parameters in W: {w_params}");
    println!("Total number of parameters in B and A: {ba_params}");
    println!(
        "With {:.1}% of the parameters, we can represent the same linear transformation.",
        ba_params as f64 / w_params as f64 * 100.0
    );
    Ok(())
}

/// `W x` for a matrix `[d, k]` and a vector `[k]`.
fn matvec(w: Tensor<Inference, 2>, x: Tensor<Inference, 1>) -> Tensor<Inference, 1> {
    let [k] = x.dims();
    w.matmul(x.reshape([k, 1])).flatten(0, 1)
}

/// The largest absolute value of a tensor.
fn max_abs<const D: usize>(tensor: Tensor<Inference, D>) -> f32 {
    tensor.abs().max().into_scalar()
}

fn values<const D: usize>(tensor: Tensor<Inference, D>) -> Vec<f32> {
    tensor.into_data().iter::<f32>().collect()
}

/// Prints a matrix with its shape, one row per line.
fn print_matrix(name: &str, matrix: &Tensor<Inference, 2>) {
    let [_, cols] = matrix.dims();
    println!("{name}: {:?}", matrix.dims());
    for row in values(matrix.clone()).chunks(cols) {
        let row: Vec<String> = row.iter().map(|v| format!("{v:8.4}")).collect();
        println!("  [{}]", row.join(", "));
    }
    println!();
}
