//! Matrix products of Flex's `f32` tensors with the `gemm` crate, into a buffer of our own.
//!
//! Flex 0.21 multiplies with the same crate, but allocates each product's output as bytes and
//! then copies it into a buffer aligned for `u128` (`FlexTensor::empty` through
//! `Bytes::from_bytes_vec`): a second allocation, a copy and its page faults, 30 % of a
//! `[1024, 384] · [384, 1536]` product on one thread. Here the output is a `Vec<f32>` that
//! becomes the tensor's buffer as it is.

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorData, TensorMetadata, TensorPrimitive};

/// Products of at least this many multiply-adds run on Rayon's threads (Flex's threshold).
const PARALLEL_THRESHOLD: usize = 192 * 192 * 192;

/// A two-dimensional `f32` view of a Flex tensor: its buffer, and the offset and the
/// (non-negative) strides of its `[rows, columns]`.
#[derive(Clone, Copy)]
pub(crate) struct Matrix<'a> {
    values: &'a [f32],
    start: usize,
    dims: [usize; 2],
    strides: [usize; 2],
}

impl<'a> Matrix<'a> {
    /// The view of a two-dimensional `f32` tensor, or `None` (another type or rank, a negative
    /// stride, or an element outside the buffer).
    pub(crate) fn new(tensor: &'a FlexTensor) -> Option<Self> {
        let layout = tensor.layout();
        let (&[rows, columns], &[row_stride, column_stride]) =
            (layout.shape().as_slice(), layout.strides())
        else {
            return None;
        };
        if tensor.dtype() != DType::F32 || row_stride < 0 || column_stride < 0 {
            return None;
        }
        let matrix = Self {
            values: tensor.storage::<f32>(),
            start: layout.start_offset(),
            dims: [rows, columns],
            strides: [row_stride as usize, column_stride as usize],
        };
        matrix.in_bounds().then_some(matrix)
    }

    /// The transposed view (no copy).
    pub(crate) fn t(self) -> Self {
        let [rows, columns] = self.dims;
        let [row_stride, column_stride] = self.strides;
        Self {
            dims: [columns, rows],
            strides: [column_stride, row_stride],
            ..self
        }
    }

    /// Whether every element lies inside the buffer: the last one's offset, the largest, does
    /// (for a non-empty view).
    fn in_bounds(&self) -> bool {
        let [rows, columns] = self.dims;
        if rows == 0 || columns == 0 {
            return true;
        }
        let [row_stride, column_stride] = self.strides;
        (rows - 1)
            .checked_mul(row_stride)
            .zip((columns - 1).checked_mul(column_stride))
            .and_then(|(a, b)| a.checked_add(b)?.checked_add(self.start))
            .is_some_and(|last| last < self.values.len())
    }
}

/// The tensor of a two-dimensional primitive.
pub(super) fn tensor(t: FlexTensor) -> Tensor<Flex, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// The view of `t`, transposed where asked.
fn view(t: &FlexTensor, transposed: bool) -> Option<Matrix<'_>> {
    Matrix::new(t).map(|m| if transposed { m.t() } else { m })
}

/// `lhs · rhs` (each transposed first where asked), with Flex's own product for a view that
/// [`Matrix`] does not take (a negative stride).
pub(super) fn multiply(
    lhs: &FlexTensor,
    lhs_transposed: bool,
    rhs: &FlexTensor,
    rhs_transposed: bool,
) -> FlexTensor {
    match (view(lhs, lhs_transposed), view(rhs, rhs_transposed)) {
        (Some(l), Some(r)) => product(l, r),
        _ => None,
    }
    .unwrap_or_else(|| {
        let burns = |t: &FlexTensor, transposed: bool| {
            let t = tensor(t.clone());
            if transposed {
                t.transpose()
            } else {
                t
            }
        };
        burns(lhs, lhs_transposed)
            .matmul(burns(rhs, rhs_transposed))
            .into_primitive()
            .tensor()
    })
}

/// `out += lhs · rhs` (each transposed first where asked) in `out`'s buffer, for a fresh
/// row-major product `out`; through Burn's operations for what [`Matrix`] or `out` does not
/// fit.
pub(super) fn multiply_add(
    lhs: &FlexTensor,
    lhs_transposed: bool,
    rhs: &FlexTensor,
    rhs_transposed: bool,
    out: &mut FlexTensor,
) {
    let in_place = out.dtype() == DType::F32
        && out.is_contiguous()
        && out.layout().start_offset() == 0
        && match (view(lhs, lhs_transposed), view(rhs, rhs_transposed)) {
            (Some(l), Some(r)) if out.shape().dims::<2>() == [l.dims[0], r.dims[1]] => {
                product_into(l, r, out.storage_mut::<f32>(), true).is_some()
            }
            _ => false,
        };
    if !in_place {
        let product = multiply(lhs, lhs_transposed, rhs, rhs_transposed);
        *out = (tensor(out.clone()) + tensor(product))
            .into_primitive()
            .tensor();
    }
}

/// `lhs · rhs` as a new row-major tensor, or `None` when the inner dimensions differ.
///
/// # Shapes
/// - lhs: `[m, k]`
/// - rhs: `[k, n]`
/// - output: `[m, n]`
pub(crate) fn product(lhs: Matrix<'_>, rhs: Matrix<'_>) -> Option<FlexTensor> {
    let [m, n] = [lhs.dims[0], rhs.dims[1]];
    // Zeroed: gemm then only writes (with `k = 0` it writes nothing, and zeros are the
    // product).
    let mut out = vec![0.0f32; m.checked_mul(n)?];
    product_into(lhs, rhs, &mut out, false)?;
    Some(FlexTensor::from_data(TensorData::new(out, [m, n])))
}

/// `out = lhs · rhs`, or `out += lhs · rhs` when `accumulate`, `out` row-major; `None` (and
/// `out` untouched) when the inner dimensions differ or `out` does not hold `m · n` values.
///
/// # Shapes
/// - lhs: `[m, k]`
/// - rhs: `[k, n]`
/// - out: `m · n` values
pub(crate) fn product_into(
    lhs: Matrix<'_>,
    rhs: Matrix<'_>,
    out: &mut [f32],
    accumulate: bool,
) -> Option<()> {
    let ([m, k], [k_rhs, n]) = (lhs.dims, rhs.dims);
    if k != k_rhs || m.checked_mul(n)? != out.len() {
        return None;
    }
    if out.is_empty() {
        return Some(());
    }
    if k == 0 {
        if !accumulate {
            out.fill(0.0);
        }
        return Some(());
    }
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_THRESHOLD {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let stride = |s: usize| s as isize;
    // SAFETY: `gemm` reads `lhs` at `start + i · row_stride + p · column_stride` for `i < m`,
    // `p < k` (and `rhs` likewise for `p < k`, `j < n`), every one of which lies in its buffer
    // (`Matrix::new` checked the last, the largest; the strides are non-negative and fit
    // `isize`, as Flex's own layouts are `isize`); it reads (when `accumulate`) and writes `out`
    // at `i · n + j` for `i < m`, `j < n`, inside its `m · n` values (checked above). The
    // buffers are plain `f32` slices that nothing writes meanwhile (`out` is borrowed mutably
    // here, so it is none of the inputs, which are shared).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            stride(n),
            accumulate,
            lhs.values.as_ptr().add(lhs.start),
            stride(lhs.strides[1]),
            stride(lhs.strides[0]),
            rhs.values.as_ptr().add(rhs.start),
            stride(rhs.strides[1]),
            stride(rhs.strides[0]),
            // dst = alpha · dst + beta · lhs · rhs.
            if accumulate { 1.0f32 } else { 0.0f32 },
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{Tensor, TensorData};

    use super::*;

    fn flex(values: Vec<f32>, dims: [usize; 2]) -> FlexTensor {
        Tensor::<Flex, 2>::from_data(TensorData::new(values, dims), &Default::default())
            .into_primitive()
            .tensor()
    }

    fn product_of(lhs: &FlexTensor, rhs: &FlexTensor) -> (Vec<usize>, Vec<f32>) {
        let out = product(Matrix::new(lhs).unwrap(), Matrix::new(rhs).unwrap()).unwrap();
        let data = out.into_data();
        (data.shape.to_vec(), data.to_vec::<f32>().unwrap())
    }

    /// Empty rows, columns or inner dimension: the product's shape, and zeros where it has
    /// values (`k = 0`).
    #[test]
    fn empty_dimensions_give_the_shape_and_zeros() {
        let (shape, values) = product_of(&flex(vec![], [0, 3]), &flex(vec![1.0; 6], [3, 2]));
        assert_eq!((shape, values), (vec![0, 2], vec![]));
        let (shape, values) = product_of(&flex(vec![1.0; 6], [2, 3]), &flex(vec![], [3, 0]));
        assert_eq!((shape, values), (vec![2, 0], vec![]));
        let (shape, values) = product_of(&flex(vec![], [2, 0]), &flex(vec![], [0, 3]));
        assert_eq!((shape, values), (vec![2, 3], vec![0.0; 6]));
    }

    /// A view that starts inside its buffer and skips values (a slice of rows and columns),
    /// transposed or not; mismatched inner dimensions are refused.
    #[test]
    fn strided_views_multiply_as_their_values() {
        // [[0, 1, 2], [3, 4, 5], [6, 7, 8]]; the view is its lower-right 2 × 2 block.
        let base = Tensor::<Flex, 2>::from_data(
            TensorData::new((0..9).map(|v| v as f32).collect::<Vec<_>>(), [3, 3]),
            &Default::default(),
        );
        let block = base.slice([1..3, 1..3]).into_primitive().tensor();
        let identity = flex(vec![1.0, 0.0, 0.0, 1.0], [2, 2]);
        let (_, values) = product_of(&block, &identity);
        assert_eq!(values, vec![4.0, 5.0, 7.0, 8.0]);
        let view = Matrix::new(&block).unwrap().t();
        let out = product(view, Matrix::new(&identity).unwrap()).unwrap();
        assert_eq!(
            out.into_data().to_vec::<f32>().unwrap(),
            vec![4.0, 7.0, 5.0, 8.0]
        );
        let wide = flex(vec![1.0; 6], [3, 2]);
        assert!(product(Matrix::new(&block).unwrap(), Matrix::new(&wide).unwrap()).is_none());
    }
}
