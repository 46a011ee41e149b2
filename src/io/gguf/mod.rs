//! GGUF, llama.cpp's file format: the file read in place ([`file`]), its metadata values
//! ([`value`]), and ggml's tensor types with their dequantization ([`ggml_type`]).

pub(crate) mod file;
pub(crate) mod ggml_type;
pub(crate) mod value;
