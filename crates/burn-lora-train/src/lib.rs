//! LoRA training on Burn's own training stack: burn-train's `Learner` and burn-dataset's
//! datasets, for any model built with [`burn_lora`].
//!
//! burn-lora itself does not depend on burn-train; this crate adds what a LoRA run needs on
//! top of it:
//!
//! - [`TrainableOnly`]: wrap the model given to `Learner::new` and the Learner's checkpoints
//!   hold the adapters (and any head marked trainable) with their optimizer state, not the
//!   frozen base.
//! - [`CheckpointSafe`]: wrap the optimizer given to `Learner::new` and the Learner's
//!   checkpoints are safe on Burn's fused GPU backends, whose asynchronous checkpointer would
//!   otherwise race the training thread for the optimizer's tensors.
//! - [`EpochDataLoader`]: a data loader whose batch order in epoch `e` depends only on the seed
//!   and `e`, so that a run resumed from a checkpoint sees the batches an uninterrupted run
//!   sees, and ends with the same adapter, bit for bit on the CPU.
//!
//! The Learner's metrics, progress display and execution strategies (one device, several
//! devices, distributed) are Burn's, unchanged: a LoRA model is an ordinary module whose
//! frozen parameters have no gradient, so each strategy trains only the adapters.

mod causal_lm;
mod checkpoint_safe;
mod error;
mod loader;
mod record;
mod trainable_only;

pub use causal_lm::{
    CausalLmBatch, CausalLmBatcher, CausalLmItem, CausalLmOutput, CausalLmStats, CausalLmTrainer,
};
pub use checkpoint_safe::CheckpointSafe;
pub use error::{Result, TrainError};
pub use loader::{EpochDataLoader, EpochDataLoaderBuilder};
pub use record::{LayerAdapters, TrainableParamRecord, TrainableRecord};
pub use trainable_only::TrainableOnly;
