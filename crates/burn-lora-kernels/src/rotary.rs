//! Rotary position embeddings (Su et al. 2021) in Hugging Face's `rotate_half` layout.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::scope::fast_paths_enabled;

/// Rotates heads by their positions' angles, with Burn's operations:
///
/// `x' = x · cos + rotate_half(x) · sin`, `rotate_half([x₁, x₂]) = [−x₂, x₁]`, the first half of
/// each head's dimensions paired with the second half (Hugging Face's Llama), not adjacent
/// dimensions.
///
/// # Shapes
/// - x: `[batch, heads, seq, head_dim]`, `head_dim` even
/// - cos, sin: `[batch, 1, seq, head_dim]`
/// - output: `[batch, heads, seq, head_dim]`
pub fn rotary<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let [batch, heads, seq, head_dim] = x.dims();
    let half = head_dim / 2;
    let first = x.clone().slice([0..batch, 0..heads, 0..seq, 0..half]);
    let second = x
        .clone()
        .slice([0..batch, 0..heads, 0..seq, half..head_dim]);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    x * cos + rotated * sin
}

/// Splits a projection into `heads` heads and rotates them ([`rotary`]):
/// `rotary(x.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2), cos, sin)`.
///
/// Inside [`with_fast_paths`](crate::with_fast_paths), on Flex or `Autodiff<Flex>` in `f32`,
/// it is one pass that writes the heads contiguous (an attention's next reshape is then free),
/// and one backward node whose single pass rotates the gradient back into the projection's
/// layout. Burn's decomposition is six passes forward and eight nodes, several of them copies
/// of strided views. The tables get no gradient there: tracked tables take Burn's path.
///
/// # Shapes
/// - x: `[batch, seq, heads · head_dim]`
/// - cos, sin: `[batch, 1, seq, head_dim]`, `head_dim` even
/// - output: `[batch, heads, seq, head_dim]`
pub fn rotary_heads<B: Backend>(
    x: Tensor<B, 3>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    heads: usize,
) -> Tensor<B, 4> {
    let [batch, seq, width] = x.dims();
    let head_dim = width / heads.max(1);
    let fits = heads > 0
        && head_dim * heads == width
        && head_dim.is_multiple_of(2)
        && cos.dims() == [batch, 1, seq, head_dim]
        && sin.dims() == [batch, 1, seq, head_dim];
    let split = |x: Tensor<B, 3>| x.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
    if !fast_paths_enabled() || !fits {
        return rotary(split(x), cos, sin);
    }
    let inputs = [
        x.into_primitive().tensor(),
        cos.into_primitive().tensor(),
        sin.into_primitive().tensor(),
    ];
    match run_fused!(B, Some(crate::flex::RotaryHeads { heads }), inputs) {
        Ok(output) => Tensor::from_primitive(TensorPrimitive::Float(output)),
        Err([x, cos, sin]) => {
            let float = |t| TensorPrimitive::Float(t);
            rotary(
                split(Tensor::from_primitive(float(x))),
                Tensor::from_primitive(float(cos)),
                Tensor::from_primitive(float(sin)),
            )
        }
    }
}
