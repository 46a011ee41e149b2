//! LoRA-ready mirrors of Burn's transformer blocks, at the same paths as in `burn::nn`.
//!
//! Each block has Burn's config (same fields, defaults and JSON), Burn's struct (same public
//! fields, in the same order) and Burn's forward, but every `Linear` is a [`LoraLinear`]: a
//! model built from Burn's blocks switches to these by changing its `use` lines, loads the
//! checkpoints it saved before, and can take adapters on any projection
//! (`encoder.layers[0].mha.query.add_adapter(..)`). Without an adapter a block computes exactly
//! what Burn's does, with the same operations.
//!
//! | Burn | burn-lora |
//! |---|---|
//! | `burn::nn::attention::MultiHeadAttention` | [`attention::MultiHeadAttention`] |
//! | `burn::nn::transformer::PositionWiseFeedForward` | [`transformer::PositionWiseFeedForward`] |
//! | `burn::nn::transformer::TransformerEncoder` | [`transformer::TransformerEncoder`] |
//! | `burn::nn::Dropout` | [`Dropout`] (same record and arithmetic; the mask is drawn in bulk on the CPU backends) |
//!
//! [`LoraLinear`]: crate::LoraLinear

pub mod attention;
pub mod bert;
pub mod cache;
pub mod decoder;
mod dropout;
mod ids;
pub mod llama;
mod lora_layers;
mod sizes;
pub mod transformer;

pub use dropout::Dropout;
