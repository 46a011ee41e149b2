//! [`MhaCache`]: the projections kept between the steps of autoregressive decoding.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::nn::cache::TensorCache;

/// Cache of [`MultiHeadAttention::forward_cache`](super::MultiHeadAttention::forward_cache), as
/// Burn's `MhaCache`: to be used during inference when decoding tokens.
pub struct MhaCache<B: Backend> {
    pub(super) query: LinearCache<B, 4>,
    pub(super) key: LinearCache<B, 4>,
    pub(super) value: LinearCache<B, 4>,
    pub(super) output: LinearCache<B, 3>,
}

/// How one projection is cached.
pub(super) enum LinearCache<B: Backend, const D: usize> {
    /// Grows by the last position at each step, along this dimension.
    Autoregressive(TensorCache<B, D>, usize),
    /// Computed once (a fixed memory, as the keys and values of cross-attention).
    Full(TensorCache<B, D>),
}

impl<B: Backend> MhaCache<B> {
    /// A cache for autoregressive self-attention.
    pub fn autoregressive() -> Self {
        Self {
            query: LinearCache::Autoregressive(TensorCache::empty(), 2),
            key: LinearCache::Autoregressive(TensorCache::empty(), 2),
            value: LinearCache::Autoregressive(TensorCache::empty(), 2),
            output: LinearCache::Autoregressive(TensorCache::empty(), 1),
        }
    }

    /// A cache for autoregressive cross-attention: keys and values are computed once, from a
    /// fixed memory.
    pub fn autoregressive_cross_attention() -> Self {
        Self {
            query: LinearCache::Autoregressive(TensorCache::empty(), 2),
            key: LinearCache::Full(TensorCache::empty()),
            value: LinearCache::Full(TensorCache::empty()),
            output: LinearCache::Autoregressive(TensorCache::empty(), 1),
        }
    }
}

impl<B: Backend, const D: usize> LinearCache<B, D> {
    /// `func` of `tensor`, through the cache.
    pub(super) fn forward<F>(&mut self, tensor: Tensor<B, 3>, func: F) -> Tensor<B, D>
    where
        F: Fn(Tensor<B, 3>) -> Tensor<B, D>,
    {
        match self {
            Self::Autoregressive(cache, dim) => cache.forward_autoregressive(tensor, *dim, func),
            Self::Full(cache) => cache.forward_full(tensor, func),
        }
    }
}
