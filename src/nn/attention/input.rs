//! [`MhaInput`]: the query, key, value and masks of one attention call.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

/// Input of [`MultiHeadAttention::forward`](super::MultiHeadAttention::forward), as Burn's
/// `MhaInput`.
///
/// # Shapes
/// - query: `[batch_size, seq_length_1, d_model]`
/// - key, value: `[batch_size, seq_length_2, d_model]`
/// - padding mask: `[batch_size, seq_length_2]`, `true` at padded positions
/// - attention mask: `[batch_size, seq_length_1, seq_length_2]`, `true` where attention is
///   forbidden
#[derive(Debug, Clone)]
pub struct MhaInput<B: Backend> {
    pub(super) query: Tensor<B, 3>,
    pub(super) key: Tensor<B, 3>,
    pub(super) value: Tensor<B, 3>,
    pub(super) mask_pad: Option<Tensor<B, 2, Bool>>,
    pub(super) mask_attn: Option<Tensor<B, 3, Bool>>,
}

impl<B: Backend> MhaInput<B> {
    /// Self-attention: `tensor` is the query, the key and the value.
    ///
    /// # Shapes
    /// - tensor: `[batch_size, seq_length, d_model]`
    pub fn self_attn(tensor: Tensor<B, 3>) -> Self {
        Self::new(tensor.clone(), tensor.clone(), tensor)
    }

    /// Attention of `query` over `key` and `value`.
    pub fn new(query: Tensor<B, 3>, key: Tensor<B, 3>, value: Tensor<B, 3>) -> Self {
        Self {
            query,
            key,
            value,
            mask_pad: None,
            mask_attn: None,
        }
    }

    /// Sets the padding mask (`true` = padding), `[batch_size, seq_length_2]`.
    pub fn mask_pad(mut self, mask_pad: Tensor<B, 2, Bool>) -> Self {
        self.mask_pad = Some(mask_pad);
        self
    }

    /// Sets the attention mask (`true` = masked), `[batch_size, seq_length_1, seq_length_2]`.
    pub fn mask_attn(mut self, mask_attn: Tensor<B, 3, Bool>) -> Self {
        self.mask_attn = Some(mask_attn);
        self
    }
}
