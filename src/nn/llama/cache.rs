//! [`CausalLmCache`]: what a causal LM keeps between the steps of a generation.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{LoraError, Result};
use crate::nn::decoder::KvCache;

/// The keys and values of every layer, and the padding mask of every position so far, so that
/// each step of a generation feeds only its new tokens
/// ([`CausalLm::forward_cache`](super::CausalLm::forward_cache)).
///
/// Create it with [`CausalLm::new_cache`](super::CausalLm::new_cache).
#[derive(Clone, Debug)]
pub struct CausalLmCache<B: Backend> {
    layers: Vec<KvCache<B>>,
    /// `[batch, len]`, row-major: 1 for a token, 0 for padding.
    mask: Vec<i64>,
    batch: usize,
    len: usize,
}

impl<B: Backend> CausalLmCache<B> {
    pub(crate) fn new(layers: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| KvCache::new()).collect(),
            mask: Vec::new(),
            batch: 0,
            len: 0,
        }
    }

    /// How many positions it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no position yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of sequences it holds (0 before the first forward).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Errors unless a forward of `batch` rows through `layers` layers can continue it.
    pub(crate) fn check(&self, batch: usize, layers: usize) -> Result<()> {
        if layers != self.layers.len() {
            return Err(LoraError::InvalidInput(format!(
                "a cache of {} layers for a model of {layers}",
                self.layers.len()
            )));
        }
        if self.len > 0 && batch != self.batch {
            return Err(LoraError::InvalidInput(format!(
                "{batch} rows for a cache of {} sequences",
                self.batch
            )));
        }
        Ok(())
    }

    /// The padding mask of every position, the cached ones followed by `new` (`[batch, seq]`).
    pub(crate) fn extended_mask(&self, new: &[i64], seq: usize) -> Vec<i64> {
        if self.len == 0 {
            return new.to_vec();
        }
        self.mask
            .chunks(self.len)
            .zip(new.chunks(seq))
            .flat_map(|(old, new)| old.iter().chain(new).copied())
            .collect()
    }

    pub(crate) fn layers_mut(&mut self) -> &mut [KvCache<B>] {
        &mut self.layers
    }

    /// Records the mask of all `len` positions after a forward filled the layers.
    pub(crate) fn commit(&mut self, mask: Vec<i64>, len: usize) {
        self.batch = mask.len() / len.max(1);
        self.mask = mask;
        self.len = len;
    }

    /// Keeps only the given sequences, in that order (a generation dropping finished rows).
    ///
    /// # Errors
    /// [`LoraError::InvalidInput`] for an empty list or a row it does not hold.
    pub fn select_rows(&mut self, rows: &[usize]) -> Result<()> {
        if rows.is_empty() || rows.iter().any(|&r| r >= self.batch) {
            return Err(LoraError::InvalidInput(format!(
                "rows {rows:?} of a cache of {} sequences",
                self.batch
            )));
        }
        let Some(device) = self.device() else {
            return Ok(());
        };
        let indices: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let indices =
            Tensor::<B, 1, Int>::from_data(TensorData::new(indices, [rows.len()]), &device);
        for layer in &mut self.layers {
            layer.select_rows(indices.clone());
        }
        // Every `r < self.batch` (checked above) and the mask holds `batch * len` values.
        self.mask = rows
            .iter()
            .flat_map(|&r| self.mask[r * self.len..(r + 1) * self.len].iter().copied())
            .collect();
        self.batch = rows.len();
        Ok(())
    }

    fn device(&self) -> Option<B::Device> {
        self.layers.iter().find_map(KvCache::device)
    }
}
