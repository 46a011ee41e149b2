//! Causal self-attention with grouped key/value heads: scores, masked softmax, values, heads
//! merged.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor, TensorPrimitive};

use crate::scope::fast_paths_enabled;

/// `softmax(q kᵀ · scale, masked) v` with grouped key/value heads, the heads merged:
/// [`attention_context`]`(`[`attention_probs`]`(query, key, mask, scale), value, heads)`.
///
/// Inside [`with_fast_paths`](crate::with_fast_paths), on Flex or `Autodiff<Flex>` in `f32`,
/// it is one backward node around Flex's four batched products, with the masked softmax and
/// the head merge each one pass (and their backward likewise); Burn's decomposition repeats
/// the mask per group, fills, runs the softmax as five operations and copies the heads into
/// place, with a node for each.
///
/// # Shapes
/// - query: `[batch, heads, seq, head_dim]`
/// - key, value: `[batch, kv_heads, keys, head_dim]`, `heads` a multiple of `kv_heads`
/// - mask: `[batch, 1, seq, keys]`, `true` where attention is forbidden; `None` lets every query
///   see every key (a one-token decoding step without padding)
/// - output: `[batch, seq, heads · head_dim]`
pub fn grouped_attention<B: Backend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    scale: f64,
) -> Tensor<B, 3> {
    let [batch, heads, seq, head_dim] = query.dims();
    let [key_batch, kv_heads, keys, key_dim] = key.dims();
    let fits = kv_heads > 0
        && heads.is_multiple_of(kv_heads)
        && key_batch == batch
        && key_dim == head_dim
        && value.dims() == key.dims()
        && mask
            .as_ref()
            .is_none_or(|mask| mask.dims() == [batch, 1, seq, keys]);
    if !fast_paths_enabled() || !fits {
        return attention_context(attention_probs(query, key, mask, scale), value, heads);
    }
    let inputs = [
        query.into_primitive().tensor(),
        key.into_primitive().tensor(),
        value.into_primitive().tensor(),
    ];
    let fused = run_fused!(
        B,
        crate::flex::GroupedAttention::new::<B>(
            mask.clone().map(Tensor::into_primitive),
            kv_heads,
            scale as f32
        ),
        inputs
    );
    match fused {
        Ok(output) => Tensor::from_primitive(TensorPrimitive::Float(output)),
        Err([query, key, value]) => {
            let float = |t| TensorPrimitive::Float(t);
            let probs = attention_probs(
                Tensor::from_primitive(float(query)),
                Tensor::from_primitive(float(key)),
                mask,
                scale,
            );
            attention_context(probs, Tensor::from_primitive(float(value)), heads)
        }
    }
}

/// The attention weights `softmax(q kᵀ · scale, masked)` with Burn's operations, the query
/// heads of each key/value group stacked along the sequence (head `h = g · group + r` serves
/// key/value head `g`: rows `r · seq + i` of group `g`), so that one product per key/value head
/// serves the whole group without copying the keys.
///
/// # Shapes
/// - query: `[batch, heads, seq, head_dim]`
/// - key: `[batch, kv_heads, keys, head_dim]`
/// - mask: `[batch, 1, seq, keys]`, `true` where attention is forbidden; `None` for none
/// - output: `[batch, kv_heads, group · seq, keys]`, `group = heads / kv_heads`
pub fn attention_probs<B: Backend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    scale: f64,
) -> Tensor<B, 4> {
    let [batch, heads, seq, head_dim] = query.dims();
    let kv_heads = key.dims()[1];
    let group = heads / kv_heads;
    let query = query.reshape([batch, kv_heads, group * seq, head_dim]);
    let scores = query.matmul(key.swap_dims(2, 3)).mul_scalar(scale);
    match mask {
        Some(mask) if group == 1 => masked_softmax(scores, mask),
        Some(mask) => masked_softmax(scores, mask.repeat_dim(2, group)),
        None => softmax(scores, 3),
    }
}

/// The attended values of [`attention_probs`]' weights, the `heads` query heads merged, with
/// Burn's operations.
///
/// # Shapes
/// - probs: `[batch, kv_heads, group · seq, keys]`, `group = heads / kv_heads`
/// - value: `[batch, kv_heads, keys, head_dim]`
/// - output: `[batch, seq, heads · head_dim]`
pub fn attention_context<B: Backend>(
    probs: Tensor<B, 4>,
    value: Tensor<B, 4>,
    heads: usize,
) -> Tensor<B, 3> {
    let [batch, kv_heads, rows, _] = probs.dims();
    let head_dim = value.dims()[3];
    let seq = rows * kv_heads / heads;
    // [batch, kv_heads, group · seq, head_dim] is [batch, heads, seq, head_dim] in memory.
    probs
        .matmul(value)
        .reshape([batch, heads, seq, head_dim])
        .swap_dims(1, 2)
        .reshape([batch, seq, heads * head_dim])
}

/// `softmax(scores)` over the last dimension with the masked scores (`true` in `mask`) set to
/// the most negative finite value of the scores' float type: [`masked_softmax_filled`] with
/// that fill.
///
/// A finite fill keeps a row whose keys are all masked (the padding positions of a left-padded
/// prompt) finite, with uniform weights that nothing reads, in every float type: `f32::MIN`
/// rounds to −∞ in f16 and bf16, and a row of −∞ turns NaN in the softmax.
///
/// # Shapes
/// - scores, output: `[batch, heads, queries, keys]`
/// - mask: `[batch, heads or 1, queries or 1, keys]`
pub fn masked_softmax<B: Backend>(scores: Tensor<B, 4>, mask: Tensor<B, 4, Bool>) -> Tensor<B, 4> {
    let fill = match scores.dtype() {
        DType::F16 => f64::from(half::f16::MIN),
        DType::BF16 => f64::from(half::bf16::MIN),
        DType::F64 => f64::MIN,
        _ => f64::from(f32::MIN),
    };
    masked_softmax_filled(scores, Some(mask), fill)
}

/// `softmax(scores.mask_fill(mask, fill), 3)`: the softmax over the last dimension with the
/// masked scores (`true` in `mask`) set to `fill`; `None` masks nothing. A row with every key
/// masked is uniform.
///
/// Inside [`with_fast_paths`](crate::with_fast_paths), on Flex or `Autodiff<Flex>` in `f32`,
/// it is one pass over each row forward and one backward node (a pass); Burn's path is the fill
/// and the softmax's five operations, a node each, and the fill and its backward read a
/// broadcast mask element by element.
///
/// # Shapes
/// - scores, output: `[batch, heads, queries, keys]`
/// - mask: `[batch, heads or 1, queries or 1, keys]`, broadcast over the dimensions of size 1
pub fn masked_softmax_filled<B: Backend>(
    scores: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    fill: f64,
) -> Tensor<B, 4> {
    let [batch, heads, queries, keys] = scores.dims();
    let fits = mask.as_ref().is_none_or(|mask| {
        let [mask_batch, mask_heads, mask_queries, mask_keys] = mask.dims();
        mask_batch == batch
            && (mask_heads == 1 || mask_heads == heads)
            && (mask_queries == 1 || mask_queries == queries)
            && mask_keys == keys
    });
    if !fast_paths_enabled() || !fits {
        return filled_softmax(scores, mask, fill);
    }
    let fused = run_fused!(
        B,
        crate::flex::MaskedSoftmax::new::<B>(mask.clone().map(Tensor::into_primitive), fill as f32),
        [scores.into_primitive().tensor()]
    );
    match fused {
        Ok(output) => Tensor::from_primitive(TensorPrimitive::Float(output)),
        Err([scores]) => filled_softmax(
            Tensor::from_primitive(TensorPrimitive::Float(scores)),
            mask,
            fill,
        ),
    }
}

/// [`masked_softmax_filled`] with Burn's operations.
fn filled_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    fill: f64,
) -> Tensor<B, 4> {
    match mask {
        Some(mask) => softmax(scores.mask_fill(mask, fill), 3),
        None => softmax(scores, 3),
    }
}
