//! [`LoraMlp`]: the notebook's multi-layer perceptron, any widths, with LoRA on chosen layers.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, Relu};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::error::{LoraError, Result as LoraResult};
use crate::layers::linear::{LoraLinear, LoraLinearConfig};
use crate::LoraModel;

/// The adapter name PEFT uses when none is given; the examples use it too.
pub const DEFAULT_ADAPTER: &str = "default";

/// Configuration of a [`LoraMlp`]: `d_input → hidden[0] → … → n_classes`, ReLU between layers.
#[derive(Config, Debug)]
pub struct LoraMlpConfig {
    /// Input width (784 for MNIST).
    pub d_input: usize,
    /// Hidden widths, in order (the notebook's are `[1000, 2000]`).
    pub hidden: Vec<usize>,
    /// Output width (number of classes).
    pub n_classes: usize,
}

impl LoraMlpConfig {
    /// The notebook's over-sized MNIST classifier: 784-1000-2000-10.
    pub fn notebook() -> Self {
        Self::new(784, vec![1000, 2000], 10)
    }

    /// All widths in order, input first.
    pub fn widths(&self) -> Vec<usize> {
        let mut widths = Vec::with_capacity(self.hidden.len() + 2);
        widths.push(self.d_input);
        widths.extend(&self.hidden);
        widths.push(self.n_classes);
        widths
    }

    /// Builds the model with freshly initialised (trainable) layers and no adapters.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LoraResult<LoraMlp<B>> {
        let widths = self.widths();
        if let Some(zero) = widths.iter().position(|&w| w == 0) {
            return Err(LoraError::InvalidModel(format!(
                "MLP widths must be non-zero, got {widths:?} (position {zero})"
            )));
        }
        // `windows(2)` yields slices of exactly two widths.
        let layers = widths
            .windows(2)
            .map(|pair| LoraLinearConfig::new(pair[0], pair[1]).init(device))
            .collect::<LoraResult<Vec<_>>>()?;
        Ok(LoraMlp {
            layers,
            activation: Relu::new(),
        })
    }
}

/// A ReLU multi-layer perceptron whose linear layers are [`LoraLinear`]s.
///
/// Train it as a plain MLP, then [`attach`](LoraModel::attach) LoRA (which freezes every base
/// weight and bias), train only the adapters, toggle them, merge them: all of it comes from the
/// [`LoraModel`] trait, as for any model. Its layers live at the module
/// paths `layers.0`, `layers.1`, … (the PyTorch names of an `nn.ModuleList` called `layers`).
///
/// # Shapes
/// - input: `[batch, d_input]`
/// - output: `[batch, n_classes]` (logits)
///
/// ```
///
/// use burn::module::AutodiffModule;
/// use burn::nn::loss::CrossEntropyLossConfig;
/// use burn::optim::{AdamConfig, GradientsParams, Optimizer};
/// use burn::tensor::{Distribution, Int, Tensor};
/// use burn_lora::{LoraConfig, LoraMlpConfig, LoraModel, Targets};
///
/// type B = burn::backend::Autodiff<burn::backend::Flex>;
/// let device = Default::default();
/// let mut model = LoraMlpConfig::new(16, vec![32], 4).init::<B>(&device)?;
/// model.attach("default", &LoraConfig::new(2, 2.0), &Targets::all())?; // freezes the base
///
/// // One training step: only the adapters receive gradients.
/// let x = Tensor::<B, 2>::random([8, 16], Distribution::Default, &device);
/// let y = Tensor::<B, 1, Int>::from_ints([0, 1, 2, 3, 0, 1, 2, 3], &device);
/// let loss = CrossEntropyLossConfig::new().init(&device).forward(model.forward(x.clone()), y);
/// let grads = GradientsParams::from_grads(loss.backward(), &model);
/// let mut optim = AdamConfig::new().init();
/// let model = optim.step(1e-2, model, grads);
///
/// // Toggle, then merge for inference (a plain model, no added latency).
/// let mut model = model.valid();
/// model.set_enabled(false);
/// model.set_enabled(true);
/// let merged = model.merge_and_unload()?;
/// let x = x.inner();
/// merged.forward(x.clone()).into_data()
///     .assert_approx_eq::<f32>(&model.forward(x).into_data(), Default::default());
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
#[derive(Module, Debug, LoraModel)]
pub struct LoraMlp<B: Backend> {
    /// The linear layers, input first.
    layers: Vec<LoraLinear<B>>,
    /// ReLU between layers (not after the last).
    activation: Relu,
}

impl<B: Backend> LoraMlp<B> {
    /// Builds the model from trained [`Linear`] layers (moved, not copied). Consecutive layers
    /// must chain: each layer's `d_output` is the next one's `d_input`.
    pub fn from_linears(linears: Vec<Linear<B>>) -> LoraResult<Self> {
        let layers: Vec<_> = linears.into_iter().map(LoraLinear::from_linear).collect();
        if layers.is_empty() {
            return Err(LoraError::InvalidModel(
                "an MLP needs at least one layer".into(),
            ));
        }
        // `windows(2)` yields slices of exactly two layers.
        for (index, pair) in layers.windows(2).enumerate() {
            if pair[0].d_output() != pair[1].d_input() {
                return Err(LoraError::ShapeMismatch {
                    what: format!("layers.{} weight", index + 1),
                    expected: vec![pair[0].d_output(), pair[1].d_output()],
                    found: vec![pair[1].d_input(), pair[1].d_output()],
                });
            }
        }
        Ok(Self {
            layers,
            activation: Relu::new(),
        })
    }

    /// Logits for a batch of flattened inputs.
    ///
    /// # Shapes
    /// - input: `[batch, d_input]`
    /// - output: `[batch, n_classes]`
    pub fn forward(&self, input: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.layers.len() - 1;
        self.layers
            .iter()
            .enumerate()
            .fold(input, |x, (index, layer)| {
                let y = layer.forward(x);
                if index == last {
                    y
                } else {
                    self.activation.forward(y)
                }
            })
    }

    /// [`forward`](Self::forward) after checking the input is `[batch, d_input]`: a wrong width
    /// is [`LoraError::ShapeMismatch`] instead of a panic.
    pub fn try_forward(&self, input: Tensor<B, 2>) -> LoraResult<Tensor<B, 2>> {
        let [batch, width] = input.dims();
        let d_input = self.layers.first().map_or(0, LoraLinear::d_input);
        if width != d_input {
            return Err(LoraError::ShapeMismatch {
                what: "model input".into(),
                expected: vec![batch, d_input],
                found: vec![batch, width],
            });
        }
        Ok(self.forward(input))
    }

    /// The linear layers, input first.
    pub fn layers(&self) -> &[LoraLinear<B>] {
        &self.layers
    }

    /// Mutable access to one layer, e.g. to switch its adapters individually.
    pub fn layer_mut(&mut self, index: usize) -> LoraResult<&mut LoraLinear<B>> {
        let count = self.layers.len();
        self.layers
            .get_mut(index)
            .ok_or(LoraError::LayerOutOfRange { index, count })
    }
}
