//! The exact GELU activation.

use burn::tensor::activation::gelu as burns;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::scope::fast_paths_enabled;

/// GELU (Hendrycks & Gimpel 2016), exact: `x Φ(x) = x · ½ (1 + erf(x / √2))`, as
/// `burn::tensor::activation::gelu`.
///
/// Inside [`with_fast_paths`](crate::with_fast_paths), on Flex or `Autodiff<Flex>` in `f32`,
/// it is one vectorised pass forward and one backward (`erf` by Abramowitz and Stegun's 7.1.26,
/// within 1.5e-7; Burn's `erf` is a scalar call per value). Elsewhere it is Burn's.
///
/// # Shapes
/// - x, output: `[..]`, the same
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if !fast_paths_enabled() {
        return burns(x);
    }
    match run_fused!(B, Some(crate::flex::Gelu), [x.into_primitive().tensor()]) {
        Ok(output) => Tensor::from_primitive(TensorPrimitive::Float(output)),
        Err([x]) => burns(Tensor::from_primitive(TensorPrimitive::Float(x))),
    }
}
