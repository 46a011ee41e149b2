//! The sizes a config states checked against the checkpoint's tensors before a model of those
//! sizes is built, so that a config cannot make burn-lora build a model larger than the weights
//! it comes with.

use super::config::CausalLmConfig;
use crate::error::{LoraError, Result};
use crate::io::pytorch_checkpoint::TensorFile;

/// Checks, by Hugging Face's names, that `files` hold the embedding `[vocab_size, hidden_size]`
/// and, for each of the `num_hidden_layers` layers, the q, k and up projections of the stated
/// widths (`[out, in]`), stopping at the first that is missing or of another shape.
///
/// # Errors
/// [`LoraError::MissingKey`] or [`LoraError::ShapeMismatch`] naming the tensor.
pub(crate) fn check_sizes(files: &[&dyn TensorFile], config: &CausalLmConfig) -> Result<()> {
    let name = || {
        files
            .first()
            .map(|file| file.path().display().to_string())
            .unwrap_or_default()
    };
    let check =
        |key: String, expected: [usize; 2]| match files.iter().find_map(|file| file.shape(&key)) {
            None => Err(LoraError::MissingKey { path: name(), key }),
            Some(found) if found != expected => Err(LoraError::ShapeMismatch {
                what: format!(
                    "{}: tensor \"{key}\" for the sizes the config states",
                    name()
                ),
                expected: expected.to_vec(),
                found,
            }),
            Some(_) => Ok(()),
        };
    let hidden = config.hidden_size;
    check(
        "model.embed_tokens.weight".into(),
        [config.vocab_size, hidden],
    )?;
    // `validate` checked that these products do not overflow.
    let rows = [
        (
            "self_attn.q_proj",
            config.num_attention_heads * config.head_dim,
        ),
        (
            "self_attn.k_proj",
            config.num_key_value_heads * config.head_dim,
        ),
        ("mlp.up_proj", config.intermediate_size),
    ];
    for layer in 0..config.num_hidden_layers {
        for (module, rows) in rows {
            check(
                format!("model.layers.{layer}.{module}.weight"),
                [rows, hidden],
            )?;
        }
    }
    Ok(())
}
