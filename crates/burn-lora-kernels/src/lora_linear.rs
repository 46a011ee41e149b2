//! A linear layer with one low-rank adapter in one operation.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::host::{is_host, is_host_based};
use crate::matmul::{linear, MAX_ROWS};
use crate::quantized::QuantizedMatrix;
use crate::scope::fast_paths_enabled;

/// A low-rank update `s · (x A) B`, as [`linear`]s: the rank-wide hidden values are scaled,
/// not the output (`r` values per row instead of `d_output`).
///
/// # Shapes
/// - input: `[..., d_input]`
/// - lora_a: `[d_input, r]`
/// - lora_b: `[r, d_output]`
/// - output: `[..., d_output]`
pub fn low_rank<B: Backend, const D: usize>(
    input: Tensor<B, D>,
    lora_a: Tensor<B, 2>,
    lora_b: Tensor<B, 2>,
    scale: f64,
) -> Tensor<B, D> {
    let hidden = linear(input, lora_a, None);
    let hidden = if scale == 1.0 {
        hidden
    } else {
        hidden.mul_scalar(scale)
    };
    linear(hidden, lora_b, None)
}

/// `x W + b + s · (x' A) B`: a linear layer and one low-rank adapter, whose input `x'` is `x`
/// unless given (`adapter_input`: `x` after the adapter's dropout). Outside
/// [`with_fast_paths`](crate::with_fast_paths) it is exactly `linear(x, W, b) + low_rank(x', A,
/// B, s)`.
///
/// Inside the scope, on Flex and `Autodiff<Flex>` in `f32` (NdArray and `Autodiff<NdArray>` with
/// the `ndarray` feature; more than 16 rows without autodiff, where fewer take the few-rows
/// products), it is one autodiff node over the rows as one matrix: the
/// adapter's product is added into the base output's buffer and, in the backward, its input
/// gradient into the base's (`gemm` accumulating), where Burn's operations write each as a
/// tensor of the full width and add them in another pass, with a node per operation.
///
/// # Shapes
/// - input, adapter_input: `[..., d_input]`
/// - weight: `[d_input, d_output]`
/// - bias: `[d_output]`
/// - lora_a: `[d_input, r]`
/// - lora_b: `[r, d_output]`
/// - output: `[..., d_output]`
pub fn lora_linear<B: Backend, const D: usize>(
    input: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    adapter_input: Option<Tensor<B, D>>,
    lora_a: Tensor<B, 2>,
    lora_b: Tensor<B, 2>,
    scale: f64,
) -> Tensor<B, D> {
    let weight = BaseWeight::Dense(weight);
    with_weight(input, weight, bias, adapter_input, lora_a, lora_b, scale)
}

/// [`lora_linear`] with the base weight `W` kept quantized (QLoRA's frozen base): `W` is
/// [`QuantizedMatrix::dequantize`]d where it is used, and gets no gradient.
///
/// Inside [`with_fast_paths`](crate::with_fast_paths), on the CPU backends of this crate's
/// features (with or without autodiff), the one node of [`lora_linear`] dequantizes `W` for
/// the forward's product and again in the backward for the input's gradient, and keeps only
/// the quantized matrix between them: a training step holds one layer's `f32` weight at a
/// time. Elsewhere `W` is dequantized into a constant tensor of the backend, which autodiff
/// keeps until the backward.
///
/// # Shapes
/// - input, adapter_input: `[..., d_input]`
/// - weight: `[d_input, d_output]`
/// - bias: `[d_output]`
/// - lora_a: `[d_input, r]`
/// - lora_b: `[r, d_output]`
/// - output: `[..., d_output]`
pub fn quantized_lora_linear<B: Backend, const D: usize>(
    input: Tensor<B, D>,
    weight: &Arc<QuantizedMatrix>,
    bias: Option<Tensor<B, 1>>,
    adapter_input: Option<Tensor<B, D>>,
    lora_a: Tensor<B, 2>,
    lora_b: Tensor<B, 2>,
    scale: f64,
) -> Tensor<B, D> {
    let weight = BaseWeight::Quantized(Arc::clone(weight));
    with_weight(input, weight, bias, adapter_input, lora_a, lora_b, scale)
}

/// `x W + b` with `W` kept quantized: the frozen layer of a QLoRA model that has no adapter.
///
/// Under autodiff on the CPU backends of this crate's features, inside
/// [`with_fast_paths`](crate::with_fast_paths), it is [`quantized_lora_linear`]'s node with a
/// zero adapter of rank 1 (its product adds exact zeros): `W` is dequantized for the forward and
/// again in the backward for the input's gradient, and not kept between them. Elsewhere `W` is
/// dequantized into a tensor for [`linear`] (without autodiff it is dropped right after).
///
/// # Shapes
/// - input: `[..., d_input]`
/// - weight: `[d_input, d_output]`
/// - bias: `[d_output]`
/// - output: `[..., d_output]`
pub fn quantized_linear<B: Backend, const D: usize>(
    input: Tensor<B, D>,
    weight: &Arc<QuantizedMatrix>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let device = input.device();
    let [d_input, d_output] = weight.shape();
    if fast_paths_enabled() && is_host_based::<B>() && !is_host::<B>() {
        let lora_a = Tensor::zeros([d_input, 1], &device);
        let lora_b = Tensor::zeros([1, d_output], &device);
        return quantized_lora_linear(input, weight, bias, None, lora_a, lora_b, 1.0);
    }
    linear(input, weight.to_tensor(&device), bias)
}

/// A base weight as a tensor, or quantized.
enum BaseWeight<B: Backend> {
    Dense(Tensor<B, 2>),
    Quantized(Arc<QuantizedMatrix>),
}

impl<B: Backend> BaseWeight<B> {
    fn dims(&self) -> [usize; 2] {
        match self {
            Self::Dense(weight) => weight.dims(),
            Self::Quantized(weight) => weight.shape(),
        }
    }

    /// The weight as a tensor on `device` (a quantized one dequantized, a constant).
    fn dense(self, device: &B::Device) -> Tensor<B, 2> {
        match self {
            Self::Dense(weight) => weight,
            Self::Quantized(weight) => weight.to_tensor(device),
        }
    }
}

/// [`lora_linear`] and [`quantized_lora_linear`].
fn with_weight<B: Backend, const D: usize>(
    input: Tensor<B, D>,
    weight: BaseWeight<B>,
    bias: Option<Tensor<B, 1>>,
    adapter_input: Option<Tensor<B, D>>,
    lora_a: Tensor<B, 2>,
    lora_b: Tensor<B, 2>,
    scale: f64,
) -> Tensor<B, D> {
    let dims = input.dims();
    let [d_input, d_output] = weight.dims();
    let [a_input, rank] = lora_a.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let fits = dims[D - 1] == d_input
        && a_input == d_input
        && lora_b.dims() == [rank, d_output]
        && bias.as_ref().is_none_or(|b| b.dims() == [d_output])
        && adapter_input.as_ref().is_none_or(|x| x.dims() == dims)
        && rows > 0;
    let fused = fast_paths_enabled()
        && fits
        && is_host_based::<B>()
        && (rows > MAX_ROWS || !is_host::<B>());
    let device = input.device();
    if !fused {
        let weight = weight.dense(&device);
        return composed(input, weight, bias, adapter_input, lora_a, lora_b, scale);
    }
    let mut out_dims = dims;
    out_dims[D - 1] = d_output;
    let matrix = |x: Tensor<B, D>| x.reshape([rows, dims[D - 1]]);
    let (weight_input, quantized) = match weight {
        BaseWeight::Dense(weight) => (weight, None),
        BaseWeight::Quantized(weight) => (Tensor::empty([0, 0], &device), Some(weight)),
    };
    let inputs = [
        matrix(input).into_primitive().tensor(),
        weight_input.into_primitive().tensor(),
        bias.unwrap_or_else(|| Tensor::empty([0], &device))
            .into_primitive()
            .tensor(),
        adapter_input
            .map_or_else(|| Tensor::empty([0, d_input], &device), matrix)
            .into_primitive()
            .tensor(),
        lora_a.into_primitive().tensor(),
        lora_b.into_primitive().tensor(),
    ];
    let op = run_fused!(
        B,
        Some(crate::flex::LoraLinear {
            scale: scale as f32,
            quantized: quantized.clone(),
        }),
        inputs
    );
    let output = match op {
        Ok(output) => Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(output)),
        // Not `f32`: the placeholders (empty) stand for no bias, for `x' = x` and for a
        // quantized weight.
        Err([x, weight, bias, adapter_x, lora_a, lora_b]) => {
            let float = |t| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(t));
            let bias = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(bias));
            let adapter_x = float(adapter_x);
            let weight = match quantized {
                Some(quantized) => BaseWeight::Quantized(quantized).dense(&device),
                None => float(weight),
            };
            composed(
                float(x),
                weight,
                (bias.dims()[0] > 0).then_some(bias),
                (adapter_x.dims()[0] > 0).then_some(adapter_x),
                float(lora_a),
                float(lora_b),
                scale,
            )
        }
    };
    output.reshape(out_dims)
}

/// `linear(x, W, b) + low_rank(x', A, B, s)`, `x'` being `x` unless given: Burn's operations.
fn composed<B: Backend, const D: usize>(
    input: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    adapter_input: Option<Tensor<B, D>>,
    lora_a: Tensor<B, 2>,
    lora_b: Tensor<B, 2>,
    scale: f64,
) -> Tensor<B, D> {
    let base = linear(input.clone(), weight, bias);
    base + low_rank(adapter_input.unwrap_or(input), lora_a, lora_b, scale)
}
