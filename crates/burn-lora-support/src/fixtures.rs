//! Where the test data lives: the small PEFT fixtures shipped in the repository, and the large
//! data sets that tests use only when an environment variable points at them.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The repository's root folder, the one that holds `tests/fixtures`.
///
/// Found from `CARGO_MANIFEST_DIR` as cargo sets it when it runs a test or an example, else
/// from the working directory (a test binary run without cargo, as `scripts/gpu-check.sh` runs
/// them from the repository's root), so that the checkout the command runs in is the one read.
/// A path compiled in is not enough: two checkouts that share a target folder share its builds
/// (cargo hashes a workspace's crates by their path inside the workspace, and keeps a build
/// whose sources are older than it), and a build made in the other checkout names that one,
/// which may be gone. The folder this crate was compiled in is the last resort.
pub fn repository_root() -> PathBuf {
    let holds_fixtures = |dir: &Path| {
        dir.ancestors()
            .find(|folder| folder.join("tests/fixtures/peft").is_dir())
            .map(Path::to_path_buf)
    };
    std::env::var_os("CARGO_MANIFEST_DIR")
        .and_then(|dir| holds_fixtures(Path::new(&dir)))
        .or_else(|| {
            std::env::current_dir()
                .ok()
                .and_then(|dir| holds_fixtures(&dir))
        })
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// The folder of one PEFT fixture shipped with the repository (`tests/fixtures/peft/<name>`):
/// `mlp_r4`, `bert_tiny_qv`, `bert_tiny_emb`, `cnn_conv`. See its `README.md`.
pub fn peft_fixture(name: &str) -> PathBuf {
    repository_root().join("tests/fixtures/peft").join(name)
}

/// The folder named by the environment variable `var` (`MNIST_DIR`, `MINILM_DIR`), for tests
/// that need large data. When it is not set (or not a folder) this prints, on the test's output,
/// that `test` was skipped and why, and returns `None`; the caller then returns early.
///
/// The notice goes straight to stderr, past the test harness's output capture, so that a
/// skipped test is visible in a plain `cargo test` run.
pub fn large_data(var: &str, test: &str) -> Option<PathBuf> {
    let reason = match std::env::var_os(var).map(PathBuf::from) {
        Some(dir) if dir.is_dir() => return Some(dir),
        Some(dir) => format!("{var}={} is not a folder", dir.display()),
        None => format!("set {var} to the data's folder to run it"),
    };
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
    None
}
