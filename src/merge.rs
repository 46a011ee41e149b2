//! Merging adapters into the base weight: a new plain [`Linear`], or in place and undoable.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::adapter::ensure_finite;
use crate::error::{LoraError, Result};
use crate::linear::LoraLinear;

impl<B: Backend> LoraLinear<B> {
    /// The base weight plus every active adapter's `s · A B` (just the base when disabled or
    /// when nothing is active), after checking every adapter and the result are finite.
    pub(crate) fn merged_weight(&self) -> Result<(Tensor<B, 2>, Vec<String>)> {
        let weight = self.weight().detach();
        if !self.is_enabled() || !self.merged_names().is_empty() {
            return Ok((weight, Vec::new()));
        }
        let active: Vec<_> = self.adapters().iter().filter(|a| a.is_active()).collect();
        for adapter in &active {
            adapter.ensure_finite()?;
        }
        let names = active.iter().map(|a| a.name().to_string()).collect();
        let merged = active
            .into_iter()
            .fold(weight, |w, adapter| w + adapter.delta_weight());
        ensure_finite(&merged, || "merged weight W + s·AB".to_string())?;
        Ok((merged.detach(), names))
    }

    /// Merge-and-unload: a new plain [`Linear`] with weight `W + Σ_active s · A B` and the same
    /// bias. Zero added latency at inference; this layer is left as it was.
    ///
    /// Fails with [`LoraError::NonFinite`] if an active adapter or the sum holds NaN or infinity.
    pub fn merge_to_linear(&self) -> Result<Linear<B>> {
        let (weight, _) = self.merged_weight()?;
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias: self.bias().map(|b| Param::from_tensor(b.detach())),
        })
    }

    /// Merges the active adapters into the base weight in place, so `forward` costs one matmul.
    ///
    /// [`unmerge`](Self::unmerge) restores the base to within float rounding: each element of
    /// `W` comes back with an absolute error of at most a few ulps of `|W| + |s·AB|` (for f32,
    /// about `1e-7 · (|W| + |ΔW|)`), because `(W + ΔW) - ΔW` rounds twice. For a bit-exact base,
    /// use [`merge_to_linear`](Self::merge_to_linear), which leaves this layer untouched.
    ///
    /// Fails, changing nothing, if already merged or if the result would be non-finite.
    pub fn merge(&mut self) -> Result<()> {
        if !self.merged_names().is_empty() {
            return Err(LoraError::Merged(self.merged_names().to_vec()));
        }
        let (weight, names) = self.merged_weight()?;
        self.apply_merge(weight, names);
        Ok(())
    }

    /// Installs a weight computed by [`merged_weight`](Self::merged_weight).
    pub(crate) fn apply_merge(&mut self, weight: Tensor<B, 2>, names: Vec<String>) {
        if !names.is_empty() {
            self.replace_weight(weight);
            self.set_merged_names(names);
        }
    }

    /// Takes the merged adapters back out of the base weight (see [`merge`](Self::merge) for the
    /// tolerance). Fails with [`LoraError::NotMerged`] when nothing is merged.
    pub fn unmerge(&mut self) -> Result<()> {
        let names = self.merged_names().to_vec();
        if names.is_empty() {
            return Err(LoraError::NotMerged);
        }
        let weight = self
            .adapters()
            .iter()
            .filter(|a| names.iter().any(|n| n == a.name()))
            .fold(self.weight().detach(), |w, adapter| {
                w - adapter.delta_weight()
            })
            .detach();
        self.replace_weight(weight);
        self.set_merged_names(Vec::new());
        Ok(())
    }

    /// Whether adapters are currently merged into the base weight.
    pub fn is_merged(&self) -> bool {
        !self.merged_names().is_empty()
    }
}
