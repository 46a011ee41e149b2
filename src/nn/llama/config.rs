//! [`CausalLmConfig`]: the shape and options of a Llama-family causal LM, read from Hugging
//! Face's `config.json`.

use std::path::Path;

use burn::config::Config;
use burn::tensor::backend::Backend;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::model::{CausalLm, CausalLmModel};
use crate::error::{LoraError, Result as LoraResult};
use crate::io::tensor_file::read_bytes;
use crate::layers::embedding::LoraEmbedding;
use crate::nn::decoder::{
    check_epsilon, check_probability, DecoderLayerConfig, GroupedQueryAttentionConfig, RopeScaling,
    RotaryEmbeddingConfig, SwiGluMlpConfig,
};
use crate::nn::sizes::check_parameter_count;
use crate::LoraLinear;

/// The architectures [`CausalLmConfig::from_hf_json`] reads (Hugging Face's `model_type`).
#[derive(Config, Debug, PartialEq, Eq)]
pub enum Family {
    /// `LlamaForCausalLM` (Llama 2, Llama 3, TinyLlama, SmolLM, ...).
    Llama,
    /// `Qwen2ForCausalLM`: q/k/v biases.
    Qwen2,
    /// `MistralForCausalLM`: an optional sliding attention window.
    Mistral,
}

/// Configuration of a [`CausalLm`], with the fields of Hugging Face's `config.json`.
#[derive(Config, Debug)]
pub struct CausalLmConfig {
    /// The architecture.
    pub family: Family,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the model.
    pub hidden_size: usize,
    /// Width of the SwiGLU block.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads per layer.
    pub num_attention_heads: usize,
    /// Key/value heads per layer (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: usize,
    /// Width of each head.
    pub head_dim: usize,
    /// Longest sequence, prompt and generated tokens together.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[config(default = 1e-6)]
    pub rms_norm_eps: f64,
    /// Base of the rotary frequencies.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// Rescaling of the rotary frequencies.
    #[config(default = "RopeScaling::Default")]
    pub rope_scaling: RopeScaling,
    /// Biases on `q_proj`, `k_proj` and `v_proj` (Qwen2; Llama's `attention_bias`).
    #[config(default = false)]
    pub qkv_bias: bool,
    /// A bias on `o_proj` (Llama's `attention_bias`).
    #[config(default = false)]
    pub o_proj_bias: bool,
    /// Biases on the SwiGLU projections (Llama's `mlp_bias`).
    #[config(default = false)]
    pub mlp_bias: bool,
    /// The output head is the token embedding matrix (`lm_head` absent from the checkpoint).
    #[config(default = false)]
    pub tie_word_embeddings: bool,
    /// Dropout on the attention probabilities in training.
    #[config(default = 0.0)]
    pub attention_dropout: f64,
    /// Each query attends to at most this many positions, itself included (Mistral).
    #[config(default = "None")]
    pub sliding_window: Option<usize>,
    /// Id of the padding token, if the model has one.
    #[config(default = "None")]
    pub pad_token_id: Option<u32>,
    /// Id of the beginning-of-sequence token, if the model has one.
    #[config(default = "None")]
    pub bos_token_id: Option<u32>,
    /// Ids that end a generation.
    #[config(default = "Vec::new()")]
    pub eos_token_ids: Vec<u32>,
}

/// A token id or a list of them, as `eos_token_id` may be.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids, one or many.
    pub(crate) fn into_vec(self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![id],
            TokenIds::Many(ids) => ids,
        }
    }
}

/// The fields of Hugging Face's `config.json` that shape a Llama-family model; the rest is
/// looked at in [`HfConfig::rest`] for options burn-lora does not implement.
#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: usize,
    rms_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Map<String, Value>>,
    rope_parameters: Option<Map<String, Value>>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    attention_dropout: Option<f64>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    layer_types: Option<Vec<String>>,
    partial_rotary_factor: Option<f64>,
    pad_token_id: Option<u32>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

impl CausalLmConfig {
    /// Reads Hugging Face's `config.json` of a Llama, Qwen2 or Mistral causal LM.
    ///
    /// Fields that only matter to PyTorch (`torch_dtype`, `use_cache`, `pretraining_tp`, ...)
    /// are ignored; every option that would change the model's outputs and is not implemented
    /// is an error naming it.
    ///
    /// # Errors
    /// - [`LoraError::InvalidFile`] for unreadable JSON or a missing field;
    /// - [`LoraError::Unsupported`] for another `model_type`, an activation other than SiLU, a
    ///   `rope_scaling` other than `default`, `linear` or `llama3`, partial rotary dimensions,
    ///   Qwen2's per-layer sliding windows, or a `quantization_config`;
    /// - [`LoraError::InvalidModel`] for sizes that cannot build a model (see
    ///   [`init`](Self::init)).
    pub fn from_hf_json(path: &Path) -> LoraResult<Self> {
        let bytes = read_bytes(path)?;
        let invalid = |reason: String| LoraError::InvalidFile {
            path: path.display().to_string(),
            format: "config.json".into(),
            reason,
        };
        let hf: HfConfig = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let family = match hf.model_type.as_str() {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "mistral" => Family::Mistral,
            other => {
                return Err(LoraError::Unsupported(format!(
                    "model_type \"{other}\" (burn-lora reads \"llama\", \"qwen2\" and \"mistral\")"
                )))
            }
        };
        let unsupported = |what: String| Err(LoraError::Unsupported(what));
        if let Some(act) = hf.hidden_act.as_deref().filter(|a| *a != "silu") {
            return unsupported(format!("hidden_act \"{act}\" (only \"silu\")"));
        }
        if let Some(factor) = hf.partial_rotary_factor.filter(|f| *f != 1.0) {
            return unsupported(format!("partial_rotary_factor {factor} (only 1.0)"));
        }
        if hf
            .rest
            .get("quantization_config")
            .is_some_and(|v| !v.is_null())
        {
            return unsupported("quantization_config (load an unquantized checkpoint)".into());
        }
        if let Some(types) = &hf.layer_types {
            if let Some(other) = types.iter().find(|t| *t != "full_attention") {
                return unsupported(format!(
                    "layer_types \"{other}\" (only \"full_attention\" layers)"
                ));
            }
        }
        let sliding_window = match family {
            Family::Mistral => hf.sliding_window,
            Family::Qwen2 if hf.use_sliding_window == Some(true) => {
                return unsupported(
                    "use_sliding_window (Qwen2's per-layer sliding windows)".to_string(),
                )
            }
            _ => None,
        };
        let (rope_theta, rope_scaling) = rope_settings(&hf)?;
        let attention_bias = hf.attention_bias.unwrap_or(false);
        let qkv_bias = family == Family::Qwen2 || attention_bias;
        let o_proj_bias = family == Family::Llama && attention_bias;
        let mlp_bias = family == Family::Llama && hf.mlp_bias.unwrap_or(false);
        let head_dim = match hf.head_dim {
            Some(dim) => dim,
            None if hf.num_attention_heads > 0
                && hf.hidden_size.is_multiple_of(hf.num_attention_heads) =>
            {
                hf.hidden_size / hf.num_attention_heads
            }
            None => {
                return Err(LoraError::InvalidModel(format!(
                    "hidden_size {} is not a multiple of num_attention_heads {} and no head_dim \
                     is given",
                    hf.hidden_size, hf.num_attention_heads
                )))
            }
        };
        let config = Self {
            family,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim,
            max_position_embeddings: hf.max_position_embeddings,
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            qkv_bias,
            o_proj_bias,
            mlp_bias,
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            attention_dropout: hf.attention_dropout.unwrap_or(0.0),
            sliding_window,
            pad_token_id: hf.pad_token_id,
            bos_token_id: hf.bos_token_id,
            eos_token_ids: hf.eos_token_id.map(TokenIds::into_vec).unwrap_or_default(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the sizes and probabilities without building anything.
    ///
    /// # Errors
    /// [`LoraError::InvalidModel`] for a zero size, `num_attention_heads` not a multiple of
    /// `num_key_value_heads`, an odd `head_dim`, a non-positive epsilon or theta, a dropout
    /// outside `[0, 1]`, a zero sliding window, or sizes whose parameter count overflows (they
    /// are checked before anything is allocated; a model that can be counted but not held in
    /// memory fails at [`init`](Self::init) as any allocation does).
    pub fn validate(&self) -> LoraResult<()> {
        let sizes = [
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
            self.max_position_embeddings,
        ];
        if sizes.contains(&0)
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return Err(LoraError::InvalidModel(format!(
                "a causal LM needs non-zero sizes and num_attention_heads a multiple of \
                 num_key_value_heads, got {self:?}"
            )));
        }
        if self.sliding_window == Some(0) {
            return Err(LoraError::InvalidModel("sliding_window must be ≥ 1".into()));
        }
        check_epsilon(self.rms_norm_eps)?;
        check_probability("attention_dropout", self.attention_dropout)?;
        self.rope().validate()?;
        let (h, hd, heads, kv) = (
            self.hidden_size,
            self.head_dim,
            self.num_attention_heads,
            self.num_key_value_heads,
        );
        let layer: &[&[usize]] = &[
            &[2, h, heads, hd],
            &[2, h, kv, hd],
            &[3, h, self.intermediate_size],
            &[2, heads, hd],
            &[2, kv, hd],
            &[2, h],
        ];
        let per_layer = check_parameter_count("causal LM", layer)?;
        check_parameter_count(
            "causal LM",
            &[
                &[per_layer, self.num_hidden_layers],
                &[2, self.vocab_size, h],
                &[h],
            ],
        )?;
        Ok(())
    }

    /// The rotary embedding of every layer.
    pub(crate) fn rope(&self) -> RotaryEmbeddingConfig {
        RotaryEmbeddingConfig::new(self.head_dim)
            .with_theta(self.rope_theta)
            .with_scaling(self.rope_scaling.clone())
    }

    /// The configuration of each decoder layer.
    pub fn layer(&self) -> DecoderLayerConfig {
        let attention = GroupedQueryAttentionConfig::new(
            self.hidden_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
        )
        .with_qkv_bias(self.qkv_bias)
        .with_output_bias(self.o_proj_bias)
        .with_dropout(self.attention_dropout);
        let mlp =
            SwiGluMlpConfig::new(self.hidden_size, self.intermediate_size).with_bias(self.mlp_bias);
        DecoderLayerConfig::new(attention, mlp).with_rms_norm_eps(self.rms_norm_eps)
    }

    /// Builds a randomly initialised model (load weights with
    /// [`CausalLm::load_hf_weights`], or use [`CausalLm::from_pretrained`]).
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub fn init<B: Backend>(&self, device: &B::Device) -> LoraResult<CausalLm<B>> {
        self.validate()?;
        let layer = self.layer();
        let layers = (0..self.num_hidden_layers)
            .map(|_| layer.init(device))
            .collect::<LoraResult<Vec<_>>>()?;
        let embed_tokens = LoraEmbedding::from_embedding(
            burn::nn::EmbeddingConfig::new(self.vocab_size, self.hidden_size).init(device),
        );
        let norm = burn::nn::RmsNormConfig::new(self.hidden_size)
            .with_epsilon(self.rms_norm_eps)
            .init(device);
        let lm_head = (!self.tie_word_embeddings).then(|| {
            LoraLinear::from_linear(
                burn::nn::LinearConfig::new(self.hidden_size, self.vocab_size)
                    .with_bias(false)
                    .init(device),
            )
        });
        Ok(CausalLm::assemble(
            CausalLmModel {
                embed_tokens,
                layers,
                norm,
            },
            lm_head,
            self.clone(),
            self.rope().init()?,
        ))
    }
}

/// `rope_theta` and the rescaling, from `rope_parameters` (transformers ≥ 5) or `rope_theta` and
/// `rope_scaling` (earlier files).
fn rope_settings(hf: &HfConfig) -> LoraResult<(f64, RopeScaling)> {
    let empty = Map::new();
    let parameters = hf.rope_parameters.as_ref().unwrap_or(&empty);
    let scaling = hf.rope_scaling.as_ref().unwrap_or(parameters);
    let theta = parameters
        .get("rope_theta")
        .and_then(Value::as_f64)
        .or(hf.rope_theta)
        .unwrap_or(10000.0);
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let number = |name: &str| {
        scaling.get(name).and_then(Value::as_f64).ok_or_else(|| {
            LoraError::InvalidModel(format!("rope scaling \"{kind}\" needs a numeric {name}"))
        })
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: number("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_position_embeddings: number("original_max_position_embeddings")? as usize,
        },
        other => {
            return Err(LoraError::Unsupported(format!(
                "rope_scaling rope_type \"{other}\" (burn-lora implements \"default\", \
                 \"linear\" and \"llama3\")"
            )))
        }
    };
    Ok((theta, scaling))
}
