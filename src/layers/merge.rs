//! Merging a linear layer's adapters into its base weight: a new plain [`Linear`], or the
//! weight [`LoraLayer::merge`] installs.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::error::Result;
use crate::layers::layer::LoraLayer;
use crate::layers::linear::LoraLinear;

impl<B: Backend> LoraLinear<B> {
    /// The weight `forward` applies: the merged weight while merged, else `W + Σ_active s · A B`
    /// (`W` alone when disabled or nothing is active). Checked to be finite.
    pub(crate) fn effective_weight(&self) -> Result<Tensor<B, 2>> {
        if !self.is_enabled() {
            return Ok(self.weight().detach());
        }
        if let Some(merged) = self.merged_weight_tensor() {
            return Ok(merged.detach());
        }
        Ok(self
            .merged_base()?
            .map_or_else(|| self.weight().detach(), |(weight, _)| weight))
    }

    /// `W + Σ_active s · A B` (DoRA: `k ⊙ (W + s·A B)`) with the adapters' names, `None` when
    /// no adapter is active or the layer is disabled.
    pub(crate) fn merged_base(&self) -> Result<Option<(Tensor<B, 2>, Vec<String>)>> {
        self.merged_matrix()
    }

    /// Merge-and-unload: a new plain [`Linear`] computing what this layer's `forward` computes
    /// now (weight `W + Σ_active s · A B`, the same bias). Zero added latency at inference; this
    /// layer is left as it was.
    ///
    /// Fails with [`LoraError::NonFinite`](crate::LoraError::NonFinite) if an active adapter or
    /// the sum holds NaN or infinity.
    pub fn merge_to_linear(&self) -> Result<Linear<B>> {
        Ok(Linear {
            weight: Param::from_tensor(self.effective_weight()?),
            bias: self.bias().map(|b| Param::from_tensor(b.detach())),
        })
    }
}
