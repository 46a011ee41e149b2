//! # burn-lora
//!
//! Low-rank adaptation (LoRA, Hu et al. 2021) for the [Burn](https://burn.dev) deep-learning
//! framework: freeze a pretrained model, train two small factors per layer, switch them on and
//! off, and merge them away for inference.
//!
//! In Burn's orientation a linear layer computes `y = x W + b` with `W: [d_input, d_output]`.
//! LoRA adds `ΔW = s · A B` with `A: [d_input, r]`, `B: [r, d_output]` and `s = alpha / r`
//! (`alpha / √r` with rsLoRA). Training computes `x W + b + s · ((x A) B)`: two skinny matmuls,
//! never the dense `A B`. The base weight and bias are frozen: no gradient, no optimizer state.
//!
//! - [`LoraConfig`]: rank, alpha, dropout, rsLoRA, init of `A`.
//! - [`LoraLinear`]: a frozen base plus named [`LoraAdapter`]s; toggle, switch, merge.
//! - [`LoraMlp`]: a ReLU MLP of `LoraLinear`s with a [`ParameterReport`].
//! - [`optim::FusedAdamConfig`]: Adam / AdamW as a drop-in for Burn's, updating each parameter
//!   in one fused pass on the CPU backends.
//! - [`LoraError`]: every bad input is an error, never a panic.
//!
//! ```
//!
//! use burn::nn::loss::CrossEntropyLossConfig;
//! use burn::optim::{GradientsParams, Optimizer};
//! use burn::tensor::{Distribution, Int, Tensor};
//! use burn_lora::optim::FusedAdamConfig;
//! use burn_lora::{LoraConfig, LoraInit, LoraMlpConfig, LoraModel};
//!
//! type B = burn_lora::backend::Train;
//! let device = Default::default();
//!
//! // A (pre)trained model: here freshly initialised, 784-1000-2000-10 in the notebook.
//! let mut model = LoraMlpConfig::new(20, vec![30], 5).init::<B>(&device)?;
//!
//! // Attach rank-1 LoRA to every layer; the base is frozen from now on.
//! model.attach(&LoraConfig::new(1, 1.0).with_init(LoraInit::Gaussian { std: 1.0 }))?;
//! println!("{}", model.parameter_report());
//!
//! // Train a step: only A and B change.
//! let x = Tensor::<B, 2>::random([4, 20], Distribution::Default, &device);
//! let y = Tensor::<B, 1, Int>::from_ints([0, 1, 2, 3], &device);
//! let loss = CrossEntropyLossConfig::new().init(&device).forward(model.forward(x), y);
//! let grads = GradientsParams::from_grads(loss.backward(), &model);
//! let mut model = FusedAdamConfig::new().init()?.step(1e-3, model, grads);
//!
//! // Toggle the adapter off (exactly the base model) and on again, then merge it away.
//! model.set_enabled(false);
//! model.set_enabled(true);
//! let plain = model.merge_and_unload()?;
//! assert!(plain.adapter_names().is_empty());
//! # Ok::<(), burn_lora::LoraError>(())
//! ```

mod adapter;
mod adapter_file;
mod atomic_file;
mod combine;
mod config;
mod error;
mod linear;
mod merge;
mod mlp;
mod model;
mod path_map;
mod peft_config;
mod pytorch_base;
mod report;
mod svd;
mod tensor_file;

#[cfg(feature = "mnist")]
pub mod mnist;

pub mod optim;

#[cfg(any(feature = "ndarray", feature = "flex", feature = "cuda"))]
pub mod backend;

pub use adapter::LoraAdapter;
pub use adapter_file::{load_adapter, save_adapter, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
pub use config::{LoraConfig, LoraInit};
pub use error::{LoraError, Result};
pub use linear::{LoraLinear, LoraLinearConfig};
pub use mlp::{LoraMlp, LoraMlpConfig, DEFAULT_ADAPTER};
pub use model::{lora_layer_paths, LoraModel};
pub use path_map::PathMap;
pub use peft_config::{PeftConfig, TargetModules};
pub use pytorch_base::load_pytorch_base;
pub use report::{AdapterShapes, LayerReport, ParameterReport};
pub use svd::{numerical_rank, singular_values, truncated_svd, LowRankFactors};
