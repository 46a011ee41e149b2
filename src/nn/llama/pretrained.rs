//! Loading a [`CausalLm`] from a Hugging Face folder: `config.json` and `model.safetensors`, or
//! the shards of `model.safetensors.index.json`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::Deserialize;
use serde_json::Value;

use super::config::CausalLmConfig;
use super::generation_config::{eos_token_ids, GENERATION_CONFIG_FILE};
use super::model::CausalLm;
use super::size_check::check_sizes;
use crate::error::{LoraError, Result};
use crate::io::path_map::PathMap;
use crate::io::pytorch_checkpoint::{
    load_tensor_files, tensor_files, LoadOptions, LoadReport, TensorFile,
};
use crate::io::safetensors_reader::SafetensorsReader;
use crate::io::tensor_file::read_bytes;

/// The file of an unsharded checkpoint.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: std::collections::BTreeMap<String, Value>,
}

impl<B: Backend> CausalLm<B> {
    /// Reads a Hugging Face causal-LM folder: `config.json`, the end-of-sequence ids of
    /// `generation_config.json` when it is there (they replace `config.json`'s, as in Hugging
    /// Face's `generate`: an instruct model's extra ids live there), then the weights
    /// ([`load_hf_weights`](Self::load_hf_weights)). Its sampling defaults are
    /// [`GenerationConfig::from_hf_json`](super::GenerationConfig::from_hf_json).
    ///
    /// # Errors
    /// As [`CausalLmConfig::from_hf_json`] and [`load_hf_weights`](Self::load_hf_weights), and
    /// [`LoraError::InvalidFile`] for a `generation_config.json` that does not parse.
    pub fn from_pretrained(dir: &Path, device: &B::Device) -> Result<Self> {
        let mut config = CausalLmConfig::from_hf_json(&dir.join("config.json"))?;
        let generation = dir.join(GENERATION_CONFIG_FILE);
        if generation.is_file() {
            if let Some(ids) = eos_token_ids(&generation)? {
                config.eos_token_ids = ids;
            }
        }
        let readers = SafetensorsReader::open_all(&checkpoint_files(dir)?)?;
        let readers = tensor_files(&readers);
        check_sizes(&readers, &config)?;
        let mut model = config.init(device)?;
        model.load_tensor_files(&readers)?;
        Ok(model)
    }

    /// Loads the weights of a Hugging Face folder: `model.safetensors`, or else the shards
    /// `model.safetensors.index.json` lists. Every parameter needs its key and every key must
    /// be used, except the rotary `inv_freq` buffers of older files and, with tied embeddings,
    /// a stored `lm_head.weight` (Hugging Face ties it to the embeddings regardless). F32, BF16,
    /// F16 and F64 tensors are read in place, one at a time, straight into the backend's float
    /// type, and each parameter is built from its tensor with no random initialisation first:
    /// a load holds little more than the model itself
    /// ([`load_pytorch_shards`](crate::load_pytorch_shards)).
    ///
    /// # Errors
    /// As [`load_pytorch_shards`](crate::load_pytorch_shards) (a missing or unknown key, a
    /// shape that does not fit, a bad file; the model is then unchanged), and
    /// [`LoraError::InvalidFile`] for a folder with neither file, an unreadable index, or a
    /// shard name that is not a plain file name of the folder.
    pub fn load_hf_weights(&mut self, dir: &Path) -> Result<LoadReport> {
        let readers = SafetensorsReader::open_all(&checkpoint_files(dir)?)?;
        self.load_tensor_files(&tensor_files(&readers))
    }

    /// Loads the weights of open checkpoint files, as [`load_hf_weights`](Self::load_hf_weights).
    fn load_tensor_files(&mut self, files: &[&dyn TensorFile]) -> Result<LoadReport> {
        let mut options = LoadOptions::new().with_unused_pattern(r"rotary_emb\.inv_freq$")?;
        if self.config().tie_word_embeddings {
            options = options.with_unused_pattern(r"^lm_head\.weight$")?;
        }
        load_tensor_files(self, files, &PathMap::identity(), &options)
    }
}

/// The safetensors files of the checkpoint in `dir`.
fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join(WEIGHTS_INDEX_FILE);
    if !index_path.is_file() {
        return Err(LoraError::InvalidFile {
            path: dir.display().to_string(),
            format: "Hugging Face checkpoint folder".into(),
            reason: format!("neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE} is there"),
        });
    }
    let invalid = |reason: String| LoraError::InvalidFile {
        path: index_path.display().to_string(),
        format: WEIGHTS_INDEX_FILE.into(),
        reason,
    };
    let index: ShardIndex =
        serde_json::from_slice(&read_bytes(&index_path)?).map_err(|e| invalid(e.to_string()))?;
    let mut names = BTreeSet::new();
    for (key, file) in &index.weight_map {
        let Some(file) = file.as_str() else {
            return Err(invalid(format!(
                "the shard of \"{key}\" is not a file name"
            )));
        };
        let plain = Path::new(file)
            .file_name()
            .is_some_and(|name| name == std::ffi::OsStr::new(file));
        if !plain || file == ".." {
            return Err(invalid(format!(
                "shard \"{file}\" of \"{key}\" is not a file name in the folder"
            )));
        }
        names.insert(file.to_string());
    }
    if names.is_empty() {
        return Err(invalid("the weight_map lists no shard".into()));
    }
    Ok(names.into_iter().map(|name| dir.join(name)).collect())
}
