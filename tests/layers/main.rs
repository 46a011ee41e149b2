//! The LoRA layers one by one: `LoraLinear`, `LoraConv2d` and `LoraEmbedding` against hand-computed
//! and brute-force references, mixed-adapter batches, combination, configuration checks, and the
//! truncated SVD behind extraction.
//!
//! One test binary for the area, one module per file (a binary links all of Burn).

#[path = "../common/mod.rs"]
mod common;

mod combine;
mod config_validation;
mod conv2d_layer;
mod dora;
mod embedding_layer;
mod linear_forward;
mod mixed_batch;
mod quantized_base;
mod svd;
