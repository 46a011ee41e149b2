//! Files: PEFT adapter files, PyTorch base weights and state dicts, whole-model checkpoints, and
//! the safetensors and atomic-write plumbing they share.

pub(crate) mod adapter_file;
pub(crate) mod atomic_file;
pub(crate) mod checkpoint;
pub(crate) mod path_map;
pub(crate) mod peft_config;
pub(crate) mod pytorch_checkpoint;
pub(crate) mod safetensors_reader;
pub(crate) mod tensor_file;
pub(crate) mod torch_param;
