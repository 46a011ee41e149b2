//! [`LoraModel`]: the model-level API, the same for every model that holds LoRA layers.

use std::collections::HashSet;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::quantization::QuantScheme;
use burn::tensor::Tensor;

use crate::config::LoraConfig;
use crate::error::{LoraError, Result};
use crate::layers::adapter::{checked_name, LoraAdapter};
use crate::layers::adapter_batch::AdapterBatch;
use crate::layers::layer::LoraLayer;
use crate::model::paths::{checked_layers_mut, lora_layer_paths, module_paths};
use crate::model::quantized_base::{quantize_base, QuantizeReport};
use crate::model::report::{parameter_report, ParameterReport};
use crate::model::targets::Targets;

/// A model whose LoRA layers ([`LoraLinear`](crate::LoraLinear),
/// [`LoraEmbedding`](crate::LoraEmbedding), [`LoraConv2d`](crate::LoraConv2d)) can be listed,
/// so that adapters are attached, switched, merged, saved and loaded model-wide.
///
/// Derive it beside Burn's `Module` (`#[derive(Module, LoraModel)]`): the derive lists the LoRA
/// layers among the struct's fields (direct, in `Vec`, `Option` or arrays, and inside nested
/// structs that derive it too) in field order. A field generic over the backend that is neither
/// a LoRA model nor one of Burn's modules without LoRA layers (`Linear`, `LayerNorm`, a tensor,
/// ...) is a compile error, so that no layer goes unlisted. Every operation is all-or-nothing:
/// on error the model is exactly as it was.
///
/// ```
/// use burn::backend::Flex;
/// use burn::prelude::*;
/// use burn_lora::{LoraConfig, LoraLinear, LoraLinearConfig, LoraModel, Targets};
///
/// #[derive(Module, Debug, LoraModel)]
/// struct Block<B: Backend> {
///     query: LoraLinear<B>,
///     value: LoraLinear<B>,
/// }
///
/// #[derive(Module, Debug, LoraModel)]
/// struct Net<B: Backend> {
///     blocks: Vec<Block<B>>,
///     head: LoraLinear<B>,
/// }
///
/// let device = Default::default();
/// let linear = |i, o| LoraLinearConfig::new(i, o).init::<Flex>(&device);
/// let block = || Ok::<_, burn_lora::LoraError>(Block { query: linear(8, 8)?, value: linear(8, 8)? });
/// let mut net = Net { blocks: vec![block()?, block()?], head: linear(8, 2)? };
///
/// net.attach("default", &LoraConfig::new(4, 8.0), &Targets::names(["query", "value"]))?;
/// assert_eq!(net.lora_layer_paths()?, ["blocks.0.query", "blocks.0.value", "blocks.1.query",
///     "blocks.1.value", "head"]);
/// println!("{}", net.parameter_report()?);
/// let plain = net.merge_and_unload()?; // no adapters left
/// assert!(plain.adapter_names().is_empty());
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
pub trait LoraModel<B: Backend>: Module<B> + VisitLoraLayers<B> {
    /// Every LoRA layer of the model, in a fixed order.
    fn lora_layers(&self) -> Vec<&dyn LoraLayer<B>> {
        let mut layers = Vec::new();
        self.visit_lora_layers(&mut layers);
        layers
    }

    /// The same layers, mutably, in the same order.
    fn lora_layers_mut(&mut self) -> Vec<&mut dyn LoraLayer<B>> {
        let mut layers = Vec::new();
        self.visit_lora_layers_mut(&mut layers);
        layers
    }

    /// The Burn module path of every LoRA layer, in [`lora_layers`](Self::lora_layers) order
    /// (`"layers.0"`, `"encoder.layers.3.mha.query"`).
    ///
    /// # Errors
    /// [`LoraError::InvalidModel`] when a listed layer is not in the module tree, sits at two
    /// paths, or is listed twice.
    fn lora_layer_paths(&self) -> Result<Vec<String>>
    where
        Self: Sized,
    {
        lora_layer_paths(self)
    }

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

    /// Attaches a fresh adapter `name` (`A` drawn by `config.init`, `B = 0`) to the LoRA layers
    /// `targets` selects, with its rank and alpha overrides, makes it the active adapter, and
    /// freezes the LoRA layers' bases. The first adapter attached to a model also freezes
    /// every other parameter, as PEFT does; later ones leave the parameters outside the LoRA
    /// layers as they are, so a head [`mark_trainable`](Self::mark_trainable) made trainable
    /// stays trainable.
    ///
    /// # Errors
    /// Checked before anything changes: an empty or duplicate name, an invalid config or a rank
    /// above a layer's `min(d_input, d_output)`, merged adapters, and
    /// [`LoraError::InvalidTargets`] when nothing matches or a name or pattern selects a module
    /// that is not a LoRA layer.
    fn attach(&mut self, name: &str, config: &LoraConfig, targets: &Targets) -> Result<()>
    where
        Self: Sized,
    {
        checked_name(name.to_string())?;
        config.validate()?;
        check_unmerged(self.lora_layers())?;
        let paths = self.lora_layer_paths()?;
        let is_inside_layer = |module: &str| {
            paths.iter().any(|p| {
                module == p
                    || module
                        .strip_prefix(p.as_str())
                        .is_some_and(|r| r.starts_with('.'))
            })
        };
        if let Some(module) = module_paths(self)
            .into_iter()
            .find(|m| targets.names_module(m) && !is_inside_layer(m))
        {
            return Err(LoraError::InvalidTargets(format!(
                "\"{module}\" matches the targets but is not a LoRA layer (the LoRA layers are {paths:?})"
            )));
        }
        let selected: Vec<(usize, LoraConfig)> = self
            .lora_layers()
            .iter()
            .zip(&paths)
            .enumerate()
            .filter(|(_, (layer, path))| targets.selects(path, layer.kind()))
            .map(|(index, (_, path))| (index, targets.config_for(path, config)))
            .collect();
        if selected.is_empty() {
            return Err(LoraError::InvalidTargets(format!(
                "no LoRA layer matches {targets:?}; the model's LoRA layers are {paths:?}"
            )));
        }
        let had_adapters = has_adapters(self);
        let mut layers = checked_layers_mut(self)?;
        // Each index enumerates `lora_layers()`, which `checked_layers_mut` proved lists the same
        // layers as `layers`; `done < selected.len()`.
        for (index, config) in &selected {
            layers[*index].check_new_adapter(name, config)?;
        }
        for (done, (index, config)) in selected.iter().enumerate() {
            if let Err(error) = layers[*index].add_adapter(name, config) {
                for (index, _) in &selected[..done] {
                    let _ = layers[*index].remove_adapter(name);
                }
                return Err(error);
            }
        }
        freeze_for_new_adapter(self, had_adapters);
        self.set_active_adapter(name)
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

    /// The [`AdapterBatch`] for one adapter name per row (PEFT's `adapter_names`;
    /// [`BASE_ADAPTER`](crate::BASE_ADAPTER) for the base alone), checked against this model:
    /// every name is an adapter of some layer, nothing is merged. Models whose forward takes a
    /// batch (the causal LMs of [`nn::llama`](crate::nn::llama), a model of your own calling
    /// [`LoraLinear::forward_adapters`](crate::LoraLinear::forward_adapters)) then run each row
    /// with its own adapter.
    ///
    /// # Errors
    /// [`LoraError::UnknownAdapter`] for a name no layer holds, [`LoraError::Merged`] while
    /// merged, and [`AdapterBatch::new`]'s errors.
    fn adapter_batch<S: AsRef<str>>(&self, names: &[S]) -> Result<AdapterBatch>
    where
        Self: Sized,
    {
        let batch = AdapterBatch::new(names)?;
        check_unmerged(self.lora_layers())?;
        let layers = self.lora_layers();
        if let Some(unknown) = batch
            .adapter_names()
            .into_iter()
            .find(|name| !layers.iter().any(|l| l.adapter(name).is_some()))
        {
            return Err(LoraError::UnknownAdapter(unknown.to_string()));
        }
        Ok(batch)
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
    /// named adapters (exact: factors are concatenated, see [`LoraLayer::combined_adapter`]),
    /// and makes it the active one. Fails, changing nothing, if a source adapter is unknown,
    /// `name` exists, or adapters are merged.
    fn combine_adapters(&mut self, name: &str, weights: &[(&str, f64)]) -> Result<()>
    where
        Self: Sized,
    {
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
    /// model's, merged or not.
    fn set_enabled(&mut self, enabled: bool) {
        for layer in self.lora_layers_mut() {
            layer.set_enabled(enabled);
        }
    }

    /// Freezes every parameter of the model except the adapters' factors: no gradient, no
    /// optimizer state.
    fn freeze_base(&mut self)
    where
        Self: Sized,
    {
        let trainable = adapter_param_ids(self);
        set_require_grad(self, |id, _| {
            if trainable.contains(&id) {
                None
            } else {
                Some(false)
            }
        });
    }

    /// Makes the parameters of the modules whose path equals one of `modules` or ends in
    /// `.module` trainable again after [`attach`](Self::attach) froze them: a classification
    /// head trained beside the adapters (PEFT's `modules_to_save`).
    ///
    /// # Errors
    /// [`LoraError::InvalidTargets`] if a name matches no module.
    fn mark_trainable(&mut self, modules: &[&str]) -> Result<()>
    where
        Self: Sized,
    {
        let all = module_paths(self);
        if let Some(missing) = modules.iter().find(|m| {
            !all.iter()
                .any(|p| crate::io::peft_config::suffix_match(p, m))
        }) {
            return Err(LoraError::InvalidTargets(format!(
                "no module \"{missing}\" to mark trainable"
            )));
        }
        set_require_grad(self, |_, path| {
            let inside = |module: &&str| {
                let mut prefix = String::new();
                path.split('.').any(|part| {
                    if !prefix.is_empty() {
                        prefix.push('.');
                    }
                    prefix.push_str(part);
                    crate::io::peft_config::suffix_match(&prefix, module)
                })
            };
            modules.iter().any(inside).then_some(true)
        });
        Ok(())
    }

    /// Merges the active adapters of every layer in place (see [`LoraLayer::merge`]): inference
    /// at the base's cost, undone exactly by [`unmerge`](Self::unmerge). On error nothing is
    /// merged.
    fn merge(&mut self) -> Result<()> {
        check_unmerged(self.lora_layers())?;
        let mut layers = self.lora_layers_mut();
        // `index < layers.len()`, so both `layers[index]` and `layers[..index]` are in bounds.
        for index in 0..layers.len() {
            if let Err(error) = layers[index].merge() {
                for layer in layers[..index].iter_mut().filter(|l| l.is_merged()) {
                    let _ = layer.unmerge();
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// Undoes [`merge`](Self::merge) in every merged layer; [`LoraError::NotMerged`] if none is.
    fn unmerge(&mut self) -> Result<()> {
        if !self.is_merged() {
            return Err(LoraError::NotMerged);
        }
        for layer in self.lora_layers_mut() {
            if layer.is_merged() {
                layer.unmerge()?;
            }
        }
        Ok(())
    }

    /// Whether any layer has adapters merged in place.
    fn is_merged(&self) -> bool {
        self.lora_layers().iter().any(|l| l.is_merged())
    }

    /// Merge-and-unload: a copy of the model without adapters whose base weights are what
    /// `forward` computes now (`W + Σ_active s · ΔW` where enabled). This model is left as it
    /// was.
    fn merge_and_unload(&self) -> Result<Self>
    where
        Self: Sized,
    {
        let mut model = self.clone();
        for layer in model.lora_layers_mut() {
            layer.merge_and_unload()?;
        }
        Ok(model)
    }

    /// QLoRA: keeps the base weight of every [`LoraLinear`](crate::LoraLinear) layer quantized
    /// with `scheme` ([`LoraLinear::quantize_base`](crate::LoraLinear::quantize_base), which
    /// says what a quantized base does and refuses); embeddings and convolutions keep a float
    /// base. Reports the bytes before and after and the largest error quantizing introduced.
    ///
    /// ```
    /// use burn::backend::Flex;
    /// use burn::tensor::quantization::{QuantLevel, QuantScheme, QuantValue};
    /// use burn_lora::{LoraConfig, LoraMlpConfig, LoraModel, Targets};
    ///
    /// let mut mlp = LoraMlpConfig::new(64, vec![64], 32).init::<Flex>(&Default::default())?;
    /// mlp.attach("default", &LoraConfig::new(4, 8.0), &Targets::all())?;
    /// let q4 = QuantScheme::default()
    ///     .with_value(QuantValue::Q4S)
    ///     .with_level(QuantLevel::block([32]));
    /// let report = mlp.quantize_base(q4)?;
    /// assert_eq!(report.layers, 2);
    /// assert!(report.quantized_bytes * 6 < report.float_bytes);
    /// # Ok::<(), burn_lora::LoraError>(())
    /// ```
    ///
    /// # Errors
    /// [`LoraError::Quantize`] as `quantize_base` gives it for any layer; the model is unchanged.
    fn quantize_base(&mut self, scheme: QuantScheme) -> Result<QuantizeReport>
    where
        Self: Sized,
    {
        quantize_base(self, scheme)
    }

    /// Makes every quantized base a float parameter again, holding its dequantized values
    /// ([`LoraLayer::dequantize_base`]).
    fn dequantize_base(&mut self) {
        for layer in self.lora_layers_mut() {
            layer.dequantize_base();
        }
    }

    /// Per-layer shapes and the original / added / percentage parameter counts, each
    /// parameter counted once.
    ///
    /// # Errors
    /// [`LoraError::InvalidModel`] when the layers' module paths are not known (see
    /// [`lora_layer_paths`](Self::lora_layer_paths): a listed layer outside the module tree,
    /// at two paths, or listed twice): the parameters of the layers could not be told from the
    /// others.
    fn parameter_report(&self) -> Result<ParameterReport>
    where
        Self: Sized,
    {
        parameter_report(self)
    }
}

/// Anything that holds LoRA layers: the layers themselves, Burn's containers of them (`Vec`,
/// `Option`, arrays), and models. `#[derive(LoraModel)]` implements it; by hand, push every
/// layer in a fixed order, the same in both methods:
///
/// ```
/// use burn::prelude::*;
/// use burn_lora::{LoraLayer, LoraLinear, LoraModel, VisitLoraLayers};
///
/// #[derive(Module, Debug)]
/// struct Net<B: Backend> {
///     encoder: LoraLinear<B>,
///     head: LoraLinear<B>,
/// }
///
/// impl<B: Backend> VisitLoraLayers<B> for Net<B> {
///     fn visit_lora_layers<'a>(&'a self, layers: &mut Vec<&'a dyn LoraLayer<B>>) {
///         self.encoder.visit_lora_layers(layers);
///         self.head.visit_lora_layers(layers);
///     }
///     fn visit_lora_layers_mut<'a>(&'a mut self, layers: &mut Vec<&'a mut dyn LoraLayer<B>>) {
///         self.encoder.visit_lora_layers_mut(layers);
///         self.head.visit_lora_layers_mut(layers);
///     }
/// }
///
/// impl<B: Backend> LoraModel<B> for Net<B> {}
/// ```
pub trait VisitLoraLayers<B: Backend> {
    /// Pushes every LoRA layer onto `layers`, in a fixed order.
    fn visit_lora_layers<'a>(&'a self, layers: &mut Vec<&'a dyn LoraLayer<B>>);

    /// Pushes the same layers, mutably, in the same order. Operations that pair the two lists
    /// check that they agree and fail with [`LoraError::InvalidModel`] when they do not.
    fn visit_lora_layers_mut<'a>(&'a mut self, layers: &mut Vec<&'a mut dyn LoraLayer<B>>);
}

/// [`LoraError::Merged`] if any layer has adapters merged in place.
/// Whether any LoRA layer of `model` holds an adapter.
pub(crate) fn has_adapters<B: Backend, M: LoraModel<B>>(model: &M) -> bool {
    model
        .lora_layers()
        .iter()
        .any(|layer| !layer.adapters().is_empty())
}

/// Freezes what a newly added adapter requires: every LoRA layer's base, and, for a model's
/// first adapter (`had_adapters` false), every parameter but the adapters' factors. A model
/// that already had adapters keeps the flags of the parameters outside its LoRA layers (a head
/// made trainable by [`LoraModel::mark_trainable`]).
pub(crate) fn freeze_for_new_adapter<B: Backend, M: LoraModel<B>>(
    model: &mut M,
    had_adapters: bool,
) {
    if had_adapters {
        for layer in model.lora_layers_mut() {
            layer.freeze_base();
        }
    } else {
        model.freeze_base();
    }
}

pub(crate) fn check_unmerged<B: Backend>(layers: Vec<&dyn LoraLayer<B>>) -> Result<()> {
    match layers.into_iter().find(|l| l.is_merged()) {
        Some(layer) => Err(LoraError::Merged(layer.merged_adapters().to_vec())),
        None => Ok(()),
    }
}

/// Ids of every adapter parameter of the model (factors and DoRA magnitudes).
fn adapter_param_ids<B: Backend, M: LoraModel<B>>(model: &M) -> HashSet<ParamId> {
    model
        .lora_layers()
        .iter()
        .flat_map(|layer| layer.adapters())
        .flat_map(LoraAdapter::param_ids)
        .collect()
}

/// Sets `require_grad` of every float parameter for which `decide(id, path)` says so.
fn set_require_grad<B: Backend, M: Module<B>>(
    model: &mut M,
    decide: impl Fn(ParamId, &str) -> Option<bool>,
) {
    struct Setter<F> {
        stack: Vec<String>,
        decide: F,
    }
    impl<B: Backend, F: Fn(ParamId, &str) -> Option<bool>> ModuleMapper<B> for Setter<F> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.stack.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            match (self.decide)(param.id, &self.stack.join(".")) {
                Some(require_grad) if require_grad != param.is_require_grad() => {
                    param.set_require_grad(require_grad)
                }
                _ => param,
            }
        }
    }
    let mut setter = Setter {
        stack: Vec::new(),
        decide,
    };
    *model = model.clone().map(&mut setter);
}
