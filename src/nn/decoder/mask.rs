//! The causal attention mask and the position ids of one forward, from its padding mask.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

/// Which keys each query of a forward may attend to, and each token's position id, computed on
/// the host from the padding mask of every position so far (cached ones included).
///
/// Hugging Face's conventions: position ids are `cumsum(mask) - 1`, and `1` at padded positions
/// (so left-padded rows count their first real token as position 0); a query at sequence index
/// `q` sees key `k` when `k ≤ q`, the key is not padding, and, with a sliding window `w`,
/// `q - k < w`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DecoderMask {
    batch: usize,
    /// Positions before this forward (the cache's length).
    past: usize,
    /// Positions in this forward.
    seq: usize,
    /// `1` for a token, `0` for padding, `[batch, past + seq]`.
    keys: Vec<i64>,
}

impl DecoderMask {
    /// `keys` is the padding mask of all `past + seq` positions, row by row.
    pub(crate) fn new(batch: usize, past: usize, seq: usize, keys: Vec<i64>) -> Self {
        debug_assert_eq!(keys.len(), batch * (past + seq));
        Self {
            batch,
            past,
            seq,
            keys,
        }
    }

    fn total(&self) -> usize {
        self.past + self.seq
    }

    /// The position id of each of this forward's tokens, `[batch, seq]`.
    pub(crate) fn position_ids<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        let total = self.total();
        let mut ids = Vec::with_capacity(self.batch * self.seq);
        for row in self.keys.chunks(total.max(1)) {
            let mut count = 0i64;
            for (index, &mask) in row.iter().enumerate() {
                count += mask;
                if index >= self.past {
                    ids.push(if mask == 0 { 1 } else { count - 1 });
                }
            }
        }
        Tensor::from_data(TensorData::new(ids, [self.batch, self.seq]), device)
    }

    /// `true` where attention is forbidden, `[batch, 1, seq, past + seq]`.
    pub(crate) fn attention_mask<B: Backend>(
        &self,
        window: Option<usize>,
        device: &B::Device,
    ) -> Tensor<B, 4, Bool> {
        let total = self.total();
        let mut masked = Vec::with_capacity(self.batch * self.seq * total);
        for row in self.keys.chunks(total.max(1)) {
            for i in 0..self.seq {
                let query = self.past + i;
                for (key, &token) in row.iter().enumerate() {
                    // `query - key ≥ w`, written so that no window (up to `usize::MAX`) overflows.
                    let outside_window = window.is_some_and(|w| query.saturating_sub(key) >= w);
                    masked.push(key > query || token == 0 || outside_window);
                }
            }
        }
        Tensor::from_bool(
            TensorData::new(masked, [self.batch, 1, self.seq, total]),
            device,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn left_padded_rows_count_positions_from_their_first_token() {
        let mask = DecoderMask::new(2, 0, 4, vec![1, 1, 1, 1, 0, 0, 1, 1]);
        let ids = mask.position_ids::<Flex>(&Default::default());
        let ids: Vec<i64> = ids.into_data().convert::<i64>().to_vec().unwrap();
        assert_eq!(ids, vec![0, 1, 2, 3, 1, 1, 0, 1]);
    }

    #[test]
    fn cached_steps_continue_the_positions() {
        let mask = DecoderMask::new(1, 3, 1, vec![0, 1, 1, 1]);
        let ids = mask.position_ids::<Flex>(&Default::default());
        let ids: Vec<i64> = ids.into_data().convert::<i64>().to_vec().unwrap();
        assert_eq!(ids, vec![2]);
    }

    #[test]
    fn queries_see_earlier_tokens_only_within_the_window() {
        let mask = DecoderMask::new(1, 0, 4, vec![0, 1, 1, 1]);
        let full: Vec<bool> = mask
            .attention_mask::<Flex>(None, &Default::default())
            .into_data()
            .to_vec()
            .unwrap();
        #[rustfmt::skip]
        let expected = vec![
            true, true, true, true,
            true, false, true, true,
            true, false, false, true,
            true, false, false, false,
        ];
        assert_eq!(full, expected);
        let windowed: Vec<bool> = mask
            .attention_mask::<Flex>(Some(2), &Default::default())
            .into_data()
            .to_vec()
            .unwrap();
        assert!(windowed[3 * 4 + 1], "key 1 is two positions before query 3");
        assert!(!windowed[3 * 4 + 2]);
        // A window wider than any sequence masks nothing more (it overflowed `key + w`).
        let widest: Vec<bool> = mask
            .attention_mask::<Flex>(Some(usize::MAX), &Default::default())
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(widest, expected);
    }
}
