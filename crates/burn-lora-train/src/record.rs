//! [`TrainableRecord`]: the trainable parameters of a model, by module path.

use burn::module::Param;
use burn::record::{PrecisionSettings, Record};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_lora::AdapterIdentity;
use serde::{Deserialize, Serialize};

/// The record of a [`TrainableOnly`](crate::TrainableOnly) model: every parameter that requires
/// a gradient, in the model's visiting order.
///
/// Burn's recorders write it like any record (`CompactRecorder`, `NamedMpkFileRecorder`, ...),
/// so burn-train's file checkpointer stores it unchanged.
#[derive(Record, Clone, Debug)]
pub struct TrainableRecord<B: Backend> {
    /// One entry per trainable parameter.
    pub params: Vec<TrainableParamRecord<B>>,
    /// The adapters of every LoRA layer, in the model's layer order. The parameters of an
    /// adapter are keyed by its position (`adapters.0.lora_a`), so loading checks these first:
    /// a record is refused by a model whose adapters have other names, configurations (alpha,
    /// rank, rsLoRA) or active flags, or sit in another order.
    pub adapters: Vec<LayerAdapters>,
}

/// The adapters of one LoRA layer, as a [`TrainableRecord`] keeps them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerAdapters {
    /// The layer's module path (`layers.0`), or `LoRA layer <index>` for a layer the model's
    /// module tree does not place at one path.
    pub layer: String,
    /// Each adapter's name, configuration and active flag, in the layer's order.
    pub adapters: Vec<AdapterIdentity>,
}

impl<B: Backend> Record<B> for LayerAdapters {
    type Item<S: PrecisionSettings> = LayerAdapters;

    fn into_item<S: PrecisionSettings>(self) -> Self::Item<S> {
        self
    }

    fn from_item<S: PrecisionSettings>(item: Self::Item<S>, _device: &B::Device) -> Self {
        item
    }
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
