//! Files: adapter files as artifacts, atomic saves' permissions, PyTorch state dicts, GGUF
//! files, and the PEFT fixtures of the MLP and the CNN reproduced.
//!
//! One test binary for the area, one module per file (a binary links all of Burn).

#[path = "../common/mod.rs"]
mod common;

mod adapter_files;
mod file_permissions;
mod gguf_file;
mod peft_cnn;
mod peft_fixture;
mod peft_pissa_olora;
mod pytorch_base;
mod pytorch_checkpoint;
