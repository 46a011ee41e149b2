//! LoRA layers: one adapted layer and its named adapters, with merge and combination beside
//! `forward`.

pub(crate) mod adapter;
mod combine;
pub(crate) mod linear;
mod merge;
