//! The log-probabilities of chosen classes: the core of a cross-entropy loss.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorPrimitive};

use crate::scope::fast_paths_enabled;

/// `log softmax(logits)[target]` at every position: with Burn's operations,
/// `log_softmax(logits, 2).gather(2, targets.unsqueeze_dim(2)).squeeze_dim(2)`.
///
/// Inside [`with_fast_paths`](crate::with_fast_paths), on Flex or `Autodiff<Flex>` in `f32`,
/// it reads each row of logits twice forward (maximum, then `log Σ exp`) and writes the
/// gradient in one pass backward (`dy · (onehot − softmax)`), keeping no `[.., classes]`
/// tensor but the logits themselves; Burn's path makes and keeps several, each as large as the
/// logits (a language model's vocabulary: 151 MB for 768 tokens of SmolLM2). Targets outside
/// `0..classes` take Burn's path.
///
/// # Shapes
/// - logits: `[batch, seq, classes]`
/// - targets: `[batch, seq]`
/// - output: `[batch, seq]`
pub fn picked_log_probs<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
) -> Tensor<B, 2> {
    let [batch, seq, classes] = logits.dims();
    if !fast_paths_enabled() || targets.dims() != [batch, seq] || classes == 0 {
        return burns(logits, targets);
    }
    let fused = run_fused!(
        B,
        crate::flex::PickedLogProbs::new::<B>(targets.clone().into_primitive(), classes),
        [logits.into_primitive().tensor()]
    );
    match fused {
        Ok(output) => Tensor::from_primitive(TensorPrimitive::Float(output)),
        Err([logits]) => burns(
            Tensor::from_primitive(TensorPrimitive::Float(logits)),
            targets,
        ),
    }
}

fn burns<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    log_softmax(logits, 2)
        .gather(2, targets.unsqueeze_dim::<3>(2))
        .squeeze_dim::<2>(2)
}
