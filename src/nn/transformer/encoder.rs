//! [`TransformerEncoder`]: Burn's transformer encoder built from LoRA-ready layers.

use burn::config::Config;
use burn::module::{Content, DisplaySettings, Initializer, Module, ModuleDisplay};
use burn::nn::activation::ActivationConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

use super::{TransformerEncoderAutoregressiveCache, TransformerEncoderLayer};

/// Configuration of a [`TransformerEncoder`]: Burn's `TransformerEncoderConfig`, field for field
/// (same defaults, same JSON).
#[derive(Config, Debug)]
pub struct TransformerEncoderConfig {
    /// Width of the model.
    pub d_model: usize,
    /// Hidden width of the feed-forward blocks.
    pub d_ff: usize,
    /// Number of attention heads.
    pub n_heads: usize,
    /// Number of layers.
    pub n_layers: usize,
    /// Dropout rate (attention scores, feed-forward hidden layer, residual branches), in
    /// `[0, 1]`.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Pre-norm (layer norm before each sub-layer) instead of post-norm.
    #[config(default = false)]
    pub norm_first: bool,
    /// Use the "quiet softmax" in attention:
    /// <https://www.evanmiller.org/attention-is-off-by-one.html>.
    #[config(default = false)]
    pub quiet_softmax: bool,
    /// Initialisation of the linear layers' weights and biases.
    #[config(
        default = "Initializer::KaimingUniform{gain: 1.0 / 3.0f64.sqrt(), fan_out_only: false}"
    )]
    pub initializer: Initializer,
    /// Activation of the feed-forward blocks.
    #[config(default = "ActivationConfig::Gelu")]
    pub activation: ActivationConfig,
    /// Epsilon of the layer norms.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

/// Transformer encoder ("Attention Is All You Need"), as Burn's `TransformerEncoder` with every
/// linear layer a [`LoraLinear`](crate::LoraLinear): `layers[i].mha.{query,key,value,output}`
/// and `layers[i].pwff.{linear_inner,linear_outer}`.
///
/// Same fields and module paths as Burn's, so its records and checkpoints load unchanged.
///
/// # Shapes
/// - [`forward`](Self::forward): `[batch_size, seq_length, d_model]` →
///   `[batch_size, seq_length, d_model]`
///
/// ```
/// use burn::backend::Flex as Inference;
/// use burn::tensor::{Bool, Distribution, Tensor};
/// use burn_lora::nn::transformer::{TransformerEncoderConfig, TransformerEncoderInput};
/// use burn_lora::{LoraConfig, LoraLayer};
///
/// let device = Default::default();
/// let mut encoder = TransformerEncoderConfig::new(32, 64, 4, 2).init::<Inference>(&device)?;
///
/// let x = Tensor::<Inference, 3>::random([2, 5, 32], Distribution::Default, &device);
/// // The last two positions of the second sequence are padding.
/// let mask_pad = Tensor::<Inference, 2, Bool>::from_bool(
///     [[false; 5], [false, false, false, true, true]].into(),
///     &device,
/// );
/// let input = || TransformerEncoderInput::new(x.clone()).mask_pad(mask_pad.clone());
/// let before = encoder.forward(input());
/// assert_eq!(before.dims(), [2, 5, 32]);
///
/// // Every projection is a LoraLinear: adapt the queries of the first layer.
/// encoder.layers[0].mha.query.add_adapter("default", &LoraConfig::new(8, 16.0))?;
/// assert_eq!(encoder.layers[0].mha.query.adapter_names(), vec!["default"]);
/// // A fresh adapter has B = 0: the output is unchanged until it is trained.
/// encoder.forward(input()).into_data().assert_eq(&before.into_data(), true);
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct TransformerEncoder<B: Backend> {
    /// The layers, applied in order.
    pub layers: Vec<TransformerEncoderLayer<B>>,
    /// Width of the model.
    pub d_model: usize,
    /// Hidden width of the feed-forward blocks.
    pub d_ff: usize,
    /// Number of attention heads.
    pub n_heads: usize,
    /// Number of layers.
    pub n_layers: usize,
    /// Dropout rate.
    pub dropout: f64,
    /// Whether layer norms come before the sub-layers (pre-norm).
    pub norm_first: bool,
    /// Whether attention uses the quiet softmax.
    pub quiet_softmax: bool,
}

/// Input of [`TransformerEncoder::forward`], as Burn's `TransformerEncoderInput`.
///
/// # Shapes
/// - tensor: `[batch_size, seq_length, d_model]`
/// - padding mask: `[batch_size, seq_length]`, `true` at padded positions
/// - attention mask: `[batch_size, seq_length, seq_length]`, `true` where attention is
///   forbidden
#[derive(Debug)]
pub struct TransformerEncoderInput<B: Backend> {
    tensor: Tensor<B, 3>,
    mask_pad: Option<Tensor<B, 2, Bool>>,
    mask_attn: Option<Tensor<B, 3, Bool>>,
}

impl<B: Backend> TransformerEncoderInput<B> {
    /// An input without masks.
    pub fn new(tensor: Tensor<B, 3>) -> Self {
        Self {
            tensor,
            mask_pad: None,
            mask_attn: None,
        }
    }

    /// Sets the padding mask (`true` = padding), `[batch_size, seq_length]`.
    pub fn mask_pad(mut self, mask_pad: Tensor<B, 2, Bool>) -> Self {
        self.mask_pad = Some(mask_pad);
        self
    }

    /// Sets the attention mask (`true` = masked), `[batch_size, seq_length, seq_length]`.
    pub fn mask_attn(mut self, mask_attn: Tensor<B, 3, Bool>) -> Self {
        self.mask_attn = Some(mask_attn);
        self
    }
}

impl TransformerEncoderConfig {
    /// Builds the encoder, drawing its parameters as Burn's `init` does.
    ///
    /// # Errors
    /// [`LoraError::InvalidModel`](crate::LoraError::InvalidModel) when a width or `n_heads`
    /// is zero, `d_model` is not a multiple of `n_heads`, or `dropout` is not a probability.
    pub fn init<B: Backend>(&self, device: &B::Device) -> crate::Result<TransformerEncoder<B>> {
        Ok(TransformerEncoder {
            layers: (0..self.n_layers)
                .map(|_| TransformerEncoderLayer::new(self, device))
                .collect::<crate::Result<_>>()?,
            d_model: self.d_model,
            d_ff: self.d_ff,
            n_heads: self.n_heads,
            n_layers: self.n_layers,
            dropout: self.dropout,
            norm_first: self.norm_first,
            quiet_softmax: self.quiet_softmax,
        })
    }
}

impl<B: Backend> TransformerEncoder<B> {
    /// Applies the layers in order.
    ///
    /// # Shapes
    /// - input tensor: `[batch_size, seq_length, d_model]`
    /// - output: `[batch_size, seq_length, d_model]`
    pub fn forward(&self, input: TransformerEncoderInput<B>) -> Tensor<B, 3> {
        let mut x = input.tensor;
        for layer in &self.layers {
            x = layer.forward(x, input.mask_pad.clone(), input.mask_attn.clone());
        }
        x
    }

    /// [`forward`](Self::forward) for autoregressive inference: each call passes the sequence
    /// so far, and only its last position is computed anew.
    ///
    /// # Shapes
    /// As [`forward`](Self::forward).
    ///
    /// A cache made for an encoder with another number of layers is emptied first, so the
    /// output is computed in full rather than read from the wrong layers.
    pub fn forward_autoregressive_inference(
        &self,
        input: TransformerEncoderInput<B>,
        cache: &mut TransformerEncoderAutoregressiveCache<B>,
    ) -> Tensor<B, 3> {
        if cache.layers.len() != self.layers.len() {
            *cache = self.new_autoregressive_cache();
        }
        let mut x = input.tensor;
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward_autoregressive_inference(
                x,
                input.mask_pad.clone(),
                input.mask_attn.clone(),
                layer_cache,
            );
        }
        x
    }

    /// An empty cache for [`forward_autoregressive_inference`](Self::forward_autoregressive_inference).
    pub fn new_autoregressive_cache(&self) -> TransformerEncoderAutoregressiveCache<B> {
        TransformerEncoderAutoregressiveCache::empty(self.layers.len())
    }
}

impl<B: Backend> ModuleDisplay for TransformerEncoder<B> {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("d_model", &self.d_model)
            .add("d_ff", &self.d_ff)
            .add("n_heads", &self.n_heads)
            .add("n_layers", &self.n_layers)
            .add("dropout", &self.dropout)
            .add("norm_first", &self.norm_first)
            .add("quiet_softmax", &self.quiet_softmax)
            .optional()
    }
}
