//! The exact GELU in one pass, and its backward in one pass.

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorMetadata;

use super::exp::{erf, exp};
use super::fused::{build, contiguous, values, FusedOp};

/// Values per parallel chunk.
const CHUNK: usize = 1 << 12;

/// `1 / √2`.
const FRAC_1_SQRT_2: f32 = core::f32::consts::FRAC_1_SQRT_2;
/// `1 / √(2π)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `x Φ(x)` (see [`crate::gelu`]); the input is `[x]`.
#[derive(Debug)]
pub(crate) struct Gelu;

impl FusedOp<1> for Gelu {
    /// The input, contiguous.
    type State = FlexTensor;

    const DIFFERENTIABLE: [bool; 1] = [true];

    fn forward(&self, [x]: [FlexTensor; 1]) -> (FlexTensor, Self::State) {
        let x = contiguous(&x);
        let xs = values(&x);
        let output = build(x.shape().as_slice(), CHUNK, |start, out| {
            forward_values(&xs[start..], out)
        });
        (output, x)
    }

    /// `∂x = dy · (Φ(x) + x φ(x))`, `φ` the standard normal density.
    fn backward(
        &self,
        x: Self::State,
        grad: FlexTensor,
        [need_x]: [bool; 1],
    ) -> [Option<FlexTensor>; 1] {
        if !need_x {
            return [None];
        }
        let grad = contiguous(&grad);
        let (xs, dy) = (values(&x), values(&grad));
        let x_grad = build(x.shape().as_slice(), CHUNK, |start, out| {
            backward_values(&xs[start..], &dy[start..], out)
        });
        [Some(x_grad)]
    }
}

// Compiled once per instruction set and chosen at run time; `S` is used through the target
// features `with_simd` enables, not by name.

/// `out = x · ½ (1 + erf(x / √2))`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn forward_values<S: macerator::Simd>(x: &[f32], out: &mut [f32]) {
    for (out, &x) in out.iter_mut().zip(x) {
        *out = x * 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
    }
}

/// `out = dy · (½ (1 + erf(x / √2)) + x e^(−x²/2) / √(2π))`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn backward_values<S: macerator::Simd>(x: &[f32], dy: &[f32], out: &mut [f32]) {
    for ((out, &x), &dy) in out.iter_mut().zip(x).zip(dy) {
        let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
        let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * x * x);
        *out = dy * (cdf + x * pdf);
    }
}
