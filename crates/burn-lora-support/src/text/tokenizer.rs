//! A BERT WordPiece tokenizer read from Hugging Face's `tokenizer.json` by the `tokenizers` crate.

use std::path::{Path, PathBuf};

use burn::data::dataset::{Dataset, InMemDataset};
use tokenizers::{Tokenizer, TruncationParams};

use super::batch::TokenizedItem;
use super::fortunes::FortuneItem;
use crate::error::{DataError, Result};

/// Hugging Face's tokenizer for a BERT checkpoint, truncating to `max_len` tokens (special
/// tokens included) and never padding: padding is the batcher's job
/// ([`TextBatcher`](super::TextBatcher)).
#[derive(Clone, Debug)]
pub struct BertTokenizer {
    inner: Tokenizer,
    max_len: usize,
    pad_id: u32,
    path: PathBuf,
}

impl BertTokenizer {
    /// Reads `tokenizer.json`; sequences are cut to `max_len` tokens, `[CLS]` and `[SEP]`
    /// included, as `tokenizer(..., truncation=True, max_length=max_len)` does in Python.
    ///
    /// # Errors
    /// [`DataError::DataNotFound`] when the file does not exist, [`DataError::InvalidData`] when
    /// it is not a tokenizer, has no `[PAD]` token, or `max_len` is below 2.
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        if !path.is_file() {
            return Err(DataError::DataNotFound(format!(
                "no tokenizer file at {}",
                path.display()
            )));
        }
        let invalid = |reason: String| DataError::InvalidData {
            path: path.display().to_string(),
            reason,
        };
        if max_len < 2 {
            return Err(invalid(format!(
                "max_len {max_len} leaves no room for [CLS] and [SEP]"
            )));
        }
        let mut inner = Tokenizer::from_file(path).map_err(|e| invalid(e.to_string()))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| invalid(e.to_string()))?;
        let pad_id = inner
            .token_to_id("[PAD]")
            .ok_or_else(|| invalid("no [PAD] token".into()))?;
        Ok(Self {
            inner,
            max_len,
            pad_id,
            path: path.to_path_buf(),
        })
    }

    /// The longest sequence it produces.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The id of `[PAD]`.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The token ids of `text`, with `[CLS]` and `[SEP]`, at most [`max_len`](Self::max_len).
    ///
    /// # Errors
    /// [`DataError::InvalidData`] when the tokenizer fails on the text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| DataError::InvalidData {
                path: self.path.display().to_string(),
                reason: format!("cannot tokenize {text:?}: {e}"),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Tokenizes every item of `items` once, up front, into a dataset of [`TokenizedItem`]s.
    ///
    /// # Errors
    /// As [`encode`](Self::encode).
    pub fn encode_dataset(
        &self,
        items: &impl Dataset<FortuneItem>,
    ) -> Result<InMemDataset<TokenizedItem>> {
        let encoded = items
            .iter()
            .map(|item| {
                Ok(TokenizedItem {
                    ids: self.encode(&item.text)?,
                    label: item.label,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(InMemDataset::new(encoded))
    }
}
