//! Decoded file values written into a dense tensor of the backend's float type: converted with a
//! check that they stay finite, and transposed by blocks of rows.

use burn::tensor::cast::ToElement;
use burn::tensor::{DType, Element, TensorData};

use crate::error::Result;

/// `value` as `E`, or `None` when it is NaN or infinite as `E` (an f64 beyond f32's range read as
/// f32, an f32 beyond f16's read as f16).
pub(crate) fn finite_elem<E: Element, S: ToElement>(value: S) -> Option<E> {
    let value = E::from_elem(value);
    value.to_f64().is_finite().then_some(value)
}

/// Writes `block`, rows `first_row..first_row + block.len() / width` of a row-major matrix of
/// `width` columns, into `out`, its transpose: `out[c * rows + first_row + r] = block[r * width +
/// c]`, where `rows` is the whole matrix's row count. Each column's part is written in one run.
/// `out` holds `width * rows` values and `first_row + block.len() / width <= rows`.
pub(crate) fn scatter_transposed<E: Copy>(
    block: &[E],
    width: usize,
    rows: usize,
    first_row: usize,
    out: &mut [E],
) {
    if width == 0 || rows == 0 {
        return;
    }
    let block_rows = block.len() / width;
    for (c, column) in out.chunks_exact_mut(rows).enumerate() {
        for (r, slot) in column[first_row..first_row + block_rows]
            .iter_mut()
            .enumerate()
        {
            *slot = block[r * width + c];
        }
    }
}

/// A tensor's values, decoded from a file into any float element type.
pub(crate) trait DenseSource {
    /// The values, row-major, as `E`.
    fn values<E: Element>(&self) -> Result<Vec<E>>;
}

/// `source`'s values as tensor data of `shape`, in the float type `dtype` when it is F64, F32,
/// F16 or BF16 (so that a BF16 tensor for a BF16 backend is never an f32 copy first), and as
/// f32 for any other type, which Burn converts when it makes the tensor.
pub(crate) fn dense_data(
    dtype: DType,
    shape: Vec<usize>,
    source: &impl DenseSource,
) -> Result<TensorData> {
    Ok(match dtype {
        DType::F64 => TensorData::new(source.values::<f64>()?, shape),
        DType::F16 => TensorData::new(source.values::<half::f16>()?, shape),
        DType::BF16 => TensorData::new(source.values::<half::bf16>()?, shape),
        _ => TensorData::new(source.values::<f32>()?, shape),
    })
}
