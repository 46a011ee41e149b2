//! Exact weighted combination of adapters: `ΔW = Σ wᵢ · ΔWᵢ` as one new adapter.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::config::LoraConfig;
use crate::error::{LoraError, Result};
use crate::layers::adapter::{checked_name, LoraAdapter};
use crate::layers::linear::LoraLinear;

impl<B: Backend> LoraLinear<B> {
    /// The adapter whose update is `Σ wᵢ · sᵢ · Aᵢ Bᵢ` over the named `(adapter, weight)` pairs
    /// this layer holds, built exactly by concatenating factors: `A = [w₁s₁A₁ | w₂s₂A₂ | …]`
    /// `[d_input, Σrᵢ]`, `B = [B₁; B₂; …]` `[Σrᵢ, d_output]`, scale 1 (rank `Σrᵢ`, alpha `Σrᵢ`).
    /// No SVD, no approximation. `None` when the layer holds none of the adapters.
    pub fn combined_adapter(
        &self,
        name: &str,
        weights: &[(&str, f64)],
    ) -> Result<Option<LoraAdapter<B>>> {
        let name = checked_name(name.to_string())?;
        let mut lora_a: Vec<Tensor<B, 2>> = Vec::new();
        let mut lora_b: Vec<Tensor<B, 2>> = Vec::new();
        for &(source, weight) in weights {
            if !weight.is_finite() {
                return Err(LoraError::NonFinite(format!(
                    "combination weight of adapter \"{source}\""
                )));
            }
            let Some(adapter) = self.adapter(source) else {
                continue;
            };
            adapter.ensure_finite()?;
            lora_a.push(
                adapter
                    .lora_a()
                    .detach()
                    .mul_scalar(weight * adapter.scale()),
            );
            lora_b.push(adapter.lora_b().detach());
        }
        if lora_a.is_empty() {
            return Ok(None);
        }
        let a = Tensor::cat(lora_a, 1);
        let b = Tensor::cat(lora_b, 0);
        let rank = a.dims()[1];
        // Rank Σrᵢ may exceed min(d_input, d_output); the concatenation is exact regardless.
        let config = LoraConfig::new(rank, rank as f64);
        LoraAdapter::from_factors(name, &config, a, b).map(Some)
    }
}
