//! Whole-model checkpoints: every parameter of a Burn module (base, adapters, anything else) in
//! one safetensors file, under Burn's module paths.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;

use crate::error::{LoraError, Result};
use crate::io::atomic_file::{io_error, write_all_atomic};
use crate::io::tensor_file::serialize_f32;
use crate::model::paths::ParamCollector;

/// Saves every float parameter of `model` to `path` as an f32 safetensors file whose keys are
/// Burn's module paths (`layers.0.weight`, `layers.0.adapters.0.lora_a`): the layout
/// burn-store's `SafetensorsStore` reads back with `load_from`. Creates the folder.
///
/// The bytes go to a temporary file that then replaces `path` in one rename, so a failed save
/// leaves an existing file as it was; the file gets the permissions a plain create would give
/// it (or keeps those of the file it replaces). A model saved while adapters are merged in place
/// stores the base weight and the merged one side by side, so it loads back to the same outputs
/// into a merged or an unmerged model.
///
/// # Errors
/// [`LoraError::Unsupported`] for a model with int or bool parameters (nothing is written),
/// [`LoraError::NonFinite`] if a value is NaN or infinite, [`LoraError::Io`] if the file cannot
/// be written.
pub fn save_checkpoint<B: Backend, M: Module<B>>(model: &M, path: &Path) -> Result<()> {
    let mut collector = ParamCollector::new(true);
    model.visit(&mut collector);
    if let Some(other) = collector.others.first() {
        return Err(LoraError::Unsupported(format!(
            "checkpoint of the int or bool parameter {other}: only float parameters are saved"
        )));
    }
    let mut tensors = Vec::with_capacity(collector.floats.len());
    for param in collector.floats {
        let failed = |reason: String| LoraError::Checkpoint {
            path: path.display().to_string(),
            reason: format!("{}: {reason}", param.path),
        };
        let data = param.data.ok_or_else(|| failed("no values read".into()))?;
        let shape = data.shape.to_vec();
        let values = data
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| failed(format!("{e:?}")))?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(LoraError::NonFinite(param.path));
        }
        tensors.push((param.path, shape, values));
    }
    let metadata = HashMap::from([("format".to_string(), "burn-lora".to_string())]);
    let bytes = serialize_f32(&tensors, metadata, path)?;
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    }
    write_all_atomic(&[(path, &bytes)])
}
