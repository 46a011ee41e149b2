//! # burn-fused-adam
//!
//! Adam and AdamW for [Burn](https://burn.dev), tuned for training on CPU backends.
//!
//! [`FusedAdamConfig`] builds Adam or AdamW as a drop-in for Burn's `AdamConfig`: same
//! arithmetic, same `Optimizer` interface, but on NdArray and Flex each parameter is updated in
//! one fused pass instead of a dozen tensor operations. For full fine-tuning or pretraining,
//! where the optimizer touches every weight, that is most of the step time.
//!
//! The fused path is compiled for the backends named by this crate's features, `flex` and
//! `ndarray` (none by default); on every other backend, and on these without their feature, the
//! same update runs as Burn tensor operations.

mod adam;
mod error;
mod host_tensors;
// Without `flex` or `ndarray` no backend runs the in-place update, and only its coefficients are
// used (by the tensor-operation path).
#[cfg_attr(not(any(feature = "flex", feature = "ndarray")), allow(dead_code))]
mod kernel;

pub use adam::{FusedAdam, FusedAdamConfig, FusedAdamState, UpdateCounts};
pub use error::{InvalidSetting, Result};
