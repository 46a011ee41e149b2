//! [`LoraAdapter`]: one named pair of low-rank factors and the way it changes a layer's output.

use burn::module::{Module, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};

use crate::config::LoraConfig;
use crate::error::{LoraError, Result};
use crate::layers::record::AdapterIdentity;
use crate::nn::Dropout;

/// One named low-rank adapter of a [`LoraLinear`](crate::LoraLinear): `ΔW = s · A B`.
///
/// `A` is `[d_input, rank]`, `B` is `[rank, d_output]` (Burn's `Linear` orientation; PEFT stores
/// their transposes). Its contribution to a layer's output is `s · ((dropout(x) A) B)`: two
/// skinny matmuls, never the dense `A B`.
///
/// A DoRA adapter ([`LoraConfig::use_dora`]) also holds a magnitude `m`, `[d_output]` (PEFT's
/// `lora_magnitude_vector`): its layer then computes `m ⊙ (W + s·A B) / ‖W + s·A B‖`, the norm
/// taken over `d_input` for each output feature and detached.
///
/// A PiSSA or OLoRA adapter ([`LoraInit::Pissa`](crate::LoraInit::Pissa),
/// [`LoraInit::Olora`](crate::LoraInit::Olora)) also keeps the factors it started from, `A₀` and
/// `B₀`, frozen: its layer's base became `W − s·A₀ B₀`, and they turn the trained adapter into a
/// plain one for the original `W` ([`converted_factors`](Self::converted_factors)).
///
/// Its record holds its name, configuration and active flag beside the factors, and loading
/// one restores them (see [`AdapterIdentity`]).
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// Down-projection `A`, shape `[d_input, rank]`.
    lora_a: Param<Tensor<B, 2>>,
    /// Up-projection `B`, shape `[rank, d_output]`.
    lora_b: Param<Tensor<B, 2>>,
    /// DoRA's magnitude `m`, shape `[d_output]`; `None` for a plain LoRA adapter.
    magnitude: Option<Param<Tensor<B, 1>>>,
    /// A PiSSA or OLoRA adapter's first `A₀`, frozen: its layer's base is `W − s·A₀ B₀`.
    initial_a: Option<Param<Tensor<B, 2>>>,
    /// A PiSSA or OLoRA adapter's first `B₀`, frozen.
    initial_b: Option<Param<Tensor<B, 2>>>,
    /// The adapter's name (unique within its layer), the configuration it was created from
    /// (rank, alpha, rsLoRA, dropout, ...) and whether it takes part in `forward`; the layer's
    /// record ([`AdapterList`](crate::AdapterList)) keeps it beside the factors.
    #[module(skip)]
    identity: AdapterIdentity,
}

impl<B: Backend> LoraAdapter<B> {
    /// A fresh adapter for a `[d_input, d_output]` layer: `A` drawn by `config.init`, `B = 0`.
    pub(crate) fn init(
        name: String,
        config: &LoraConfig,
        d_input: usize,
        d_output: usize,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate_for(d_input, d_output)?;
        // Drawn now rather than lazily, so clones of a model share the same A.
        let Some(initializer) = config.init.initializer() else {
            return Err(LoraError::Unsupported(format!(
                "adapter \"{name}\": the {:?} init takes its factors from the layer's weight",
                config.init
            )));
        };
        let lora_a: Tensor<B, 2> = initializer
            .init_with(
                [d_input, config.rank],
                Some(d_input),
                Some(config.rank),
                device,
            )
            .val();
        let lora_a = Param::from_tensor(lora_a.detach());
        let lora_b = Param::from_tensor(Tensor::zeros([config.rank, d_output], device));
        Self::assemble(name, config, lora_a, lora_b)
    }

    /// An adapter from given factors `A [d_input, rank]` and `B [rank, d_output]`.
    ///
    /// The shapes must agree with `config.rank` and with each other, and every value must be
    /// finite. The factors become trainable parameters. The rank may exceed
    /// `min(d_input, d_output)`: PEFT accepts such adapters, and exact combinations
    /// ([`LoraLayer::combined_adapter`](crate::LoraLayer::combined_adapter)) produce them.
    pub fn from_factors(
        name: impl Into<String>,
        config: &LoraConfig,
        lora_a: Tensor<B, 2>,
        lora_b: Tensor<B, 2>,
    ) -> Result<Self> {
        let name = checked_name(name.into())?;
        if config.use_dora {
            return Err(LoraError::Unsupported(format!(
                "adapter \"{name}\": a DoRA config needs the magnitude as well \
                 (LoraAdapter::from_dora_factors)"
            )));
        }
        Self::checked_factors(name, config, lora_a, lora_b)
    }

    /// A DoRA adapter from given factors `A [d_input, rank]`, `B [rank, d_output]` and
    /// magnitude `m [d_output]` (PEFT's `lora_magnitude_vector`); `config.use_dora` must be set.
    ///
    /// Checked as [`from_factors`](Self::from_factors) is, plus the magnitude's length and
    /// values. The three become trainable parameters.
    pub fn from_dora_factors(
        name: impl Into<String>,
        config: &LoraConfig,
        lora_a: Tensor<B, 2>,
        lora_b: Tensor<B, 2>,
        magnitude: Tensor<B, 1>,
    ) -> Result<Self> {
        let name = checked_name(name.into())?;
        if !config.use_dora {
            return Err(LoraError::Unsupported(format!(
                "adapter \"{name}\": a magnitude vector needs a DoRA config (use_dora = true)"
            )));
        }
        let d_output = lora_b.dims()[1];
        if magnitude.dims() != [d_output] {
            return Err(LoraError::ShapeMismatch {
                what: format!("adapter \"{name}\" lora_magnitude_vector"),
                expected: vec![d_output],
                found: magnitude.dims().to_vec(),
            });
        }
        ensure_finite(&magnitude, || {
            format!("adapter \"{name}\" lora_magnitude_vector")
        })?;
        let adapter = Self::checked_factors(name, config, lora_a, lora_b)?;
        Ok(adapter.with_magnitude(magnitude))
    }

    /// [`from_factors`](Self::from_factors) without the DoRA check: for a fresh DoRA adapter,
    /// whose layer attaches the magnitude ([`with_magnitude`](Self::with_magnitude)) next.
    pub(crate) fn checked_factors(
        name: String,
        config: &LoraConfig,
        lora_a: Tensor<B, 2>,
        lora_b: Tensor<B, 2>,
    ) -> Result<Self> {
        let [d_input, rank_a] = lora_a.dims();
        let [rank_b, d_output] = lora_b.dims();
        config.validate()?;
        if rank_a != config.rank {
            return Err(LoraError::ShapeMismatch {
                what: format!("adapter \"{name}\" lora_A"),
                expected: vec![d_input, config.rank],
                found: vec![d_input, rank_a],
            });
        }
        if rank_b != config.rank {
            return Err(LoraError::ShapeMismatch {
                what: format!("adapter \"{name}\" lora_B"),
                expected: vec![config.rank, d_output],
                found: vec![rank_b, d_output],
            });
        }
        ensure_finite(&lora_a, || format!("adapter \"{name}\" lora_A"))?;
        ensure_finite(&lora_b, || format!("adapter \"{name}\" lora_B"))?;
        let lora_a = Param::from_tensor(lora_a.detach().require_grad());
        let lora_b = Param::from_tensor(lora_b.detach().require_grad());
        Self::assemble(name, config, lora_a, lora_b)
    }

    fn assemble(
        name: String,
        config: &LoraConfig,
        lora_a: Param<Tensor<B, 2>>,
        lora_b: Param<Tensor<B, 2>>,
    ) -> Result<Self> {
        Ok(Self {
            lora_a,
            lora_b,
            magnitude: None,
            initial_a: None,
            initial_b: None,
            identity: AdapterIdentity::new(name, config.clone(), true)?,
        })
    }

    /// The adapter with DoRA's magnitude `m [d_output]` set (trainable), for a fresh DoRA
    /// adapter whose layer computed `m = ‖W + s·A B‖`.
    pub(crate) fn with_magnitude(mut self, magnitude: Tensor<B, 1>) -> Self {
        self.magnitude = Some(Param::from_tensor(magnitude.detach().require_grad()));
        self
    }

    /// An adapter rebuilt from its record alone (a record holding more adapters than the layer
    /// it loads into): the factors on the record's device, trainable.
    pub(crate) fn from_record(
        record: <Self as Module<B>>::Record,
        identity: AdapterIdentity,
    ) -> Self {
        let trainable = |param: Param<Tensor<B, 2>>| {
            let (id, tensor, _) = param.consume();
            Param::initialized(id, tensor.detach().require_grad())
        };
        let magnitude = record.magnitude.map(|param| {
            let (id, tensor, _) = param.consume();
            Param::initialized(id, tensor.detach().require_grad())
        });
        let frozen = |param: Param<Tensor<B, 2>>| {
            let (id, tensor, _) = param.consume();
            Param::initialized(id, tensor.detach())
        };
        Self {
            lora_a: trainable(record.lora_a),
            lora_b: trainable(record.lora_b),
            magnitude,
            initial_a: record.initial_a.map(frozen),
            initial_b: record.initial_b.map(frozen),
            identity,
        }
    }

    /// The adapter with its current factors kept, frozen, as the ones it started from (a fresh
    /// PiSSA or OLoRA adapter, whose layer's base became `W − s·A B`).
    pub(crate) fn with_initial_factors(self) -> Self {
        let (lora_a, lora_b) = (self.lora_a.val(), self.lora_b.val());
        self.with_given_initial_factors(lora_a, lora_b)
    }

    /// The adapter with `A₀`, `B₀` kept, frozen, as the factors it started from (a trained PiSSA
    /// or OLoRA adapter read from a file, whose residual base was rebuilt from these).
    pub(crate) fn with_given_initial_factors(
        mut self,
        initial_a: Tensor<B, 2>,
        initial_b: Tensor<B, 2>,
    ) -> Self {
        let frozen = |tensor: Tensor<B, 2>| Param::initialized(ParamId::new(), tensor.detach());
        self.initial_a = Some(frozen(initial_a));
        self.initial_b = Some(frozen(initial_b));
        self
    }

    /// The factors `(A₀, B₀)` a PiSSA or OLoRA adapter started from (its layer's base is
    /// `W − s·A₀ B₀`); `None` for an adapter whose init left the base as it was.
    pub fn initial_factors(&self) -> Option<(Tensor<B, 2>, Tensor<B, 2>)> {
        match (&self.initial_a, &self.initial_b) {
            (Some(a), Some(b)) => Some((a.val(), b.val())),
            _ => None,
        }
    }

    /// Whether the adapter's init rewrote its layer's base (PiSSA, OLoRA): it then keeps the
    /// factors it started from.
    pub fn rewrote_base(&self) -> bool {
        self.initial_factors().is_some()
    }

    /// The adapter as a plain LoRA for the original base, PEFT's conversion of a PiSSA or OLoRA
    /// adapter (`path_initial_model_for_weight_conversion`): its update relative to `W` is
    /// `s·A B − s·A₀ B₀ = s'·A' B'` with `A' = [A | A₀]`, `B' = [B; −B₀]`, rank `2r`, and the
    /// scale kept by doubling `alpha` (by `√2` with rsLoRA). An adapter that did not rewrite
    /// its base comes back as it is. Detached; the configuration's init is PEFT's default.
    ///
    /// # Shapes
    /// - `A'`: `[d_input, 2r]`
    /// - `B'`: `[2r, d_output]`
    pub fn converted_factors(&self) -> (LoraConfig, Tensor<B, 2>, Tensor<B, 2>) {
        let (lora_a, lora_b) = (self.lora_a.val().detach(), self.lora_b.val().detach());
        let Some((initial_a, initial_b)) = self.initial_factors() else {
            return (self.config().clone(), lora_a, lora_b);
        };
        let config = self.config();
        let alpha = if config.use_rslora {
            config.alpha * std::f64::consts::SQRT_2
        } else {
            config.alpha * 2.0
        };
        let converted = LoraConfig {
            rank: config.rank * 2,
            alpha,
            init: crate::LoraInit::KaimingUniform,
            ..config.clone()
        };
        (
            converted,
            Tensor::cat(vec![lora_a, initial_a.detach()], 1),
            Tensor::cat(vec![lora_b, initial_b.detach().neg()], 0),
        )
    }

    /// The adapter with another identity (a record's).
    pub(crate) fn with_identity(mut self, identity: AdapterIdentity) -> Self {
        self.identity = identity;
        self
    }

    /// The adapter's name, configuration and active flag.
    pub fn identity(&self) -> &AdapterIdentity {
        &self.identity
    }

    /// Dropout on the adapter's input (only active on an autodiff backend, i.e. in training).
    fn dropout(&self) -> Dropout {
        // The identity's configuration was validated (dropout in [0, 1)) when it was built or
        // read, so the fallback is never taken.
        Dropout::new(self.identity.config().dropout).unwrap_or_else(|_| Dropout::off())
    }

    /// The adapter's contribution `s · ((dropout(x) A) B)` to a layer's output.
    ///
    /// # Shapes
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn forward<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        self.forward_factors(self.dropout().forward(input))
    }

    /// `s · ((x A) B)` without dropout: for a DoRA layer, which applies the adapter's dropout
    /// itself so that its base term sees the same dropped input.
    pub(crate) fn forward_factors<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        burn_lora_kernels::low_rank(input, self.lora_a.val(), self.lora_b.val(), self.scale())
    }

    /// The adapter's dropout applied to `input` (the identity outside training or at
    /// probability 0), for layers that run the factors themselves (convolutions).
    pub(crate) fn dropout_input<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        self.dropout().forward(input)
    }

    /// The dense update `ΔW = s · A B`, shape `[d_input, d_output]`, detached from autodiff.
    ///
    /// Only merging needs this; `forward` never builds it.
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.lora_a
            .val()
            .detach()
            .matmul(self.lora_b.val().detach())
            .mul_scalar(self.scale())
    }

    /// Whether dropout changes the adapter's input in this forward: a non-zero probability on
    /// an autodiff backend (training).
    pub(crate) fn dropout_is_active(&self) -> bool {
        self.identity.config().dropout > 0.0 && B::ad_enabled(&self.lora_a.device())
    }

    /// Errors with [`LoraError::NonFinite`] if `A`, `B` or DoRA's magnitude holds NaN or
    /// infinity.
    pub fn ensure_finite(&self) -> Result<()> {
        ensure_finite(&self.lora_a.val(), || {
            format!("adapter \"{}\" lora_A", self.name())
        })?;
        ensure_finite(&self.lora_b.val(), || {
            format!("adapter \"{}\" lora_B", self.name())
        })?;
        match &self.magnitude {
            Some(magnitude) => ensure_finite(&magnitude.val(), || {
                format!("adapter \"{}\" lora_magnitude_vector", self.name())
            }),
            None => Ok(()),
        }
    }

    /// Whether this is a DoRA adapter (it holds a magnitude).
    pub fn is_dora(&self) -> bool {
        self.magnitude.is_some()
    }

    /// DoRA's magnitude `m`, `[d_output]`; `None` for a plain LoRA adapter.
    pub fn magnitude(&self) -> Option<Tensor<B, 1>> {
        self.magnitude.as_ref().map(Param::val)
    }

    /// The parameter holding DoRA's magnitude, if any.
    pub fn magnitude_param(&self) -> Option<&Param<Tensor<B, 1>>> {
        self.magnitude.as_ref()
    }

    /// Ids of the adapter's trainable parameters: `A`, `B` and DoRA's magnitude.
    pub fn param_ids(&self) -> Vec<ParamId> {
        let mut ids = vec![self.lora_a.id, self.lora_b.id];
        ids.extend(self.magnitude.as_ref().map(|m| m.id));
        ids
    }

    /// The adapter's name.
    pub fn name(&self) -> &str {
        self.identity.name()
    }

    /// The configuration the adapter was created with.
    pub fn config(&self) -> &LoraConfig {
        self.identity.config()
    }

    /// The scale `s` applied to `A B`.
    pub fn scale(&self) -> f64 {
        self.config().scale()
    }

    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.config().rank
    }

    /// `A`, shape `[d_input, rank]`.
    pub fn lora_a(&self) -> Tensor<B, 2> {
        self.lora_a.val()
    }

    /// `B`, shape `[rank, d_output]`.
    pub fn lora_b(&self) -> Tensor<B, 2> {
        self.lora_b.val()
    }

    /// The parameter holding `A` (its id is the optimizer's key).
    pub fn lora_a_param(&self) -> &Param<Tensor<B, 2>> {
        &self.lora_a
    }

    /// The parameter holding `B`.
    pub fn lora_b_param(&self) -> &Param<Tensor<B, 2>> {
        &self.lora_b
    }

    /// The shapes of `A` and `B`.
    pub fn shapes(&self) -> ([usize; 2], [usize; 2]) {
        (self.lora_a.shape().dims(), self.lora_b.shape().dims())
    }

    /// Number of trainable values, `rank · (d_input + d_output)`, plus `d_output` for DoRA's
    /// magnitude.
    pub fn num_params(&self) -> usize {
        let ([d_input, rank], [_, d_output]) = self.shapes();
        rank * (d_input + d_output) + if self.is_dora() { d_output } else { 0 }
    }

    /// Whether this adapter takes part in its layer's `forward`.
    pub fn is_active(&self) -> bool {
        self.identity.is_active()
    }

    pub(crate) fn set_active(&mut self, active: bool) {
        self.identity.set_active(active);
    }
}

/// Rejects empty adapter names.
pub(crate) fn checked_name(name: String) -> Result<String> {
    if name.is_empty() {
        Err(LoraError::InvalidAdapterName(name))
    } else {
        Ok(name)
    }
}

/// Errors with [`LoraError::NonFinite`] naming `what()` if `tensor` holds NaN or infinity.
pub(crate) fn ensure_finite<B: Backend, const D: usize>(
    tensor: &Tensor<B, D>,
    what: impl FnOnce() -> String,
) -> Result<()> {
    let all_finite: bool = tensor.clone().is_finite().all().into_scalar().elem();
    if all_finite {
        Ok(())
    } else {
        Err(LoraError::NonFinite(what()))
    }
}
