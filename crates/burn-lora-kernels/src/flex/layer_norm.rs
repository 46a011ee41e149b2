//! LayerNorm in one pass over each row, and its backward in one more.

use burn::backend::flex::FlexTensor;
use burn::tensor::{TensorData, TensorMetadata};
use rayon::prelude::*;

use super::fused::{build, contiguous, values, FusedOp};
use super::reduce::{sum, sum_of_products_about, sum_of_squares_about};

/// Values per parallel chunk, in whole rows.
const CHUNK: usize = 1 << 14;

/// `(x − mean) / √(var + ε) · γ + β` over the last dimension (see [`crate::layer_norm`]); the
/// inputs are `[x, γ, β]`.
#[derive(Debug)]
pub(crate) struct LayerNorm {
    pub(crate) epsilon: f32,
}

impl LayerNorm {
    /// Rows of `width` per chunk.
    fn chunk(width: usize) -> usize {
        (CHUNK / width).max(1) * width
    }

    /// A row's mean and `1 / √(var + ε)`.
    fn moments(&self, row: &[f32]) -> (f32, f32) {
        let width = row.len() as f32;
        let mean = sum(row) / width;
        let variance = sum_of_squares_about(row, mean) / width;
        (mean, 1.0 / (variance + self.epsilon).sqrt())
    }
}

impl FusedOp<3> for LayerNorm {
    /// `x` and `γ`, contiguous; the backward computes each row's moments again, from the row
    /// it reads anyway.
    type State = [FlexTensor; 2];

    const DIFFERENTIABLE: [bool; 3] = [true, true, true];

    fn forward(&self, [x, gamma, beta]: [FlexTensor; 3]) -> (FlexTensor, Self::State) {
        let (x, gamma, beta) = (contiguous(&x), contiguous(&gamma), contiguous(&beta));
        let (xs, g, b) = (values(&x), values(&gamma), values(&beta));
        let width = g.len();
        let output = build(x.shape().as_slice(), Self::chunk(width), |start, rows| {
            for (r, out) in rows.chunks_exact_mut(width).enumerate() {
                let row = &xs[start + r * width..][..width];
                let (mean, inverse_std) = self.moments(row);
                normalise(row, g, b, mean, inverse_std, out);
            }
        });
        (output, [x, gamma])
    }

    /// With `x̂ = (x − mean) / σ` and `g = dy ⊙ γ`:
    /// `∂x = (g − mean(g) − x̂ · mean(g ⊙ x̂)) / σ` per row, `∂γ = Σ_rows dy ⊙ x̂`,
    /// `∂β = Σ_rows dy`.
    fn backward(
        &self,
        [x, gamma]: Self::State,
        grad: FlexTensor,
        [need_x, need_gamma, need_beta]: [bool; 3],
    ) -> [Option<FlexTensor>; 3] {
        let grad = contiguous(&grad);
        let (xs, g, dy) = (values(&x), values(&gamma), values(&grad));
        let width = g.len();
        let chunk = Self::chunk(width);
        let x_grad = need_x.then(|| {
            build(x.shape().as_slice(), chunk, |start, rows| {
                for (r, out) in rows.chunks_exact_mut(width).enumerate() {
                    let at = start + r * width..start + (r + 1) * width;
                    let row = &xs[at.clone()];
                    let (mean, inverse_std) = self.moments(row);
                    row_backward(row, g, &dy[at], mean, inverse_std, out);
                }
            })
        });
        if !(need_gamma || need_beta) {
            return [x_grad, None, None];
        }
        // Per chunk of rows: Σ dy ⊙ x̂ and Σ dy, `[2 · width]`, then summed over the chunks.
        let sums = xs
            .par_chunks(chunk)
            .zip(dy.par_chunks(chunk))
            .map(|(rows, dys)| {
                let mut sums = vec![0.0f32; 2 * width];
                let (gamma_sum, beta_sum) = sums.split_at_mut(width);
                for (row, dy) in rows.chunks_exact(width).zip(dys.chunks_exact(width)) {
                    let (mean, inverse_std) = self.moments(row);
                    accumulate(row, dy, mean, inverse_std, gamma_sum, beta_sum);
                }
                sums
            })
            .reduce(
                || vec![0.0f32; 2 * width],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        let (gamma_sum, beta_sum) = sums.split_at(width);
        let tensor =
            |values: &[f32]| FlexTensor::from_data(TensorData::new(values.to_vec(), [width]));
        [
            x_grad,
            need_gamma.then(|| tensor(gamma_sum)),
            need_beta.then(|| tensor(beta_sum)),
        ]
    }
}

// Compiled once per instruction set and chosen at run time; `S` is used through the target
// features `with_simd` enables, not by name.

/// `out = (row − mean) · inverse_std · γ + β`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn normalise<S: macerator::Simd>(
    row: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: f32,
    inverse_std: f32,
    out: &mut [f32],
) {
    for (((out, &x), &g), &b) in out.iter_mut().zip(row).zip(gamma).zip(beta) {
        *out = (x - mean) * inverse_std * g + b;
    }
}

/// `out = (g − mean(g) − x̂ · mean(g ⊙ x̂)) · inverse_std` with `g = dy ⊙ γ`,
/// `x̂ = (row − mean) · inverse_std`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn row_backward<S: macerator::Simd>(
    row: &[f32],
    gamma: &[f32],
    dy: &[f32],
    mean: f32,
    inverse_std: f32,
    out: &mut [f32],
) {
    let width = row.len() as f32;
    // `out` holds g meanwhile; Σ g ⊙ x̂ = inverse_std · Σ g ⊙ (x − mean), summed about the mean
    // (Σ g ⊙ x − mean · Σ g would cancel for rows far from zero).
    for ((out, &dy), &g) in out.iter_mut().zip(dy).zip(gamma) {
        *out = dy * g;
    }
    let g_mean = sum(out) / width;
    let gx_mean = sum_of_products_about(out, row, mean) * inverse_std / width;
    for (out, &x) in out.iter_mut().zip(row) {
        let normalised = (x - mean) * inverse_std;
        *out = (*out - g_mean - normalised * gx_mean) * inverse_std;
    }
}

/// `gamma_sum += dy ⊙ x̂`, `beta_sum += dy`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn accumulate<S: macerator::Simd>(
    row: &[f32],
    dy: &[f32],
    mean: f32,
    inverse_std: f32,
    gamma_sum: &mut [f32],
    beta_sum: &mut [f32],
) {
    for (((gamma_sum, beta_sum), &x), &dy) in gamma_sum
        .iter_mut()
        .zip(beta_sum.iter_mut())
        .zip(row)
        .zip(dy)
    {
        *gamma_sum += dy * (x - mean) * inverse_std;
        *beta_sum += dy;
    }
}
