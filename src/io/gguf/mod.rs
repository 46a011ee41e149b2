//! GGUF, llama.cpp's file format: the file read in place ([`file`]), its metadata values
//! ([`value`]), ggml's tensor types with their dequantization ([`ggml_type`]), and the tokenizer
//! its metadata describes (`tokenizer`, with the `tokenizers` feature).

pub(crate) mod file;
pub(crate) mod ggml_type;
#[cfg(feature = "tokenizers")]
pub(crate) mod tokenizer;
pub(crate) mod value;
pub(crate) mod writer;
