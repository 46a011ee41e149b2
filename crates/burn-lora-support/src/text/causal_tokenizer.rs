//! A causal LM's tokenizer read from Hugging Face's `tokenizer.json` by the `tokenizers` crate.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use crate::error::{DataError, Result};

/// The tokenizer of a Llama, Qwen2 or Mistral folder (`tokenizer.json`), encoding text to the ids
/// burn-lora's `CausalLm` takes and decoding generated ids back, as
/// `AutoTokenizer` does in Python. Never pads or truncates: the batcher and the caller decide.
#[derive(Clone, Debug)]
pub struct CausalTokenizer {
    inner: Tokenizer,
    path: PathBuf,
}

impl CausalTokenizer {
    /// Reads `tokenizer.json`.
    ///
    /// # Errors
    /// [`DataError::DataNotFound`] when the file does not exist, [`DataError::InvalidData`] when
    /// it is not a tokenizer.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(DataError::DataNotFound(format!(
                "no tokenizer file at {}",
                path.display()
            )));
        }
        let mut inner = Tokenizer::from_file(path).map_err(|e| DataError::InvalidData {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| DataError::InvalidData {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// A tokenizer made elsewhere (a GGUF file's, `GgufFile::tokenizer`); `source` names it in
    /// messages.
    pub fn from_tokenizer(mut inner: Tokenizer, source: &Path) -> Self {
        inner.with_padding(None);
        // Taking truncation off cannot fail: there is no length to check.
        let _ = inner.with_truncation(None);
        Self {
            inner,
            path: source.to_path_buf(),
        }
    }

    /// The ids of `text`; `special` adds the tokens the tokenizer's template puts around a
    /// sequence (a beginning-of-sequence token for Llama's).
    ///
    /// # Errors
    /// [`DataError::InvalidData`] when the tokenizer fails on the text.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, special)
            .map_err(|e| self.invalid(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens left out.
    ///
    /// # Errors
    /// [`DataError::InvalidData`] when an id is not in the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| self.invalid(format!("cannot decode {ids:?}: {e}")))
    }

    /// The id of a token (`"</s>"`, `"<|endoftext|>"`), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The number of ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn invalid(&self, reason: String) -> DataError {
        DataError::InvalidData {
            path: self.path.display().to_string(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::peft_fixture;

    #[test]
    fn the_tiny_fixtures_byte_tokenizer_round_trips_text() {
        let tokenizer =
            CausalTokenizer::from_file(&peft_fixture("llama_tiny").join("tokenizer.json")).unwrap();
        let text = "Hello, wörld! -- Anon";
        let ids = tokenizer.encode(text, true).unwrap();
        assert_eq!(ids[0], 1, "<s> first");
        assert_eq!(ids.len(), 1 + text.len(), "one token per byte");
        assert!(ids[1..].iter().all(|&id| (3..256).contains(&id)));
        assert_eq!(ids[1], u32::from(b'H') + 3);
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
        assert_eq!(tokenizer.token_id("</s>"), Some(2));
        assert_eq!(tokenizer.vocab_size(), 256);
    }

    #[test]
    fn a_missing_tokenizer_is_an_error() {
        let missing = CausalTokenizer::from_file(Path::new("/nonexistent/tokenizer.json"));
        assert!(matches!(missing, Err(DataError::DataNotFound(_))));
    }
}
