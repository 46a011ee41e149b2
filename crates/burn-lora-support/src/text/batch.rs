//! Padding tokenized texts into batches for Burn's data loaders.

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::tokenizer::BertTokenizer;

/// One tokenized text and its label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedItem {
    /// Token ids, special tokens included, no padding.
    pub ids: Vec<u32>,
    /// The class.
    pub label: usize,
}

/// How long a batch's rows are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadTo {
    /// The tokenizer's `max_len` (Python's `padding="max_length"`): every batch has one shape.
    Max,
    /// The longest text of the batch (Python's `padding=True`).
    Longest,
}

/// A batch of texts.
///
/// # Shapes
/// - `input_ids`, `attention_mask`: `[batch, seq]` (mask 1 for a token, 0 for padding)
/// - `labels`: `[batch]`
#[derive(Clone, Debug)]
pub struct TextBatch<B: Backend> {
    /// Token ids, padded with `[PAD]`.
    pub input_ids: Tensor<B, 2, Int>,
    /// 1 for a token, 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
    /// The classes.
    pub labels: Tensor<B, 1, Int>,
}

/// Pads [`TokenizedItem`]s into a [`TextBatch`].
#[derive(Clone, Copy, Debug)]
pub struct TextBatcher {
    pad_id: u32,
    max_len: usize,
    pad_to: PadTo,
}

impl TextBatcher {
    /// Pads with `tokenizer`'s `[PAD]` id to `pad_to`.
    pub fn new(tokenizer: &BertTokenizer, pad_to: PadTo) -> Self {
        Self {
            pad_id: tokenizer.pad_id(),
            max_len: tokenizer.max_len(),
            pad_to,
        }
    }

    /// Token ids and attention mask of `sequences`, row-major `[sequences.len(), seq]`, and `seq`.
    /// Sequences longer than the tokenizer's `max_len` are cut.
    pub fn pad(&self, sequences: &[&[u32]]) -> (Vec<i64>, Vec<i64>, usize) {
        let seq = match self.pad_to {
            PadTo::Max => self.max_len,
            PadTo::Longest => sequences.iter().map(|s| s.len()).max().unwrap_or(0),
        }
        .min(self.max_len);
        let mut ids = Vec::with_capacity(sequences.len() * seq);
        let mut mask = Vec::with_capacity(sequences.len() * seq);
        for sequence in sequences {
            let kept = sequence.len().min(seq);
            ids.extend(sequence[..kept].iter().map(|&id| i64::from(id)));
            ids.extend(std::iter::repeat_n(i64::from(self.pad_id), seq - kept));
            mask.extend(std::iter::repeat_n(1, kept));
            mask.extend(std::iter::repeat_n(0, seq - kept));
        }
        (ids, mask, seq)
    }
}

impl<B: Backend> Batcher<B, TokenizedItem, TextBatch<B>> for TextBatcher {
    fn batch(&self, items: Vec<TokenizedItem>, device: &B::Device) -> TextBatch<B> {
        let sequences: Vec<&[u32]> = items.iter().map(|item| item.ids.as_slice()).collect();
        let (ids, mask, seq) = self.pad(&sequences);
        let labels: Vec<i64> = items.iter().map(|item| item.label as i64).collect();
        let shape = [items.len(), seq];
        TextBatch {
            input_ids: Tensor::from_data(TensorData::new(ids, shape), device),
            attention_mask: Tensor::from_data(TensorData::new(mask, shape), device),
            labels: Tensor::from_data(TensorData::new(labels, [items.len()]), device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_the_longest_or_to_max_len_and_cuts_what_is_longer() {
        let batcher = |pad_to| TextBatcher {
            pad_id: 0,
            max_len: 4,
            pad_to,
        };
        let (ids, mask, seq) = batcher(PadTo::Longest).pad(&[&[7, 8], &[5, 6, 9]]);
        assert_eq!(
            (ids, mask, seq),
            (vec![7, 8, 0, 5, 6, 9], vec![1, 1, 0, 1, 1, 1], 3)
        );
        let (ids, mask, seq) = batcher(PadTo::Max).pad(&[&[7], &[1, 2, 3, 4, 5]]);
        assert_eq!(seq, 4);
        assert_eq!(ids, [7, 0, 0, 0, 1, 2, 3, 4]);
        assert_eq!(mask, [1, 0, 0, 0, 1, 1, 1, 1]);
    }
}
