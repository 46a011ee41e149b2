//! The log-probabilities of chosen classes, `log softmax(x)[target]`, in one pass over each
//! row, and their backward in one more: no row of probabilities is kept.

use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, TensorData, TensorMetadata};
use rayon::prelude::*;

use super::exp::exp;
use super::fused::{build, contiguous, host_int, values, FusedOp};
use super::reduce::maximum;

/// `log softmax(logits)[target]` per row of `[rows, classes]` logits (see
/// [`crate::picked_log_probs`]); the input is `[logits]`.
#[derive(Debug)]
pub(crate) struct PickedLogProbs {
    targets: Vec<usize>,
}

impl PickedLogProbs {
    /// The operation for targets of backend `B` (a host backend's `i32` or `i64` tensors), or `None` when
    /// they are not, or one is outside `0..classes`.
    pub(crate) fn new<B: Backend>(targets: B::IntTensorPrimitive, classes: usize) -> Option<Self> {
        let targets = contiguous(&host_int(targets)?);
        let (start, end) = targets.layout().contiguous_offsets()?;
        let targets: Option<Vec<usize>> = match targets.dtype() {
            DType::I64 => targets.storage::<i64>()[start..end]
                .iter()
                .map(|&t| usize::try_from(t).ok())
                .collect(),
            DType::I32 => targets.storage::<i32>()[start..end]
                .iter()
                .map(|&t| usize::try_from(t).ok())
                .collect(),
            _ => None,
        };
        let targets = targets?;
        targets
            .iter()
            .all(|&t| t < classes)
            .then_some(Self { targets })
    }
}

impl FusedOp<1> for PickedLogProbs {
    /// The logits, contiguous, and each row's `log Σ exp`.
    type State = (FlexTensor, Vec<f32>);

    const DIFFERENTIABLE: [bool; 1] = [true];

    fn forward(&self, [logits]: [FlexTensor; 1]) -> (FlexTensor, Self::State) {
        let logits = contiguous(&logits);
        let shape = logits.shape();
        let classes = shape.as_slice().last().copied().unwrap_or(0).max(1);
        let rows: Vec<&[f32]> = values(&logits).chunks_exact(classes).collect();
        let lse: Vec<f32> = rows.par_iter().map(|row| log_sum_exp(row)).collect();
        let picked: Vec<f32> = rows
            .iter()
            .zip(&lse)
            .zip(&self.targets)
            .map(|((row, lse), &t)| row[t] - lse)
            .collect();
        let out_shape = &shape.as_slice()[..shape.num_dims() - 1];
        let output = FlexTensor::from_data(TensorData::new(picked, out_shape.to_vec()));
        (output, (logits, lse))
    }

    /// `∂logits[r] = dy[r] · (onehot(target[r]) − softmax(logits[r]))`.
    fn backward(
        &self,
        (logits, lse): Self::State,
        grad: FlexTensor,
        [need_logits]: [bool; 1],
    ) -> [Option<FlexTensor>; 1] {
        if !need_logits {
            return [None];
        }
        let grad = contiguous(&grad);
        let dy = values(&grad);
        let x = values(&logits);
        let shape = logits.shape();
        let classes = shape.as_slice().last().copied().unwrap_or(0).max(1);
        let logits_grad = build(shape.as_slice(), classes, |start, out| {
            let r = start / classes;
            let row = &x[start..start + classes];
            softmax_scaled(row, lse[r], -dy[r], out);
            out[self.targets[r]] += dy[r];
        });
        [Some(logits_grad)]
    }
}

/// `max + log Σ exp(row − max)`.
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = maximum(row);
    if !max.is_finite() {
        return max;
    }
    max + sum_of_exponentials(row, max).ln()
}

// Compiled once per instruction set and chosen at run time; `S` is used through the target
// features `with_simd` enables, not by name.

/// `Σ exp(row − max)`, in 16 partial sums so that the loop vectorises.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn sum_of_exponentials<S: macerator::Simd>(row: &[f32], max: f32) -> f32 {
    let mut partial = [0.0f32; 16];
    let blocks = row.chunks_exact(16);
    let tail: f32 = blocks.remainder().iter().map(|&x| exp(x - max)).sum();
    for block in blocks {
        for i in 0..16 {
            partial[i] += exp(block[i] - max);
        }
    }
    partial.iter().sum::<f32>() + tail
}

/// `out = scale · exp(row − lse)`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn softmax_scaled<S: macerator::Simd>(row: &[f32], lse: f32, scale: f32, out: &mut [f32]) {
    for (out, &x) in out.iter_mut().zip(row) {
        *out = scale * exp(x - lse);
    }
}
