//! The paths for Flex's tensors: their buffers are host memory, read here as slices.

mod attention;
mod exp;
mod few_rows;
mod fused;
mod gelu;
mod log_probs;
mod rms_norm;
mod rotary;
mod silu_mul;
mod slice;

pub(crate) use attention::GroupedAttention;
pub(crate) use fused::{is, run, AutodiffTensor};
pub(crate) use gelu::Gelu;
pub(crate) use log_probs::PickedLogProbs;
pub(crate) use rms_norm::RmsNorm;
pub(crate) use rotary::RotaryHeads;
pub(crate) use silu_mul::SiluMul;
pub(crate) use slice::slice_assign_in_place;

use core::any::Any;

use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use few_rows::MAX_ROWS;

/// A transposed `W` is split into at least this many columns per thread.
const MIN_COLUMNS_PER_THREAD: usize = 256;

/// `lhs · rhs` on Flex for up to [`MAX_ROWS`] rows of `f32`, or `None` for Burn's product:
/// - a row-major `rhs` (a `Linear`'s weight, or a column slice of one) by the few-rows kernel;
/// - a transposed `rhs` (tied embeddings) at one row, by `gemm` on one block of `rhs`'s columns
///   per thread (contiguous rows of the buffer, where `gemm` runs dot products at the speed of
///   the memory, but on one thread).
pub(crate) fn few_rows_matmul<B: Backend>(
    lhs: &Tensor<B, 2>,
    rhs: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    let [m, k] = lhs.dims();
    let [k_rhs, n] = rhs.dims();
    if m == 0 || m > MAX_ROWS || k != k_rhs || k == 0 || n == 0 {
        return None;
    }
    let x_primitive = lhs.clone().into_primitive().tensor();
    let w_primitive = rhs.clone().into_primitive().tensor();
    let x_tensor = (&x_primitive as &dyn Any).downcast_ref::<FlexTensor>()?;
    let w_tensor = (&w_primitive as &dyn Any).downcast_ref::<FlexTensor>()?;
    if x_tensor.dtype() != DType::F32 || w_tensor.dtype() != DType::F32 {
        return None;
    }
    let layout = w_tensor.layout();
    match *layout.strides() {
        [stride, 1] if stride >= 0 => {
            let (x_start, x_end) = x_tensor.layout().contiguous_offsets()?;
            let x = x_tensor.storage::<f32>().get(x_start..x_end)?;
            let w = w_tensor.storage::<f32>().get(layout.start_offset()..)?;
            let stride = stride as usize;
            if !few_rows::fits(w, [k, n], stride) {
                return None;
            }
            let threads = rayon::current_num_threads();
            let values = few_rows::product(x, [m, k, n], w, stride, threads);
            Some(Tensor::from_data(
                TensorData::new(values, [m, n]),
                &lhs.device(),
            ))
        }
        [1, _] if m == 1 => {
            let threads = rayon::current_num_threads().min(n / MIN_COLUMNS_PER_THREAD);
            (threads > 1).then(|| split_columns(lhs, rhs, threads))
        }
        _ => None,
    }
}

/// `lhs · rhs` with `rhs`'s columns in `threads` blocks, each multiplied by Burn on its own
/// thread; each output value is the same dot product as in one product.
fn split_columns<B: Backend>(
    lhs: &Tensor<B, 2>,
    rhs: &Tensor<B, 2>,
    threads: usize,
) -> Tensor<B, 2> {
    let [_, n] = rhs.dims();
    let blocks: Vec<Tensor<B, 2>> = (0..threads)
        .into_par_iter()
        .map(|block| {
            let start = n * block / threads;
            let end = n * (block + 1) / threads;
            lhs.clone()
                .matmul(rhs.clone().narrow(1, start, end - start))
        })
        .collect();
    Tensor::cat(blocks, 1)
}
