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

/// `lhs · rhs` on Flex (or NdArray, with the `ndarray` feature) for up to [`MAX_ROWS`] rows of
/// `f32`, or `None` for Burn's product: the few-rows kernels, for a row-major `rhs` (a
/// `Linear`'s weight, or a column slice of one) and for a transposed one (tied embeddings).
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
    let operands = flex_operands(&x_primitive, &w_primitive, [k, n]);
    #[cfg(feature = "ndarray")]
    let operands = operands.or_else(|| ndarray_operands(&x_primitive, &w_primitive, [k, n]));
    let (x, w) = operands?;
    let threads = rayon::current_num_threads();
    let values = few_rows::product(x, [m, k, n], &w, threads);
    Some(Tensor::from_data(
        TensorData::new(values, [m, n]),
        &lhs.device(),
    ))
}

/// The layout of a matrix `[k, n]` of these strides that the few-rows kernels read, and the
/// stride of its lines (a single line's stride is its width: the buffer's strides of a
/// dimension of size one are arbitrary).
fn matrix_layout(strides: &[isize], [k, n]: [usize; 2]) -> Option<(few_rows::Layout, usize)> {
    let line = |stride: isize, lines: usize, width: usize| match lines {
        1 => Some(width),
        _ => usize::try_from(stride).ok(),
    };
    match *strides {
        [stride, 1] => Some((few_rows::Layout::RowMajor, line(stride, k, n)?)),
        [1, stride] => Some((few_rows::Layout::Transposed, line(stride, n, k)?)),
        _ => None,
    }
}

/// `x`'s values and `W` `[k, n]` of Flex's `f32` tensors.
fn flex_operands(
    x: &dyn Any,
    w: &dyn Any,
    [k, n]: [usize; 2],
) -> Option<(Arc<[f32]>, few_rows::SharedMatrix)> {
    let x_tensor = x.downcast_ref::<FlexTensor>()?;
    let w_tensor = w.downcast_ref::<FlexTensor>()?;
    if x_tensor.dtype() != DType::F32 || w_tensor.dtype() != DType::F32 {
        return None;
    }
    let layout = w_tensor.layout();
    let (w_layout, stride) = matrix_layout(layout.strides(), [k, n])?;
    let (x_start, x_end) = x_tensor.layout().contiguous_offsets()?;
    let x: Arc<[f32]> = x_tensor.storage::<f32>().get(x_start..x_end)?.into();
    let w = few_rows::SharedMatrix::new(
        few_rows::HostBuffer::Flex(w_tensor.clone()),
        layout.start_offset(),
        stride,
        w_layout,
        [k, n],
    )?;
    Some((x, w))
}

/// `x`'s values and `W` `[k, n]` of NdArray's `f32` tensors: `W` read where it lies when its
/// memory holds it and nothing else (a weight, or a transposed view of one; `SharedMatrix::new`
/// refuses any other), shared with the helper threads.
#[cfg(feature = "ndarray")]
fn ndarray_operands(
    x: &dyn Any,
    w: &dyn Any,
    [k, n]: [usize; 2],
) -> Option<(Arc<[f32]>, few_rows::SharedMatrix)> {
    use burn::backend::ndarray::NdArrayTensor;
    let NdArrayTensor::F32(x_storage) = x.downcast_ref::<NdArrayTensor>()? else {
        return None;
    };
    let w_tensor = w.downcast_ref::<NdArrayTensor>()?;
    let NdArrayTensor::F32(w_storage) = w_tensor else {
        return None;
    };
    let x_view = x_storage.view();
    let x: Arc<[f32]> = match x_view.to_slice() {
        Some(values) => values.into(),
        None => x_view.iter().copied().collect(),
    };
    let w_view = w_storage.view();
    let (w_layout, stride) = matrix_layout(w_view.strides(), [k, n])?;
    let w = few_rows::SharedMatrix::new(
        few_rows::HostBuffer::NdArray(w_tensor.clone()),
        0,
        stride,
        w_layout,
        [k, n],
    )?;
    Some((x, w))
}
