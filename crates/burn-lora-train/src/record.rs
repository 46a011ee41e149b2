//! [`TrainableRecord`]: the trainable parameters of a model, by module path.

use burn::module::Param;
use burn::record::Record;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// The record of a [`TrainableOnly`](crate::TrainableOnly) model: every parameter that requires
/// a gradient, in the model's visiting order.
///
/// Burn's recorders write it like any record (`CompactRecorder`, `NamedMpkFileRecorder`, ...),
/// so burn-train's file checkpointer stores it unchanged.
#[derive(Record, Clone, Debug)]
pub struct TrainableRecord<B: Backend> {
    /// One entry per trainable parameter.
    pub params: Vec<TrainableParamRecord<B>>,
}

/// One trainable parameter: where it sits, its shape, and its values (flattened) with its
/// parameter id (which the optimizer's state is keyed by).
#[derive(Record, Clone, Debug)]
pub struct TrainableParamRecord<B: Backend> {
    /// Dotted module path, as burn-store and PEFT name it (`layers.0.adapters.0.lora_a`).
    pub path: String,
    /// The parameter's shape.
    pub shape: Vec<usize>,
    /// The values in row-major order, and the id.
    pub value: Param<Tensor<B, 1>>,
}
