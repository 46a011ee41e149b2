//! Files written through the atomic save get the permissions a plain create would give them
//! (`0666` less the umask), or keep those of the file they replace; never the temporary file's
//! private `0600`.
//!
//! The umask is process-wide: while this test holds 027, files that other tests of this binary
//! create get `0640` and folders `0750` instead of `0644` and `0755`. They stay readable and
//! writable by their owner, the only access any test needs, and no other test checks a mode;
//! nothing else in the binary changes the umask, so this test's own expectation holds.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::base_model;
use burn_lora::{save_adapter, save_checkpoint, LoraConfig, LoraModel, PathMap};
use burn_lora::{Targets, DEFAULT_ADAPTER};
use burn_lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn saved_files_get_the_umask_permissions_or_keep_the_replaced_files() {
    // SAFETY: umask has no memory-safety preconditions.
    let previous = unsafe { libc::umask(0o027) };
    let mut model = base_model(&[6, 5, 4]);
    model
        .attach(DEFAULT_ADAPTER, &LoraConfig::new(2, 2.0), &Targets::all())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    let checkpoint = dir.path().join("model.safetensors");
    save_adapter(&model, "default", &adapter, &PathMap::identity()).unwrap();
    save_checkpoint(&model, &checkpoint).unwrap();
    let weights = adapter.join(ADAPTER_WEIGHTS_FILE);
    let config = adapter.join(ADAPTER_CONFIG_FILE);
    let fresh = [mode(&weights), mode(&config), mode(&checkpoint)];

    // Replacing a file keeps its permissions.
    std::fs::set_permissions(&checkpoint, std::fs::Permissions::from_mode(0o604)).unwrap();
    save_checkpoint(&model, &checkpoint).unwrap();
    let replaced = mode(&checkpoint);
    unsafe { libc::umask(previous) };

    let shown: Vec<String> = fresh.iter().map(|m| format!("{m:o}")).collect();
    assert_eq!(fresh, [0o640; 3], "fresh files: {shown:?}");
    assert_eq!(replaced, 0o604, "replaced file: {replaced:o}");
}
