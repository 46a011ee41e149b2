//! Attention heads split from the model width and merged back, one pass each way, as one
//! autodiff node: Burn's `reshape` and `swap_dims` leave a strided view that Flex copies
//! element by element wherever it needs it contiguous (a product, a reshape in the backward).

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorMetadata;

use super::fused::{build, contiguous, values, FusedOp};
use super::softmax::chunk;

/// `[batch, seq, heads · head_dim]` into `[batch, heads, seq, head_dim]`, contiguous (see
/// [`crate::split_heads`]).
#[derive(Debug)]
pub(crate) struct SplitHeads {
    pub(crate) heads: usize,
}

impl FusedOp<1> for SplitHeads {
    type State = ();

    const DIFFERENTIABLE: [bool; 1] = [true];

    fn forward(&self, [x]: [FlexTensor; 1]) -> (FlexTensor, Self::State) {
        let [batch, seq, width] = x.shape().dims::<3>();
        let dims = [batch, self.heads, seq, width / self.heads];
        (split_heads(&contiguous(&x), dims), ())
    }

    /// The gradient's heads merged back.
    fn backward(&self, _: (), grad: FlexTensor, [need]: [bool; 1]) -> [Option<FlexTensor>; 1] {
        [need.then(|| merge_heads(&contiguous(&grad), grad.shape().dims::<4>()))]
    }
}

/// `[batch, heads, seq, head_dim]` into `[batch, seq, heads · head_dim]`, contiguous (see
/// [`crate::merge_heads`]).
#[derive(Debug)]
pub(crate) struct MergeHeads;

impl FusedOp<1> for MergeHeads {
    /// The heads' shape.
    type State = [usize; 4];

    const DIFFERENTIABLE: [bool; 1] = [true];

    fn forward(&self, [x]: [FlexTensor; 1]) -> (FlexTensor, Self::State) {
        let dims = x.shape().dims::<4>();
        (merge_heads(&contiguous(&x), dims), dims)
    }

    /// The gradient split into heads again.
    fn backward(
        &self,
        dims: Self::State,
        grad: FlexTensor,
        [need]: [bool; 1],
    ) -> [Option<FlexTensor>; 1] {
        [need.then(|| split_heads(&contiguous(&grad), dims))]
    }
}

/// `[batch, heads, seq, head_dim]` (contiguous) into `[batch, seq, heads · head_dim]`.
pub(super) fn merge_heads(
    context: &FlexTensor,
    [batch, heads, seq, head_dim]: [usize; 4],
) -> FlexTensor {
    let c = values(context);
    build(
        &[batch, seq, heads * head_dim],
        chunk(heads * head_dim),
        |start, out| {
            for (r, out) in out.chunks_exact_mut((heads * head_dim).max(1)).enumerate() {
                let token = start / (heads * head_dim).max(1) + r;
                let (b, i) = (token / seq, token % seq);
                for (h, out) in out.chunks_exact_mut(head_dim.max(1)).enumerate() {
                    out.copy_from_slice(&c[((b * heads + h) * seq + i) * head_dim..][..head_dim]);
                }
            }
        },
    )
}

/// `[batch, seq, heads · head_dim]` (contiguous) into `[batch, heads, seq, head_dim]`.
pub(super) fn split_heads(
    merged: &FlexTensor,
    [batch, heads, seq, head_dim]: [usize; 4],
) -> FlexTensor {
    let m = values(merged);
    build(
        &[batch, heads, seq, head_dim],
        chunk(head_dim),
        |start, out| {
            for (r, out) in out.chunks_exact_mut(head_dim.max(1)).enumerate() {
                let row = start / head_dim.max(1) + r;
                let (b, h, i) = (row / (heads * seq), row / seq % heads, row % seq);
                out.copy_from_slice(&m[((b * seq + i) * heads + h) * head_dim..][..head_dim]);
            }
        },
    )
}
