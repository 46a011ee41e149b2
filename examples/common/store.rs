//! Whole-model files: a Burn module saved as safetensors, replacing any earlier file atomically.

use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;

/// Saves `model` to `path` (creating its folder) with [`burn_lora::save_checkpoint`]:
/// re-running an example overwrites its earlier output, and a failed save leaves it as it was.
pub fn save_model<B: Backend, M: Module<B>>(
    model: &M,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    Ok(burn_lora::save_checkpoint(model, path)?)
}
