//! Writing files so that existing files are replaced whole or not at all, as a set.

use std::io::Write;
use std::path::Path;

use tempfile::TempPath;

use crate::error::{LoraError, Result};

/// [`LoraError::Io`] for `path`.
pub(crate) fn io_error(path: &Path, error: std::io::Error) -> LoraError {
    LoraError::Io {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

/// Writes several files (in one or more directories) as one all-or-nothing change.
///
/// Every file is first written in full and synced to a temporary file beside its target; each
/// target that already exists and is not the last one is kept under a backup name beside it (a
/// hard link, or a copy where the filesystem has no hard links); only then are the new files
/// renamed into place, in order. If a write, a backup or a rename fails, the targets renamed so
/// far get their old files back (renamed from their backups) and those that did not exist
/// before are removed, then the first error is returned: a failed call leaves every target as
/// it was, bytes and permissions, and no temporary file behind.
///
/// What this does not guarantee:
/// - the set is not replaced in one step: a reader looking during the renames, or a crash or
///   kill of the process between them, can see the new first file beside the old second one
///   (a crash can also leave the hidden temporary and backup files, `.tmp…` and
///   `.lora-backup…`). Each file on its own is always either whole-old or whole-new;
/// - if putting an old file back fails too (the directory became unwritable midway), the
///   targets stay mixed; the error then says so and names the backup file that still holds the
///   old contents (it is kept, not deleted).
pub(crate) fn write_all_atomic(files: &[(&Path, &[u8])]) -> Result<()> {
    let prepared = files
        .iter()
        .map(|(path, bytes)| prepare(path, bytes))
        .collect::<Result<Vec<_>>>()?;
    // The last rename is never undone, so its target needs no backup.
    let backups = files
        .iter()
        .enumerate()
        .map(|(index, (path, _))| {
            if index + 1 < files.len() {
                backup(path)
            } else {
                Ok(None)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let mut renamed: Vec<(&Path, Option<TempPath>)> = Vec::with_capacity(files.len());
    for (((path, _), file), backup) in files.iter().zip(prepared).zip(backups) {
        if let Err(error) = file.persist(path) {
            let error = io_error(path, error.error);
            return Err(roll_back(renamed, error));
        }
        renamed.push((path, backup));
    }
    // Success: the backups are deleted as they drop.
    Ok(())
}

/// Puts back what the renames in `renamed` replaced, last first, and returns `error`, with any
/// failure to restore added to its message.
fn roll_back(renamed: Vec<(&Path, Option<TempPath>)>, error: LoraError) -> LoraError {
    let mut failures = Vec::new();
    for (path, backup) in renamed.into_iter().rev() {
        match backup {
            Some(backup) => {
                if let Err(failed) = backup.persist(path) {
                    let kept = match failed.path.keep() {
                        Ok(kept) => format!("its old contents are kept in {}", kept.display()),
                        Err(e) => format!("its old contents could not be kept either: {}", e.error),
                    };
                    failures.push(format!(
                        "{}: could not restore the old file ({}); {kept}",
                        path.display(),
                        failed.error
                    ));
                }
            }
            None => {
                if let Err(e) = std::fs::remove_file(path) {
                    failures.push(format!(
                        "{}: could not remove the new file ({e}); it did not exist before",
                        path.display()
                    ));
                }
            }
        }
    }
    match (error, failures.is_empty()) {
        (LoraError::Io { path, message }, false) => LoraError::Io {
            path,
            message: format!(
                "{message}; undoing the files already replaced failed, so the files are now \
                 mixed: {}",
                failures.join("; ")
            ),
        },
        (error, _) => error,
    }
}

/// A backup of the existing file at `path` beside it (a hard link, or a copy where hard links
/// are not supported), or `None` when there is no file there to keep (nothing, or a directory,
/// whose rename will fail anyway).
fn backup(path: &Path) -> Result<Option<TempPath>> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if !metadata.is_dir() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, e)),
    }
    let dir = parent(path);
    let mut builder = tempfile::Builder::new();
    builder.prefix(".lora-backup");
    match builder.make_in(dir, |link| std::fs::hard_link(path, link)) {
        Ok(link) => Ok(Some(link.into_temp_path())),
        Err(_) => {
            // No hard links here (or not for this file): a full copy, permissions included.
            let mut copy = builder.tempfile_in(dir).map_err(|e| io_error(dir, e))?;
            let mut old = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
            std::io::copy(&mut old, copy.as_file_mut()).map_err(|e| io_error(path, e))?;
            let permissions = old.metadata().map_err(|e| io_error(path, e))?.permissions();
            copy.as_file()
                .set_permissions(permissions)
                .map_err(|e| io_error(path, e))?;
            copy.as_file().sync_all().map_err(|e| io_error(path, e))?;
            Ok(Some(copy.into_temp_path()))
        }
    }
}

/// The directory `path` is in (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A fully written and synced temporary file in `path`'s directory, with the permissions of the
/// file it will replace, or else those a plain `File::create` gets (`0666` less the umask).
fn prepare(path: &Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    let dir = parent(path);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;

    /// Every entry of `dir` with its bytes (`None` for a directory).
    fn contents(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&path).ok())
            })
            .collect()
    }

    /// A directory with `second` a non-empty directory, so that renaming a file onto it fails.
    fn dir_with_blocked_second() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("first.bin"), dir.path().join("second.json"));
        std::fs::create_dir(&second).unwrap();
        std::fs::write(second.join("inside"), b"keep").unwrap();
        (dir, first, second)
    }

    #[test]
    fn all_files_are_replaced_and_no_backup_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&first, b"old a").unwrap();
        write_all_atomic(&[(&first, b"new a"), (&second, b"new b")]).unwrap();
        let expected = BTreeMap::from([
            ("a".to_string(), Some(b"new a".to_vec())),
            ("b".to_string(), Some(b"new b".to_vec())),
        ]);
        assert_eq!(contents(dir.path()), expected);
    }

    #[test]
    fn a_failed_second_rename_puts_the_first_files_old_bytes_back() {
        let (dir, first, second) = dir_with_blocked_second();
        std::fs::write(&first, b"old weights").unwrap();
        let before = contents(dir.path());
        let err =
            write_all_atomic(&[(&first, b"new weights"), (&second, b"new config")]).unwrap_err();
        assert!(
            matches!(&err, LoraError::Io { path, .. } if path.ends_with("second.json")),
            "{err:?}"
        );
        assert_eq!(std::fs::read(&first).unwrap(), b"old weights");
        // Nothing else changed and no temporary or backup file is left.
        assert_eq!(contents(dir.path()), before);
    }

    #[test]
    fn a_failed_second_rename_removes_a_first_file_that_did_not_exist() {
        let (dir, first, second) = dir_with_blocked_second();
        let before = contents(dir.path());
        let err = write_all_atomic(&[(&first, b"new weights"), (&second, b"new config")]);
        assert!(matches!(err, Err(LoraError::Io { .. })), "{err:?}");
        assert!(!first.exists(), "the first file was left behind");
        assert_eq!(contents(dir.path()), before);
    }

    #[cfg(unix)]
    #[test]
    fn a_restored_file_keeps_its_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, first, second) = dir_with_blocked_second();
        std::fs::write(&first, b"old").unwrap();
        std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o604)).unwrap();
        write_all_atomic(&[(&first, b"new"), (&second, b"new")]).unwrap_err();
        let mode = std::fs::metadata(&first).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o604, "{mode:o}");
    }
}
