//! Writing into part of a tensor in place.
//!
//! Burn 0.21's Flex copies the whole destination on every `slice_assign`: it makes the
//! destination contiguous by cloning its handle (the buffer is then shared with the clone) and
//! takes the buffer for writing, which copies a shared buffer first. A KV cache written one
//! position per decoding step thus copied all of its capacity at every step. Here the values are
//! written straight into the destination's buffer when no other tensor holds it.

use core::ops::Range;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `tensor` with `values` written over `ranges`, as [`Tensor::slice_assign`] with one range per
/// dimension. On Flex, a contiguous `tensor` whose buffer no other tensor holds is written in
/// place; otherwise this is Burn's `slice_assign`. The result is the same either way (values are
/// copied, nothing is computed).
///
/// # Shapes
/// - tensor: any, `[d_0, ..., d_{D-1}]`
/// - values: `[ranges[0].len(), ..., ranges[D-1].len()]`
/// - output: the tensor's
///
/// # Panics
/// As Burn's `slice_assign`, when a range is out of bounds or `values` has another shape.
pub fn slice_assign<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
    ranges: [Range<usize>; D],
    values: Tensor<B, D>,
) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let (tensor, values) = match crate::flex::slice_assign_in_place(tensor, &ranges, values) {
        Ok(written) => return written,
        Err(unchanged) => unchanged,
    };
    tensor.slice_assign(ranges, values)
}
