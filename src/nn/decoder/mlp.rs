//! [`SwiGluMlp`]: the gated feed-forward block of Llama-family models.

use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::LinearConfig;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::project;
use crate::error::{LoraError, Result as LoraResult};
use crate::layers::adapter_batch::AdapterBatch;
use crate::{LoraLinear, LoraModel};

/// Configuration of a [`SwiGluMlp`].
#[derive(Config, Debug)]
pub struct SwiGluMlpConfig {
    /// Width of the model.
    pub d_model: usize,
    /// Width of the gated hidden layer (`intermediate_size`).
    pub d_hidden: usize,
    /// Whether the three projections have a bias (Llama's `mlp_bias`).
    #[config(default = false)]
    pub bias: bool,
    /// Initialisation of the projections.
    #[config(
        default = "Initializer::KaimingUniform{gain: 1.0 / 3.0f64.sqrt(), fan_out_only: false}"
    )]
    pub initializer: Initializer,
}

impl SwiGluMlpConfig {
    /// Builds the module.
    ///
    /// # Errors
    /// [`LoraError::InvalidModel`] for a zero width.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LoraResult<SwiGluMlp<B>> {
        if self.d_model == 0 || self.d_hidden == 0 {
            return Err(LoraError::InvalidModel(format!(
                "a SwiGLU block needs non-zero widths, got {self:?}"
            )));
        }
        let linear = |d_in: usize, d_out: usize| {
            LoraLinear::from_linear(
                LinearConfig::new(d_in, d_out)
                    .with_bias(self.bias)
                    .with_initializer(self.initializer.clone())
                    .init(device),
            )
        };
        Ok(SwiGluMlp {
            gate_proj: linear(self.d_model, self.d_hidden),
            up_proj: linear(self.d_model, self.d_hidden),
            down_proj: linear(self.d_hidden, self.d_model),
        })
    }
}

/// The SwiGLU feed-forward block (Shazeer 2020) of Llama, Qwen2 and Mistral, every projection a
/// [`LoraLinear`]:
///
/// `y = down(silu(gate(x)) ⊙ up(x))`, `silu(z) = z · σ(z)`
///
/// # Shapes
/// - `gate_proj`, `up_proj`: `d_model → d_hidden`; `down_proj`: `d_hidden → d_model`
/// - input: `[batch, seq, d_model]`, output: the same
#[derive(Module, Debug, LoraModel)]
pub struct SwiGluMlp<B: Backend> {
    /// The gate, passed through SiLU.
    pub gate_proj: LoraLinear<B>,
    /// The value the gate multiplies.
    pub up_proj: LoraLinear<B>,
    /// Back to the model width.
    pub down_proj: LoraLinear<B>,
}

impl<B: Backend> SwiGluMlp<B> {
    /// Applies the block.
    ///
    /// # Shapes
    /// - input: `[batch, seq, d_model]`
    /// - output: `[batch, seq, d_model]`
    ///
    /// # Errors
    /// The projections' errors with an adapter batch (wrong row count, merged layers).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        adapters: Option<&AdapterBatch>,
    ) -> LoraResult<Tensor<B, 3>> {
        let gate = project(&self.gate_proj, x.clone(), adapters)?;
        let up = project(&self.up_proj, x, adapters)?;
        project(
            &self.down_proj,
            burn_lora_kernels::silu_mul(gate, up),
            adapters,
        )
    }
}
