//! Files: PEFT adapter files, PyTorch base weights and state dicts read in place, GGUF files,
//! whole-model checkpoints, and the safetensors, positioned-read and atomic-write plumbing they
//! share.

pub(crate) mod adapter_file;
pub(crate) mod atomic_file;
pub(crate) mod checkpoint;
pub(crate) mod dense_values;
pub(crate) mod gguf;
pub(crate) mod path_map;
pub(crate) mod peft_config;
pub(crate) mod positioned_read;
pub(crate) mod pytorch_checkpoint;
pub(crate) mod safetensors_reader;
pub(crate) mod tensor_file;
pub(crate) mod torch_param;
