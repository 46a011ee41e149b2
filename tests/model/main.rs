//! The model-wide API: `LoraMlp`, `#[derive(LoraModel)]` on a user's model, the two layer lists,
//! Burn records of LoRA models, and merging in place against checkpoints.
//!
//! One test binary for the area, one module per file (a binary links all of Burn).

#[path = "../common/mod.rs"]
mod common;

mod derive_lora_model;
mod extract;
mod layer_lists;
mod merge_checkpoint;
mod mlp;
mod records;
