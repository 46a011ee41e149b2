//! [`GroupedQueryAttention`]: causal self-attention with grouped key/value heads, rotary
//! positions and LoRA-ready projections.

use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::LinearConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

use super::kv_cache::KvCache;
use super::project;
use super::rope::RopeTables;
use crate::error::{LoraError, Result as LoraResult};
use crate::layers::adapter_batch::AdapterBatch;
use crate::nn::Dropout;
use crate::{LoraLinear, LoraModel};

/// Configuration of a [`GroupedQueryAttention`].
#[derive(Config, Debug)]
pub struct GroupedQueryAttentionConfig {
    /// Width of the model.
    pub d_model: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads; each serves `n_heads / n_kv_heads` query heads.
    pub n_kv_heads: usize,
    /// Width of each head.
    pub head_dim: usize,
    /// Whether `q_proj`, `k_proj` and `v_proj` have a bias (Qwen2).
    #[config(default = false)]
    pub qkv_bias: bool,
    /// Whether `o_proj` has a bias (Llama's `attention_bias` biases all four).
    #[config(default = false)]
    pub output_bias: bool,
    /// Dropout on the attention probabilities in training (`attention_dropout`).
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Initialisation of the projections.
    #[config(
        default = "Initializer::KaimingUniform{gain: 1.0 / 3.0f64.sqrt(), fan_out_only: false}"
    )]
    pub initializer: Initializer,
}

impl GroupedQueryAttentionConfig {
    /// Builds the module.
    ///
    /// # Errors
    /// [`LoraError::InvalidModel`] for a zero width or head count, `n_heads` not a multiple of
    /// `n_kv_heads`, or a dropout outside `[0, 1]`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LoraResult<GroupedQueryAttention<B>> {
        if [self.d_model, self.n_heads, self.n_kv_heads, self.head_dim].contains(&0)
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            return Err(LoraError::InvalidModel(format!(
                "grouped-query attention needs non-zero sizes and n_heads a multiple of \
                 n_kv_heads, got {self:?}"
            )));
        }
        let dropout = Dropout::new(self.dropout)?;
        let linear = |d_in: usize, d_out: usize, bias: bool| {
            LoraLinear::from_linear(
                LinearConfig::new(d_in, d_out)
                    .with_bias(bias)
                    .with_initializer(self.initializer.clone())
                    .init(device),
            )
        };
        let q_width = self.n_heads * self.head_dim;
        let kv_width = self.n_kv_heads * self.head_dim;
        Ok(GroupedQueryAttention {
            q_proj: linear(self.d_model, q_width, self.qkv_bias),
            k_proj: linear(self.d_model, kv_width, self.qkv_bias),
            v_proj: linear(self.d_model, kv_width, self.qkv_bias),
            o_proj: linear(q_width, self.d_model, self.output_bias),
            dropout,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        })
    }
}

/// Causal self-attention with grouped key/value heads (Ainslie et al. 2023), as Hugging Face's
/// `LlamaAttention`: rotary positions on queries and keys, each key/value head shared by
/// `n_heads / n_kv_heads` consecutive query heads, and every projection a [`LoraLinear`].
///
/// `softmax(q kᵀ / √head_dim + mask) v`, masked positions at the lowest float (a fully masked
/// row, a left-padding query, stays finite).
///
/// Shared key/value heads are not copied out per query head: the query heads of one group are
/// stacked along the sequence, so one matmul per key/value head serves the whole group.
///
/// # Shapes
/// - `q_proj`: `d_model → n_heads · head_dim`; `k_proj`, `v_proj`: `d_model → n_kv_heads ·
///   head_dim`; `o_proj`: `n_heads · head_dim → d_model`
/// - see [`forward`](Self::forward)
#[derive(Module, Debug, LoraModel)]
pub struct GroupedQueryAttention<B: Backend> {
    /// Projection to the queries.
    pub q_proj: LoraLinear<B>,
    /// Projection to the keys.
    pub k_proj: LoraLinear<B>,
    /// Projection to the values.
    pub v_proj: LoraLinear<B>,
    /// Projection of the attended values back to the model width.
    pub o_proj: LoraLinear<B>,
    /// Dropout on the attention probabilities (training only).
    pub dropout: Dropout,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads.
    pub n_kv_heads: usize,
    /// Width of each head.
    pub head_dim: usize,
}

impl<B: Backend> GroupedQueryAttention<B> {
    /// Attends every position over the positions its mask allows, the cached ones included.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_model]`
    /// - rope: tables of `[batch, 1, seq, head_dim]`
    /// - mask: `[batch, 1, seq, past + seq]`, `true` where attention is forbidden; `None` when
    ///   every position may see every key (one new token per row, no padding)
    /// - output: `[batch, seq, d_model]`
    ///
    /// # Errors
    /// The projections' errors with an adapter batch (wrong row count, merged layers) and the
    /// cache's (another batch or head shape).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: Option<Tensor<B, 4, Bool>>,
        cache: Option<&mut KvCache<B>>,
        adapters: Option<&AdapterBatch>,
    ) -> LoraResult<Tensor<B, 3>> {
        let query = rope.apply_heads(project(&self.q_proj, x.clone(), adapters)?, self.n_heads);
        let key = rope.apply_heads(project(&self.k_proj, x.clone(), adapters)?, self.n_kv_heads);
        let value =
            burn_lora_kernels::split_heads(project(&self.v_proj, x, adapters)?, self.n_kv_heads);
        let (key, value) = match cache {
            Some(cache) => cache.append(key, value)?,
            None => (key, value),
        };
        let context = self.attend(query, key, value, mask);
        project(&self.o_proj, context, adapters)
    }

    /// `softmax(q kᵀ / √d + mask) v`, the heads merged: fused on Flex inside `with_fast_paths`
    /// ([`burn_lora_kernels::grouped_attention`]), with Burn's operations around the dropout
    /// when it is active.
    ///
    /// # Shapes
    /// - query: `[batch, n_heads, seq, head_dim]`
    /// - key, value: `[batch, n_kv_heads, keys, head_dim]`
    /// - mask: `[batch, 1, seq, keys]`, or none
    /// - output: `[batch, seq, n_heads · head_dim]`
    fn attend(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
        mask: Option<Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        if !self.dropout.is_active::<B>(&query.device()) {
            return burn_lora_kernels::grouped_attention(query, key, value, mask, scale);
        }
        let probs = burn_lora_kernels::attention_probs(query, key, mask, scale);
        burn_lora_kernels::attention_context(self.dropout.forward(probs), value, self.n_heads)
    }
}
