//! Root-mean-square layer normalisation.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};

use crate::scope::fast_paths_enabled;

/// RMSNorm (Zhang & Sennrich 2019) over the last dimension, as `burn::nn::RmsNorm::forward`:
///
/// `y = x / √(mean(x²) + ε) · γ`
///
/// Inside [`with_fast_paths`](crate::with_fast_paths), on Flex or `Autodiff<Flex>` in `f32`,
/// it is one pass over each row forward and one backward node (a pass per input that needs a
/// gradient); Burn's decomposition is seven passes and as many nodes. Elsewhere it is Burn's
/// formula, operation for operation.
///
/// # Shapes
/// - x: `[..., d]`
/// - gamma: `[d]`
/// - output: `[..., d]`
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    epsilon: f64,
) -> Tensor<B, D> {
    let width = gamma.dims()[0];
    if !fast_paths_enabled() || width == 0 || x.dims()[D - 1] != width {
        return burns(x, gamma, epsilon);
    }
    let inputs = [x.into_primitive().tensor(), gamma.into_primitive().tensor()];
    match run_fused!(
        B,
        Some(crate::flex::RmsNorm {
            epsilon: epsilon as f32
        }),
        inputs
    ) {
        Ok(output) => Tensor::from_primitive(TensorPrimitive::Float(output)),
        Err([x, gamma]) => burns(
            Tensor::from_primitive(TensorPrimitive::Float(x)),
            Tensor::from_primitive(TensorPrimitive::Float(gamma)),
            epsilon,
        ),
    }
}

/// `burn::nn::RmsNorm::forward`'s operations: the mean of squares in `f32`.
fn burns<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    epsilon: f64,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    let rms = (x.clone().cast(DType::F32).square().mean_dim(D - 1) + epsilon).sqrt();
    (x / rms.cast(dtype)) * gamma.unsqueeze()
}
