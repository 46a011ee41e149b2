//! The model-level API: the [`LoraModel`](crate::LoraModel) trait and what it is built from
//! (containers, module paths, targets, the parameter report), and
//! [`LoraMlp`](crate::LoraMlp) written with them.

mod containers;
pub(crate) mod derive_support;
pub(crate) mod extract;
pub(crate) mod lora_model;
pub(crate) mod mlp;
pub(crate) mod paths;
pub(crate) mod quantized_base;
pub(crate) mod report;
pub(crate) mod targets;

pub(crate) use lora_model::{check_unmerged, freeze_for_new_adapter, has_adapters, LoraModel};
pub(crate) use paths::{checked_layers_mut, lora_layer_paths};
