//! The paths for Flex's tensors: their buffers are host memory, read here as slices.

mod attention;
mod dropout;
mod exp;
mod few_rows;
mod fused;
mod gelu;
mod gemm;
mod heads;
mod layer_norm;
mod linear;
mod log_probs;
mod lora_linear;
mod reduce;
mod rms_norm;
mod rotary;
mod silu_mul;
mod slice;
mod softmax;
mod team;

pub(crate) use attention::GroupedAttention;
pub(crate) use dropout::Dropout;
pub(crate) use fused::{is, is_host_based, run, AutodiffTensor};
pub(crate) use gelu::Gelu;
pub(crate) use heads::{MergeHeads, SplitHeads};
pub(crate) use layer_norm::LayerNorm;
pub(crate) use linear::Linear;
pub(crate) use log_probs::PickedLogProbs;
pub(crate) use lora_linear::LoraLinear;
pub(crate) use rms_norm::RmsNorm;
pub(crate) use rotary::RotaryHeads;
pub(crate) use silu_mul::SiluMul;
pub(crate) use slice::slice_assign_in_place;
pub(crate) use softmax::MaskedSoftmax;

use core::any::Any;
use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use few_rows::MAX_ROWS;

/// `lhs · rhs` on Flex for up to [`MAX_ROWS`] rows of `f32`, or `None` for Burn's product:
/// the few-rows kernels, for a row-major `rhs` (a `Linear`'s weight, or a column slice of one)
/// and for a transposed one (tied embeddings).
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
    let (w_layout, stride) = match *layout.strides() {
        [stride, 1] if stride >= 0 => (few_rows::Layout::RowMajor, stride as usize),
        [1, stride] if stride >= 0 => (few_rows::Layout::Transposed, stride as usize),
        _ => return None,
    };
    let (x_start, x_end) = x_tensor.layout().contiguous_offsets()?;
    let x: Arc<[f32]> = x_tensor.storage::<f32>().get(x_start..x_end)?.into();
    let w = few_rows::SharedMatrix::new(
        w_tensor.clone(),
        layout.start_offset(),
        stride,
        w_layout,
        [k, n],
    )?;
    let threads = rayon::current_num_threads();
    let values = few_rows::product(x, [m, k, n], &w, threads);
    Some(Tensor::from_data(
        TensorData::new(values, [m, n]),
        &lhs.device(),
    ))
}
