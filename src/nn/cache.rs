//! [`TensorCache`]: the output of a sub-layer kept between the steps of autoregressive
//! inference, as `burn::nn::cache::TensorCache` (whose update methods Burn keeps private).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// A cached tensor, empty until the first step.
pub struct TensorCache<B: Backend, const D: usize> {
    state: Option<Tensor<B, D>>,
}

impl<B: Backend, const D: usize> TensorCache<B, D> {
    /// An empty cache.
    pub fn empty() -> Self {
        Self { state: None }
    }

    /// `func` of the whole input on the first call; afterwards `func` of the input's last
    /// position only, concatenated to the cached result along `dim_cat`.
    ///
    /// # Shapes
    /// - tensor: `[batch_size, seq_length, d_model]`
    pub(crate) fn forward_autoregressive<F>(
        &mut self,
        tensor: Tensor<B, 3>,
        dim_cat: usize,
        func: F,
    ) -> Tensor<B, D>
    where
        F: Fn(Tensor<B, 3>) -> Tensor<B, D>,
    {
        let output = match self.state.take() {
            Some(previous) => {
                let [batch_size, seq_length, d_model] = tensor.dims();
                let last = tensor.slice([0..batch_size, seq_length - 1..seq_length, 0..d_model]);
                Tensor::cat(vec![previous, func(last)], dim_cat)
            }
            None => func(tensor),
        };
        self.state = Some(output.clone());
        output
    }

    /// `func` of the input on the first call, the cached result afterwards (a fixed memory).
    pub(crate) fn forward_full<F>(&mut self, tensor: Tensor<B, 3>, func: F) -> Tensor<B, D>
    where
        F: Fn(Tensor<B, 3>) -> Tensor<B, D>,
    {
        let output = match self.state.take() {
            Some(previous) => previous,
            None => func(tensor),
        };
        self.state = Some(output.clone());
        output
    }
}

/// [`TensorCache::forward_autoregressive`] through `cache` if there is one, else plain `func`.
pub(crate) fn autoregressive_or_direct<B: Backend, const D: usize, F>(
    cache: Option<&mut TensorCache<B, D>>,
    tensor: Tensor<B, 3>,
    dim_cat: usize,
    func: F,
) -> Tensor<B, D>
where
    F: Fn(Tensor<B, 3>) -> Tensor<B, D>,
{
    match cache {
        Some(cache) => cache.forward_autoregressive(tensor, dim_cat, func),
        None => func(tensor),
    }
}
