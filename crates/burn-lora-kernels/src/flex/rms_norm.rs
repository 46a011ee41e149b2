//! RMSNorm in one pass over each row, and its backward in one more.

use burn::backend::flex::FlexTensor;
use burn::tensor::{TensorData, TensorMetadata};
use rayon::prelude::*;

use super::fused::{build, contiguous, values, FusedOp};
use super::reduce::sum_of_products;

/// Values per parallel chunk, in whole rows.
const CHUNK: usize = 1 << 14;

/// `x / √(mean(x²) + ε) · γ` over the last dimension (see [`crate::rms_norm`]); the inputs are
/// `[x, γ]`.
#[derive(Debug)]
pub(crate) struct RmsNorm {
    pub(crate) epsilon: f32,
}

impl RmsNorm {
    /// Rows of `width` per chunk.
    fn chunk(width: usize) -> usize {
        (CHUNK / width).max(1) * width
    }
}

impl FusedOp<2> for RmsNorm {
    /// `x` and `γ`, contiguous; the backward computes each row's `1 / rms` again, from the
    /// row it reads anyway.
    type State = [FlexTensor; 2];

    const DIFFERENTIABLE: [bool; 2] = [true, true];

    fn forward(&self, [x, gamma]: [FlexTensor; 2]) -> (FlexTensor, Self::State) {
        let (x, gamma) = (contiguous(&x), contiguous(&gamma));
        let (xs, g) = (values(&x), values(&gamma));
        let width = g.len();
        let output = build(x.shape().as_slice(), Self::chunk(width), |start, rows| {
            for (r, out) in rows.chunks_exact_mut(width).enumerate() {
                let row = &xs[start + r * width..][..width];
                normalise(row, g, inverse_rms(row, self.epsilon), out);
            }
        });
        (output, [x, gamma])
    }

    /// With `x̂ = x / rms` and `g = dy ⊙ γ`: `∂x = (g − x̂ · mean(g ⊙ x̂)) / rms` per row, and
    /// `∂γ = Σ_rows dy ⊙ x̂`.
    fn backward(
        &self,
        [x, gamma]: Self::State,
        grad: FlexTensor,
        [need_x, need_gamma]: [bool; 2],
    ) -> [Option<FlexTensor>; 2] {
        let grad = contiguous(&grad);
        let (xs, g, dy) = (values(&x), values(&gamma), values(&grad));
        let width = g.len();
        let chunk = Self::chunk(width);
        let x_grad = need_x.then(|| {
            build(x.shape().as_slice(), chunk, |start, rows| {
                for (r, out) in rows.chunks_exact_mut(width).enumerate() {
                    let at = start + r * width..start + (r + 1) * width;
                    let row = &xs[at.clone()];
                    row_backward(row, g, &dy[at], inverse_rms(row, self.epsilon), out);
                }
            })
        });
        let gamma_grad = need_gamma.then(|| {
            let sums = xs
                .par_chunks(chunk)
                .zip(dy.par_chunks(chunk))
                .map(|(rows, dys)| {
                    let mut sum = vec![0.0f32; width];
                    for (row, dy) in rows.chunks_exact(width).zip(dys.chunks_exact(width)) {
                        accumulate_scaled(row, dy, inverse_rms(row, self.epsilon), &mut sum);
                    }
                    sum
                })
                .reduce(
                    || vec![0.0f32; width],
                    |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                        a
                    },
                );
            FlexTensor::from_data(TensorData::new(sums, [width]))
        });
        [x_grad, gamma_grad]
    }
}

/// `1 / √(mean(row²) + ε)`.
fn inverse_rms(row: &[f32], epsilon: f32) -> f32 {
    let squares = sum_of_products(row, row);
    1.0 / (squares / row.len() as f32 + epsilon).sqrt()
}

// Compiled once per instruction set and chosen at run time; `S` is used through the target
// features `with_simd` enables, not by name.

/// `out = row · inverse_rms · γ`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn normalise<S: macerator::Simd>(row: &[f32], gamma: &[f32], inverse_rms: f32, out: &mut [f32]) {
    for ((out, &x), &g) in out.iter_mut().zip(row).zip(gamma) {
        *out = x * inverse_rms * g;
    }
}

/// `out = (g − x̂ · mean(g ⊙ x̂)) · inverse_rms` with `g = dy ⊙ γ`, `x̂ = row · inverse_rms`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn row_backward<S: macerator::Simd>(
    row: &[f32],
    gamma: &[f32],
    dy: &[f32],
    inverse_rms: f32,
    out: &mut [f32],
) {
    // mean(g ⊙ x̂) = inverse_rms · Σ (dy ⊙ γ ⊙ x) / width; `out` holds dy ⊙ γ meanwhile.
    for ((out, &dy), &g) in out.iter_mut().zip(dy).zip(gamma) {
        *out = dy * g;
    }
    let mean = sum_of_products(out, row) * inverse_rms / row.len() as f32;
    for (out, &x) in out.iter_mut().zip(row) {
        *out = (*out - x * inverse_rms * mean) * inverse_rms;
    }
}

/// `sum += dy ⊙ row · inverse_rms`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn accumulate_scaled<S: macerator::Simd>(
    row: &[f32],
    dy: &[f32],
    inverse_rms: f32,
    sum: &mut [f32],
) {
    for ((sum, &x), &dy) in sum.iter_mut().zip(row).zip(dy) {
        *sum += dy * x * inverse_rms;
    }
}
