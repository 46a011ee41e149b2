//! Multi-head attention with LoRA-ready projections: the mirror of `burn::nn::attention`.
//!
//! [`MhaOutput`] and the mask helpers are Burn's own, re-exported.

mod cache;
mod input;
mod mha;

pub use burn::nn::attention::{
    generate_autoregressive_mask, generate_padding_mask, GeneratePaddingMask, MhaOutput,
    SeqLengthOption,
};
pub use cache::MhaCache;
pub use input::MhaInput;
pub use mha::{MultiHeadAttention, MultiHeadAttentionConfig};
