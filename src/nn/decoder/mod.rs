//! LoRA-ready blocks of Llama-family decoders (Llama, Qwen2, Mistral): rotary positions,
//! grouped-query causal self-attention with a KV cache, the SwiGLU feed-forward block and the
//! pre-norm decoder layer, with Hugging Face's field names so that module paths are PEFT's.
//!
//! Every linear layer is a [`LoraLinear`]; each block's forward takes an optional
//! [`AdapterBatch`] so that the rows of one batch can run different adapters.

mod attention;
mod kv_cache;
mod layer;
pub(crate) mod mask;
mod mlp;
mod rope;

pub use attention::{GroupedQueryAttention, GroupedQueryAttentionConfig};
pub use kv_cache::KvCache;
pub(crate) use layer::{check_epsilon, rms_norm};
pub use layer::{DecoderLayer, DecoderLayerConfig};
pub use mlp::{SwiGluMlp, SwiGluMlpConfig};
pub use rope::{RopeScaling, RopeTables, RotaryEmbedding, RotaryEmbeddingConfig};

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::error::Result;
use crate::layers::adapter_batch::AdapterBatch;
pub(crate) use crate::nn::dropout::check_probability;
use crate::LoraLinear;

/// `linear` applied to `x`, each row with its own adapter when a batch is given.
pub(crate) fn project<B: Backend, const D: usize>(
    linear: &LoraLinear<B>,
    x: Tensor<B, D>,
    adapters: Option<&AdapterBatch>,
) -> Result<Tensor<B, D>> {
    match adapters {
        Some(batch) => linear.forward_adapters(x, batch),
        None => Ok(linear.forward(x)),
    }
}
