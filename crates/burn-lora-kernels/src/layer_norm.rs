//! Layer normalisation.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::scope::fast_paths_enabled;

/// LayerNorm (Ba et al. 2016) over the last dimension, as `burn::nn::LayerNorm::forward`:
///
/// `y = (x − mean(x)) / √(var(x) + ε) · γ + β`, the variance biased (divided by `d`)
///
/// Inside [`with_fast_paths`](crate::with_fast_paths), on Flex or `Autodiff<Flex>` in `f32`,
/// it is one pass over each row forward and one backward node (a pass per input that needs a
/// gradient); under `Autodiff` Burn's is nine operations and as many nodes. Elsewhere it is
/// Burn's `layer_norm`, the backend's own operation.
///
/// # Shapes
/// - x: `[..., d]`
/// - gamma, beta: `[d]`
/// - output: `[..., d]`
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    epsilon: f64,
) -> Tensor<B, D> {
    let width = gamma.dims()[0];
    let fits = width > 0
        && x.dims()[D - 1] == width
        && beta.as_ref().is_none_or(|beta| beta.dims() == [width]);
    if !fast_paths_enabled() || !fits {
        return burns(x, gamma, beta, epsilon);
    }
    // Without a bias, zeros that nothing tracks: the backward computes no gradient for them.
    let bias = beta.clone().unwrap_or_else(|| gamma.zeros_like());
    let inputs = [
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        bias.into_primitive().tensor(),
    ];
    match run_fused!(
        B,
        Some(crate::flex::LayerNorm {
            epsilon: epsilon as f32
        }),
        inputs
    ) {
        Ok(output) => Tensor::from_primitive(TensorPrimitive::Float(output)),
        Err([x, gamma, _]) => burns(
            Tensor::from_primitive(TensorPrimitive::Float(x)),
            Tensor::from_primitive(TensorPrimitive::Float(gamma)),
            beta,
            epsilon,
        ),
    }
}

/// `burn::nn::LayerNorm::forward`: the backend's `layer_norm`.
fn burns<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    epsilon: f64,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.map(|beta| beta.into_primitive().tensor()),
        epsilon,
    )))
}
