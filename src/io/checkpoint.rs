//! Whole-model checkpoints: every parameter of a Burn module (base, adapters, anything else) in
//! one safetensors file, under Burn's module paths.

use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, SafetensorsStore};

use crate::error::{LoraError, Result};
use crate::io::atomic_file::{io_error, write_all_atomic};

/// Saves every parameter of `model` to `path` as safetensors (burn-store's format), creating
/// the folder. The bytes go to a temporary file that then replaces `path` in one rename, so a
/// failed save leaves an existing file as it was; the file gets the permissions a plain create
/// would give it (or keeps those of the file it replaces).
///
/// A model saved while adapters are merged in place stores the base weight and the merged one
/// side by side, so it loads back to the same outputs into a merged or an unmerged model.
pub fn save_checkpoint<B: Backend, M: Module<B>>(model: &M, path: &Path) -> Result<()> {
    let failed = |reason: String| LoraError::Checkpoint {
        path: path.display().to_string(),
        reason,
    };
    let mut store = SafetensorsStore::from_bytes(None);
    model
        .save_into(&mut store)
        .map_err(|e| failed(e.to_string()))?;
    let bytes = store.get_bytes().map_err(|e| failed(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    }
    write_all_atomic(&[(path, &bytes)])
}
