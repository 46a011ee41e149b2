//! [`LoraConv2d`]: a frozen `Conv2d` base plus named low-rank adapters.

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::{ConvOptions, PaddedConvOptions};
use burn::tensor::Tensor;

use crate::error::{LoraError, Result as LoraResult};
use crate::layers::adapter::LoraAdapter;
use crate::layers::adapter_batch::{forward_grouped, AdapterBatch};
use crate::layers::dora;
use crate::layers::layer::{shared_layer_methods, LayerKind, LoraLayer};
use crate::layers::linear::replace_value;

/// Configuration to create a fresh [`LoraConv2d`] (a randomly initialised base, no adapter yet);
/// the fields and defaults are those of Burn's [`Conv2dConfig`].
///
/// To adapt a trained layer instead, use [`LoraConv2d::from_conv2d`].
#[derive(Config, Debug)]
pub struct LoraConv2dConfig {
    /// `[channels_in, channels_out]`.
    pub channels: [usize; 2],
    /// `[kernel_height, kernel_width]`.
    pub kernel_size: [usize; 2],
    /// The stride of the convolution.
    #[config(default = "[1, 1]")]
    pub stride: [usize; 2],
    /// Spacing between kernel elements.
    #[config(default = "[1, 1]")]
    pub dilation: [usize; 2],
    /// Controls the connections between input and output channels. Adapters need `1`.
    #[config(default = "1")]
    pub groups: usize,
    /// The padding configuration (`Valid`, `Explicit` or `Same`, as Burn computes it).
    #[config(default = "PaddingConfig2d::Valid")]
    pub padding: PaddingConfig2d,
    /// Whether the base has a bias.
    #[config(default = true)]
    pub bias: bool,
    /// Initialisation of the base weight and bias (Burn's `Conv2d` default).
    #[config(
        default = "Initializer::KaimingUniform{gain: 1.0 / 3.0f64.sqrt(), fan_out_only: false}"
    )]
    pub initializer: Initializer,
}

impl LoraConv2dConfig {
    /// Builds the layer. Channels, kernel size, stride, dilation and groups must be non-zero and
    /// both channel counts divisible by `groups` (where Burn would panic, this is an error).
    pub fn init<B: Backend>(&self, device: &B::Device) -> LoraResult<LoraConv2d<B>> {
        let [channels_in, channels_out] = self.channels;
        let sizes = [
            ("channels", self.channels),
            ("kernel_size", self.kernel_size),
            ("stride", self.stride),
            ("dilation", self.dilation),
        ];
        if let Some((what, value)) = sizes.iter().find(|(_, v)| v.contains(&0)) {
            return Err(LoraError::InvalidModel(format!(
                "conv2d {what} must be non-zero, got {value:?}"
            )));
        }
        if self.groups == 0 || channels_in % self.groups != 0 || channels_out % self.groups != 0 {
            return Err(LoraError::InvalidModel(format!(
                "conv2d channels {:?} must both be divisible by groups = {}",
                self.channels, self.groups
            )));
        }
        let base = Conv2dConfig::new(self.channels, self.kernel_size)
            .with_stride(self.stride)
            .with_dilation(self.dilation)
            .with_groups(self.groups)
            .with_padding(self.padding.clone())
            .with_bias(self.bias)
            .with_initializer(self.initializer.clone())
            .init(device);
        Ok(LoraConv2d::from_conv2d(base))
    }
}

/// A 2D convolution with a frozen base and low-rank adapters:
/// `y = conv(x, W) + b + Σ_active s · conv₁ₓ₁(conv(dropout(x), Aᵀ), Bᵀ)`.
///
/// Each adapter is PEFT's pair of convolutions: `A` is a convolution with the base's kernel
/// size, stride, padding and dilation down to `r` channels, `B` a 1x1 convolution back up to
/// `channels_out`. In the matrix view every layer kind shares, `A` is `[in · kh · kw, r]` and
/// `B` is `[r, out]`, so the update `s · A B` transposed and reshaped to `[out, in, kh, kw]` is
/// the kernel that merging adds to `W` (PEFT's `W + s · (B ∘ A)`). PEFT stores the factors as
/// kernels, `lora_A.weight [r, in, kh, kw]` and `lora_B.weight [out, r, 1, 1]`.
///
/// The base is stored exactly as Burn's [`Conv2d`] stores it (fields `weight`, `bias`,
/// `stride`, `kernel_size`, `dilation`, `groups`, `padding`), so a checkpoint of a model built
/// with `Conv2d` loads into the same model built with `LoraConv2d`. Attaching an adapter
/// freezes the base.
///
/// Grouped convolutions (`groups > 1`) work as base layers but refuse adapters with
/// [`LoraError::Unsupported`]. Padding is Burn's: `Valid`, `Explicit` and `Same` (computed for
/// each input size exactly as `Conv2d` does, and applied identically to `A`). PEFT builds its
/// `lora_A` without the base's dilation, so for a dilated layer PEFT's unmerged forward differs
/// from its own merge (or fails on shapes); `A` here uses the base's dilation, which is what
/// merging assumes (the two agree for `dilation = [1, 1]`, PEFT's usual case).
///
/// At inference (no autodiff) `forward` folds the active adapters into the kernel, one
/// convolution with `W + Σ s · (A B)ᵀ`, whenever the input has at least `out` output positions:
/// by linearity the same output, and cheaper than the adapters' own convolutions (which need a
/// second im2col of the input). Training, dropout and small inputs run `A` and `B` as PEFT does.
///
/// # Shapes
/// - `weight`: `[out, in / groups, kh, kw]`, `bias`: `[out]`
/// - each adapter: `A [in · kh · kw, r]`, `B [r, out]`
/// - `forward`: `[batch, in, height, width]` → `[batch, out, height_out, width_out]`
///
/// ```
/// use burn::backend::Flex as Inference;
/// use burn::nn::PaddingConfig2d;
/// use burn::tensor::Tensor;
/// use burn_lora::{LoraConfig, LoraConv2dConfig, LoraLayer};
///
/// let device = Default::default();
/// let mut conv = LoraConv2dConfig::new([3, 8], [3, 3])
///     .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
///     .init::<Inference>(&device)?;
/// let x = Tensor::<Inference, 4>::ones([2, 3, 10, 10], &device);
/// let before = conv.forward(x.clone());
/// assert_eq!(before.dims(), [2, 8, 10, 10]);
///
/// conv.add_adapter("default", &LoraConfig::new(4, 8.0))?;
/// assert_eq!(conv.adapter_dims(), [3 * 3 * 3, 8]);
/// // B starts at zero: attaching changes nothing until the adapter is trained.
/// conv.forward(x).into_data().assert_eq(&before.into_data(), true);
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
#[derive(Module, Debug)]
pub struct LoraConv2d<B: Backend> {
    /// Base kernel `W`, shape `[out, in / groups, kh, kw]`; frozen once an adapter is attached.
    weight: Param<Tensor<B, 4>>,
    /// Base bias `b`, shape `[out]`; frozen once an adapter is attached.
    bias: Option<Param<Tensor<B, 1>>>,
    /// Stride of the convolution.
    stride: [usize; 2],
    /// Size of the kernel.
    kernel_size: [usize; 2],
    /// Spacing between kernel elements.
    dilation: [usize; 2],
    /// Controls the connections between input and output channels.
    groups: usize,
    /// The padding configuration.
    padding: PaddingConfig2d,
    /// Named adapters; none in a base-only checkpoint, which loads unchanged. A record keeps
    /// their names and configurations (see [`AdapterList`](crate::AdapterList)).
    adapters: crate::AdapterList<B>,
    /// `W + Σ s·(A B)ᵀ` of the adapters merged in place, `[out, in, kh, kw]`; `None` when
    /// unmerged. Kept beside `W` (never written into it) so that unmerging is exact; a record
    /// keeps it with the merged adapters' names, and loading takes the record's merged state.
    merged_weight: crate::MergedWeight<B, 4>,
    /// DoRA adapters' norms `‖W + s·A B‖`, kept at inference (never in a record).
    dora_norms: crate::DoraNorms<B>,
    /// When false, `forward` is exactly the base layer.
    #[module(skip)]
    enabled: bool,
}

impl<B: Backend> LoraConv2d<B> {
    /// Wraps a (trained) [`Conv2d`]; its tensors are moved, not copied.
    pub fn from_conv2d(conv: Conv2d<B>) -> Self {
        Self {
            weight: conv.weight,
            bias: conv.bias,
            stride: conv.stride,
            kernel_size: conv.kernel_size,
            dilation: conv.dilation,
            groups: conv.groups,
            padding: conv.padding,
            adapters: crate::AdapterList::empty(),
            merged_weight: crate::MergedWeight::none(),
            dora_norms: Default::default(),
            enabled: true,
        }
    }

    /// Applies the layer: the base convolution plus every active adapter's
    /// `s · conv₁ₓ₁(conv(dropout(x), Aᵀ), Bᵀ)`, folded into the kernel at inference when that is
    /// cheaper (then bit-identical to the merged layer's output).
    ///
    /// # Shapes
    /// - input: `[batch, channels_in, height, width]`
    /// - output: `[batch, channels_out, height_out, width_out]`
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        if !self.enabled {
            return self.forward_base(input);
        }
        let options = self.options(&input);
        if let Some(merged) = self.merged_weight.tensor() {
            return conv2d(input, merged, self.bias(), options);
        }
        let active: Vec<&LoraAdapter<B>> = LoraLayer::adapters(self)
            .iter()
            .filter(|a| a.is_active())
            .collect();
        if active.is_empty() {
            return conv2d(input, self.weight.val(), self.bias(), options);
        }
        if self.folding_pays(&input, &options) {
            // Inference: one convolution with the kernel merging would install (by linearity
            // the same output up to f32 rounding), cheaper than the adapter's convolutions.
            let kernel = self.matrix_to_kernel(self.adapted_matrix(&active));
            return conv2d(input, kernel, self.bias(), options);
        }
        let base = conv2d(
            input.clone(),
            self.weight.val(),
            self.bias(),
            options.clone(),
        );
        active.into_iter().fold(base, |output, adapter| {
            let base = adapter.is_dora().then(|| output.clone());
            output + self.adapter_update(adapter, input.clone(), &options, base)
        })
    }

    /// One adapter's update to the output: `s · conv₁ₓ₁(conv(dropout(x), Aᵀ), Bᵀ)`, or for a
    /// DoRA adapter `(k - 1) ⊙ conv(x, W) + k ⊙ (that update)` with `k = m / ‖W + s·A B‖`, one
    /// value per output channel. `base` is the base output of the same images, which DoRA
    /// reuses (less the bias) unless dropout changes its input.
    fn adapter_update(
        &self,
        adapter: &LoraAdapter<B>,
        input: Tensor<B, 4>,
        options: &PaddedConvOptions<2>,
        base: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let input = adapter.dropout_input(input);
        let Some(scale) = self.dora_scale(adapter) else {
            return self.factors_output(adapter, input, options);
        };
        let lora = self.factors_output(adapter, input.clone(), options);
        let channels = [1, self.channels_out(), 1, 1];
        let base = match (base, self.bias()) {
            (Some(base), bias) if !adapter.dropout_is_active() => match bias {
                Some(bias) => base - bias.reshape(channels),
                None => base,
            },
            _ => conv2d(input, self.weight.val(), None, options.clone()),
        };
        dora::update(base, lora, scale.reshape(channels))
    }

    /// A weight in the adapters' matrix view `[in · kh · kw, out]` as a kernel
    /// `[out, in, kh, kw]`.
    fn matrix_to_kernel(&self, matrix: Tensor<B, 2>) -> Tensor<B, 4> {
        matrix.transpose().reshape(self.weight.shape().dims::<4>())
    }

    /// A forward in which each image of the batch runs the adapter `batch` names for it, or the
    /// base alone: the base convolution once for every image, then each adapter's two
    /// convolutions on its own images (see [`AdapterBatch`]).
    ///
    /// # Shapes
    /// - input: `[rows, channels_in, height, width]` with `rows = batch.rows()`
    /// - output: `[rows, channels_out, height_out, width_out]`
    ///
    /// # Errors
    /// [`LoraError::InvalidInput`] when the input does not have `batch.rows()` images,
    /// [`LoraError::Merged`] while merged.
    pub fn forward_adapters(
        &self,
        input: Tensor<B, 4>,
        batch: &AdapterBatch,
    ) -> LoraResult<Tensor<B, 4>> {
        let rows = input.dims()[0];
        let options = self.options(&input);
        forward_grouped(
            self,
            batch,
            rows,
            input,
            |x| self.forward_base(x),
            |x, rows| x.select(0, rows),
            |adapter, x, base| self.adapter_update(adapter, x, &options, base),
        )
    }

    /// Whether `forward` should fold the active adapters into the kernel for this input
    /// instead of running their convolutions: only without autodiff (training needs `A` and
    /// `B` in the graph, and dropout on the adapter's input only), and only when the input has
    /// at least as many output positions `batch · height_out · width_out` as the layer has
    /// output channels. Folding costs `≈ (r + 1) · out · in · kh · kw` multiply-adds whatever
    /// the input; the adapter's convolutions cost `≈ r · in · kh · kw` per output position plus
    /// a second im2col of the input, so folding wins from about `out` positions on.
    fn folding_pays(&self, input: &Tensor<B, 4>, options: &PaddedConvOptions<2>) -> bool {
        if B::ad_enabled(&input.device()) {
            return false;
        }
        let [batch, _, height, width] = input.dims();
        let padding_end = options.padding_end.unwrap_or(options.options.padding);
        // `axis` is 0 or 1 into `[usize; 2]` arrays. The arithmetic saturates: a `Conv2d` built
        // by hand (its fields are public) may hold a zero kernel size or stride, which Burn's
        // convolution itself then rejects.
        let out_size = |axis: usize, size: usize| {
            let padded = size + options.options.padding[axis] + padding_end[axis];
            let span = self.dilation[axis] * self.kernel_size[axis].saturating_sub(1) + 1;
            padded.saturating_sub(span) / self.stride[axis].max(1) + 1
        };
        batch * out_size(0, height) * out_size(1, width) >= self.channels_out()
    }

    /// [`forward`](Self::forward) after checking the input has `channels_in` channels: a wrong
    /// count is [`LoraError::ShapeMismatch`] instead of a panic inside the convolution.
    pub fn try_forward(&self, input: Tensor<B, 4>) -> LoraResult<Tensor<B, 4>> {
        let dims = input.dims();
        if dims[1] != self.channels_in() {
            let mut expected = dims.to_vec();
            expected[1] = self.channels_in();
            return Err(LoraError::ShapeMismatch {
                what: "conv2d input".into(),
                expected,
                found: dims.to_vec(),
            });
        }
        Ok(self.forward(input))
    }

    /// The base layer alone, `conv(x, W) + b`, whatever the adapters' state (merged ones
    /// included): bit-identical to Burn's `Conv2d::forward`.
    pub fn forward_base(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let options = self.options(&input);
        conv2d(input, self.weight.val(), self.bias(), options)
    }

    /// `s · conv₁ₓ₁(conv(x, Aᵀ), Bᵀ)`: the adapter's factors on its (dropped-out) input.
    fn factors_output(
        &self,
        adapter: &LoraAdapter<B>,
        input: Tensor<B, 4>,
        options: &PaddedConvOptions<2>,
    ) -> Tensor<B, 4> {
        let rank = adapter.rank();
        let [kh, kw] = self.kernel_size;
        let kernel_a = adapter
            .lora_a()
            .transpose()
            .reshape([rank, self.channels_in(), kh, kw]);
        let hidden = conv2d(input, kernel_a, None, options.clone());
        let scale = adapter.scale();
        // Scale the rank-wide hidden tensor, not the output: r channels instead of out.
        let hidden = if scale == 1.0 {
            hidden
        } else {
            hidden.mul_scalar(scale)
        };
        let kernel_b = adapter
            .lora_b()
            .transpose()
            .reshape([self.channels_out(), rank, 1, 1]);
        conv2d(
            hidden,
            kernel_b,
            None,
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        )
    }

    /// The convolution options of the base for this input, padding computed as Burn's
    /// `Conv2d::forward` computes it.
    fn options(&self, input: &Tensor<B, 4>) -> PaddedConvOptions<2> {
        let [_, _, height, width] = input.dims();
        let ((top, bottom), (left, right)) = padding_pairs(
            &self.padding,
            [height, width],
            self.kernel_size,
            self.stride,
        );
        PaddedConvOptions::asymmetric(
            self.stride,
            [top, left],
            [bottom, right],
            self.dilation,
            self.groups,
        )
    }

    /// The base kernel `W`, `[out, in / groups, kh, kw]`.
    pub fn weight(&self) -> Tensor<B, 4> {
        self.weight.val()
    }

    /// The base bias `b`, `[out]`, if any.
    pub fn bias(&self) -> Option<Tensor<B, 1>> {
        self.bias.as_ref().map(|b| b.val())
    }

    /// Number of input channels.
    pub fn channels_in(&self) -> usize {
        self.weight.shape().dims::<4>()[1] * self.groups
    }

    /// Number of output channels.
    pub fn channels_out(&self) -> usize {
        self.weight.shape().dims::<4>()[0]
    }

    /// Size of the kernel, `[kh, kw]`.
    pub fn kernel_size(&self) -> [usize; 2] {
        self.kernel_size
    }

    /// Stride of the convolution.
    pub fn stride(&self) -> [usize; 2] {
        self.stride
    }

    /// Spacing between kernel elements.
    pub fn dilation(&self) -> [usize; 2] {
        self.dilation
    }

    /// Number of groups.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The padding configuration.
    pub fn padding(&self) -> &PaddingConfig2d {
        &self.padding
    }

    /// Number of base values (weight and bias).
    pub fn num_base_params(&self) -> usize {
        self.weight.shape().num_elements() + self.bias.as_ref().map_or(0, |_| self.channels_out())
    }

    /// The base weight parameter (its id and gradient setting included).
    pub fn weight_param(&self) -> &Param<Tensor<B, 4>> {
        &self.weight
    }

    /// The base bias parameter, if any.
    pub fn bias_param(&self) -> Option<&Param<Tensor<B, 1>>> {
        self.bias.as_ref()
    }

    /// Merge-and-unload: a new plain [`Conv2d`] computing what this layer's `forward` computes
    /// now (kernel `W + Σ_active s · (A B)ᵀ`, the same bias and settings). This layer is left as
    /// it was.
    ///
    /// Fails with [`LoraError::NonFinite`] if an active adapter or the sum holds NaN or
    /// infinity.
    pub fn merge_to_conv2d(&self) -> LoraResult<Conv2d<B>> {
        Ok(Conv2d {
            weight: Param::from_tensor(self.effective_weight()?),
            bias: self.bias().map(|b| Param::from_tensor(b.detach())),
            stride: self.stride,
            kernel_size: self.kernel_size,
            dilation: self.dilation,
            groups: self.groups,
            padding: self.padding.clone(),
        })
    }

    /// The kernel `forward` applies: the merged one while merged, else `W + Σ_active s · (A B)ᵀ`
    /// (`W` alone when disabled or nothing is active). Checked to be finite.
    fn effective_weight(&self) -> LoraResult<Tensor<B, 4>> {
        if !self.enabled {
            return Ok(self.weight().detach());
        }
        if let Some(merged) = self.merged_weight.tensor() {
            return Ok(merged.detach());
        }
        Ok(self
            .merged_base()?
            .map_or_else(|| self.weight().detach(), |(weight, _)| weight))
    }

    /// `W + Σ_active s · (A B)ᵀ` reshaped to the kernel, with the adapters' names; `None` when
    /// no adapter is active or the layer is disabled.
    fn merged_base(&self) -> LoraResult<Option<(Tensor<B, 4>, Vec<String>)>> {
        // The kernel the folded `forward` computes (`adapted_matrix`), so a merged layer computes
        // what it computes, bit for bit.
        Ok(self
            .merged_matrix()?
            .map(|(matrix, names)| (self.matrix_to_kernel(matrix), names)))
    }
}

/// `((top, bottom), (left, right))` padding of a convolution over a `[height, width]` input,
/// as Burn's `Conv2d` computes it: `Same` pads to `ceil(size / stride)` outputs, the odd pixel
/// at the end (bottom / right), without regard to dilation, exactly like Burn.
fn padding_pairs(
    padding: &PaddingConfig2d,
    [height, width]: [usize; 2],
    kernel_size: [usize; 2],
    stride: [usize; 2],
) -> ((usize, usize), (usize, usize)) {
    fn same(kernel: usize, stride: usize, size: usize) -> (usize, usize) {
        // A zero stride (a hand-built `Conv2d`) is left to Burn's convolution to reject.
        let stride = stride.max(1);
        let size_out = size.div_ceil(stride);
        let total = if size_out > 0 {
            ((size_out - 1) * stride + kernel).saturating_sub(size)
        } else {
            0
        };
        (total / 2, total - total / 2)
    }
    match padding {
        PaddingConfig2d::Valid => ((0, 0), (0, 0)),
        PaddingConfig2d::Explicit(top, left, bottom, right) => ((*top, *bottom), (*left, *right)),
        PaddingConfig2d::Same => (
            same(kernel_size[0], stride[0], height),
            same(kernel_size[1], stride[1], width),
        ),
    }
}

impl<B: Backend> LoraLayer<B> for LoraConv2d<B> {
    shared_layer_methods!();

    fn kind(&self) -> LayerKind {
        LayerKind::Conv2d
    }

    fn adapter_dims(&self) -> [usize; 2] {
        let [out, in_per_group, kh, kw] = self.weight.shape().dims::<4>();
        [in_per_group * kh * kw, out]
    }

    fn base_weight_shape(&self) -> Vec<usize> {
        self.weight.shape().dims::<4>().to_vec()
    }

    fn base_bias_len(&self) -> Option<usize> {
        self.bias.as_ref().map(|_| self.channels_out())
    }

    fn base_matrix(&self) -> Tensor<B, 2> {
        let [out, in_per_group, kh, kw] = self.weight.shape().dims::<4>();
        self.weight
            .val()
            .detach()
            .reshape([out, in_per_group * kh * kw])
            .transpose()
    }

    fn peft_magnitude_shape(&self) -> Vec<usize> {
        vec![1, self.channels_out(), 1, 1]
    }

    fn peft_factor_keys(&self) -> [&'static str; 2] {
        ["lora_A.weight", "lora_B.weight"]
    }

    fn peft_factor_shapes(&self, rank: usize) -> [Vec<usize>; 2] {
        let [out, in_per_group, kh, kw] = self.weight.shape().dims::<4>();
        [vec![rank, in_per_group, kh, kw], vec![out, rank, 1, 1]]
    }

    fn check_adapters_supported(&self) -> LoraResult<()> {
        if self.groups == 1 {
            Ok(())
        } else {
            Err(LoraError::Unsupported(format!(
                "LoRA on a grouped convolution (groups = {}): only groups = 1 takes adapters",
                self.groups
            )))
        }
    }

    fn freeze_base(&mut self) {
        self.weight = self.weight.clone().set_require_grad(false);
        self.bias = self.bias.take().map(|b| b.set_require_grad(false));
    }

    fn merge_and_unload(&mut self) -> LoraResult<()> {
        let weight = self.effective_weight()?;
        self.dora_norms.clear();
        self.weight = replace_value(self.weight.clone(), weight);
        self.merged_weight = crate::MergedWeight::none();
        self.adapters = crate::AdapterList::empty();
        Ok(())
    }
}
