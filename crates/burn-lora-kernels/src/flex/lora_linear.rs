//! A linear layer with one low-rank adapter, `x W + b + s · (x' A) B`, as one autodiff node:
//! the adapter's product is added into the base output's buffer, and its input gradient into
//! the base's, where Burn's operations write each as a tensor of the output's (or the input's)
//! size and add them in another pass.

use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorMetadata;
use rayon::prelude::*;

use super::fused::{build, FusedOp};
use super::gemm::{multiply, multiply_add};
use super::linear::{add_bias, column_sums};

/// `x W + b + s · (x' A) B` (see [`crate::lora_linear`]); the inputs are
/// `[x, W, b, x', A, B]`, all two-dimensional but `b`, which is empty when there is no bias;
/// `x'` (the adapter's input, after its dropout) is empty when it is `x` itself. The caller
/// checks the shapes.
///
/// With `quantized`, `W` is that matrix and the input `W` an empty placeholder: it is
/// dequantized for the forward's product and again for the backward's `dY Wᵀ`, and dropped
/// after each, so that no layer's `f32` weight waits in the graph for the backward.
#[derive(Debug)]
pub(crate) struct LoraLinear {
    pub(crate) scale: f32,
    pub(crate) quantized: Option<Arc<crate::QuantizedMatrix>>,
}

/// What the backward needs: the inputs as given (views share their buffers) and the adapter's
/// scaled hidden values `s · x' A`.
#[derive(Debug, Clone)]
pub(crate) struct LoraLinearState {
    x: FlexTensor,
    weight: FlexTensor,
    /// `x'` when it is not `x`.
    adapter_x: Option<FlexTensor>,
    lora_a: FlexTensor,
    lora_b: FlexTensor,
    hidden: FlexTensor,
}

/// `t · scale` in place, for a fresh product.
fn scale_in_place(t: &mut FlexTensor, scale: f32) {
    if scale != 1.0 {
        t.storage_mut::<f32>()
            .par_chunks_mut(1 << 14)
            .for_each(|values| values.iter_mut().for_each(|v| *v *= scale));
    }
}

impl FusedOp<6> for LoraLinear {
    type State = LoraLinearState;

    const DIFFERENTIABLE: [bool; 6] = [true; 6];

    fn forward(
        &self,
        [x, weight, bias, adapter_x, lora_a, lora_b]: [FlexTensor; 6],
    ) -> (FlexTensor, Self::State) {
        let adapter_x = (adapter_x.shape().num_elements() > 0).then_some(adapter_x);
        let dequantized = self.quantized.as_deref().map(dequantize);
        let mut output = multiply(&x, false, dequantized.as_ref().unwrap_or(&weight), false);
        drop(dequantized);
        add_bias(&mut output, &bias);
        let mut hidden = multiply(adapter_x.as_ref().unwrap_or(&x), false, &lora_a, false);
        scale_in_place(&mut hidden, self.scale);
        multiply_add(&hidden, false, &lora_b, false, &mut output);
        let state = LoraLinearState {
            x,
            weight,
            adapter_x,
            lora_a,
            lora_b,
            hidden,
        };
        (output, state)
    }

    /// With `G = s · dY Bᵀ`: `∂x = dY Wᵀ (+ G Aᵀ when x' is x)`, `∂W = xᵀ dY`,
    /// `∂b = Σ_rows dY`, `∂x' = G Aᵀ`, `∂A = x'ᵀ G`, `∂B = (s · x' A)ᵀ dY`.
    fn backward(
        &self,
        state: Self::State,
        grad: FlexTensor,
        [need_x, need_weight, need_bias, need_adapter_x, need_a, need_b]: [bool; 6],
    ) -> [Option<FlexTensor>; 6] {
        let shared_x = state.adapter_x.is_none();
        let adapter_x = state.adapter_x.as_ref().unwrap_or(&state.x);
        let b_grad = need_b.then(|| multiply(&state.hidden, true, &grad, false));
        let hidden_grad = (need_a || need_adapter_x || (need_x && shared_x)).then(|| {
            let mut hidden_grad = multiply(&grad, false, &state.lora_b, true);
            scale_in_place(&mut hidden_grad, self.scale);
            hidden_grad
        });
        let a_grad = hidden_grad
            .as_ref()
            .filter(|_| need_a)
            .map(|g| multiply(adapter_x, true, g, false));
        let x_grad = need_x.then(|| {
            let dequantized = self.quantized.as_deref().map(dequantize);
            let weight = dequantized.as_ref().unwrap_or(&state.weight);
            let mut x_grad = multiply(&grad, false, weight, true);
            if let Some(g) = hidden_grad.as_ref().filter(|_| shared_x) {
                multiply_add(g, false, &state.lora_a, true, &mut x_grad);
            }
            x_grad
        });
        let adapter_x_grad = hidden_grad
            .as_ref()
            .filter(|_| need_adapter_x && !shared_x)
            .map(|g| multiply(g, false, &state.lora_a, true));
        let weight_grad = need_weight.then(|| multiply(&state.x, true, &grad, false));
        let bias_grad = need_bias.then(|| column_sums(grad));
        [
            x_grad,
            weight_grad,
            bias_grad,
            adapter_x_grad,
            a_grad,
            b_grad,
        ]
    }
}

/// The `f32` values of `matrix` as a tensor, dequantized in parallel chunks (of an even
/// length: 4-bit values lie two to a byte).
fn dequantize(matrix: &crate::QuantizedMatrix) -> FlexTensor {
    build(&matrix.shape(), 1 << 14, |start, out| {
        matrix.dequantize_into(start, out)
    })
}
