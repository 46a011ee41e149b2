//! QLoRA's frozen base on a linear layer: [`LoraLinear::quantize_base`].

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::quantization::QuantScheme;
use burn_lora_kernels::QuantizedMatrix;

use crate::error::{LoraError, Result};
use crate::layers::layer::LoraLayer;
use crate::layers::linear::LoraLinear;

impl<B: Backend> LoraLinear<B> {
    /// Keeps the base weight `W` quantized with `scheme` (QLoRA's frozen base), in host memory:
    /// Burn 0.21's 8-bit (`Q8S`, `Q8F`) or 4-bit (`Q4S`, `Q4F`, two values to a byte) integers
    /// with one `f32` scale per tensor or per block of a row (`QuantLevel::Block` of one
    /// dimension dividing `d_output`). Returns the bytes the weight now holds, scales included.
    ///
    /// Training then works as before, the adapters in float: each `forward` with an adapter runs
    /// [`quantized_lora_linear`](burn_lora_kernels::quantized_lora_linear), which on the CPU
    /// backends (Flex, NdArray, with or without autodiff, inside
    /// [`with_fast_paths`](burn_lora_kernels::with_fast_paths)) dequantizes `W` for the
    /// forward's product and again in the backward for the input's gradient, keeping only the
    /// quantized matrix in between: a step holds one layer's float weight at a time. On other
    /// backends the dequantized `W` enters the graph as a constant. Adapters save and load as
    /// before; a record of the layer holds the dequantized base (see
    /// [`BaseWeight`](crate::BaseWeight)).
    ///
    /// While quantized, merging ([`merge`](LoraLayer::merge),
    /// [`merge_and_unload`](LoraLayer::merge_and_unload)), DoRA adapters and the PiSSA and
    /// OLoRA inits are refused ([`LoraError::Unsupported`]): they need the float weight. Call
    /// [`dequantize_base`](LoraLayer::dequantize_base) first (the merge is then onto the
    /// dequantized weight), or [`merge_to_linear`](Self::merge_to_linear) for a new float layer.
    ///
    /// # Errors
    /// [`LoraError::Quantize`], the layer unchanged: a scheme other than those above, a weight
    /// that is not finite, a layer that is merged, holds a DoRA, PiSSA or OLoRA adapter, or is
    /// already quantized.
    pub fn quantize_base(&mut self, scheme: QuantScheme) -> Result<usize> {
        let matrix = self.quantized_weight(&scheme)?;
        let bytes = matrix.bytes();
        self.set_quantized_base(Arc::new(matrix), scheme);
        Ok(bytes)
    }

    /// `W` quantized with `scheme`, after checking the layer can take it (see
    /// [`quantize_base`](Self::quantize_base)).
    pub(crate) fn quantized_weight(&self, scheme: &QuantScheme) -> Result<QuantizedMatrix> {
        let refuse = |why: String| Err(LoraError::Quantize(why));
        if let Some(current) = self.base_quantization() {
            return refuse(format!(
                "it is already quantized ({:?}, {:?}); dequantize_base first",
                current.value, current.level
            ));
        }
        if self.is_merged() {
            return refuse(format!(
                "adapters {:?} are merged into it; unmerge first",
                self.merged_adapters()
            ));
        }
        for adapter in self.adapters() {
            let needs_float = if adapter.is_dora() {
                "a DoRA adapter, whose magnitude is defined against the float weight"
            } else if adapter.initial_factors().is_some() {
                "a PiSSA or OLoRA adapter, whose removal writes its principal part back"
            } else {
                continue;
            };
            return refuse(format!("adapter \"{}\" is {needs_float}", adapter.name()));
        }
        QuantizedMatrix::from_tensor(self.weight().detach(), scheme)
            .map_err(|e| LoraError::Quantize(e.reason().to_string()))
    }
}
