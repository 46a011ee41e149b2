//! [`Bert`]: a BERT encoder (Hugging Face's `BertModel` without pooler) built from burn-lora's
//! LoRA-ready blocks, loading Hugging Face checkpoints by their names.

use std::path::Path;

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::Deserialize;

use crate::error::{LoraError, Result as LoraResult};
use crate::io::path_map::PathMap;
use crate::io::pytorch_checkpoint::{load_pytorch_checkpoint, LoadOptions, LoadReport};
use crate::io::tensor_file::read_bytes;
use crate::layers::embedding::LoraEmbedding;
use crate::nn::dropout::check_probability;
use crate::nn::ids::{check_ids, host_mask};
use crate::nn::sizes::check_parameter_count;
use crate::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use crate::nn::Dropout;
use crate::LoraModel;

/// Configuration of a [`Bert`], with the fields of Hugging Face's `config.json`.
#[derive(Config, Debug)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width `d_model`.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward network.
    pub intermediate_size: usize,
    /// Longest sequence (number of position embeddings).
    pub max_position_embeddings: usize,
    /// Number of token types (segments).
    #[config(default = 2)]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[config(default = 1e-12)]
    pub layer_norm_eps: f64,
    /// Dropout after the embeddings and on each sub-layer's output before its residual sum,
    /// in `[0, 1]` (Hugging Face's `hidden_dropout_prob`).
    #[config(default = 0.1)]
    pub hidden_dropout_prob: f64,
    /// Dropout on the attention probabilities, after the softmax, in `[0, 1]` (Hugging Face's
    /// `attention_probs_dropout_prob`).
    #[config(default = 0.1)]
    pub attention_probs_dropout_prob: f64,
}

/// The fields of Hugging Face's `config.json` that shape a BERT.
#[derive(Deserialize)]
struct HfBertConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "two")]
    type_vocab_size: usize,
    #[serde(default = "bert_eps")]
    layer_norm_eps: f64,
    #[serde(default = "bert_dropout")]
    hidden_dropout_prob: f64,
    #[serde(default = "bert_dropout")]
    attention_probs_dropout_prob: f64,
    #[serde(default = "gelu")]
    hidden_act: String,
    #[serde(default = "absolute")]
    position_embedding_type: String,
}

fn two() -> usize {
    2
}
fn bert_eps() -> f64 {
    1e-12
}
fn bert_dropout() -> f64 {
    0.1
}
fn gelu() -> String {
    "gelu".into()
}
fn absolute() -> String {
    "absolute".into()
}

impl BertConfig {
    /// Reads Hugging Face's `config.json` of a BERT model.
    ///
    /// # Errors
    /// [`LoraError::InvalidFile`] for unreadable JSON or missing fields,
    /// [`LoraError::InvalidModel`] for a dropout outside `[0, 1]`, and
    /// [`LoraError::Unsupported`] for a `model_type` other than `bert` (a config without one is
    /// read), an activation other than exact GELU or relative position embeddings. Missing dropouts take Hugging Face's default, 0.1.
    pub fn from_hf_json(path: &Path) -> LoraResult<Self> {
        let bytes = read_bytes(path)?;
        let hf: HfBertConfig =
            serde_json::from_slice(&bytes).map_err(|e| LoraError::InvalidFile {
                path: path.display().to_string(),
                format: "config.json".into(),
                reason: e.to_string(),
            })?;
        if let Some(other) = hf.model_type.as_deref().filter(|t| *t != "bert") {
            return Err(LoraError::Unsupported(format!(
                "model_type \"{other}\" (this reads a \"bert\" config.json)"
            )));
        }
        if hf.hidden_act != "gelu" {
            return Err(LoraError::Unsupported(format!(
                "hidden_act \"{}\" (only exact \"gelu\")",
                hf.hidden_act
            )));
        }
        if hf.position_embedding_type != "absolute" {
            return Err(LoraError::Unsupported(format!(
                "position_embedding_type \"{}\" (only \"absolute\")",
                hf.position_embedding_type
            )));
        }
        check_probability("hidden_dropout_prob", hf.hidden_dropout_prob)?;
        check_probability(
            "attention_probs_dropout_prob",
            hf.attention_probs_dropout_prob,
        )?;
        Ok(Self {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            intermediate_size: hf.intermediate_size,
            max_position_embeddings: hf.max_position_embeddings,
            type_vocab_size: hf.type_vocab_size,
            layer_norm_eps: hf.layer_norm_eps,
            hidden_dropout_prob: hf.hidden_dropout_prob,
            attention_probs_dropout_prob: hf.attention_probs_dropout_prob,
        })
    }

    /// Builds a randomly initialised model (load weights with [`Bert::load_hf_safetensors`]).
    ///
    /// In training its dropouts are Hugging Face's: after the embeddings' LayerNorm, on the
    /// attention probabilities, and on each sub-layer's output before its residual sum; the
    /// feed-forward block's hidden layer has none.
    ///
    /// # Errors
    /// [`LoraError::InvalidModel`] when a width is zero, `hidden_size` is not a multiple of
    /// `num_attention_heads`, the sizes' parameter count overflows, or a dropout is not in
    /// `[0, 1]`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LoraResult<Bert<B>> {
        let widths = [
            self.vocab_size,
            self.hidden_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.intermediate_size,
            self.max_position_embeddings,
            self.type_vocab_size,
        ];
        if widths.contains(&0) || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(LoraError::InvalidModel(format!(
                "BERT needs non-zero sizes and hidden_size divisible by num_attention_heads, got {self:?}"
            )));
        }
        let (h, inter) = (self.hidden_size, self.intermediate_size);
        let per_layer =
            check_parameter_count("BERT", &[&[4, h, h], &[2, h, inter], &[9, h], &[inter]])?;
        check_parameter_count(
            "BERT",
            &[
                &[per_layer, self.num_hidden_layers],
                &[self.vocab_size, h],
                &[self.max_position_embeddings, h],
                &[self.type_vocab_size, h],
            ],
        )?;
        let embeddings = BertEmbeddings {
            word_embeddings: LoraEmbedding::from_embedding(
                EmbeddingConfig::new(self.vocab_size, self.hidden_size).init(device),
            ),
            position_embeddings: EmbeddingConfig::new(
                self.max_position_embeddings,
                self.hidden_size,
            )
            .init(device),
            token_type_embeddings: EmbeddingConfig::new(self.type_vocab_size, self.hidden_size)
                .init(device),
            layer_norm: LayerNormConfig::new(self.hidden_size)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            dropout: Dropout::new(self.hidden_dropout_prob)?,
        };
        let attention_dropout = Dropout::new(self.attention_probs_dropout_prob)?;
        let mut encoder = TransformerEncoderConfig::new(
            self.hidden_size,
            self.intermediate_size,
            self.num_attention_heads,
            self.num_hidden_layers,
        )
        .with_dropout(self.hidden_dropout_prob)
        .with_layer_norm_eps(self.layer_norm_eps)
        .init(device)?;
        for layer in &mut encoder.layers {
            layer.mha.dropout = attention_dropout.clone();
            layer.mha.dropout_after_softmax = true;
            layer.pwff.dropout = Dropout::off();
        }
        Ok(Bert {
            embeddings,
            encoder,
        })
    }
}

/// Token, position and token-type embeddings, summed and normalised.
#[derive(Module, Debug, LoraModel)]
pub struct BertEmbeddings<B: Backend> {
    /// Token embeddings `[vocab_size, hidden_size]`, LoRA-ready.
    pub word_embeddings: LoraEmbedding<B>,
    /// Absolute position embeddings `[max_position_embeddings, hidden_size]`.
    pub position_embeddings: Embedding<B>,
    /// Token-type (segment) embeddings `[type_vocab_size, hidden_size]`.
    pub token_type_embeddings: Embedding<B>,
    /// LayerNorm after the sum.
    pub layer_norm: LayerNorm<B>,
    /// Dropout after the LayerNorm.
    pub dropout: Dropout,
}

/// A BERT encoder: [`BertEmbeddings`] then a post-norm [`TransformerEncoder`] (exact GELU,
/// padding mask), whose linear layers and word embeddings take LoRA adapters. It matches
/// Hugging Face's `BertModel` without its pooler; module paths map to Hugging Face's names with
/// [`Bert::hf_path_map`].
///
/// # Shapes
/// - input ids, token types, attention mask: `[batch, seq]`
/// - output (last hidden state): `[batch, seq, hidden_size]`
#[derive(Module, Debug, LoraModel)]
pub struct Bert<B: Backend> {
    /// The embeddings.
    pub embeddings: BertEmbeddings<B>,
    /// The encoder layers.
    pub encoder: TransformerEncoder<B>,
}

impl<B: Backend> Bert<B> {
    /// [`forward`](Self::forward) after checking the input, so that a server can reject a bad
    /// request instead of panicking inside the backend. Reads the ids back to the host.
    ///
    /// # Errors
    /// [`LoraError::InvalidInput`] for an empty batch, an attention mask or token types of
    /// another shape than the ids, an attention mask value other than 0 and 1, more
    /// positions than `max_position_embeddings`, or a token id (token type) outside the
    /// vocabulary (the token types).
    ///
    /// # Shapes
    /// As [`forward`](Self::forward).
    pub fn try_forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> LoraResult<Tensor<B, 3>> {
        let shape @ [batch, seq] = input_ids.dims();
        if batch == 0 || seq == 0 {
            return Err(LoraError::InvalidInput(format!(
                "an empty batch of input ids, shape {shape:?}"
            )));
        }
        let e = &self.embeddings;
        let [max_positions, _] = e.position_embeddings.weight.dims();
        if seq > max_positions {
            return Err(LoraError::InvalidInput(format!(
                "{seq} positions, more than max_position_embeddings ({max_positions})"
            )));
        }
        let [vocab, _] = e.word_embeddings.weight().dims();
        check_ids(&input_ids, vocab, "token id", "vocabulary")?;
        host_mask(&attention_mask, shape)?;
        if let Some(token_types) = &token_type_ids {
            if token_types.dims() != shape {
                return Err(LoraError::InvalidInput(format!(
                    "token type ids of shape {:?} for input ids of shape {shape:?}",
                    token_types.dims()
                )));
            }
            let [types, _] = e.token_type_embeddings.weight.dims();
            check_ids(token_types, types, "token type", "token types")?;
        }
        Ok(self.forward(input_ids, attention_mask, token_type_ids))
    }

    /// The last hidden state. `attention_mask` holds 1 for tokens and 0 for padding;
    /// `token_type_ids` default to 0. Input from outside the program should go through
    /// [`try_forward`](Self::try_forward): an id outside the vocabulary or too long a sequence
    /// panics inside the backend here.
    ///
    /// # Shapes
    /// - `input_ids`, `attention_mask`, `token_type_ids`: `[batch, seq]`
    /// - output: `[batch, seq, hidden_size]`
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
            .reshape([1, seq])
            .repeat_dim(0, batch);
        let token_types = token_type_ids.unwrap_or_else(|| Tensor::zeros([batch, seq], &device));
        let e = &self.embeddings;
        let x = e.word_embeddings.forward(input_ids)
            + e.position_embeddings.forward(positions)
            + e.token_type_embeddings.forward(token_types);
        let x = e.dropout.forward(e.layer_norm.forward(x));
        let padding = attention_mask.equal_elem(0);
        // The encoder's products on Flex as one matrix per layer (`burn_lora_kernels::linear`),
        // on the backend's threads; the encoder alone stays bit for bit Burn's.
        burn_lora_kernels::with_fast_paths::<B, _>(|| {
            self.encoder
                .forward(TransformerEncoderInput::new(x).mask_pad(padding))
        })
    }

    /// Mean of the hidden states over the tokens, padding excluded:
    /// `Σₜ maskₜ·hₜ / Σₜ maskₜ`. The input of a classification head on a sentence encoder.
    ///
    /// # Shapes
    /// - `hidden`: `[batch, seq, hidden_size]`, `attention_mask`: `[batch, seq]`
    /// - output: `[batch, hidden_size]`
    pub fn masked_mean(hidden: Tensor<B, 3>, attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let mask = attention_mask.float().unsqueeze_dim::<3>(2);
        let summed = (hidden * mask.clone()).sum_dim(1).squeeze_dim::<2>(1);
        let counts = mask.sum_dim(1).squeeze_dim::<2>(1).clamp_min(1e-9);
        summed / counts
    }

    /// [`masked_mean`](Self::masked_mean), L2-normalised: the sentence embedding of
    /// sentence-transformers models such as all-MiniLM-L6-v2.
    ///
    /// # Shapes
    /// - `hidden`: `[batch, seq, hidden_size]`, `attention_mask`: `[batch, seq]`
    /// - output: `[batch, hidden_size]`
    pub fn mean_pool(hidden: Tensor<B, 3>, attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let mean = Self::masked_mean(hidden, attention_mask);
        let norm = mean
            .clone()
            .powf_scalar(2.0)
            .sum_dim(1)
            .sqrt()
            .clamp_min(1e-12);
        mean / norm
    }

    /// Maps this model's module paths to Hugging Face's (`encoder.layers.3.mha.query` →
    /// `encoder.layer.3.attention.self.query`, `pwff.linear_inner` → `intermediate.dense`, ...),
    /// for checkpoints and PEFT adapter files alike. `prefix` is prepended to every path (`""`
    /// for a `BertModel` checkpoint, `"bert."` for `BertFor...` ones).
    pub fn hf_path_map(prefix: &str) -> LoraResult<PathMap> {
        let rules = [
            (r"^embeddings\.layer_norm$", "embeddings.LayerNorm"),
            (r"^encoder\.layers\.", "encoder.layer."),
            (r"\.mha\.(query|key|value)$", ".attention.self.$1"),
            (r"\.mha\.output$", ".attention.output.dense"),
            (r"\.norm_1$", ".attention.output.LayerNorm"),
            (r"\.pwff\.linear_inner$", ".intermediate.dense"),
            (r"\.pwff\.linear_outer$", ".output.dense"),
            (r"\.norm_2$", ".output.LayerNorm"),
        ];
        let prefix = prefix.replace('$', "$$");
        let map = rules
            .into_iter()
            .chain([(r"^", prefix.as_str())])
            .try_fold(PathMap::identity(), |map, (pattern, replacement)| {
                map.regex(pattern, replacement)
            })?;
        Ok(map)
    }

    /// Loads a Hugging Face BERT checkpoint (`model.safetensors`) by its names, every key
    /// accounted for except the pooler and the `position_ids` / `token_type_ids` buffers,
    /// which this model does not have.
    ///
    /// # Errors
    /// As [`load_pytorch_checkpoint`]: a missing or unknown key, a shape that does not fit, a
    /// bad file; the model is then unchanged.
    pub fn load_hf_safetensors(&mut self, file: &Path, prefix: &str) -> LoraResult<LoadReport> {
        let options = LoadOptions::new()
            .with_unused_pattern(r"(^|\.)pooler\.|position_ids$|token_type_ids$")?;
        load_pytorch_checkpoint(self, file, &Self::hf_path_map(prefix)?, &options)
    }
}
