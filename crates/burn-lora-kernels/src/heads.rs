//! Attention heads split from the model width and merged back.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::scope::fast_paths_enabled;

/// `[batch, seq, heads · head_dim]` as `[batch, heads, seq, head_dim]`: Burn's
/// `x.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2)`.
///
/// Inside [`with_fast_paths`](crate::with_fast_paths), on Flex or `Autodiff<Flex>` in `f32`,
/// with more than one head and one position, the heads are written contiguous in one pass
/// (and merged back in one for the backward); Burn's view is strided, and Flex copies it
/// element by element wherever it needs it contiguous.
///
/// # Shapes
/// - x: `[batch, seq, heads · head_dim]`
/// - output: `[batch, heads, seq, head_dim]`
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [batch, seq, width] = x.dims();
    let burns = |x: Tensor<B, 3>| {
        x.reshape([batch, seq, heads, width / heads.max(1)])
            .swap_dims(1, 2)
    };
    if !fast_paths_enabled() || heads < 2 || seq < 2 || !width.is_multiple_of(heads) {
        return burns(x);
    }
    match run_fused!(
        B,
        Some(crate::flex::SplitHeads { heads }),
        [x.into_primitive().tensor()]
    ) {
        Ok(output) => Tensor::from_primitive(TensorPrimitive::Float(output)),
        Err([x]) => burns(Tensor::from_primitive(TensorPrimitive::Float(x))),
    }
}

/// `[batch, heads, seq, head_dim]` as `[batch, seq, heads · head_dim]`: Burn's
/// `x.swap_dims(1, 2).reshape([batch, seq, heads · head_dim])`, in one pass inside
/// [`with_fast_paths`](crate::with_fast_paths) as [`split_heads`].
///
/// # Shapes
/// - x: `[batch, heads, seq, head_dim]`
/// - output: `[batch, seq, heads · head_dim]`
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, heads, seq, head_dim] = x.dims();
    let burns = |x: Tensor<B, 4>| x.swap_dims(1, 2).reshape([batch, seq, heads * head_dim]);
    if !fast_paths_enabled() || heads < 2 || seq < 2 {
        return burns(x);
    }
    match run_fused!(
        B,
        Some(crate::flex::MergeHeads),
        [x.into_primitive().tensor()]
    ) {
        Ok(output) => Tensor::from_primitive(TensorPrimitive::Float(output)),
        Err([x]) => burns(Tensor::from_primitive(TensorPrimitive::Float(x))),
    }
}
