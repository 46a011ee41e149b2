//! Llama-family causal language models (Llama, Qwen2, Mistral) read from Hugging Face folders,
//! with LoRA on any projection, batched generation with a KV cache, and many adapters in one
//! batch.
//!
//! | file | what |
//! | --- | --- |
//! | `config.rs` | [`CausalLmConfig`]: Hugging Face's `config.json` |
//! | `model.rs` | [`CausalLm`] and its checked [`forward`](CausalLm::forward) |
//! | `pretrained.rs` | [`CausalLm::from_pretrained`]: `model.safetensors` or its shards |
//! | `gguf.rs` | [`CausalLm::from_gguf`]: a llama.cpp GGUF file, dequantized |
//! | `gguf_adapter.rs` | [`CausalLm::save_adapter_gguf`]: an adapter as llama.cpp's LoRA GGUF |
//! | `cache.rs` | [`CausalLmCache`]: keys, values and padding between decoding steps |
//! | `chat_template.rs` | `ChatTemplate`: a model's Jinja chat template (`chat-template` feature) |
//! | `generate.rs`, `sampling.rs` | [`CausalLm::generate`], [`GenerationConfig`], [`Sampling`] |
//! | `generation_config.rs` | `generation_config.json`: stop tokens and sampling defaults |
//! | `loss.rs` | [`causal_lm_loss`]: next-token cross-entropy with `-100` labels |
//! | `text_stream.rs` | `TextStream`: generated tokens as text in whole characters (`tokenizers` feature) |
//!
//! ```no_run
//! use std::path::Path;
//! use burn::backend::Flex;
//! use burn_lora::nn::llama::{CausalLm, GenerationConfig};
//! use burn_lora::{load_adapter, LoraModel, PathMap};
//!
//! let device = Default::default();
//! let mut lm = CausalLm::<Flex>::from_pretrained(Path::new("Qwen2.5-0.5B"), &device)?;
//! load_adapter(&mut lm, "support", Path::new("adapters/support"), &PathMap::identity())?;
//! load_adapter(&mut lm, "legal", Path::new("adapters/legal"), &PathMap::identity())?;
//!
//! // Two prompts, each with its own adapter, generated together.
//! let batch = lm.adapter_batch(&["support", "legal"])?;
//! let prompts = vec![vec![9707, 11, 1879], vec![785, 4226]];
//! let out = lm.generate(&prompts, Some(&batch), &GenerationConfig::new(32), |_| {})?;
//! println!("{:?}", out.tokens);
//! # Ok::<(), burn_lora::LoraError>(())
//! ```

mod cache;
#[cfg(feature = "chat-template")]
mod chat_template;
mod config;
mod generate;
mod generation_config;
mod gguf;
mod gguf_adapter;
mod loss;
mod model;
mod pretrained;
mod sampling;
mod size_check;
#[cfg(feature = "tokenizers")]
mod text_stream;

pub use cache::CausalLmCache;
#[cfg(feature = "chat-template")]
pub use chat_template::{ChatMessage, ChatTemplate};
pub use config::{CausalLmConfig, Family};
pub use generate::{Generation, GenerationConfig, TokenEvent};
pub use generation_config::GENERATION_CONFIG_FILE;
pub use loss::{causal_lm_labels, causal_lm_loss, causal_lm_nll, IGNORE_INDEX};
pub use model::{CausalLm, CausalLmInput, CausalLmModel};
pub use sampling::Sampling;
#[cfg(feature = "tokenizers")]
pub use text_stream::TextStream;

/// The module names of the seven linear layers of every decoder layer (attention's q, k, v and o,
/// the feed-forward block's gate, up and down): the usual LoRA targets of a Llama-family model,
/// PEFT's `all-linear` without the head.
///
/// ```
/// use burn_lora::nn::llama::PROJECTIONS;
/// use burn_lora::Targets;
///
/// let targets = Targets::names(PROJECTIONS);
/// # let _ = targets;
/// ```
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];
