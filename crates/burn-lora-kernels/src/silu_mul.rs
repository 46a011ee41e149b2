//! SwiGLU's product, `silu(gate) ⊙ up`.

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::scope::fast_paths_enabled;

/// `silu(gate) ⊙ up`, with `silu(x) = x · σ(x)`: the gated product of Llama's feed-forward
/// block (SwiGLU, Shazeer 2020).
///
/// Inside [`with_fast_paths`](crate::with_fast_paths), on Flex or `Autodiff<Flex>` with `f32`
/// tensors of one shape, it is one pass forward and one backward node (one pass writing both
/// gradients); Burn's decomposition is five passes and four nodes. Elsewhere it is
/// `burn::tensor::activation::silu(gate) * up`.
///
/// # Shapes
/// - gate, up: `[..]`, the same
/// - output: the same
pub fn silu_mul<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    if !fast_paths_enabled() || gate.dims() != up.dims() {
        return silu(gate) * up;
    }
    let inputs = [gate.into_primitive().tensor(), up.into_primitive().tensor()];
    match run_fused!(B, Some(crate::flex::SiluMul), inputs) {
        Ok(output) => Tensor::from_primitive(TensorPrimitive::Float(output)),
        Err([gate, up]) => {
            let tensor = |t| Tensor::<B, D>::from_primitive(TensorPrimitive::Float(t));
            silu(tensor(gate)) * tensor(up)
        }
    }
}
