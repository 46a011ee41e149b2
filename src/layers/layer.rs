//! [`LoraLayer`]: what every LoRA layer (linear, embedding, convolution) offers the model-level
//! API, whatever the shape of its base weight.

use std::sync::Arc;

use burn::module::ParamId;
use burn::tensor::backend::Backend;
use burn::tensor::quantization::QuantScheme;
use burn::tensor::Tensor;
use burn_lora_kernels::QuantizedMatrix;

use crate::config::LoraConfig;
use crate::error::{LoraError, Result};
use crate::layers::adapter::{checked_name, ensure_finite, LoraAdapter};
use crate::layers::dora::{self, DoraNorms};
use crate::layers::principal_init::principal_init;

/// The kind of base layer a [`LoraLayer`] adapts (PEFT's `"all-linear"` selects
/// [`Linear`](Self::Linear) ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerKind {
    /// [`LoraLinear`](crate::LoraLinear).
    Linear,
    /// [`LoraEmbedding`](crate::LoraEmbedding).
    Embedding,
    /// [`LoraConv2d`](crate::LoraConv2d).
    Conv2d,
}

/// A layer with a frozen base and named low-rank adapters, seen through what every kind has in
/// common: each adapter is a pair `A [d_input, r]`, `B [r, d_output]` whose update
/// `ΔW = s · A B` the layer adds to its base weight, laid out its own way (see
/// [`adapter_dims`](Self::adapter_dims)).
///
/// Model-wide operations ([`LoraModel`](crate::LoraModel)) go through this trait, so they work
/// alike for every layer kind. Bring it into scope to call its methods on a layer:
///
/// ```
/// use burn::backend::Flex;
/// use burn_lora::{LoraConfig, LoraLayer, LoraLinearConfig};
///
/// let mut layer = LoraLinearConfig::new(8, 4).init::<Flex>(&Default::default())?;
/// layer.add_adapter("a", &LoraConfig::new(2, 4.0))?;
/// layer.add_adapter("b", &LoraConfig::new(1, 1.0))?;
/// assert_eq!(layer.adapter_names(), vec!["a", "b"]);
/// assert_eq!(layer.active_adapters(), vec!["b"]);
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
pub trait LoraLayer<B: Backend> {
    /// Which kind of base layer this is.
    fn kind(&self) -> LayerKind;

    /// `[d_input, d_output]` of the adapters' matrix view: `A` is `[d_input, r]`, `B` is
    /// `[r, d_output]`. Linear: `[in, out]`; embedding: `[num_embeddings, dim]`; convolution:
    /// `[in/groups · kh · kw, out]`.
    fn adapter_dims(&self) -> [usize; 2];

    /// Shape of the base weight as Burn stores it.
    fn base_weight_shape(&self) -> Vec<usize>;

    /// Length of the base bias, if the layer has one.
    fn base_bias_len(&self) -> Option<usize>;

    /// The base weight in the adapters' matrix view `[d_input, d_output]` (see
    /// [`adapter_dims`](Self::adapter_dims)), detached: `W` for linear and embedding layers,
    /// the kernel `W [out, in, kh, kw]` flattened to `[out, in · kh · kw]` and transposed for a
    /// convolution.
    fn base_matrix(&self) -> Tensor<B, 2>;

    /// The layer's cache of DoRA norms (see [`DoraNorms`]).
    fn dora_norms(&self) -> &DoraNorms<B>;

    /// PEFT's shape of a DoRA adapter's `lora_magnitude_vector` for this layer: `[d_output]`
    /// for linear and embedding layers, `[1, out, 1, 1]` for a convolution.
    fn peft_magnitude_shape(&self) -> Vec<usize> {
        vec![self.adapter_dims()[1]]
    }

    /// DoRA's scale `k = m / ‖W + s·A B‖` of `adapter`, `[d_output]` (the norms detached, kept
    /// by [`DoraNorms`] at inference); `None` for a plain LoRA adapter.
    #[doc(hidden)]
    fn dora_scale(&self, adapter: &LoraAdapter<B>) -> Option<Tensor<B, 1>> {
        let magnitude = adapter.magnitude()?;
        let norms = self
            .dora_norms()
            .get_or_compute(adapter.name(), &self.device(), || {
                dora::weight_norms(self.base_matrix(), adapter)
            });
        Some(dora::magnitude_scale(magnitude, norms))
    }

    /// The weight `adapters` give the layer, in the matrix view and detached:
    /// `W + Σ s · A B`, or `k ⊙ (W + s · A B)` for one DoRA adapter (`k` scaling each column).
    /// Callers make sure a DoRA adapter comes alone ([`merged_matrix`](Self::merged_matrix)).
    #[doc(hidden)]
    fn adapted_matrix(&self, adapters: &[&LoraAdapter<B>]) -> Tensor<B, 2> {
        let delta = adapters
            .iter()
            .map(|a| a.delta_weight())
            .reduce(|sum, update| sum + update);
        let weight = match delta {
            Some(delta) => self.base_matrix() + delta,
            None => self.base_matrix(),
        };
        match adapters {
            [adapter] => match self.dora_scale(adapter) {
                Some(scale) => weight * scale.detach().unsqueeze::<2>(),
                None => weight,
            },
            _ => weight,
        }
    }

    /// Id of the base weight parameter (how the layer is found in the module tree).
    fn base_weight_id(&self) -> ParamId;

    /// The device the layer lives on.
    fn device(&self) -> B::Device;

    /// PEFT's names of `A` and `B` after the module path, e.g. `["lora_A.weight", "lora_B.weight"]`.
    fn peft_factor_keys(&self) -> [&'static str; 2];

    /// PEFT's shapes of `A` and `B` at rank `rank`. Each is the transpose of burn-lora's factor,
    /// reshaped (a convolution's `A` is a kernel).
    fn peft_factor_shapes(&self, rank: usize) -> [Vec<usize>; 2];

    /// All adapters, in insertion order.
    fn adapters(&self) -> &[LoraAdapter<B>];

    /// The layer's adapter storage (`None` when it has no adapter, so base-only records load).
    #[doc(hidden)]
    fn adapter_slot(&mut self) -> &mut Option<Vec<LoraAdapter<B>>>;

    /// Whether adapters take part in `forward`.
    fn is_enabled(&self) -> bool;

    /// Turns all adapters on or off. Off, `forward` is bit-identical to the base layer, merged
    /// or not.
    fn set_enabled(&mut self, enabled: bool);

    /// Marks the base parameters as not requiring gradients.
    fn freeze_base(&mut self);

    /// Names of the adapters merged in place (empty when unmerged).
    fn merged_adapters(&self) -> &[String];

    /// Merges the active adapters in place, so `forward` costs what the base costs: the merged
    /// weight `W + Σ_active s · ΔW` is kept beside `W`, which stays unchanged, so
    /// [`unmerge`](Self::unmerge) is exact. A layer with no active adapter (or disabled) stays
    /// unmerged. Fails, changing nothing, if already merged or the result would be non-finite.
    fn merge(&mut self) -> Result<()>;

    /// Drops the merged weight; fails with [`LoraError::NotMerged`] when nothing is merged.
    fn unmerge(&mut self) -> Result<()>;

    /// Makes the base what `forward` computes now (`W + Σ_active s · ΔW` when enabled) and
    /// removes every adapter: a plain layer again, on which new adapters can be attached.
    fn merge_and_unload(&mut self) -> Result<()>;

    /// Whether adapters are merged in place.
    fn is_merged(&self) -> bool {
        !self.merged_adapters().is_empty()
    }

    /// Names of all adapters, in insertion order.
    fn adapter_names(&self) -> Vec<&str> {
        self.adapters().iter().map(|a| a.name()).collect()
    }

    /// The adapter with this name, if any.
    fn adapter(&self, name: &str) -> Option<&LoraAdapter<B>> {
        self.adapters().iter().find(|a| a.name() == name)
    }

    /// Names of the active adapters.
    fn active_adapters(&self) -> Vec<&str> {
        self.adapters()
            .iter()
            .filter(|a| a.is_active())
            .map(|a| a.name())
            .collect()
    }

    /// Checks that a fresh adapter `name` from `config` could be added, without adding it.
    fn check_new_adapter(&self, name: &str, config: &LoraConfig) -> Result<()> {
        checked_name(name.to_string())?;
        self.check_can_add(name)?;
        let [d_input, d_output] = self.adapter_dims();
        config.validate_for(d_input, d_output)?;
        self.check_fresh_init(config)?;
        self.check_config_fits_base(config)?;
        if config.init.rewrites_base() {
            if self.kind() != LayerKind::Linear {
                return Err(LoraError::Unsupported(format!(
                    "adapter \"{name}\": the {:?} init on a {:?} layer (PiSSA and OLoRA factor \
                     a linear layer's weight, as in PEFT)",
                    config.init,
                    self.kind()
                )));
            }
            if !self.adapters().is_empty() {
                return Err(LoraError::Unsupported(format!(
                    "adapter \"{name}\": the {:?} init rewrites the base weight, which the \
                     layer's adapters {:?} apply to; attach it first",
                    config.init,
                    self.adapter_names()
                )));
            }
        }
        Ok(())
    }

    /// Replaces the base weight, given in the adapters' matrix view, keeping the parameter's id
    /// and gradient setting: for PiSSA and OLoRA, whose init leaves the residual there.
    /// [`LoraError::Unsupported`] on layer kinds other than linear (nothing else calls it).
    #[doc(hidden)]
    fn replace_base_matrix(&mut self, matrix: Tensor<B, 2>) -> Result<()> {
        let _ = matrix;
        Err(LoraError::Unsupported(format!(
            "replacing the base weight of a {:?} layer",
            self.kind()
        )))
    }

    /// The scheme the base weight is kept quantized with (QLoRA, see
    /// [`LoraLinear::quantize_base`](crate::LoraLinear::quantize_base)); `None` for a float base.
    fn base_quantization(&self) -> Option<QuantScheme> {
        None
    }

    /// The base weight quantized with `scheme`, computed without changing the layer; `None` for
    /// layer kinds that keep a float base (embeddings and convolutions). Errors with
    /// [`LoraError::Quantize`] where the layer cannot take a quantized base.
    #[doc(hidden)]
    fn quantized_base_matrix(&self, scheme: &QuantScheme) -> Result<Option<QuantizedMatrix>> {
        let _ = scheme;
        Ok(None)
    }

    /// Installs a base quantized by [`quantized_base_matrix`](Self::quantized_base_matrix).
    #[doc(hidden)]
    fn set_quantized_base(&mut self, matrix: Arc<QuantizedMatrix>, scheme: QuantScheme) {
        let _ = (matrix, scheme);
    }

    /// Makes a quantized base a float parameter again (its dequantized values, frozen, same id);
    /// nothing for a float base.
    fn dequantize_base(&mut self) {}

    /// [`LoraError::Unsupported`] naming `what` while the base is quantized: merging writes a
    /// float weight, and DoRA, PiSSA and OLoRA need the exact one.
    #[doc(hidden)]
    fn ensure_dense_base(&self, what: &str) -> Result<()> {
        match self.base_quantization() {
            None => Ok(()),
            Some(scheme) => Err(LoraError::Unsupported(format!(
                "{what} on a base weight kept quantized ({:?}, {:?}): call dequantize_base first",
                scheme.value, scheme.level
            ))),
        }
    }

    /// Errors if `config` asks for what a quantized base cannot give: a DoRA magnitude or a
    /// PiSSA / OLoRA init (both need the float weight, and PiSSA rewrites it).
    #[doc(hidden)]
    fn check_config_fits_base(&self, config: &LoraConfig) -> Result<()> {
        if config.use_dora {
            self.ensure_dense_base("a DoRA adapter")?;
        }
        if config.init.rewrites_base() {
            self.ensure_dense_base(&format!("the {:?} init", config.init))?;
        }
        Ok(())
    }

    /// Errors with [`LoraError::Unsupported`] if this kind of layer cannot initialise a fresh
    /// adapter as `config.init` asks: an [`LoraEmbedding`](crate::LoraEmbedding) initialises its
    /// adapters by PEFT's rule for embeddings (`A = 0`, `B ~ N(0, 1)`) and so accepts only the
    /// default init. Layers whose fresh adapters follow `config.init` keep this default.
    fn check_fresh_init(&self, config: &LoraConfig) -> Result<()> {
        let _ = config;
        Ok(())
    }

    /// Adds a fresh adapter (`A` drawn by `config.init`, `B = 0`; an embedding's as PEFT
    /// initialises it, see [`LoraEmbedding`](crate::LoraEmbedding)) and makes it the only active
    /// one. Freezes the base. Fails, leaving the layer unchanged, on an invalid config, a rank
    /// above `min(d_input, d_output)`, an init the layer cannot apply, an empty or duplicate
    /// name, or while merged.
    ///
    /// A DoRA config ([`LoraConfig::use_dora`]) also gives the adapter its magnitude,
    /// `m = ‖W + s·A B‖` over `d_input` for each output feature, as PEFT initialises it.
    ///
    /// PiSSA and OLoRA ([`LoraInit::Pissa`](crate::LoraInit::Pissa),
    /// [`LoraInit::Olora`](crate::LoraInit::Olora)) take `A` and `B` from the base weight and
    /// leave the residual `W − s·A B` as the base, on a linear layer without other adapters
    /// (they would apply to a changed base); the adapter keeps its first factors.
    fn add_adapter(&mut self, name: &str, config: &LoraConfig) -> Result<()> {
        self.check_new_adapter(name, config)?;
        if config.init.rewrites_base() {
            let init = principal_init(self.base_matrix(), config)?;
            let adapter = LoraAdapter::from_factors(name, config, init.lora_a, init.lora_b)?
                .with_initial_factors();
            self.replace_base_matrix(init.residual)?;
            push_adapter(self, adapter);
            return Ok(());
        }
        let mut adapter = self.fresh_adapter(name, config)?;
        if config.use_dora && !adapter.is_dora() {
            let magnitude = dora::weight_norms(self.base_matrix(), &adapter);
            ensure_finite(&magnitude, || {
                format!("adapter \"{name}\" DoRA magnitude ‖W + s·AB‖")
            })?;
            adapter = adapter.with_magnitude(magnitude);
        }
        push_adapter(self, adapter);
        Ok(())
    }

    /// A fresh, untrained adapter for this layer, initialised as PEFT initialises this kind:
    /// `A` drawn by `config.init` and `B = 0` (linear and convolution layers). For a DoRA
    /// config, [`add_adapter`](Self::add_adapter) attaches the magnitude afterwards.
    fn fresh_adapter(&self, name: &str, config: &LoraConfig) -> Result<LoraAdapter<B>> {
        let [d_input, d_output] = self.adapter_dims();
        LoraAdapter::init(name.to_string(), config, d_input, d_output, &self.device())
    }

    /// Inserts a ready-made adapter (see [`LoraAdapter::from_factors`] and
    /// [`LoraAdapter::from_dora_factors`]) and makes it the only active one. Its factors must fit
    /// [`adapter_dims`](Self::adapter_dims).
    fn insert_adapter(&mut self, adapter: LoraAdapter<B>) -> Result<()> {
        self.check_can_add(adapter.name())?;
        if adapter.is_dora() {
            self.ensure_dense_base(&format!("DoRA adapter \"{}\"", adapter.name()))?;
        }
        if adapter.config().use_dora != adapter.is_dora() {
            return Err(LoraError::InvalidModel(format!(
                "adapter \"{}\": use_dora = {} but the adapter {} a magnitude",
                adapter.name(),
                adapter.config().use_dora,
                if adapter.is_dora() { "has" } else { "lacks" }
            )));
        }
        let ([d_input, _], [_, d_output]) = adapter.shapes();
        if [d_input, d_output] != self.adapter_dims() {
            return Err(LoraError::ShapeMismatch {
                what: format!("adapter \"{}\" ΔW", adapter.name()),
                expected: self.adapter_dims().to_vec(),
                found: vec![d_input, d_output],
            });
        }
        adapter.config().validate()?;
        push_adapter(self, adapter);
        Ok(())
    }

    /// Errors with [`LoraError::Unsupported`] if this layer cannot hold adapters at all (a
    /// grouped convolution). Every way of adding an adapter checks it first; layers that take
    /// adapters keep this default.
    fn check_adapters_supported(&self) -> Result<()> {
        Ok(())
    }

    /// Errors if an adapter `name` cannot be added now (adapters unsupported, merged, or the
    /// name exists).
    #[doc(hidden)]
    fn check_can_add(&self, name: &str) -> Result<()> {
        self.check_adapters_supported()?;
        if self.is_merged() {
            return Err(LoraError::Merged(self.merged_adapters().to_vec()));
        }
        if self.adapter(name).is_some() {
            return Err(LoraError::DuplicateAdapter(name.to_string()));
        }
        Ok(())
    }

    /// Removes an adapter and returns it. The base stays frozen.
    fn remove_adapter(&mut self, name: &str) -> Result<LoraAdapter<B>> {
        if self.is_merged() {
            return Err(LoraError::Merged(self.merged_adapters().to_vec()));
        }
        let slot = self.adapter_slot();
        let adapters = slot
            .as_mut()
            .ok_or_else(|| LoraError::UnknownAdapter(name.to_string()))?;
        let index = adapters
            .iter()
            .position(|a| a.name() == name)
            .ok_or_else(|| LoraError::UnknownAdapter(name.to_string()))?;
        let removed = adapters.remove(index);
        if adapters.is_empty() {
            *slot = None;
        }
        // A PiSSA or OLoRA adapter takes its principal part back to the base: W_res + s·A₀ B₀.
        if let Some((initial_a, initial_b)) = removed.initial_factors() {
            let principal = initial_a.matmul(initial_b).mul_scalar(removed.scale());
            self.replace_base_matrix(self.base_matrix() + principal)?;
        }
        Ok(removed)
    }

    /// Makes exactly the named adapters active (all others inactive). An empty list
    /// deactivates all. Unknown names are an error and change nothing, and so is a DoRA
    /// adapter among several: its scale `m / ‖W + s·A B‖` is defined against the base alone
    /// (PEFT applies it to whatever the adapters before it added, which depends on their order).
    fn set_active_adapters(&mut self, names: &[&str]) -> Result<()> {
        if self.is_merged() {
            return Err(LoraError::Merged(self.merged_adapters().to_vec()));
        }
        if let Some(unknown) = names.iter().find(|n| self.adapter(n).is_none()) {
            return Err(LoraError::UnknownAdapter(unknown.to_string()));
        }
        check_dora_alone(self, names)?;
        for adapter in self.adapter_slot().iter_mut().flatten() {
            let active = names.contains(&adapter.name());
            adapter.set_active(active);
        }
        Ok(())
    }

    /// The adapter whose update is `Σ wᵢ · sᵢ · Aᵢ Bᵢ` over the named `(adapter, weight)` pairs
    /// this layer holds, built exactly by concatenating factors: `A = [w₁s₁A₁ | w₂s₂A₂ | …]`,
    /// `B = [B₁; B₂; …]`, scale 1 (rank and alpha `Σrᵢ`). No SVD, no approximation. `None` when
    /// the layer holds none of the adapters. DoRA adapters do not combine
    /// ([`LoraError::Unsupported`]).
    fn combined_adapter(
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
            if adapter.is_dora() {
                return Err(LoraError::Unsupported(format!(
                    "combining DoRA adapter \"{source}\": its magnitude rescales W + s·AB as a \
                     whole, so it has no exact low-rank sum with other adapters"
                )));
            }
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

    /// The weight the active adapters give the layer, in the adapters' matrix view
    /// `[d_input, d_output]` (see [`adapted_matrix`](Self::adapted_matrix)), with their names;
    /// `None` when disabled or no adapter is active. Every adapter and the result are checked
    /// to be finite, and a DoRA adapter must be the only active one.
    #[doc(hidden)]
    fn merged_matrix(&self) -> Result<Option<(Tensor<B, 2>, Vec<String>)>> {
        if !self.is_enabled() {
            return Ok(None);
        }
        let active: Vec<_> = self.adapters().iter().filter(|a| a.is_active()).collect();
        if active.is_empty() {
            return Ok(None);
        }
        let names: Vec<&str> = active.iter().map(|a| a.name()).collect();
        check_dora_alone(self, &names)?;
        for adapter in &active {
            adapter.ensure_finite()?;
        }
        let merged = self.adapted_matrix(&active);
        ensure_finite(&merged, || "merged weight".to_string())?;
        Ok(Some((
            merged,
            names.iter().map(|n| n.to_string()).collect(),
        )))
    }
}

/// [`LoraError::Unsupported`] when `names` holds more than one adapter and one of them is a
/// DoRA adapter (see [`LoraLayer::set_active_adapters`]).
fn check_dora_alone<B: Backend, L: LoraLayer<B> + ?Sized>(layer: &L, names: &[&str]) -> Result<()> {
    if names.len() < 2 {
        return Ok(());
    }
    match names
        .iter()
        .find(|n| layer.adapter(n).is_some_and(LoraAdapter::is_dora))
    {
        Some(dora) => Err(LoraError::Unsupported(format!(
            "DoRA adapter \"{dora}\" active together with other adapters ({}): a DoRA adapter \
             runs alone (its magnitude rescales the whole weight)",
            names.join(", ")
        ))),
        None => Ok(()),
    }
}

/// Freezes the base, deactivates the other adapters and appends `adapter` as the active one.
fn push_adapter<B: Backend, L: LoraLayer<B> + ?Sized>(layer: &mut L, mut adapter: LoraAdapter<B>) {
    layer.freeze_base();
    let adapters = layer.adapter_slot().get_or_insert_with(Vec::new);
    for other in adapters.iter_mut() {
        other.set_active(false);
    }
    adapter.set_active(true);
    adapters.push(adapter);
}

/// The [`LoraLayer`] methods every layer kind implements alike, over the fields they all have
/// (`weight`, `adapters`, `enabled`, `merged_weight`, `dora_norms`) and their `merged_base()`
/// (`W + Σ_active s·ΔW` in the base's layout, with the adapters' names). Used inside each
/// kind's `impl LoraLayer`.
macro_rules! shared_layer_methods {
    () => {
        fn base_weight_id(&self) -> burn::module::ParamId {
            $crate::layers::base_weight::WeightId::weight_id(&self.weight)
        }

        fn device(&self) -> B::Device {
            self.weight.device()
        }

        fn adapters(&self) -> &[$crate::LoraAdapter<B>] {
            self.adapters.as_slice()
        }

        fn adapter_slot(&mut self) -> &mut Option<Vec<$crate::LoraAdapter<B>>> {
            // The caller may change any adapter: the DoRA norms kept for them go.
            self.dora_norms.clear();
            &mut self.adapters.0
        }

        fn dora_norms(&self) -> &$crate::DoraNorms<B> {
            &self.dora_norms
        }

        fn is_enabled(&self) -> bool {
            self.enabled
        }

        fn set_enabled(&mut self, enabled: bool) {
            self.enabled = enabled;
        }

        fn merged_adapters(&self) -> &[String] {
            self.merged_weight.names()
        }

        fn merge(&mut self) -> $crate::Result<()> {
            if self.is_merged() {
                return Err($crate::LoraError::Merged(self.merged_adapters().to_vec()));
            }
            self.ensure_dense_base("merge")?;
            if let Some((weight, names)) = self.merged_base()? {
                self.merged_weight = $crate::MergedWeight::merged(weight, names);
            }
            Ok(())
        }

        fn unmerge(&mut self) -> $crate::Result<()> {
            if !self.is_merged() {
                return Err($crate::LoraError::NotMerged);
            }
            self.merged_weight = $crate::MergedWeight::none();
            Ok(())
        }
    };
}

pub(crate) use shared_layer_methods;
