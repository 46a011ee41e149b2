//! [`CausalLmCache`]: what a causal LM keeps between the steps of a generation.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::error::{LoraError, Result};
use crate::nn::decoder::KvCache;

/// The keys and values of every layer, and the padding mask of every position so far, so that
/// each step of a generation feeds only its new tokens
/// ([`CausalLm::forward_cache`](super::CausalLm::forward_cache)).
///
/// A step of one new token per row continues from what the cache keeps, with no work on the
/// host that grows with the sequence: each row's next position id, and the padded positions as
/// a mask on the device, extended on the device (none at all while no row has padding).
///
/// Create it with [`CausalLm::new_cache`](super::CausalLm::new_cache).
#[derive(Clone, Debug)]
pub struct CausalLmCache<B: Backend> {
    layers: Vec<KvCache<B>>,
    /// Each row's padding mask, 1 for a token and 0 for padding, `len` values per row.
    mask: Vec<Vec<i64>>,
    /// Each row's count of tokens (not padding): the position id of its next token.
    tokens: Vec<i64>,
    /// `true` at the padded positions, `[batch, len]`, on the device; `None` while no position
    /// of any row is padding.
    padding: Option<Tensor<B, 2, Bool>>,
    batch: usize,
    len: usize,
}

impl<B: Backend> CausalLmCache<B> {
    pub(crate) fn new(layers: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| KvCache::new()).collect(),
            mask: Vec::new(),
            tokens: Vec::new(),
            padding: None,
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

    /// The padding mask of every position, the cached ones followed by `new` (`[batch, seq]`,
    /// row-major), row-major `[batch, len + seq]`.
    pub(crate) fn extended_mask(&self, new: &[i64], seq: usize) -> Vec<i64> {
        if self.len == 0 {
            return new.to_vec();
        }
        self.mask
            .iter()
            .zip(new.chunks(seq))
            .flat_map(|(old, new)| old.iter().chain(new).copied())
            .collect()
    }

    /// Each row's next position id, `[batch, 1]`, for a step of one token per row.
    pub(crate) fn next_positions(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        Tensor::from_data(
            TensorData::new(self.tokens.clone(), [self.batch, 1]),
            device,
        )
    }

    /// The padding of every position once `new` (`[batch, seq]`, row-major, 1 for a token) is
    /// appended, `true` where padded, `[batch, len + seq]`: the kept one extended on the device,
    /// built from the host's mask when `new` brings the first padding, `None` while there is
    /// none. A step of one token per row attends with it; [`commit`](Self::commit) keeps it.
    pub(crate) fn padding_with(
        &self,
        new: &[i64],
        seq: usize,
        device: &B::Device,
    ) -> Option<Tensor<B, 2, Bool>> {
        let batch = new.len() / seq.max(1);
        match &self.padding {
            Some(padding) => Some(Tensor::cat(
                vec![
                    padding.clone(),
                    padding_of(new.to_vec(), [batch, seq], device),
                ],
                1,
            )),
            None if new.contains(&0) => Some(padding_of(
                self.extended_mask(new, seq),
                [batch, self.len + seq],
                device,
            )),
            None => None,
        }
    }

    pub(crate) fn layers_mut(&mut self) -> &mut [KvCache<B>] {
        &mut self.layers
    }

    /// Records a forward that filled the layers with `seq` new positions per row, whose padding
    /// mask is `new` (`[batch, seq]`, row-major), and `padding`, what
    /// [`padding_with`](Self::padding_with) gave for it.
    pub(crate) fn commit(&mut self, new: &[i64], seq: usize, padding: Option<Tensor<B, 2, Bool>>) {
        let batch = new.len() / seq.max(1);
        if self.len == 0 {
            self.mask = vec![Vec::new(); batch];
            self.tokens = vec![0; batch];
        }
        for ((row, tokens), new) in self
            .mask
            .iter_mut()
            .zip(&mut self.tokens)
            .zip(new.chunks(seq))
        {
            row.extend_from_slice(new);
            *tokens += new.iter().sum::<i64>();
        }
        self.padding = padding;
        self.batch = batch;
        self.len += seq;
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
        if let Some(device) = self.device() {
            let indices: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let indices =
                Tensor::<B, 1, Int>::from_data(TensorData::new(indices, [rows.len()]), &device);
            for layer in &mut self.layers {
                layer.select_rows(indices.clone());
            }
        }
        // Every `r < self.batch` (checked above) has a mask and a count.
        self.mask = rows.iter().map(|&r| self.mask[r].clone()).collect();
        self.tokens = rows.iter().map(|&r| self.tokens[r]).collect();
        // Built again from the host's mask rather than selected on the device: Flex 0.21's
        // `select` of a bool tensor returns bools that it then refuses to concatenate with others.
        let padded = self.mask.iter().flatten().any(|&m| m == 0);
        self.padding = self.padding.take().filter(|_| padded).map(|padding| {
            let all = self.mask.iter().flatten().copied().collect();
            padding_of(all, [rows.len(), self.len], &padding.device())
        });
        self.batch = rows.len();
        Ok(())
    }

    fn device(&self) -> Option<B::Device> {
        self.layers.iter().find_map(KvCache::device)
    }
}

/// `true` where a padding mask (`[rows, cols]`, row-major, 1 for a token) is 0, in the backend's
/// own bool type (so that it concatenates with the masks the backend computes).
fn padding_of<B: Backend>(
    mask: Vec<i64>,
    shape: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 2, Bool> {
    Tensor::<B, 2, Int>::from_data(TensorData::new(mask, shape), device).equal_elem(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn bools(mask: Option<Tensor<Flex, 2, Bool>>) -> Option<Vec<bool>> {
        mask.map(|mask| mask.into_data().to_vec().unwrap())
    }

    /// The padding of a step of one token per row, as `CausalLm` asks for it.
    fn step_mask(cache: &CausalLmCache<Flex>) -> Option<Tensor<Flex, 2, Bool>> {
        cache.padding_with(&vec![1; cache.batch()], 1, &Default::default())
    }

    fn commit(cache: &mut CausalLmCache<Flex>, new: &[i64], seq: usize) {
        let padding = cache.padding_with(new, seq, &Default::default());
        cache.commit(new, seq, padding);
    }

    #[test]
    fn a_step_has_no_mask_until_some_row_is_padded_and_positions_count_tokens() {
        let device = Default::default();
        let mut cache = CausalLmCache::<Flex>::new(1);
        commit(&mut cache, &[1, 1, 1, 1], 2);
        assert_eq!(bools(step_mask(&cache)), None);
        let ints =
            |t: Tensor<Flex, 2, Int>| t.into_data().convert::<i64>().to_vec::<i64>().unwrap();
        let positions = ints(cache.next_positions(&device));
        assert_eq!(positions, vec![2, 2]);

        let mut padded = CausalLmCache::<Flex>::new(1);
        commit(&mut padded, &[1, 1, 0, 1], 2);
        commit(&mut padded, &[1, 1], 1);
        assert_eq!(
            bools(step_mask(&padded)),
            Some(vec![false, false, false, false, true, false, false, false])
        );
        let positions = ints(padded.next_positions(&device));
        assert_eq!(positions, vec![3, 2]);
        assert_eq!(
            padded.extended_mask(&[1, 1], 1),
            vec![1, 1, 1, 1, 0, 1, 1, 1]
        );
        // The padded row leaves: no mask again. Keeping it keeps its padding.
        let mut unpadded = padded.clone();
        unpadded.select_rows(&[0]).unwrap();
        assert_eq!(bools(step_mask(&unpadded)), None);
        padded.select_rows(&[1]).unwrap();
        assert_eq!(
            bools(step_mask(&padded)),
            Some(vec![true, false, false, false])
        );
    }
}
