//! Whole-model files: a Burn module saved as safetensors, replacing any earlier file atomically.

use std::io::Write;
use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, SafetensorsStore};

/// Saves `model` to `path` (creating its folder). The bytes go to a temporary file beside it,
/// which then replaces `path` in one rename: re-running an example overwrites its earlier
/// output, and a failed save leaves that output as it was.
pub fn save_model<B: Backend, M: Module<B>>(
    model: &M,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut store = SafetensorsStore::from_bytes(None);
    model.save_into(&mut store)?;
    let bytes = store.get_bytes()?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(&bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|error| error.error)?;
    Ok(())
}
