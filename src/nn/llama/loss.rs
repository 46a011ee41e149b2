//! [`causal_lm_loss`]: next-token cross-entropy with masked labels.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// The label that takes no part in the loss (Hugging Face's `-100`): prompt and padding
/// positions.
pub const IGNORE_INDEX: i64 = -100;

/// Next-token cross-entropy, as Hugging Face's causal-LM loss: the logits at position `t`
/// predict the label at `t + 1`, and labels equal to [`IGNORE_INDEX`] are left out.
///
/// `loss = -1/N Σ_{t : labelₜ₊₁ ≠ -100} log softmax(logitsₜ)[labelₜ₊₁]`, `N` the number of
/// counted labels (a batch without any gives 0, and no gradient).
///
/// # Shapes
/// - logits: `[batch, seq, vocab]`
/// - labels: `[batch, seq]` (the input ids, with [`IGNORE_INDEX`] where no loss is wanted)
/// - output: `[1]`
pub fn causal_lm_loss<B: Backend>(logits: Tensor<B, 3>, labels: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let (total, count) = causal_lm_nll(logits, labels);
    total / count.clamp_min(1.0)
}

/// The summed negative log-likelihood of the counted labels and their number, for a loss or a
/// perplexity averaged over every token of a data set (`exp(Σ nll / Σ count)`), not over
/// batches. As [`causal_lm_loss`], position `t` predicts label `t + 1`.
///
/// # Shapes
/// - logits: `[batch, seq, vocab]`
/// - labels: `[batch, seq]`
/// - output: `[1]` and `[1]`
pub fn causal_lm_nll<B: Backend>(
    logits: Tensor<B, 3>,
    labels: Tensor<B, 2, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [batch, seq, vocab] = logits.dims();
    let device = logits.device();
    if seq < 2 {
        return (Tensor::zeros([1], &device), Tensor::zeros([1], &device));
    }
    // Position t predicts label t + 1; the last position predicts nothing. Every position is
    // scored (slicing the logits would copy them) and the last left out by the count.
    let next = Tensor::cat(
        vec![
            labels.slice([0..batch, 1..seq]),
            Tensor::full([batch, 1], IGNORE_INDEX, &device),
        ],
        1,
    );
    let counted = next.clone().not_equal_elem(IGNORE_INDEX).float();
    let targets = next.clamp(0, vocab as i64 - 1);
    // Fused on Flex: no tensor of the logits' size but the logits and their gradient.
    let picked = burn_lora_kernels::with_fast_paths::<B, _>(|| {
        burn_lora_kernels::picked_log_probs(logits, targets)
    });
    let total = (picked * counted.clone()).sum().neg();
    (total, counted.sum())
}

/// The labels of one sequence: its ids, with [`IGNORE_INDEX`] on the first `prompt_len` tokens
/// (trained on the completion only) and wherever `mask` is 0.
pub fn causal_lm_labels(ids: &[i64], mask: &[i64], prompt_len: usize) -> Vec<i64> {
    ids.iter()
        .zip(mask)
        .enumerate()
        .map(|(index, (&id, &m))| {
            if index < prompt_len || m == 0 {
                IGNORE_INDEX
            } else {
                id
            }
        })
        .collect()
}
