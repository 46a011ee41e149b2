//! [`LoraModel`]: any model that holds [`LoraLinear`] layers, and the module paths of those layers.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::error::{LoraError, Result};
use crate::linear::LoraLinear;
use crate::mlp::LoraMlp;

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
    /// The same layers, mutably, in the same order.
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
        for (layer, adapter) in self.lora_layers_mut().into_iter().zip(combined) {
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

impl<B: Backend> LoraModel<B> for LoraMlp<B> {
    fn lora_layers(&self) -> Vec<&LoraLinear<B>> {
        self.layers().iter().collect()
    }

    fn lora_layers_mut(&mut self) -> Vec<&mut LoraLinear<B>> {
        self.layers_iter_mut().collect()
    }
}

/// The Burn module path of every layer of [`LoraModel::lora_layers`], in the same order
/// (`"layers.0"` for the first layer of a [`LoraMlp`]).
///
/// Found by walking the module tree and matching each layer's weight parameter.
pub fn lora_layer_paths<B: Backend, M: LoraModel<B>>(model: &M) -> Vec<String> {
    let mut visitor = PathVisitor {
        stack: Vec::new(),
        paths: HashMap::new(),
    };
    model.visit(&mut visitor);
    model
        .lora_layers()
        .iter()
        .enumerate()
        .map(|(index, layer)| {
            visitor
                .paths
                .get(&layer.weight_param().id)
                .and_then(|path| path.strip_suffix(".weight").map(str::to_string))
                .unwrap_or_else(|| format!("lora_layer_{index}"))
        })
        .collect()
}

/// Records the dotted path of every float parameter.
struct PathVisitor {
    stack: Vec<String>,
    paths: HashMap<ParamId, String>,
}

impl<B: Backend> ModuleVisitor<B> for PathVisitor {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.paths
            .entry(param.id)
            .or_insert_with(|| self.stack.join("."));
    }
}
