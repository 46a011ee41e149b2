//! # burn-lora
//!
//! Low-rank adaptation (LoRA, Hu et al. 2021) for the [Burn](https://burn.dev) deep-learning
//! framework: freeze a pretrained model, train two small factors per layer, switch them on and
//! off, save them in Hugging Face PEFT's format, and merge them away for inference.
//!
//! In Burn's orientation a linear layer computes `y = x W + b` with `W: [d_input, d_output]`.
//! LoRA adds `ΔW = s · A B` with `A: [d_input, r]`, `B: [r, d_output]` and `s = alpha / r`
//! (`alpha / √r` with rsLoRA). Training computes `x W + b + s · ((x A) B)`: two skinny matmuls,
//! never the dense `A B`. The base weight and bias are frozen: no gradient, no optimizer state.
//!
//! The library is generic over `B: Backend` and depends on no backend: pick yours in your own
//! `Cargo.toml`. What it holds, by source folder:
//!
//! - **Layers** (`src/layers/`): [`LoraLinear`], [`LoraEmbedding`] and [`LoraConv2d`], each a
//!   frozen base stored as Burn's `Linear` / `Embedding` / `Conv2d` stores it plus named
//!   [`LoraAdapter`]s configured by [`LoraConfig`]; toggle, switch, merge, combine, all through
//!   the [`LoraLayer`] trait.
//! - **Models** (`src/model/`): the [`LoraModel`] trait (attach by [`Targets`] as PEFT's
//!   `target_modules`, switch, combine, remove, merge, merge-and-unload, report, model-wide) and `#[derive(LoraModel)]` for your own model (from the `burn-lora-derive`
//!   crate), [`lora_layer_paths`], the [`ParameterReport`], and [`LoraMlp`], which derives it.
//! - **Files** (`src/io/`): PEFT adapter files ([`save_adapter`], [`load_adapter`],
//!   [`PeftConfig`]), whole PyTorch / Hugging Face state dicts into any Burn module ([`load_pytorch_checkpoint`] with
//!   [`LoadOptions`], reporting a [`LoadReport`]) and whole-model checkpoints
//!   ([`save_checkpoint`]).
//! - **Blocks** (`src/nn/`): [`nn`], Burn's transformer blocks (multi-head attention,
//!   feed-forward, encoder) with every linear layer a [`LoraLinear`], at the same paths as in
//!   `burn::nn`: a model built from them switches by changing its `use` lines; and
//!   [`nn::bert::Bert`], a BERT encoder built from them that loads Hugging Face checkpoints;
//!   [`nn::decoder`], Llama-family decoder blocks, and [`nn::llama::CausalLm`], Llama, Qwen2 and
//!   Mistral causal LMs from Hugging Face folders with generation and many adapters per batch
//!   ([`AdapterBatch`]).
//! - [`truncated_svd`]: low-rank factorisation of a weight.
//! - [`LoraError`]: every bad input is an error naming what is wrong, never a panic, except
//!   where a Burn signature cannot return one (unchecked `forward`, `Module::load_record`; the
//!   README lists them).
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use burn::nn::loss::CrossEntropyLossConfig;
//! use burn::optim::{AdamConfig, GradientsParams, Optimizer};
//! use burn::tensor::{Distribution, Int, Tensor};
//! use burn_lora::{LoraConfig, LoraInit, LoraMlpConfig, LoraModel, Targets};
//!
//! type B = Autodiff<Flex>;
//! let device = Default::default();
//!
//! // A (pre)trained model: here freshly initialised, 784-1000-2000-10 in the notebook.
//! let mut model = LoraMlpConfig::new(20, vec![30], 5).init::<B>(&device)?;
//!
//! // Attach rank-1 LoRA to every layer; the base is frozen from now on.
//! let config = LoraConfig::new(1, 1.0).with_init(LoraInit::Gaussian { std: 1.0 });
//! model.attach("default", &config, &Targets::all())?;
//! println!("{}", model.parameter_report()?);
//!
//! // Train a step: only A and B change (any Burn optimizer; `burn-fused-adam` is faster on CPU).
//! let x = Tensor::<B, 2>::random([4, 20], Distribution::Default, &device);
//! let y = Tensor::<B, 1, Int>::from_ints([0, 1, 2, 3], &device);
//! let loss = CrossEntropyLossConfig::new().init(&device).forward(model.forward(x), y);
//! let grads = GradientsParams::from_grads(loss.backward(), &model);
//! let mut model = AdamConfig::new().init().step(1e-3, model, grads);
//!
//! // Toggle the adapter off (exactly the base model) and on again, then merge it away.
//! model.set_enabled(false);
//! model.set_enabled(true);
//! let plain = model.merge_and_unload()?;
//! assert!(plain.adapter_names().is_empty());
//! # Ok::<(), burn_lora::LoraError>(())
//! ```

// Indexing in library code: a fixed-size array (the `dims()` of a `Tensor<B, D>`, a kernel's
// `[usize; 2]`) indexed by a constant is checked by rustc at compile time; every other index or
// slice that input could reach carries a comment saying why it is in bounds. `unwrap` and
// `expect` appear only in tests, and once in `LoraConv2d`, on a condition its caller checked.

// The derive's expansion names `::burn_lora`, which must resolve inside this crate too (LoraMlp).
extern crate self as burn_lora;

mod config;
mod error;
mod io;
mod layers;
mod model;
pub mod nn;
mod svd;

/// `#[derive(LoraModel)]`: the derive macro beside the trait of the same name.
///
/// # Example
///
/// ```
/// use burn::nn::{Dropout, LayerNorm, Linear};
/// use burn::prelude::*;
/// use burn_lora::{LoraLinear, LoraModel};
///
/// #[derive(Module, Debug, LoraModel)]
/// struct Block<B: Backend> {
///     query: LoraLinear<B>,         // listed
///     value: Option<LoraLinear<B>>, // listed when `Some`
///     norm: LayerNorm<B>,           // not a LoRA layer: nothing
///     #[lora(skip)]
///     gate: LoraLinear<B>,          // never listed
/// }
///
/// #[derive(Module, Debug, LoraModel)]
/// struct Model<B: Backend> {
///     blocks: Vec<Block<B>>,        // block by block
///     heads: [LoraLinear<B>; 2],    // heads.0, heads.1
///     projection: Linear<B>,        // nothing
///     dropout: Dropout,             // nothing
/// }
///
/// /// `["blocks.0.query", "blocks.0.value", "blocks.1.query", …, "heads.0", "heads.1"]`.
/// fn lora_paths<B: Backend>(model: &Model<B>) -> burn_lora::Result<Vec<String>> {
///     model.lora_layer_paths()
/// }
/// ```
pub use burn_lora_derive::LoraModel;
pub use config::{LoraConfig, LoraInit};
pub use error::{LoraError, Result};
pub use io::adapter_file::{
    load_adapter, save_adapter, save_adapter_converted, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
};
pub use io::checkpoint::save_checkpoint;
pub use io::gguf::file::{GgufFile, GgufTensor};
pub use io::gguf::value::GgufValue;
pub use io::path_map::PathMap;
pub use io::peft_config::{PeftConfig, TargetModules};
pub use io::pytorch_checkpoint::{
    load_pytorch_checkpoint, load_pytorch_shards, LoadOptions, LoadReport,
};
pub use layers::adapter::LoraAdapter;
pub use layers::adapter_batch::{AdapterBatch, BASE_ADAPTER};
pub use layers::base_weight::BaseWeight;
pub use layers::conv2d::{LoraConv2d, LoraConv2dConfig};
pub use layers::dora::DoraNorms;
pub use layers::embedding::{LoraEmbedding, LoraEmbeddingConfig};
pub use layers::layer::{LayerKind, LoraLayer};
pub use layers::linear::{LoraLinear, LoraLinearConfig};
pub use layers::record::{AdapterIdentity, AdapterList, MergedWeight};
pub use model::extract::{extract_adapter, ExtractRank, ExtractedLayer};
pub use model::lora_model::{LoraModel, VisitLoraLayers};
pub use model::mlp::{LoraMlp, LoraMlpConfig, DEFAULT_ADAPTER};
pub use model::paths::lora_layer_paths;
pub use model::quantized_base::QuantizeReport;
pub use model::report::{AdapterShapes, LayerReport, ParameterReport};
pub use model::targets::Targets;
pub use svd::{numerical_rank, singular_values, truncated_svd, LowRankFactors};

/// What `#[derive(LoraModel)]` expands to. Not public API: may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::model::derive_support::{
        NoLoraLayers, Probe, ProbeMut, VisitLayers, VisitLayersMut, VisitNothing, VisitNothingMut,
    };
    pub use burn::module::Module;
    pub use burn::tensor::backend::Backend;
}
