//! The model-level API: the [`LoraModel`](crate::LoraModel) trait, the module paths of a
//! model's LoRA layers, the parameter report, and [`LoraMlp`](crate::LoraMlp) built with them.

pub(crate) mod lora_model;
pub(crate) mod mlp;
pub(crate) mod paths;
pub(crate) mod report;

pub(crate) use lora_model::{check_unmerged, LoraModel};
pub(crate) use paths::{checked_layers_mut, lora_layer_paths};
