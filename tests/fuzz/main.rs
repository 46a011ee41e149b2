//! Fuzzing the file parsers (see `tests/fixtures/fuzz/README.md`): adapter files, PyTorch
//! checkpoints, GGUF files and Hugging Face `config.json`.
//!
//! One test binary for the area, one module per file (a binary links all of Burn).

#[path = "../common/mod.rs"]
mod common;

mod adapter_fuzz;
mod checkpoint_fuzz;
mod gguf_fuzz;
mod hf_config_fuzz;
