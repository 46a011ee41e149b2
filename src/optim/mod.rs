//! Optimizers tuned for training on CPU backends.
//!
//! [`FusedAdamConfig`] builds Adam or AdamW as a drop-in for Burn's `AdamConfig`: same
//! arithmetic, same `Optimizer` interface, but on NdArray and Flex each parameter is updated in
//! one fused pass instead of a dozen tensor operations. For full fine-tuning or pretraining,
//! where the optimizer touches every weight, that is most of the step time.

mod adam;
mod host_tensors;
mod kernel;

pub use adam::{FusedAdam, FusedAdamConfig, FusedAdamState};
