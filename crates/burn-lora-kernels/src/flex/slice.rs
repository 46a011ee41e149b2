//! In-place writes into Flex tensors (see `crate::slice`).

use core::any::Any;
use core::ops::Range;

use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{bf16, f16, DType, Element, Tensor, TensorPrimitive};

/// Writes `values` over `ranges` of `tensor`'s own buffer and returns it, or gives both back
/// unchanged when that cannot be done in place: another backend, a buffer another tensor holds,
/// a non-contiguous or oversized buffer, another dtype, or sizes that do not fit (which Burn's
/// `slice_assign` then reports).
#[allow(clippy::type_complexity)]
pub(crate) fn slice_assign_in_place<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
    ranges: &[Range<usize>; D],
    values: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    let dims = tensor.dims();
    let fits = ranges
        .iter()
        .zip(dims)
        .all(|(range, size)| range.start <= range.end && range.end <= size)
        && values.dims() == ranges.clone().map(|range| range.len());
    if !crate::host::is_flex::<B>() || !fits || ranges.iter().any(|range| range.is_empty()) {
        return Err((tensor, values));
    }
    let TensorPrimitive::Float(primitive) = tensor.clone().into_primitive() else {
        return Err((tensor, values));
    };
    // The clone above holds the buffer too: drop the original first, so that the buffer has one
    // holder again when it is taken for writing.
    drop(tensor);
    let mut boxed: Box<dyn Any> = Box::new(primitive);
    let written = match boxed.downcast_mut::<FlexTensor>() {
        Some(destination) => write(destination, &dims, ranges, &values),
        None => false,
    };
    let primitive = boxed
        .downcast::<B::FloatTensorPrimitive>()
        .map(|primitive| *primitive);
    match primitive {
        Ok(primitive) => {
            let tensor = Tensor::from_primitive(TensorPrimitive::Float(primitive));
            if written {
                Ok(tensor)
            } else {
                Err((tensor, values))
            }
        }
        // The box holds what was taken out of it: the same type.
        Err(_) => unreachable!("a tensor primitive boxed as Any comes back as its own type"),
    }
}

/// Writes `values` into `destination`'s buffer; `false`, changing nothing, when it cannot.
fn write<B: Backend, const D: usize>(
    destination: &mut FlexTensor,
    dims: &[usize; D],
    ranges: &[Range<usize>; D],
    values: &Tensor<B, D>,
) -> bool {
    let layout = destination.layout();
    if !layout.is_contiguous()
        || layout.start_offset() != 0
        || destination.bytes().len() != layout.num_elements() * destination.dtype().size()
    {
        return false;
    }
    let dtype = destination.dtype();
    let source = values.clone().into_primitive().tensor();
    let Some(source) = (&source as &dyn Any).downcast_ref::<FlexTensor>() else {
        return false;
    };
    if source.dtype() != dtype {
        return false;
    }
    let source = source.to_contiguous();
    match dtype {
        DType::F32 => copy_region::<f32, D>(destination, &source, dims, ranges),
        DType::F16 => copy_region::<f16, D>(destination, &source, dims, ranges),
        DType::BF16 => copy_region::<bf16, D>(destination, &source, dims, ranges),
        DType::F64 => copy_region::<f64, D>(destination, &source, dims, ranges),
        _ => false,
    }
}

/// Copies the contiguous `source` (`[ranges[i].len()]`) into `ranges` of `destination`
/// (`dims`, contiguous), one span of the last dimension at a time.
fn copy_region<E: Element + bytemuck::Pod, const D: usize>(
    destination: &mut FlexTensor,
    source: &FlexTensor,
    dims: &[usize; D],
    ranges: &[Range<usize>; D],
) -> bool {
    if D == 0 {
        return false;
    }
    let Some((start, end)) = source.layout().contiguous_offsets() else {
        return false;
    };
    let Some(from) = source.storage::<E>().get(start..end) else {
        return false;
    };
    let Some(to) = destination.try_storage_mut::<E>() else {
        return false; // another tensor holds the buffer
    };
    let span = ranges[D - 1].len();
    let spans = from.len() / span;
    for (index, values) in from.chunks_exact(span).enumerate().take(spans) {
        // The destination offset of span `index`: its outer indices (row-major over the
        // ranges' lengths) shifted by the ranges' starts, in the destination's strides.
        let mut rest = index;
        let mut offset = ranges[D - 1].start;
        let mut stride = dims[D - 1];
        for dim in (0..D - 1).rev() {
            let len = ranges[dim].len();
            offset += (ranges[dim].start + rest % len) * stride;
            rest /= len;
            stride *= dims[dim];
        }
        to[offset..offset + span].copy_from_slice(values);
    }
    true
}
