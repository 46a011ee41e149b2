//! `x W + b` as one autodiff node whose products run on our own output buffers.

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorMetadata;
use rayon::prelude::*;

use super::fused::{contiguous, values, FusedOp};
use super::gemm::{multiply, tensor};

/// Output values per parallel chunk of the bias's addition, in whole rows.
const CHUNK: usize = 1 << 14;

/// `x W + b` (see [`crate::linear`]); the inputs are `[x, W, b]`, `x` two-dimensional and `b`
/// empty when there is no bias. The caller checks the shapes.
#[derive(Debug)]
pub(crate) struct Linear;

impl FusedOp<3> for Linear {
    /// `x` and `W`, as given (views share their buffers).
    type State = [FlexTensor; 2];

    const DIFFERENTIABLE: [bool; 3] = [true, true, true];

    fn forward(&self, [x, weight, bias]: [FlexTensor; 3]) -> (FlexTensor, Self::State) {
        let mut output = multiply(&x, false, &weight, false);
        add_bias(&mut output, &bias);
        (output, [x, weight])
    }

    /// `∂x = dY Wᵀ`, `∂W = xᵀ dY`, `∂b = Σ_rows dY`.
    fn backward(
        &self,
        [x, weight]: Self::State,
        grad: FlexTensor,
        [need_x, need_weight, need_bias]: [bool; 3],
    ) -> [Option<FlexTensor>; 3] {
        let x_grad = need_x.then(|| multiply(&grad, false, &weight, true));
        let weight_grad = need_weight.then(|| multiply(&x, true, &grad, false));
        let bias_grad = need_bias.then(|| column_sums(grad));
        [x_grad, weight_grad, bias_grad]
    }
}

/// `output += bias` on every row of a fresh product (`output` owned: no copy); nothing for an
/// empty `bias` (none).
pub(super) fn add_bias(output: &mut FlexTensor, bias: &FlexTensor) {
    let columns = output.shape().dims::<2>()[1];
    if bias.shape().num_elements() == 0 || columns == 0 {
        return;
    }
    let bias = contiguous(bias);
    let b = values(&bias);
    let chunk = (CHUNK / columns).max(1) * columns;
    output
        .storage_mut::<f32>()
        .par_chunks_mut(chunk)
        .for_each(|rows| rows.chunks_exact_mut(columns).for_each(|row| add(row, b)));
}

/// `Σ_rows grad`, a bias's gradient: `[rows, columns]` to `[columns]`.
pub(super) fn column_sums(grad: FlexTensor) -> FlexTensor {
    let columns = grad.shape().dims::<2>()[1];
    tensor(grad)
        .sum_dim(0)
        .reshape([columns])
        .into_primitive()
        .tensor()
}

// Compiled once per instruction set and chosen at run time; `S` is used through the target
// features `with_simd` enables, not by name.

/// `row += bias`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn add<S: macerator::Simd>(row: &mut [f32], bias: &[f32]) {
    for (value, &b) in row.iter_mut().zip(bias) {
        *value += b;
    }
}
