//! [`LoraLinear`]: a frozen `Linear` base plus named low-rank adapters.

use std::sync::Arc;

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::quantization::QuantScheme;
use burn::tensor::Tensor;
use burn_lora_kernels::{
    linear, lora_linear, quantized_linear, quantized_lora_linear, QuantizedMatrix,
};

use crate::error::{LoraError, Result as LoraResult};
use crate::layers::adapter::LoraAdapter;
use crate::layers::adapter_batch::{forward_grouped, AdapterBatch};
use crate::layers::base_weight::BaseWeight;
use crate::layers::dora;
use crate::layers::layer::{shared_layer_methods, LayerKind, LoraLayer};

/// Configuration to create a fresh [`LoraLinear`] (a randomly initialised base, no adapter yet).
///
/// To adapt a trained layer instead, use [`LoraLinear::from_linear`].
#[derive(Config, Debug)]
pub struct LoraLinearConfig {
    /// Input width.
    pub d_input: usize,
    /// Output width.
    pub d_output: usize,
    /// Whether the base has a bias.
    #[config(default = true)]
    pub bias: bool,
    /// Initialisation of the base weight and bias (Burn's `Linear` default).
    #[config(
        default = "Initializer::KaimingUniform{gain: 1.0 / 3.0f64.sqrt(), fan_out_only: false}"
    )]
    pub initializer: Initializer,
}

impl LoraLinearConfig {
    /// Builds the layer; widths must be non-zero.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LoraResult<LoraLinear<B>> {
        if self.d_input == 0 || self.d_output == 0 {
            return Err(LoraError::InvalidModel(format!(
                "linear layer widths must be non-zero, got [{}, {}]",
                self.d_input, self.d_output
            )));
        }
        let base = LinearConfig::new(self.d_input, self.d_output)
            .with_bias(self.bias)
            .with_initializer(self.initializer.clone())
            .init(device);
        Ok(LoraLinear::from_linear(base))
    }
}

/// A linear layer with a frozen base and low-rank adapters:
/// `y = x W + b + Σ_active s · ((dropout(x) A) B)`; with a DoRA adapter
/// ([`LoraConfig::use_dora`](crate::LoraConfig::use_dora)),
/// `y = k ⊙ (x W + s · x A B) + b` with `k = m / ‖W + s·A B‖` per output feature.
///
/// The base is stored exactly as Burn's [`Linear`] stores it (fields `weight` and `bias`), so a
/// checkpoint of a model built with `Linear` loads into the same model built with `LoraLinear`.
/// Adapters live beside it, each under its own name; attaching one freezes the base (no
/// gradient, no optimizer state), and switching between them never touches the base.
///
/// # Shapes
/// - `weight`: `[d_input, d_output]`, `bias`: `[d_output]`
/// - each adapter: `A [d_input, r]`, `B [r, d_output]`
/// - `forward`: `[..., d_input]` → `[..., d_output]`
///
/// The base weight can also be kept quantized, QLoRA's frozen base (see
/// [`quantize_base`](Self::quantize_base)).
///
/// ```
/// use burn::backend::Flex as Inference;
/// use burn::tensor::Tensor;
/// use burn_lora::{LoraConfig, LoraLayer, LoraLinearConfig};
///
/// let device = Default::default();
/// let mut layer = LoraLinearConfig::new(8, 4).init::<Inference>(&device)?;
/// let x = Tensor::<Inference, 2>::ones([2, 8], &device);
/// let before = layer.forward(x.clone());
///
/// layer.add_adapter("default", &LoraConfig::new(2, 4.0))?;
/// // B starts at zero: attaching changes nothing until the adapter is trained.
/// layer.forward(x.clone()).into_data().assert_eq(&before.into_data(), true);
/// assert_eq!(layer.adapter_names(), vec!["default"]);
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// Base weight `W`, shape `[d_input, d_output]`; frozen once an adapter is attached. A
    /// float parameter, or kept quantized (its record is the float parameter's either way).
    weight: BaseWeight<B>,
    /// Base bias `b`, shape `[d_output]`; frozen once an adapter is attached.
    bias: Option<Param<Tensor<B, 1>>>,
    /// Named adapters; none in a base-only checkpoint, which loads unchanged. A record keeps
    /// their names and configurations (see [`AdapterList`](crate::AdapterList)).
    adapters: crate::AdapterList<B>,
    /// `W + Σ s·A B` of the adapters merged in place, `[d_input, d_output]`; `None` when
    /// unmerged. Kept beside `W` (never written into it) so that unmerging is exact; a record
    /// keeps it with the merged adapters' names, and loading takes the record's merged state.
    merged_weight: crate::MergedWeight<B, 2>,
    /// DoRA adapters' norms `‖W + s·A B‖`, kept at inference (never in a record).
    dora_norms: crate::DoraNorms<B>,
    /// When false, `forward` is exactly the base layer.
    #[module(skip)]
    enabled: bool,
}

impl<B: Backend> LoraLinear<B> {
    /// Wraps a (trained) [`Linear`]; its tensors are moved, not copied.
    pub fn from_linear(linear: Linear<B>) -> Self {
        Self {
            weight: BaseWeight::dense(linear.weight),
            bias: linear.bias,
            adapters: crate::AdapterList::empty(),
            merged_weight: crate::MergedWeight::none(),
            dora_norms: Default::default(),
            enabled: true,
        }
    }

    /// Applies the layer.
    ///
    /// # Shapes
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn forward<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        if !self.enabled {
            return self.forward_base(input);
        }
        if let Some(merged) = self.merged_weight.tensor() {
            return linear(input, merged, self.bias.as_ref().map(|b| b.val()));
        }
        let active: Vec<_> = LoraLayer::adapters(self)
            .iter()
            .filter(|a| a.is_active())
            .collect();
        let Some((&first, others)) = active.split_first() else {
            return self.forward_base(input);
        };
        if !active.iter().any(|a| a.is_dora()) {
            // The base and the first adapter as one operation (on Flex and NdArray, one
            // autodiff node, which is also what keeps a quantized base out of the graph).
            let output = self.base_and_adapter(input.clone(), first);
            return others.iter().fold(output, |output, adapter| {
                output + adapter.forward(input.clone())
            });
        }
        let base = self.forward_base(input.clone());
        active.into_iter().fold(base, |output, adapter| {
            let base = adapter.is_dora().then(|| output.clone());
            output + self.adapter_update(adapter, input.clone(), base)
        })
    }

    /// `x W + b + s · (dropout(x) A) B` for one plain adapter, through
    /// [`lora_linear`] (or [`quantized_lora_linear`] for a quantized base).
    fn base_and_adapter<const D: usize>(
        &self,
        input: Tensor<B, D>,
        adapter: &LoraAdapter<B>,
    ) -> Tensor<B, D> {
        let adapter_input = adapter
            .dropout_is_active()
            .then(|| adapter.dropout_input(input.clone()));
        let (lora_a, lora_b, scale) = (adapter.lora_a(), adapter.lora_b(), adapter.scale());
        match self.weight.quantized() {
            Some(weight) => quantized_lora_linear(
                input,
                weight,
                self.bias(),
                adapter_input,
                lora_a,
                lora_b,
                scale,
            ),
            None => lora_linear(
                input,
                self.weight.val(),
                self.bias(),
                adapter_input,
                lora_a,
                lora_b,
                scale,
            ),
        }
    }

    /// One adapter's update to the output: `s · ((dropout(x) A) B)`, or for a DoRA adapter
    /// `(k - 1) ⊙ x W + k ⊙ s · x A B` with `k = m / ‖W + s·A B‖` (see
    /// [`LoraConfig::use_dora`](crate::LoraConfig::use_dora)). `base` is the base output of the
    /// same rows, `x W + b`, which DoRA reuses (less the bias) unless dropout changes its input.
    fn adapter_update<const D: usize>(
        &self,
        adapter: &LoraAdapter<B>,
        input: Tensor<B, D>,
        base: Option<Tensor<B, D>>,
    ) -> Tensor<B, D> {
        let Some(scale) = self.dora_scale(adapter) else {
            return adapter.forward(input);
        };
        let input = adapter.dropout_input(input);
        let lora = adapter.forward_factors(input.clone());
        let base = match (base, self.bias()) {
            (Some(base), bias) if !adapter.dropout_is_active() => match bias {
                Some(bias) => base - bias.unsqueeze(),
                None => base,
            },
            _ => linear(input, self.weight.val(), None),
        };
        dora::update(base, lora, scale.unsqueeze())
    }

    /// [`forward`](Self::forward) after checking the input's last dimension is `d_input`:
    /// a wrong width is [`LoraError::ShapeMismatch`] instead of a panic inside the matmul.
    pub fn try_forward<const D: usize>(&self, input: Tensor<B, D>) -> LoraResult<Tensor<B, D>> {
        self.check_input(&input)?;
        Ok(self.forward(input))
    }

    /// [`LoraError::ShapeMismatch`] unless the input's last dimension is `d_input`.
    fn check_input<const D: usize>(&self, input: &Tensor<B, D>) -> LoraResult<()> {
        let dims = input.dims();
        if dims.last() != Some(&self.d_input()) {
            let mut expected = dims.to_vec();
            if let Some(last) = expected.last_mut() {
                *last = self.d_input();
            }
            return Err(LoraError::ShapeMismatch {
                what: "layer input".into(),
                expected,
                found: dims.to_vec(),
            });
        }
        Ok(())
    }

    /// A forward in which each row of the batch (dimension 0) runs the adapter `batch` names for
    /// it, or the base alone: the base once for every row, then each adapter's two skinny
    /// matmuls on its own rows (see [`AdapterBatch`]).
    ///
    /// # Shapes
    /// - input: `[rows, ..., d_input]` with `rows = batch.rows()`
    /// - output: `[rows, ..., d_output]`
    ///
    /// # Errors
    /// [`LoraError::InvalidInput`] when the input does not have `batch.rows()` rows,
    /// [`LoraError::ShapeMismatch`] for a wrong width, [`LoraError::Merged`] while merged.
    pub fn forward_adapters<const D: usize>(
        &self,
        input: Tensor<B, D>,
        batch: &AdapterBatch,
    ) -> LoraResult<Tensor<B, D>> {
        self.check_input(&input)?;
        let rows = input.dims()[0];
        forward_grouped(
            self,
            batch,
            rows,
            input,
            |x| self.forward_base(x),
            |x, rows| x.select(0, rows),
            |adapter, x, base| self.adapter_update(adapter, x, base),
        )
    }

    /// The base layer alone, `x W + b`, whatever the adapters' state (merged ones included).
    ///
    /// A quantized base goes through [`quantized_linear`], which under autodiff keeps no float
    /// copy of `W` until the backward on the CPU backends.
    pub fn forward_base<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        match self.weight.quantized() {
            Some(weight) => quantized_linear(input, weight, self.bias()),
            None => linear(input, self.weight.val(), self.bias()),
        }
    }

    /// The base weight `W`, `[d_input, d_output]` (a quantized one dequantized, as a new tensor).
    pub fn weight(&self) -> Tensor<B, 2> {
        self.weight.val()
    }

    /// The base bias `b`, `[d_output]`, if any.
    pub fn bias(&self) -> Option<Tensor<B, 1>> {
        self.bias.as_ref().map(|b| b.val())
    }

    /// Input width.
    pub fn d_input(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Output width.
    pub fn d_output(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Number of base values (weight and bias).
    pub fn num_base_params(&self) -> usize {
        self.d_input() * self.d_output() + self.bias.as_ref().map_or(0, |_| self.d_output())
    }

    /// The base weight parameter (its id and gradient setting included); while the base is
    /// quantized, a frozen parameter with its id that dequantizes the weight when first read.
    pub fn weight_param(&self) -> Param<Tensor<B, 2>> {
        self.weight.param()
    }

    /// The base bias parameter, if any.
    pub fn bias_param(&self) -> Option<&Param<Tensor<B, 1>>> {
        self.bias.as_ref()
    }

    /// Replaces the base values (same shapes, checked by the caller), keeping each parameter's
    /// id, gradient setting and load/save mappers.
    pub(crate) fn replace_base(&mut self, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) {
        self.dora_norms.clear();
        self.weight = self.weight.clone().replaced(weight);
        if let (Some(param), Some(bias)) = (self.bias.take(), bias) {
            self.bias = Some(replace_value(param, bias));
        }
    }

    /// The merged weight `W + Σ s·A B`, while merged in place.
    pub(crate) fn merged_weight_tensor(&self) -> Option<Tensor<B, 2>> {
        self.merged_weight.tensor()
    }
}

/// `param` holding `value` instead, with the same id, gradient setting and load/save mappers; a
/// leaf of the autodiff graph (`value` detached).
pub(crate) fn replace_value<B: Backend, const D: usize>(
    param: Param<Tensor<B, D>>,
    value: Tensor<B, D>,
) -> Param<Tensor<B, D>> {
    let require_grad = param.is_require_grad();
    param.map(|_| value.detach().set_require_grad(require_grad))
}

impl<B: Backend> LoraLayer<B> for LoraLinear<B> {
    shared_layer_methods!();

    fn kind(&self) -> LayerKind {
        LayerKind::Linear
    }

    fn adapter_dims(&self) -> [usize; 2] {
        [self.d_input(), self.d_output()]
    }

    fn base_weight_shape(&self) -> Vec<usize> {
        self.weight.dims().to_vec()
    }

    fn base_bias_len(&self) -> Option<usize> {
        self.bias.as_ref().map(|_| self.d_output())
    }

    fn base_matrix(&self) -> Tensor<B, 2> {
        self.weight.val().detach()
    }

    fn peft_factor_keys(&self) -> [&'static str; 2] {
        ["lora_A.weight", "lora_B.weight"]
    }

    fn peft_factor_shapes(&self, rank: usize) -> [Vec<usize>; 2] {
        [vec![rank, self.d_input()], vec![self.d_output(), rank]]
    }

    fn freeze_base(&mut self) {
        self.weight = self.weight.clone().frozen();
        self.bias = self.bias.take().map(|b| b.set_require_grad(false));
    }

    fn replace_base_matrix(&mut self, matrix: Tensor<B, 2>) -> LoraResult<()> {
        let bias = self.bias();
        self.replace_base(matrix, bias);
        Ok(())
    }

    fn base_quantization(&self) -> Option<QuantScheme> {
        self.weight.scheme()
    }

    fn quantized_base_matrix(&self, scheme: &QuantScheme) -> LoraResult<Option<QuantizedMatrix>> {
        self.quantized_weight(scheme).map(Some)
    }

    fn set_quantized_base(&mut self, matrix: Arc<QuantizedMatrix>, scheme: QuantScheme) {
        self.dora_norms.clear();
        self.weight = self.weight.clone().quantized_as(matrix, scheme);
    }

    fn dequantize_base(&mut self) {
        self.weight = self.weight.clone().dequantized();
    }

    fn merge_and_unload(&mut self) -> LoraResult<()> {
        self.ensure_dense_base("merge_and_unload")?;
        let weight = self.effective_weight()?;
        let bias = self.bias();
        self.replace_base(weight, bias);
        self.merged_weight = crate::MergedWeight::none();
        self.adapters = crate::AdapterList::empty();
        Ok(())
    }
}
