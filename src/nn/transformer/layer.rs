//! [`TransformerEncoderLayer`]: self-attention and feed-forward with residuals and layer norms.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

use super::{
    PositionWiseFeedForward, PositionWiseFeedForwardConfig, TransformerEncoderConfig,
    TransformerEncoderLayerAutoregressiveCache,
};
use crate::error::Result;
use crate::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use crate::nn::cache::autoregressive_or_direct;
use crate::nn::Dropout;

/// One encoder layer, as Burn's `TransformerEncoderLayer` (same fields, same order).
///
/// Post-norm: `x = norm_1(x + dropout(mha(x)))`, then `norm_2(x + dropout(pwff(x)))`.
/// Pre-norm (`norm_first`): `x = x + dropout(mha(norm_2(x)))`, then
/// `x + dropout(pwff(norm_1(x)))`.
///
/// # Shapes
/// - [`forward`](Self::forward): `[batch_size, seq_length, d_model]` →
///   `[batch_size, seq_length, d_model]`
#[derive(Module, Debug)]
pub struct TransformerEncoderLayer<B: Backend> {
    /// Self-attention sub-layer.
    pub mha: MultiHeadAttention<B>,
    /// Feed-forward sub-layer.
    pub pwff: PositionWiseFeedForward<B>,
    /// Layer norm around the feed-forward sub-layer (after attention in post-norm).
    pub norm_1: LayerNorm<B>,
    /// Layer norm around the attention sub-layer (the layer's last step in post-norm).
    pub norm_2: LayerNorm<B>,
    /// The epsilon of `norm_1` and `norm_2` (Burn's `LayerNorm` keeps its own private), for
    /// the fused LayerNorm of [`burn_lora_kernels::layer_norm`].
    pub layer_norm_eps: f64,
    /// Dropout on the residual branches.
    pub dropout: Dropout,
    /// Pre-norm if `true`, post-norm otherwise.
    pub norm_first: bool,
}

impl<B: Backend> TransformerEncoderLayer<B> {
    /// Builds a layer from the encoder's configuration, drawing its parameters in Burn's order.
    ///
    /// # Errors
    /// [`LoraError::InvalidModel`](crate::LoraError::InvalidModel) as
    /// [`TransformerEncoderConfig::init`].
    pub fn new(config: &TransformerEncoderConfig, device: &B::Device) -> Result<Self> {
        let mha = MultiHeadAttentionConfig::new(config.d_model, config.n_heads)
            .with_initializer(config.initializer.clone())
            .with_dropout(config.dropout)
            .with_quiet_softmax(config.quiet_softmax)
            .init(device)?;
        let norm = || {
            LayerNormConfig::new(config.d_model)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let (norm_1, norm_2) = (norm(), norm());
        let dropout = Dropout::new(config.dropout)?;
        let pwff = PositionWiseFeedForwardConfig::new(config.d_model, config.d_ff)
            .with_initializer(config.initializer.clone())
            .with_dropout(config.dropout)
            .with_activation(config.activation.clone())
            .init(device)?;
        Ok(Self {
            mha,
            pwff,
            norm_1,
            norm_2,
            layer_norm_eps: config.layer_norm_eps,
            dropout,
            norm_first: config.norm_first,
        })
    }

    /// Applies the layer.
    ///
    /// # Shapes
    /// - input: `[batch_size, seq_length, d_model]`
    /// - mask_pad: `[batch_size, seq_length]`, `true` at padded positions
    /// - mask_attn: `[batch_size, seq_length, seq_length]`, `true` where attention is forbidden
    /// - output: `[batch_size, seq_length, d_model]`
    pub fn forward(
        &self,
        input: Tensor<B, 3>,
        mask_pad: Option<Tensor<B, 2, Bool>>,
        mask_attn: Option<Tensor<B, 3, Bool>>,
    ) -> Tensor<B, 3> {
        self.forward_with(input, mask_pad, mask_attn, None)
    }

    /// [`forward`](Self::forward) for autoregressive inference, reusing the results for the
    /// positions already seen.
    ///
    /// # Shapes
    /// As [`forward`](Self::forward).
    pub fn forward_autoregressive_inference(
        &self,
        input: Tensor<B, 3>,
        mask_pad: Option<Tensor<B, 2, Bool>>,
        mask_attn: Option<Tensor<B, 3, Bool>>,
        cache: &mut TransformerEncoderLayerAutoregressiveCache<B>,
    ) -> Tensor<B, 3> {
        self.forward_with(input, mask_pad, mask_attn, Some(cache))
    }

    /// The layer, each sub-layer through its cache when there is one.
    fn forward_with(
        &self,
        input: Tensor<B, 3>,
        mask_pad: Option<Tensor<B, 2, Bool>>,
        mask_attn: Option<Tensor<B, 3, Bool>>,
        mut cache: Option<&mut TransformerEncoderLayerAutoregressiveCache<B>>,
    ) -> Tensor<B, 3> {
        let norm_1 = |x| layer_norm(&self.norm_1, self.layer_norm_eps, x);
        let norm_2 = |x| layer_norm(&self.norm_2, self.layer_norm_eps, x);

        // Attention residual branch.
        let x = input;
        let mut residual = x.clone();
        if self.norm_first {
            let cache = cache.as_deref_mut().map(|c| &mut c.norm_2);
            residual = autoregressive_or_direct(cache, residual, 1, norm_2);
        }
        let mut mha_input = MhaInput::self_attn(residual);
        if let Some(mask_pad) = mask_pad {
            mha_input = mha_input.mask_pad(mask_pad);
        }
        if let Some(mask_attn) = mask_attn {
            mha_input = mha_input.mask_attn(mask_attn);
        }
        let residual = match cache.as_deref_mut() {
            Some(cache) => self.mha.forward_cache(mha_input, &mut cache.mha),
            None => self.mha.forward(mha_input),
        }
        .context;
        let residual = self.dropout.forward(residual);
        let mut x = x + residual;

        // Feed-forward residual branch.
        let norm_1_cache = cache.as_deref_mut().map(|c| &mut c.norm_1);
        let residual = if self.norm_first {
            autoregressive_or_direct(norm_1_cache, x.clone(), 1, norm_1)
        } else {
            x = autoregressive_or_direct(norm_1_cache, x, 1, norm_1);
            x.clone()
        };
        let pwff_cache = cache.as_deref_mut().map(|c| &mut c.pwff);
        let residual = autoregressive_or_direct(pwff_cache, residual, 1, |x| self.pwff.forward(x));
        let residual = self.dropout.forward(residual);
        let mut x = x + residual;

        if !self.norm_first {
            x = autoregressive_or_direct(cache.map(|c| &mut c.norm_2), x, 1, norm_2);
        }
        x
    }
}

/// `norm.forward(x)` for a `norm` of epsilon `epsilon`, fused on Flex inside `with_fast_paths`
/// ([`burn_lora_kernels::layer_norm`]); elsewhere exactly Burn's.
fn layer_norm<B: Backend>(norm: &LayerNorm<B>, epsilon: f64, x: Tensor<B, 3>) -> Tensor<B, 3> {
    burn_lora_kernels::layer_norm(
        x,
        norm.gamma.val(),
        norm.beta.as_ref().map(|beta| beta.val()),
        epsilon,
    )
}
