//! Loading a [`CausalLm`] from a GGUF file (llama.cpp's format): the config from the file's
//! `<architecture>.*` metadata, the weights under Hugging Face's names, dequantized at load as
//! transformers' GGUF loader does, with llama.cpp's row permutation of the Llama q/k weights
//! undone.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, TensorData};

use super::config::{CausalLmConfig, Family};
use super::model::CausalLm;
use super::size_check::check_sizes;
use crate::error::{LoraError, Result};
use crate::io::gguf::file::GgufFile;
use crate::io::gguf::value::GgufValue;
use crate::io::path_map::PathMap;
use crate::io::pytorch_checkpoint::{load_tensor_files, LoadOptions, LoadReport, TensorFile};
use crate::nn::decoder::RopeScaling;

impl CausalLmConfig {
    /// The config a GGUF file's metadata states: `general.architecture` (`llama`, `mistral` or
    /// `qwen2`) and that architecture's `block_count`, `embedding_length`,
    /// `feed_forward_length`, `attention.head_count(_kv)`, `attention.key_length` or
    /// `rope.dimension_count` (the head width), `context_length`, `rope.freq_base`,
    /// `attention.layer_norm_rms_epsilon` and `vocab_size` (else the tokenizer's size), the
    /// token ids of `tokenizer.ggml.*`; the embeddings are tied when the file has no
    /// `output.weight`, and the q/k/v projections have biases when it has `blk.0.attn_q.bias`.
    ///
    /// # Errors
    /// [`LoraError::Unsupported`] for another architecture, rotary scaling other than none or
    /// linear, or Llama 3's `rope_freqs` tensor; [`LoraError::InvalidFile`] for a missing or
    /// mistyped key; [`LoraError::InvalidModel`] as [`validate`](Self::validate).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let keys = Keys { gguf };
        let arch = keys.string("general.architecture")?;
        let family = match arch {
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            other => {
                return Err(LoraError::Unsupported(format!(
                    "GGUF architecture \"{other}\" (burn-lora reads \"llama\", \"mistral\" and \
                     \"qwen2\")"
                )))
            }
        };
        let key = |name: &str| format!("{arch}.{name}");
        match gguf.get(&key("rope.scaling.type")).map(|v| v.as_str()) {
            None | Some(Some("none")) | Some(Some("linear")) => {}
            Some(other) => {
                return Err(LoraError::Unsupported(format!(
                    "{} {other:?} (only none and linear)",
                    key("rope.scaling.type")
                )))
            }
        }
        if gguf.tensors().contains_key("rope_freqs.weight") {
            return Err(LoraError::Unsupported(
                "the rope_freqs tensor (llama.cpp's form of Llama 3's rotary scaling)".into(),
            ));
        }
        let rope_scaling = match gguf.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            Some("linear") => RopeScaling::Linear {
                factor: keys.float(&key("rope.scaling.factor"))?,
            },
            _ => RopeScaling::Default,
        };
        let hidden_size = keys.count(&key("embedding_length"))?;
        let num_attention_heads = keys.count(&key("attention.head_count"))?;
        let head_dim = match keys.optional_count(&key("attention.key_length"))? {
            Some(width) => width,
            None => match keys.optional_count(&key("rope.dimension_count"))? {
                Some(width) => width,
                None if num_attention_heads > 0 => hidden_size / num_attention_heads,
                None => 0,
            },
        };
        let vocab_size = match keys.optional_count(&key("vocab_size"))? {
            Some(n) => n,
            None => keys.array("tokenizer.ggml.tokens")?.len(),
        };
        let token = |name: &str| -> Result<Option<u32>> {
            keys.optional_count(&format!("tokenizer.ggml.{name}"))?
                .map(|id| {
                    u32::try_from(id).map_err(|_| {
                        keys.invalid(format!("tokenizer.ggml.{name} {id} is not a token id"))
                    })
                })
                .transpose()
        };
        let config = Self {
            family,
            vocab_size,
            hidden_size,
            intermediate_size: keys.count(&key("feed_forward_length"))?,
            num_hidden_layers: keys.count(&key("block_count"))?,
            num_attention_heads,
            num_key_value_heads: keys
                .optional_count(&key("attention.head_count_kv"))?
                .unwrap_or(num_attention_heads),
            head_dim,
            max_position_embeddings: keys.count(&key("context_length"))?,
            rms_norm_eps: keys.float(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: match gguf.get(&key("rope.freq_base")) {
                Some(_) => keys.float(&key("rope.freq_base"))?,
                None => 10_000.0,
            },
            rope_scaling,
            qkv_bias: gguf.tensors().contains_key("blk.0.attn_q.bias"),
            o_proj_bias: gguf.tensors().contains_key("blk.0.attn_output.bias"),
            mlp_bias: gguf.tensors().contains_key("blk.0.ffn_up.bias"),
            tie_word_embeddings: !gguf.tensors().contains_key("output.weight"),
            attention_dropout: 0.0,
            sliding_window: None,
            pad_token_id: token("padding_token_id")?,
            bos_token_id: token("bos_token_id")?,
            eos_token_ids: token("eos_token_id")?.into_iter().collect(),
        };
        config.validate()?;
        Ok(config)
    }
}

impl<B: Backend> CausalLm<B> {
    /// Reads a GGUF file: the config ([`CausalLmConfig::from_gguf`]), then the weights
    /// ([`load_gguf_weights`](Self::load_gguf_weights)). The model's names are Hugging Face's,
    /// so PEFT adapters and [`Targets`](crate::Targets) name its layers as they do for a
    /// Hugging Face folder.
    ///
    /// # Errors
    /// As [`GgufFile::open`], [`CausalLmConfig::from_gguf`] and
    /// [`load_gguf_weights`](Self::load_gguf_weights).
    pub fn from_gguf(path: &Path, device: &B::Device) -> Result<Self> {
        let gguf = GgufFile::open(path)?;
        let config = CausalLmConfig::from_gguf(&gguf)?;
        let checkpoint = GgufCheckpoint::new(&gguf, &config)?;
        check_sizes(&[&checkpoint], &config)?;
        let mut model = config.init(device)?;
        model.load_gguf_checkpoint(&checkpoint)?;
        Ok(model)
    }

    /// Loads the weights of a GGUF file, each tensor dequantized (F32, F16, BF16, Q8_0, Q4_0,
    /// Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) as ggml and transformers do, straight into the
    /// backend's float type, one block of rows at a time. llama.cpp's names are read as Hugging
    /// Face's (`blk.3.attn_q.weight` is `model.layers.3.self_attn.q_proj.weight`), and for the
    /// Llama and Mistral architectures the rows of `attn_q` and `attn_k`, which llama.cpp's
    /// converter permutes for its rotary layout, are put back in Hugging Face's order. Every
    /// parameter needs its tensor and every tensor must be used, as for
    /// [`load_hf_weights`](Self::load_hf_weights).
    ///
    /// # Errors
    /// As [`load_pytorch_checkpoint`](crate::load_pytorch_checkpoint): a missing or unused
    /// tensor, a shape that does not fit, a type burn-lora does not dequantize, a value that is
    /// not finite; the model is then unchanged.
    pub fn load_gguf_weights(&mut self, gguf: &GgufFile) -> Result<LoadReport> {
        let checkpoint = GgufCheckpoint::new(gguf, self.config())?;
        self.load_gguf_checkpoint(&checkpoint)
    }

    /// Loads the weights of a GGUF file already seen under Hugging Face's names.
    fn load_gguf_checkpoint(&mut self, checkpoint: &GgufCheckpoint<'_>) -> Result<LoadReport> {
        load_tensor_files(
            self,
            &[checkpoint as &dyn TensorFile],
            &PathMap::identity(),
            &LoadOptions::new(),
        )
    }
}

/// llama.cpp's name of each module of a decoder layer, beside Hugging Face's.
const LAYER_MODULES: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// llama.cpp's name of each module outside the layers, beside Hugging Face's.
const MODEL_MODULES: [(&str, &str); 3] = [
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
];

/// The head count to undo (or apply) llama.cpp's row permutation of a Hugging Face module with,
/// if llama.cpp permutes it: `q_proj` and `k_proj` of the Llama and Mistral architectures.
fn permuted_heads(hf_module: &str, config: &CausalLmConfig) -> Option<usize> {
    if config.family == Family::Qwen2 {
        return None;
    }
    if hf_module.ends_with("self_attn.q_proj") {
        Some(config.num_attention_heads)
    } else if hf_module.ends_with("self_attn.k_proj") {
        Some(config.num_key_value_heads)
    } else {
        None
    }
}

/// Hugging Face's module path of a llama.cpp module name (`blk.3.attn_q` is
/// `model.layers.3.self_attn.q_proj`).
fn hf_module(name: &str) -> Option<String> {
    if let Some((_, hf)) = MODEL_MODULES.iter().find(|(ours, _)| *ours == name) {
        return Some(hf.to_string());
    }
    let (layer, module) = name.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, hf) = LAYER_MODULES.iter().find(|(ours, _)| *ours == module)?;
    Some(format!("model.layers.{layer}.{hf}"))
}

/// llama.cpp's module name of a Hugging Face module path (the inverse of [`hf_module`]).
pub(super) fn llama_cpp_module(hf: &str) -> Option<String> {
    if let Some((ours, _)) = MODEL_MODULES.iter().find(|(_, theirs)| *theirs == hf) {
        return Some(ours.to_string());
    }
    let (layer, module) = hf.strip_prefix("model.layers.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (ours, _) = LAYER_MODULES.iter().find(|(_, theirs)| *theirs == module)?;
    Some(format!("blk.{layer}.{ours}"))
}

/// Hugging Face's name of a llama.cpp tensor name, and the head count of llama.cpp's q/k row
/// permutation when the tensor has one.
fn hf_name(name: &str, config: &CausalLmConfig) -> Option<(String, Option<usize>)> {
    let (module, field) = name.rsplit_once('.')?;
    let hf = hf_module(module)?;
    let heads = permuted_heads(&hf, config);
    Some((format!("{hf}.{field}"), heads))
}

/// llama.cpp's permutation as a row order for [`unpermuted_rows`]' inverse: Hugging Face's row
/// `order[s]` is llama.cpp's row `s`.
pub(super) fn permutation(
    hf_module: &str,
    rows: usize,
    config: &CausalLmConfig,
) -> Option<Option<Vec<usize>>> {
    match permuted_heads(hf_module, config) {
        None => Some(None),
        Some(heads) => unpermuted_rows(rows, heads).map(Some),
    }
}

/// Where llama.cpp's row `s` of a q or k weight (or bias) of `rows` rows over `heads` heads goes
/// in Hugging Face's order. llama.cpp's converter interleaves each head's two rotary halves:
/// its row `h·d + 2i + j` is Hugging Face's `h·d + j·d/2 + i` (`d` the head width).
fn unpermuted_rows(rows: usize, heads: usize) -> Option<Vec<usize>> {
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return None;
    }
    let width = rows / heads;
    let half = width / 2;
    Some(
        (0..rows)
            .map(|s| {
                let (head, within) = (s / width, s % width);
                head * width + (within % 2) * half + within / 2
            })
            .collect(),
    )
}

/// A GGUF file seen as a Hugging Face checkpoint: keys renamed, q/k rows put back in order.
struct GgufCheckpoint<'a> {
    gguf: &'a GgufFile,
    /// Hugging Face's key → (llama.cpp's name, the row order to read it in).
    names: HashMap<String, (String, Option<Vec<usize>>)>,
}

impl<'a> GgufCheckpoint<'a> {
    fn new(gguf: &'a GgufFile, config: &CausalLmConfig) -> Result<Self> {
        let mut names = HashMap::new();
        for (name, tensor) in gguf.tensors() {
            let Some((hf, heads)) = hf_name(name, config) else {
                return Err(LoraError::UnexpectedKey {
                    path: gguf.path().display().to_string(),
                    key: name.clone(),
                    reason: "no tensor of a Llama-family model has this llama.cpp name".into(),
                });
            };
            let rows = tensor.shape().first().copied().unwrap_or(1);
            let order =
                match heads {
                    Some(heads) => Some(unpermuted_rows(rows, heads).ok_or_else(|| {
                        LoraError::ShapeMismatch {
                            what: format!(
                                "{}: tensor \"{name}\" (rows of {heads} heads of even width)",
                                gguf.path().display()
                            ),
                            expected: vec![heads * config.head_dim],
                            found: tensor.shape().to_vec(),
                        }
                    })?),
                    None => None,
                };
            names.insert(hf, (name.clone(), order));
        }
        Ok(Self { gguf, names })
    }
}

impl TensorFile for GgufCheckpoint<'_> {
    fn path(&self) -> &Path {
        self.gguf.path()
    }

    fn keys(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        let (name, _) = self.names.get(key)?;
        Some(self.gguf.tensors().get(name)?.shape().to_vec())
    }

    fn unreadable(&self, key: &str) -> Option<LoraError> {
        let (name, _) = self.names.get(key)?;
        let tensor = self.gguf.tensors().get(name)?;
        (!tensor.is_readable()).then(|| LoraError::UnsupportedDtype {
            path: self.gguf.path().display().to_string(),
            key: name.clone(),
            dtype: format!("ggml {}", tensor.type_name()),
        })
    }

    fn read(&self, key: &str, transpose: bool, dtype: DType) -> Result<TensorData> {
        let (name, order) = self.names.get(key).ok_or_else(|| LoraError::MissingKey {
            path: self.gguf.path().display().to_string(),
            key: key.to_string(),
        })?;
        self.gguf
            .read_rows(name, transpose, dtype, order.as_deref())
    }
}

/// Typed access to a GGUF file's metadata, each miss an error naming the key.
struct Keys<'a> {
    gguf: &'a GgufFile,
}

impl Keys<'_> {
    fn invalid(&self, reason: String) -> LoraError {
        LoraError::InvalidFile {
            path: self.gguf.path().display().to_string(),
            format: "GGUF".into(),
            reason,
        }
    }

    fn value(&self, key: &str) -> Result<&GgufValue> {
        self.gguf
            .get(key)
            .ok_or_else(|| self.invalid(format!("no metadata key \"{key}\"")))
    }

    fn string(&self, key: &str) -> Result<&str> {
        let value = self.value(key)?;
        value.as_str().ok_or_else(|| {
            self.invalid(format!(
                "\"{key}\" is a {}, not a STRING",
                value.type_name()
            ))
        })
    }

    fn array(&self, key: &str) -> Result<&[GgufValue]> {
        let value = self.value(key)?;
        value.as_array().ok_or_else(|| {
            self.invalid(format!(
                "\"{key}\" is a {}, not an ARRAY",
                value.type_name()
            ))
        })
    }

    fn optional_count(&self, key: &str) -> Result<Option<usize>> {
        let Some(value) = self.gguf.get(key) else {
            return Ok(None);
        };
        value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                self.invalid(format!(
                    "\"{key}\" is {value:?}, not a non-negative integer"
                ))
            })
    }

    fn count(&self, key: &str) -> Result<usize> {
        self.optional_count(key)?
            .ok_or_else(|| self.invalid(format!("no metadata key \"{key}\"")))
    }

    fn float(&self, key: &str) -> Result<f64> {
        let value = self.value(key)?;
        value
            .as_f64()
            .ok_or_else(|| self.invalid(format!("\"{key}\" is {value:?}, not a number")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermuted_rows_undo_llama_cpp_s_interleaving_per_head() {
        // Two heads of width 4: llama.cpp stores each head's rows as [0, 2, 1, 3] of Hugging
        // Face's (the two rotary halves interleaved).
        assert_eq!(unpermuted_rows(8, 2).unwrap(), [0, 2, 1, 3, 4, 6, 5, 7]);
        let order = unpermuted_rows(64 * 3, 3).unwrap();
        let mut seen = order.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..192).collect::<Vec<_>>(), "a permutation");
        assert_eq!(unpermuted_rows(6, 4), None, "not whole heads");
        assert_eq!(unpermuted_rows(6, 2), None, "odd head width");
        assert_eq!(unpermuted_rows(4, 0), None);
    }
}
