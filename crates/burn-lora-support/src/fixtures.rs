//! Where the test data lives: the small PEFT fixtures shipped in the repository, and the large
//! data sets that tests use only when an environment variable points at them.

use std::io::Write;
use std::path::PathBuf;

/// The folder of one PEFT fixture shipped with the repository (`tests/fixtures/peft/<name>`):
/// `mlp_r4`, `bert_tiny_qv`, `bert_tiny_emb`, `cnn_conv`. See its `README.md`.
pub fn peft_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/peft")
        .join(name)
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
