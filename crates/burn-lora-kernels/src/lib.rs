//! # burn-lora-kernels
//!
//! Faster paths for the operations of burn-lora's layers on Burn's CPU backends, each with the
//! same signature and result as the Burn operations it replaces.
//!
//! Every function takes any backend. Inside [`with_fast_paths`], when the backend is one named
//! by this crate's features (`flex`; none by default) and the inputs fit a fast path, it runs
//! there, and may differ from Burn's result by floating-point rounding (the order of a sum);
//! otherwise, and always outside that scope, it is exactly Burn's operation. A crate that
//! depends on this one with default features compiles no backend.
//!
//! The paths:
//! - [`matmul`] and [`linear`] with up to 16 rows (decoding): the weights stream from memory
//!   once, split over the threads (`gemm` runs one row on one thread, and a few rows at a third
//!   of the memory's speed).
//! - [`linear`] of more rows folds the batch dimensions into one matrix on Flex and
//!   `Autodiff<Flex>` (Flex's batched product packs a broadcast weight again for every matrix).
//! - Fused operations with their own backward, on Flex and on `Autodiff<Flex>` (and, with the
//!   `ndarray` feature, on NdArray and `Autodiff<NdArray>`, whose buffers move into Flex's
//!   tensors and back: copied only where shared or strided): one pass over
//!   memory where Burn's decomposition makes several, and one node in the autodiff graph where
//!   it records one per operation: [`gelu`] (exact), [`grouped_attention`] (around Flex's
//!   products), [`layer_norm`], [`masked_softmax_filled`] (attention weights),
//!   [`picked_log_probs`] (a cross-entropy's core), [`rms_norm`], [`rotary_heads`] (rotary
//!   positions applied while splitting a projection into heads), [`silu_mul`] (SwiGLU's
//!   product), [`split_heads`] and [`merge_heads`]. The arithmetic costs nothing beside the
//!   memory traffic; what they save is passes, copies of strided views and fresh buffers.
//! - [`lora_linear`], a linear layer and one low-rank adapter, as one node on Flex and
//!   `Autodiff<Flex>`: the adapter's output and input gradient are added into the base's
//!   buffers by the products themselves.
//! - [`dropout`] with its mask drawn from a seed in parallel blocks and applied in the same
//!   pass, on Flex and `Autodiff<Flex>` never stored (the backward draws it again); the same
//!   values on every path.
//! - [`slice_assign`] in place when the destination's buffer is not shared (Flex copies the
//!   whole destination on every `slice_assign`); exact, so it runs outside the scope too.

/// `Ok(output)` of the fused operation `$op` (an `Option`: `None` when it does not apply) on
/// `$inputs`, primitives of backend `$backend`, with the `flex` feature, when the backend is
/// Flex or `Autodiff<Flex>` (NdArray or `Autodiff<NdArray>` with `ndarray`); `Err($inputs)` otherwise, for Burn's path. Without the feature `$op`
/// is not compiled (it names Flex's operations).
macro_rules! run_fused {
    ($backend:ty, $op:expr, $inputs:expr) => {{
        #[cfg(feature = "flex")]
        let result = match $op {
            Some(op) => crate::flex::run::<$backend, _, _>(op, $inputs),
            None => Err($inputs),
        };
        #[cfg(not(feature = "flex"))]
        let result = Err($inputs);
        result
    }};
}

mod attention;
mod dropout;
#[cfg(feature = "flex")]
mod flex;
mod gelu;
mod heads;
mod host;
mod layer_norm;
mod log_probs;
mod lora_linear;
mod matmul;
mod quantized;
mod rms_norm;
mod rotary;
mod scope;
mod silu_mul;
mod slice;

pub use attention::{
    attention_context, attention_probs, grouped_attention, masked_softmax, masked_softmax_filled,
};
pub use dropout::{dropout, dropout_mask};
pub use gelu::gelu;
pub use heads::{merge_heads, split_heads};
pub use layer_norm::layer_norm;
pub use log_probs::picked_log_probs;
pub use lora_linear::{lora_linear, low_rank, quantized_linear, quantized_lora_linear};
pub use matmul::{linear, matmul};
pub use quantized::{QuantizeError, QuantizedMatrix};
pub use rms_norm::rms_norm;
pub use rotary::{rotary, rotary_heads};
pub use scope::{on_compute_threads, with_fast_paths};
pub use silu_mul::silu_mul;
pub use slice::slice_assign;

#[cfg(all(test, feature = "flex"))]
mod tests;
