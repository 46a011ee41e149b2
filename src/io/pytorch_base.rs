//! Base weights from a PyTorch state dict saved as safetensors (`<path>.weight [out, in]`,
//! `<path>.bias [out]`).

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::error::{LoraError, Result};
use crate::io::path_map::PathMap;
use crate::io::tensor_file::{read_bytes, read_float_tensors};
use crate::model::{check_unmerged, checked_layers_mut, lora_layer_paths, LoraModel};

/// Loads the base weight and bias of every LoRA layer from a PyTorch state dict stored as
/// safetensors, transposing PyTorch's `[out, in]` weights to Burn's `[in, out]`.
///
/// Every key must belong to a layer, and every layer must find its weight (and its bias, if it
/// has one) with the right shape, a float dtype and finite values; otherwise the error names the
/// key and the model is left exactly as it was. Adapters are kept; merged layers are refused.
pub fn load_pytorch_base<B: Backend, M: LoraModel<B>>(
    model: &mut M,
    file: &Path,
    paths: &PathMap,
) -> Result<()> {
    check_unmerged(model.lora_layers())?;
    let mut tensors = read_float_tensors(file, &read_bytes(file)?)?;
    let name = file.display().to_string();
    let torch_paths: Vec<String> = lora_layer_paths(model)?
        .iter()
        .map(|p| paths.to_torch(p))
        .collect();

    let mut loaded = Vec::new();
    for (layer, torch_path) in model.lora_layers().into_iter().zip(&torch_paths) {
        let (d_input, d_output) = (layer.d_input(), layer.d_output());
        let device = layer.weight().device();
        let mut take = |suffix: &str, expected: Vec<usize>| {
            let key = format!("{torch_path}.{suffix}");
            let tensor = tensors.remove(&key).ok_or_else(|| LoraError::MissingKey {
                path: name.clone(),
                key: key.clone(),
            })?;
            if tensor.shape != expected {
                return Err(LoraError::ShapeMismatch {
                    what: format!("{name}: tensor \"{key}\""),
                    expected,
                    found: tensor.shape,
                });
            }
            Ok(tensor)
        };
        let weight: Tensor<B, 2> = take("weight", vec![d_output, d_input])?
            .transposed()
            .into_burn::<B, 2>(&device);
        let bias: Option<Tensor<B, 1>> = match layer.bias() {
            Some(_) => Some(take("bias", vec![d_output])?.into_burn::<B, 1>(&device)),
            None => None,
        };
        loaded.push((weight, bias));
    }
    if let Some(key) = tensors.keys().min() {
        return Err(LoraError::UnexpectedKey {
            path: name,
            key: key.clone(),
            reason: "no LoRA layer of the model has this parameter".into(),
        });
    }
    for (layer, (weight, bias)) in checked_layers_mut(model)?.into_iter().zip(loaded) {
        layer.replace_base(weight, bias);
    }
    Ok(())
}
