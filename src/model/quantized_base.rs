//! [`LoraModel::quantize_base`](crate::LoraModel::quantize_base) model-wide, and its
//! [`QuantizeReport`].

use std::fmt;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::quantization::QuantScheme;

use crate::error::{LoraError, Result};
use crate::model::LoraModel;

/// What [`LoraModel::quantize_base`](crate::LoraModel::quantize_base) did.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeReport {
    /// Linear LoRA layers whose base is now quantized.
    pub layers: usize,
    /// Their base weights' bytes in `f32`.
    pub float_bytes: usize,
    /// The bytes they hold quantized, scales included.
    pub quantized_bytes: usize,
    /// The largest `|w - dequantized(w)|` over those weights: the error quantizing introduced.
    pub max_abs_error: f32,
}

impl fmt::Display for QuantizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "{} base weights quantized: {:.1} MiB -> {:.1} MiB ({:.3}x), max |error| {:.3e}",
            self.layers,
            mib(self.float_bytes),
            mib(self.quantized_bytes),
            self.quantized_bytes as f64 / self.float_bytes.max(1) as f64,
            self.max_abs_error
        )
    }
}

/// Quantizes every layer's base first, then installs them all: an error changes nothing.
pub(crate) fn quantize_base<B: Backend, M: LoraModel<B>>(
    model: &mut M,
    scheme: QuantScheme,
) -> Result<QuantizeReport> {
    let mut matrices = Vec::new();
    let mut report = QuantizeReport {
        layers: 0,
        float_bytes: 0,
        quantized_bytes: 0,
        max_abs_error: 0.0,
    };
    for layer in model.lora_layers() {
        let Some(matrix) = layer.quantized_base_matrix(&scheme)? else {
            matrices.push(None);
            continue;
        };
        let weight = layer.base_matrix().into_data().convert::<f32>();
        let original = weight
            .as_slice::<f32>()
            .map_err(|e| LoraError::Quantize(format!("the weight could not be read: {e:?}")))?;
        let error = original
            .iter()
            .zip(matrix.dequantize())
            .fold(0.0f32, |max, (w, q)| max.max((w - q).abs()));
        report.layers += 1;
        report.float_bytes += 4 * original.len();
        report.quantized_bytes += matrix.bytes();
        report.max_abs_error = report.max_abs_error.max(error);
        matrices.push(Some(Arc::new(matrix)));
    }
    for (layer, matrix) in model.lora_layers_mut().into_iter().zip(matrices) {
        if let Some(matrix) = matrix {
            layer.set_quantized_base(matrix, scheme);
        }
    }
    Ok(report)
}
