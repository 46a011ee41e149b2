//! Merging adapters into the base weight: a new plain [`Linear`], or in place and undoable.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::error::{LoraError, Result};
use crate::layers::adapter::ensure_finite;
use crate::layers::linear::LoraLinear;

impl<B: Backend> LoraLinear<B> {
    /// The weight `forward` applies: `W + Σ_active s · A B`, `W` alone when disabled or nothing
    /// is active, the merged weight while merged; with the names of the adapters it includes.
    /// Every adapter and the result are checked to be finite.
    pub(crate) fn effective_weight(&self) -> Result<(Tensor<B, 2>, Vec<String>)> {
        if !self.is_enabled() {
            return Ok((self.weight().detach(), Vec::new()));
        }
        if let Some(merged) = self.merged_weight_tensor() {
            return Ok((merged.detach(), self.adapter_names_merged()));
        }
        let active: Vec<_> = self.adapters().iter().filter(|a| a.is_active()).collect();
        for adapter in &active {
            adapter.ensure_finite()?;
        }
        let names = active.iter().map(|a| a.name().to_string()).collect();
        let merged = active
            .into_iter()
            .fold(self.weight().detach(), |w, adapter| {
                w + adapter.delta_weight()
            });
        ensure_finite(&merged, || "merged weight W + s·AB".to_string())?;
        Ok((merged.detach(), names))
    }

    /// Merge-and-unload: a new plain [`Linear`] computing what this layer's `forward` computes
    /// now (weight `W + Σ_active s · A B`, the same bias). Zero added latency at inference; this
    /// layer is left as it was.
    ///
    /// Fails with [`LoraError::NonFinite`] if an active adapter or the sum holds NaN or infinity.
    pub fn merge_to_linear(&self) -> Result<Linear<B>> {
        let (weight, _) = self.effective_weight()?;
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias: self.bias().map(|b| Param::from_tensor(b.detach())),
        })
    }

    /// Merges the active adapters in place, so `forward` costs one matmul: `W' = W + Σ_active
    /// s · A B` is computed once and used until [`unmerge`](Self::unmerge).
    ///
    /// `W` itself is kept unchanged beside `W'`, so unmerging is exact, disabling the layer
    /// still gives the bare base, and a checkpoint saved while merged (which holds both) loads
    /// back to the same outputs whether the model it loads into is merged or not. The price is
    /// one extra weight-sized tensor per merged layer; for a plain model without it, use
    /// [`merge_to_linear`](Self::merge_to_linear) or the model's `merge_and_unload`.
    ///
    /// A layer with no active adapter (or disabled) is left unmerged. Fails, changing nothing,
    /// if already merged or if the result would be non-finite.
    pub fn merge(&mut self) -> Result<()> {
        if self.is_merged() {
            return Err(LoraError::Merged(self.adapter_names_merged()));
        }
        let (weight, names) = self.effective_weight()?;
        self.apply_merge(weight, names);
        Ok(())
    }

    /// Installs a weight computed by [`effective_weight`](Self::effective_weight) on an
    /// unmerged layer (nothing to install when it includes no adapter).
    pub(crate) fn apply_merge(&mut self, weight: Tensor<B, 2>, names: Vec<String>) {
        if !names.is_empty() {
            self.set_merged(Some((weight, names)));
        }
    }

    /// Drops the merged weight: `forward` goes back to `x W + b + Σ_active s · ((x A) B)` with
    /// the base `W` exactly as it was. Fails with [`LoraError::NotMerged`] when nothing is merged.
    pub fn unmerge(&mut self) -> Result<()> {
        if !self.is_merged() {
            return Err(LoraError::NotMerged);
        }
        self.set_merged(None);
        Ok(())
    }

    /// Whether adapters are currently merged in place.
    pub fn is_merged(&self) -> bool {
        self.merged_weight_tensor().is_some()
    }
}
