//! [`PositionWiseFeedForward`]: Burn's feed-forward block with [`LoraLinear`] layers.

use burn::config::Config;
use burn::module::{Content, DisplaySettings, Initializer, Module, ModuleDisplay};
use burn::nn::activation::{Activation, ActivationConfig};
use burn::nn::LinearConfig;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::error::LoraError;
use crate::nn::Dropout;
use crate::LoraLinear;

/// Configuration of a [`PositionWiseFeedForward`]: Burn's `PositionWiseFeedForwardConfig`,
/// field for field (same defaults, same JSON).
#[derive(Config, Debug)]
pub struct PositionWiseFeedForwardConfig {
    /// Input and output width.
    pub d_model: usize,
    /// Hidden width.
    pub d_ff: usize,
    /// Dropout rate after the activation, in `[0, 1]`.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Initialisation of the layers' weights and biases.
    #[config(
        default = "Initializer::KaimingUniform{gain: 1.0 / 3.0f64.sqrt(), fan_out_only: false}"
    )]
    pub initializer: Initializer,
    /// Activation between the two layers.
    #[config(default = "ActivationConfig::Gelu")]
    pub activation: ActivationConfig,
}

/// Position-wise feed-forward block, `linear_outer(dropout(activation(linear_inner(x))))`, as
/// Burn's `PositionWiseFeedForward` with [`LoraLinear`] layers.
///
/// As in Burn, `activation` is not part of the record, so a learnable activation (SwiGLU) is
/// neither saved nor loaded.
///
/// # Shapes
/// - `linear_inner`: `d_model → d_ff`, `linear_outer`: `d_ff → d_model`
/// - `forward`: `[..., d_model]` → `[..., d_model]`
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct PositionWiseFeedForward<B: Backend> {
    /// First layer, `d_model → d_ff`.
    pub linear_inner: LoraLinear<B>,
    /// Second layer, `d_ff → d_model`.
    pub linear_outer: LoraLinear<B>,
    /// Dropout after the activation.
    pub dropout: Dropout,
    /// Activation between the layers (not recorded, as in Burn).
    #[module(skip)]
    pub activation: Activation<B>,
}

impl PositionWiseFeedForwardConfig {
    /// Builds the module, drawing the layers as Burn's `init` does.
    ///
    /// # Errors
    /// [`LoraError::InvalidModel`] for a zero width or a dropout that is not a probability.
    pub fn init<B: Backend>(
        &self,
        device: &B::Device,
    ) -> crate::Result<PositionWiseFeedForward<B>> {
        if self.d_model == 0 || self.d_ff == 0 {
            return Err(LoraError::InvalidModel(format!(
                "feed-forward widths must be non-zero, got d_model {} and d_ff {}",
                self.d_model, self.d_ff
            )));
        }
        let dropout = Dropout::new(self.dropout)?;
        let linear = |d_input, d_output| {
            LoraLinear::from_linear(
                LinearConfig::new(d_input, d_output)
                    .with_initializer(self.initializer.clone())
                    .init(device),
            )
        };
        Ok(PositionWiseFeedForward {
            linear_inner: linear(self.d_model, self.d_ff),
            linear_outer: linear(self.d_ff, self.d_model),
            dropout,
            activation: self.activation.init(device),
        })
    }
}

impl<B: Backend> PositionWiseFeedForward<B> {
    /// Applies the block at every position.
    ///
    /// # Shapes
    /// - input: `[..., d_model]`
    /// - output: `[..., d_model]`
    pub fn forward<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        let x = self.linear_inner.forward(input);
        // The exact GELU fused on Flex inside `with_fast_paths` (BERT's activation).
        let x = match &self.activation {
            Activation::Gelu(_) => burn_lora_kernels::gelu(x),
            activation => activation.forward(x),
        };
        let x = self.dropout.forward(x);
        self.linear_outer.forward(x)
    }
}

impl<B: Backend> ModuleDisplay for PositionWiseFeedForward<B> {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("d_model", &self.linear_inner.d_input())
            .add("d_ff", &self.linear_inner.d_output())
            .add("prob", &self.dropout.prob())
            .optional()
    }
}
