//! [`LoraModel`]: any model that holds [`LoraLinear`] layers.

use burn::module::Module;
use burn::tensor::backend::Backend;

use crate::error::{LoraError, Result};
use crate::layers::linear::LoraLinear;
use crate::model::checked_layers_mut;

/// A model whose [`LoraLinear`] layers can be listed, so adapters can be saved, loaded and
/// switched model-wide. Implement it for your own model by listing its LoRA layers:
///
/// ```
/// use burn::prelude::*;
/// use burn_lora::{LoraLinear, LoraModel};
///
/// #[derive(Module, Debug)]
/// struct Net<B: Backend> {
///     encoder: LoraLinear<B>,
///     head: LoraLinear<B>,
/// }
///
/// impl<B: Backend> LoraModel<B> for Net<B> {
///     fn lora_layers(&self) -> Vec<&LoraLinear<B>> {
///         vec![&self.encoder, &self.head]
///     }
///     fn lora_layers_mut(&mut self) -> Vec<&mut LoraLinear<B>> {
///         vec![&mut self.encoder, &mut self.head]
///     }
/// }
/// ```
///
/// Layer paths (`encoder`, `head`, `layers.0`, …) come from Burn's module tree, so they are the
/// field names you wrote; adapter files map them to PyTorch names through
/// [`PathMap`](crate::PathMap).
pub trait LoraModel<B: Backend>: Module<B> {
    /// Every LoRA layer of the model, in a fixed order.
    fn lora_layers(&self) -> Vec<&LoraLinear<B>>;
    /// The same layers, mutably, in the same order. Operations that pair the two lists check
    /// that they agree and fail with [`LoraError::InvalidModel`] when they do not.
    fn lora_layers_mut(&mut self) -> Vec<&mut LoraLinear<B>>;

    /// Names of all adapters in the model, in order of first appearance.
    fn adapter_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for layer in self.lora_layers() {
            for name in layer.adapter_names() {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
        }
        names
    }

    /// Makes `name` the only active adapter in every layer; layers without it run their base
    /// alone. Only adapter state changes: the base is neither copied nor reloaded. Fails,
    /// changing nothing, if no layer has `name` or adapters are merged.
    fn set_active_adapter(&mut self, name: &str) -> Result<()> {
        check_unmerged(self.lora_layers())?;
        if !self.lora_layers().iter().any(|l| l.adapter(name).is_some()) {
            return Err(LoraError::UnknownAdapter(name.to_string()));
        }
        for layer in self.lora_layers_mut() {
            let names: &[&str] = if layer.adapter(name).is_some() {
                &[name]
            } else {
                &[]
            };
            layer.set_active_adapters(names)?;
        }
        Ok(())
    }

    /// Removes adapter `name` from every layer that has it. Fails, changing nothing, if no layer
    /// has it or adapters are merged.
    fn remove_adapter(&mut self, name: &str) -> Result<()> {
        check_unmerged(self.lora_layers())?;
        if !self.lora_layers().iter().any(|l| l.adapter(name).is_some()) {
            return Err(LoraError::UnknownAdapter(name.to_string()));
        }
        for layer in self.lora_layers_mut() {
            if layer.adapter(name).is_some() {
                layer.remove_adapter(name)?;
            }
        }
        Ok(())
    }

    /// Adds adapter `name` whose update in every layer is the weighted sum `Σ wᵢ · ΔWᵢ` of the
    /// named adapters (exact: factors are concatenated, see
    /// [`LoraLinear::combined_adapter`]), and makes it the active one. Fails, changing nothing,
    /// if a source adapter is unknown, `name` exists, or adapters are merged.
    fn combine_adapters(&mut self, name: &str, weights: &[(&str, f64)]) -> Result<()> {
        check_unmerged(self.lora_layers())?;
        let known = self.adapter_names();
        if let Some((unknown, _)) = weights.iter().find(|(n, _)| !known.iter().any(|k| k == n)) {
            return Err(LoraError::UnknownAdapter(unknown.to_string()));
        }
        if known.iter().any(|k| k == name) {
            return Err(LoraError::DuplicateAdapter(name.to_string()));
        }
        let combined = self
            .lora_layers()
            .into_iter()
            .map(|layer| layer.combined_adapter(name, weights))
            .collect::<Result<Vec<_>>>()?;
        for (layer, adapter) in checked_layers_mut(self)?.into_iter().zip(combined) {
            if let Some(adapter) = adapter {
                layer.insert_adapter(adapter)?;
            }
        }
        self.set_active_adapter(name)
    }

    /// Turns every layer's adapters on or off. Off, the output is bit-identical to the base
    /// model's (unless adapters are merged in place).
    fn set_enabled(&mut self, enabled: bool) {
        for layer in self.lora_layers_mut() {
            layer.set_enabled(enabled);
        }
    }

    /// Freezes every base weight and bias of the LoRA layers (no gradient, no optimizer state).
    fn freeze_base(&mut self) {
        for layer in self.lora_layers_mut() {
            layer.freeze_base();
        }
    }
}

/// [`LoraError::Merged`] if any layer has adapters merged in place.
pub(crate) fn check_unmerged<B: Backend>(layers: Vec<&LoraLinear<B>>) -> Result<()> {
    match layers.into_iter().find(|l| l.is_merged()) {
        Some(layer) => Err(LoraError::Merged(layer.adapter_names_merged())),
        None => Ok(()),
    }
}
