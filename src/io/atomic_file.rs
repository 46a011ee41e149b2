//! Writing files so that an existing file is replaced whole or not at all.

use std::io::Write;
use std::path::Path;

use crate::error::{LoraError, Result};

/// [`LoraError::Io`] for `path`.
pub(crate) fn io_error(path: &Path, error: std::io::Error) -> LoraError {
    LoraError::Io {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

/// Writes several files so that each existing file is replaced whole or not at all: every file is
/// first written in full to a temporary file beside it, and only then are they renamed into
/// place, so a failed write changes none of them.
pub(crate) fn write_all_atomic(files: &[(&Path, &[u8])]) -> Result<()> {
    let prepared = files
        .iter()
        .map(|(path, bytes)| prepare(path, bytes))
        .collect::<Result<Vec<_>>>()?;
    for ((path, _), file) in files.iter().zip(prepared) {
        file.persist(path).map_err(|e| io_error(path, e.error))?;
    }
    Ok(())
}

/// A fully written and synced temporary file in `path`'s directory, with the permissions of the
/// file it will replace, or else those a plain `File::create` gets (`0666` less the umask).
fn prepare(path: &Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    // Temporary files are private (0600) by default; created with mode 0666 instead, the
    // operating system applies the umask exactly as for a plain create.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut file = builder.tempfile_in(dir).map_err(|e| io_error(dir, e))?;
    if let Ok(existing) = std::fs::metadata(path) {
        file.as_file()
            .set_permissions(existing.permissions())
            .map_err(|e| io_error(path, e))?;
    }
    file.write_all(bytes).map_err(|e| io_error(path, e))?;
    file.as_file().sync_all().map_err(|e| io_error(path, e))?;
    Ok(file)
}
