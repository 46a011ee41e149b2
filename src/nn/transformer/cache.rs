//! Autoregressive caches of the [`TransformerEncoder`](super::TransformerEncoder) and its layers.

use burn::tensor::backend::Backend;

use crate::nn::attention::MhaCache;
use crate::nn::cache::TensorCache;

/// Cache of [`TransformerEncoder::forward_autoregressive_inference`](super::TransformerEncoder::forward_autoregressive_inference):
/// one [`TransformerEncoderLayerAutoregressiveCache`] per layer.
pub struct TransformerEncoderAutoregressiveCache<B: Backend> {
    pub(super) layers: Vec<TransformerEncoderLayerAutoregressiveCache<B>>,
}

impl<B: Backend> TransformerEncoderAutoregressiveCache<B> {
    /// Empty caches for `n_layers` layers.
    pub(super) fn empty(n_layers: usize) -> Self {
        Self {
            layers: (0..n_layers)
                .map(|_| TransformerEncoderLayerAutoregressiveCache::empty())
                .collect(),
        }
    }
}

/// Cache of one [`TransformerEncoderLayer`](super::TransformerEncoderLayer) during
/// autoregressive inference.
pub struct TransformerEncoderLayerAutoregressiveCache<B: Backend> {
    /// Self-attention cache.
    pub mha: MhaCache<B>,
    /// Feed-forward output cache.
    pub pwff: TensorCache<B, 3>,
    /// `norm_1` output cache.
    pub norm_1: TensorCache<B, 3>,
    /// `norm_2` output cache.
    pub norm_2: TensorCache<B, 3>,
}

impl<B: Backend> TransformerEncoderLayerAutoregressiveCache<B> {
    /// An empty cache.
    pub fn empty() -> Self {
        Self {
            mha: MhaCache::autoregressive(),
            pwff: TensorCache::empty(),
            norm_1: TensorCache::empty(),
            norm_2: TensorCache::empty(),
        }
    }
}
