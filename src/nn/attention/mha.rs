//! [`MultiHeadAttention`]: Burn's multi-head attention with [`LoraLinear`] projections.

use burn::config::Config;
use burn::module::{Content, DisplaySettings, Initializer, Module, ModuleDisplay};
use burn::nn::{Gelu, LinearConfig};
use burn::tensor::activation::quiet_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

use super::{MhaCache, MhaInput, MhaOutput};
use crate::error::LoraError;
use crate::nn::Dropout;
use crate::LoraLinear;

/// Configuration of a [`MultiHeadAttention`]: Burn's `MultiHeadAttentionConfig`, field for
/// field (same defaults, same JSON).
#[derive(Config, Debug)]
pub struct MultiHeadAttentionConfig {
    /// Width of the model (each projection is `d_model → d_model`).
    pub d_model: usize,
    /// Number of heads; `d_model / n_heads` is the width of each.
    pub n_heads: usize,
    /// Dropout rate on the attention scores, in `[0, 1]` (see
    /// [`MultiHeadAttention::dropout_after_softmax`] for Hugging Face's placement).
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Value given to masked attention scores before the softmax (too low may give NaN).
    #[config(default = -1.0e4)]
    pub min_float: f64,
    /// Use the "quiet softmax" (an implicit extra zero logit), letting a head attend to
    /// nothing: <https://www.evanmiller.org/attention-is-off-by-one.html>.
    #[config(default = false)]
    pub quiet_softmax: bool,
    /// Initialisation of the projections' weights and biases.
    #[config(
        default = "Initializer::KaimingUniform{gain: 1.0 / 3.0f64.sqrt(), fan_out_only: false}"
    )]
    pub initializer: Initializer,
}

/// Multi-head attention ("Attention Is All You Need"), as Burn's `MultiHeadAttention` with each
/// projection a [`LoraLinear`] that can take adapters.
///
/// Same fields (in the same order) and module paths as Burn's, so its records load unchanged.
///
/// # Shapes
/// - `query`, `key`, `value`, `output`: `d_model → d_model`
/// - see [`forward`](Self::forward)
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct MultiHeadAttention<B: Backend> {
    /// Projection of the input to the queries.
    pub query: LoraLinear<B>,
    /// Projection of the input to the keys.
    pub key: LoraLinear<B>,
    /// Projection of the input to the values.
    pub value: LoraLinear<B>,
    /// Projection of the attended values back to the model width.
    pub output: LoraLinear<B>,
    /// Dropout on the attention scores, or on the probabilities with `dropout_after_softmax`.
    pub dropout: Dropout,
    /// Whether dropout applies to the probabilities after the softmax (PyTorch's and Hugging
    /// Face's placement) rather than to the scores before it (Burn's, what `init` builds).
    pub dropout_after_softmax: bool,
    /// Unused; kept as in Burn's struct.
    pub activation: Gelu,
    /// Width of the model.
    pub d_model: usize,
    /// Number of heads.
    pub n_heads: usize,
    /// Width of each head's queries and keys, `d_model / n_heads`.
    pub d_k: usize,
    /// Value given to masked attention scores.
    pub min_float: f64,
    /// Whether the quiet softmax is used.
    pub quiet_softmax: bool,
}

impl MultiHeadAttentionConfig {
    /// Builds the module, drawing the projections as Burn's `init` does.
    ///
    /// # Errors
    /// [`LoraError::InvalidModel`] when `d_model` or `n_heads` is zero, `d_model` is not a
    /// multiple of `n_heads`, or `dropout` is not a probability.
    pub fn init<B: Backend>(&self, device: &B::Device) -> crate::Result<MultiHeadAttention<B>> {
        if self.d_model == 0 || self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return Err(LoraError::InvalidModel(format!(
                "multi-head attention needs non-zero sizes and d_model a multiple of n_heads, \
                 got d_model {} and n_heads {}",
                self.d_model, self.n_heads
            )));
        }
        let dropout = Dropout::new(self.dropout)?;
        let linear = || {
            LoraLinear::from_linear(
                LinearConfig::new(self.d_model, self.d_model)
                    .with_initializer(self.initializer.clone())
                    .init(device),
            )
        };
        Ok(MultiHeadAttention {
            query: linear(),
            key: linear(),
            value: linear(),
            output: linear(),
            dropout,
            dropout_after_softmax: false,
            activation: Gelu::new(),
            d_model: self.d_model,
            n_heads: self.n_heads,
            d_k: self.d_model / self.n_heads,
            min_float: self.min_float,
            quiet_softmax: self.quiet_softmax,
        })
    }
}

impl<B: Backend> MultiHeadAttention<B> {
    /// Attends `input.query` over `input.key` and `input.value`.
    ///
    /// # Shapes
    /// - query: `[batch_size, seq_length_1, d_model]`
    /// - key, value: `[batch_size, seq_length_2, d_model]`
    /// - output context: `[batch_size, seq_length_1, d_model]`
    /// - output weights: `[batch_size, n_heads, seq_length_1, seq_length_2]`
    pub fn forward(&self, input: MhaInput<B>) -> MhaOutput<B> {
        let query = self.attention_linear(input.query, &self.query);
        let key = self.attention_linear(input.key, &self.key);
        let value = self.attention_linear(input.value, &self.value);
        let (weights, context) = self.attend(query, key, value, input.mask_pad, input.mask_attn);
        let context = self.output.forward(context);
        MhaOutput { weights, context }
    }

    /// [`forward`](Self::forward) for autoregressive decoding: each call passes the sequence
    /// so far, and only its last position is projected anew.
    ///
    /// # Shapes
    /// As [`forward`](Self::forward).
    pub fn forward_cache(&self, input: MhaInput<B>, cache: &mut MhaCache<B>) -> MhaOutput<B> {
        let query = cache
            .query
            .forward(input.query, |t| self.attention_linear(t, &self.query));
        let key = cache
            .key
            .forward(input.key, |t| self.attention_linear(t, &self.key));
        let value = cache
            .value
            .forward(input.value, |t| self.attention_linear(t, &self.value));
        let (weights, context) = self.attend(query, key, value, input.mask_pad, input.mask_attn);
        let context = cache.output.forward(context, |t| self.output.forward(t));
        MhaOutput { weights, context }
    }

    /// The attention weights and the attended values with the heads concatenated, before the
    /// output projection.
    ///
    /// # Shapes
    /// - query: `[batch_size, n_heads, seq_length_1, d_k]`
    /// - key, value: `[batch_size, n_heads, seq_length_2, d_k]`
    /// - output: `[batch_size, n_heads, seq_length_1, seq_length_2]`,
    ///   `[batch_size, seq_length_1, n_heads · d_k]`
    fn attend(
        &self,
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
        mask_pad: Option<Tensor<B, 2, Bool>>,
        mask_attn: Option<Tensor<B, 3, Bool>>,
    ) -> (Tensor<B, 4>, Tensor<B, 3>) {
        let scores = query
            .matmul(key.transpose())
            .div_scalar((self.d_k as f32).sqrt());
        let weights = if self.dropout_after_softmax {
            let weights = self.attn_weights(scores, mask_pad, mask_attn);
            self.dropout.forward(weights)
        } else {
            let scores = self.dropout.forward(scores);
            self.attn_weights(scores, mask_pad, mask_attn)
        };
        let context = burn_lora_kernels::merge_heads(weights.clone().matmul(value));
        (weights, context)
    }

    /// Masked (quiet) softmax of the scores over the keys.
    fn attn_weights(
        &self,
        mut scores: Tensor<B, 4>,
        mask_pad: Option<Tensor<B, 2, Bool>>,
        mask_attn: Option<Tensor<B, 3, Bool>>,
    ) -> Tensor<B, 4> {
        let mask_pad = mask_pad.map(|mask| {
            let [batch_size, seq_length] = mask.dims();
            mask.reshape([batch_size, 1, 1, seq_length])
        });
        let mask_attn = mask_attn.map(|mask| {
            let [batch_size, seq_length_1, seq_length_2] = mask.dims();
            mask.reshape([batch_size, 1, seq_length_1, seq_length_2])
        });
        if self.quiet_softmax {
            for mask in [mask_pad, mask_attn].into_iter().flatten() {
                scores = scores.mask_fill(mask, self.min_float);
            }
            return quiet_softmax(scores, 3);
        }
        // The fill and the softmax in one operation on the CPU backends' fast paths.
        let mask = match (mask_pad, mask_attn) {
            (Some(mask_pad), Some(mask_attn)) => {
                scores = scores.mask_fill(mask_pad, self.min_float);
                Some(mask_attn)
            }
            (mask_pad, mask_attn) => mask_pad.or(mask_attn),
        };
        burn_lora_kernels::masked_softmax_filled(scores, mask, self.min_float)
    }

    /// Projects and splits into heads: `[batch, seq, d_model]` → `[batch, n_heads, seq, d_k]`.
    fn attention_linear(&self, x: Tensor<B, 3>, linear: &LoraLinear<B>) -> Tensor<B, 4> {
        burn_lora_kernels::split_heads(linear.forward(x), self.n_heads)
    }
}

impl<B: Backend> ModuleDisplay for MultiHeadAttention<B> {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("d_model", &self.d_model)
            .add("n_heads", &self.n_heads)
            .add("d_k", &self.d_k)
            .add("dropout", &self.dropout.prob())
            .add("min_float", &self.min_float)
            .add("quiet_softmax", &self.quiet_softmax)
            .optional()
    }
}
