//! Hugging Face's `generation_config.json`: the end-of-sequence ids and the default sampling a
//! model ships with.

use std::path::Path;

use serde::Deserialize;

use super::config::TokenIds;
use super::generate::GenerationConfig;
use super::sampling::Sampling;
use crate::error::{LoraError, Result};
use crate::io::tensor_file::read_bytes;

/// The file name in a Hugging Face folder.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// The fields of `generation_config.json` that [`GenerationConfig`] has; the others (caches,
/// beams, penalties) are ignored.
#[derive(Deserialize)]
struct HfGenerationConfig {
    eos_token_id: Option<TokenIds>,
    pad_token_id: Option<u32>,
    do_sample: Option<bool>,
    temperature: Option<f64>,
    top_k: Option<usize>,
    top_p: Option<f64>,
    max_new_tokens: Option<usize>,
}

impl HfGenerationConfig {
    fn read(path: &Path) -> Result<Self> {
        serde_json::from_slice(&read_bytes(path)?).map_err(|e| LoraError::InvalidFile {
            path: path.display().to_string(),
            format: GENERATION_CONFIG_FILE.into(),
            reason: e.to_string(),
        })
    }
}

impl GenerationConfig {
    /// The defaults of a model's `generation_config.json`, as Hugging Face's `generate` applies
    /// them: `eos_token_id` (one id or several) as the stop tokens, `pad_token_id`,
    /// `do_sample` with `temperature` (default 1), `top_k` (default 50, Hugging Face's) and
    /// `top_p` (default 1: none), and `max_new_tokens` (20 when absent, Hugging Face's default
    /// length). Every field can be overridden after: `config.max_new_tokens = 256`,
    /// `.with_seed(7)`, `.with_sampling(Sampling::Greedy)`.
    ///
    /// # Errors
    /// [`LoraError::Io`] or [`LoraError::InvalidFile`] when the file cannot be read or parsed,
    /// [`LoraError::InvalidInput`] for sampling values [`Sampling::validate`] refuses.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let hf = HfGenerationConfig::read(path)?;
        let sampling = if hf.do_sample.unwrap_or(false) {
            let top_k = match hf.top_k {
                Some(0) => None, // Hugging Face's "no top-k"
                Some(k) => Some(k),
                None => Some(50),
            };
            Sampling::Sample {
                temperature: hf.temperature.unwrap_or(1.0),
                top_k,
                top_p: hf.top_p.filter(|p| *p < 1.0),
            }
        } else {
            Sampling::Greedy
        };
        sampling.validate()?;
        Ok(GenerationConfig::new(hf.max_new_tokens.unwrap_or(20))
            .with_sampling(sampling)
            .with_stop_tokens(hf.eos_token_id.map(TokenIds::into_vec))
            .with_pad_token(hf.pad_token_id))
    }
}

/// The end-of-sequence ids of the `generation_config.json` at `path`, if it states any: they
/// replace `config.json`'s, as in Hugging Face's `generate` (an instruct model's extra ids live
/// there).
///
/// # Errors
/// As [`GenerationConfig::from_hf_json`].
pub(crate) fn eos_token_ids(path: &Path) -> Result<Option<Vec<u32>>> {
    Ok(HfGenerationConfig::read(path)?
        .eos_token_id
        .map(TokenIds::into_vec))
}
