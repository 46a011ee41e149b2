//! [`DecoderLayer`]: one pre-norm block of a Llama-family decoder.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{RmsNorm, RmsNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

use super::attention::{GroupedQueryAttention, GroupedQueryAttentionConfig};
use super::kv_cache::KvCache;
use super::mlp::{SwiGluMlp, SwiGluMlpConfig};
use super::rope::RopeTables;
use crate::error::{LoraError, Result as LoraResult};
use crate::layers::adapter_batch::AdapterBatch;
use crate::LoraModel;

/// Configuration of a [`DecoderLayer`].
#[derive(Config, Debug)]
pub struct DecoderLayerConfig {
    /// The attention block.
    pub attention: GroupedQueryAttentionConfig,
    /// The feed-forward block.
    pub mlp: SwiGluMlpConfig,
    /// RMSNorm epsilon (`rms_norm_eps`).
    #[config(default = 1e-6)]
    pub rms_norm_eps: f64,
}

impl DecoderLayerConfig {
    /// Builds the layer.
    ///
    /// # Errors
    /// The blocks' configuration errors, and [`LoraError::InvalidModel`] for a non-positive
    /// epsilon or attention and feed-forward widths that differ.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LoraResult<DecoderLayer<B>> {
        check_epsilon(self.rms_norm_eps)?;
        if self.attention.d_model != self.mlp.d_model {
            return Err(LoraError::InvalidModel(format!(
                "attention width {} differs from feed-forward width {}",
                self.attention.d_model, self.mlp.d_model
            )));
        }
        let norm = || {
            RmsNormConfig::new(self.attention.d_model)
                .with_epsilon(self.rms_norm_eps)
                .init(device)
        };
        Ok(DecoderLayer {
            input_layernorm: norm(),
            self_attn: self.attention.init(device)?,
            post_attention_layernorm: norm(),
            mlp: self.mlp.init(device)?,
        })
    }
}

/// [`LoraError::InvalidModel`] unless an RMSNorm epsilon is positive and finite (Burn's
/// `RmsNormConfig::init` panics otherwise).
pub(crate) fn check_epsilon(eps: f64) -> LoraResult<()> {
    if eps.is_finite() && eps > 0.0 {
        Ok(())
    } else {
        Err(LoraError::InvalidModel(format!(
            "rms_norm_eps must be positive, got {eps}"
        )))
    }
}

/// `norm.forward(x)`, fused on Flex inside `with_fast_paths` ([`burn_lora_kernels::rms_norm`]).
pub(crate) fn rms_norm<B: Backend, const D: usize>(
    norm: &RmsNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    burn_lora_kernels::rms_norm(x, norm.gamma.val(), norm.epsilon)
}

/// One pre-norm decoder block, as Hugging Face's `LlamaDecoderLayer`:
///
/// `h = x + attn(rms(x))`, `y = h + mlp(rms(h))`
///
/// Field names are Hugging Face's, so module paths (`self_attn.q_proj`, `mlp.down_proj`) are
/// PEFT's.
///
/// # Shapes
/// - input: `[batch, seq, d_model]`, output: the same
#[derive(Module, Debug, LoraModel)]
pub struct DecoderLayer<B: Backend> {
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Causal grouped-query self-attention.
    pub self_attn: GroupedQueryAttention<B>,
    /// RMSNorm before the feed-forward block.
    pub post_attention_layernorm: RmsNorm<B>,
    /// The SwiGLU feed-forward block.
    pub mlp: SwiGluMlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// Applies the block.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_model]`
    /// - mask: `[batch, 1, seq, past + seq]`, `true` where attention is forbidden; `None` when
    ///   every position may see every key (one new token per row, no padding)
    /// - output: `[batch, seq, d_model]`
    ///
    /// # Errors
    /// As [`GroupedQueryAttention::forward`].
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: Option<Tensor<B, 4, Bool>>,
        cache: Option<&mut KvCache<B>>,
        adapters: Option<&AdapterBatch>,
    ) -> LoraResult<Tensor<B, 3>> {
        let attended = self.self_attn.forward(
            rms_norm(&self.input_layernorm, x.clone()),
            rope,
            mask,
            cache,
            adapters,
        )?;
        let x = x + attended;
        let mlp = self.mlp.forward(
            rms_norm(&self.post_attention_layernorm, x.clone()),
            adapters,
        )?;
        Ok(x + mlp)
    }
}
