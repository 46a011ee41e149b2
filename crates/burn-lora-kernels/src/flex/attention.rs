//! Grouped-query attention as one autodiff node: Flex's batched products, the masked softmax
//! and the head merge in one pass each, and the backward likewise.

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};

use super::fused::{build, contiguous, values, FusedOp};
use super::heads::{merge_heads, split_heads};
use super::softmax::{chunk, softmax_row, softmax_row_backward, HostMask, MaskRows};

/// `softmax(q kᵀ · scale, masked) v`, heads merged (see [`crate::grouped_attention`]); the
/// inputs are `[query, key, value]`. The caller checks the shapes.
#[derive(Debug)]
pub(crate) struct GroupedAttention {
    /// `[batch, 1, seq, keys]`; `None`: nothing is masked.
    mask: Option<HostMask>,
    kv_heads: usize,
    scale: f32,
}

impl GroupedAttention {
    /// The operation for a mask of backend `B` (or none), or `None` when `B`'s masks are not a
    /// host backend's one-byte tensors (Flex's or NdArray's).
    pub(crate) fn new<B: Backend>(
        mask: Option<B::BoolTensorPrimitive>,
        kv_heads: usize,
        scale: f32,
    ) -> Option<Self> {
        let mask = match mask {
            Some(mask) => Some(HostMask::new::<B>(mask)?),
            None => None,
        };
        Some(Self {
            mask,
            kv_heads,
            scale,
        })
    }
}

type T4 = Tensor<Flex, 4>;

fn tensor(t: FlexTensor) -> T4 {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn primitive(t: T4) -> FlexTensor {
    t.into_primitive().tensor()
}

impl FusedOp<3> for GroupedAttention {
    /// The query in groups (`[batch, kv_heads, group · seq, head_dim]`), key, value and the
    /// attention weights (`[batch, kv_heads, group · seq, keys]`), contiguous.
    type State = [FlexTensor; 4];

    const DIFFERENTIABLE: [bool; 3] = [true, true, true];

    fn forward(&self, [query, key, value]: [FlexTensor; 3]) -> (FlexTensor, Self::State) {
        let [batch, heads, seq, head_dim] = query.shape().dims();
        let keys = key.shape().dims::<4>()[2];
        let group = heads / self.kv_heads;
        let rows = group * seq;
        let query = contiguous(&primitive(tensor(query).reshape([
            batch,
            self.kv_heads,
            rows,
            head_dim,
        ])));
        let (key, value) = (contiguous(&key), contiguous(&value));
        let scores = contiguous(&primitive(
            tensor(query.clone()).matmul(tensor(key.clone()).swap_dims(2, 3)),
        ));
        let (raw, mask) = (values(&scores), MaskRows::new(self.mask.as_ref(), keys));
        let probs = build(scores.shape().as_slice(), chunk(keys), |start, out| {
            for (r, out) in out.chunks_exact_mut(keys.max(1)).enumerate() {
                let row = start / keys.max(1) + r;
                let (b, i) = (row / (self.kv_heads * rows), row % seq);
                let mask = mask.row(b, 0, i);
                let at = row * keys..(row + 1) * keys;
                softmax_row(&raw[at], mask, self.scale, f32::MIN, out);
            }
        });
        let context = contiguous(&primitive(
            tensor(probs.clone()).matmul(tensor(value.clone())),
        ));
        let output = merge_heads(&context, [batch, heads, seq, head_dim]);
        (output, [query, key, value, probs])
    }

    /// With `P` the weights and `dC` the gradient of the context (split back into heads):
    /// `∂v = Pᵀ dC`, `dP = dC vᵀ`, `dS = P ⊙ (dP − Σ_keys P ⊙ dP) · scale` (zero where masked,
    /// as the fill's backward makes it), `∂q = dS k`, `∂k = dSᵀ q`, summed over each group's
    /// query heads by the products.
    fn backward(
        &self,
        [query, key, value, probs]: Self::State,
        grad: FlexTensor,
        [need_query, need_key, need_value]: [bool; 3],
    ) -> [Option<FlexTensor>; 3] {
        let [batch, kv_heads, rows, head_dim] = query.shape().dims();
        let keys = key.shape().dims::<4>()[2];
        let seq = grad.shape().dims::<3>()[1];
        let heads = kv_heads * rows / seq.max(1);
        let context_grad = tensor(split_heads(
            &contiguous(&grad),
            [batch, heads, seq, head_dim],
        ))
        .reshape([batch, kv_heads, rows, head_dim]);
        let value_grad = need_value.then(|| {
            primitive(
                tensor(probs.clone())
                    .swap_dims(2, 3)
                    .matmul(context_grad.clone()),
            )
        });
        if !(need_query || need_key) {
            return [None, None, value_grad];
        }
        let probs_grad = contiguous(&primitive(
            context_grad.matmul(tensor(value).swap_dims(2, 3)),
        ));
        let (p, dp, mask) = (
            values(&probs),
            values(&probs_grad),
            MaskRows::new(self.mask.as_ref(), keys),
        );
        let scores_grad = tensor(build(
            probs.shape().as_slice(),
            chunk(keys),
            |start, out| {
                for (r, out) in out.chunks_exact_mut(keys.max(1)).enumerate() {
                    let row = start / keys.max(1) + r;
                    let (b, i) = (row / (kv_heads * rows), row % seq);
                    let mask = mask.row(b, 0, i);
                    let at = row * keys..(row + 1) * keys;
                    softmax_row_backward(&p[at.clone()], &dp[at], mask, self.scale, out);
                }
            },
        ));
        let query_grad = need_query.then(|| {
            primitive(
                scores_grad
                    .clone()
                    .matmul(tensor(key))
                    .reshape([batch, heads, seq, head_dim]),
            )
        });
        let key_grad =
            need_key.then(|| primitive(scores_grad.swap_dims(2, 3).matmul(tensor(query))));
        [query_grad, key_grad, value_grad]
    }
}
