//! LoRA layers: the [`LoraLayer`](crate::LoraLayer) trait every kind implements, one named
//! adapter, and each adapted layer with its merge beside `forward`.

pub(crate) mod adapter;
pub(crate) mod adapter_batch;
pub(crate) mod base_weight;
pub(crate) mod conv2d;
pub(crate) mod dora;
pub(crate) mod embedding;
pub(crate) mod layer;
pub(crate) mod linear;
mod merge;
pub(crate) mod principal_init;
mod quantize;
pub(crate) mod record;
