//! [`KvCache`]: the keys and values of one attention layer kept between decoding steps.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use burn_lora_kernels::slice_assign;

use crate::error::{LoraError, Result};

/// Positions added to a cache's buffer whenever it fills up (so that a step writes its new keys
/// in place instead of copying the whole cache, as a concatenation would).
const GROWTH: usize = 256;

/// The rotated keys and the values of every position seen so far by one attention layer, in a
/// buffer that grows by [`GROWTH`] positions at a time, so that each decoding step writes only
/// its own position.
///
/// # Shapes
/// - keys, values: `[batch, kv_heads, positions, head_dim]`
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
    len: usize,
}

impl<B: Backend> Default for KvCache<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> KvCache<B> {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            keys: None,
            values: None,
            len: 0,
        }
    }

    /// How many positions it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no position.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends the keys and values of new positions and returns those of every position so far.
    ///
    /// # Shapes
    /// - keys, values: `[batch, kv_heads, new, head_dim]`
    /// - output: `[batch, kv_heads, len + new, head_dim]` each
    ///
    /// # Errors
    /// [`LoraError::ShapeMismatch`] when the batch, heads or head width differ from the cached
    /// ones.
    pub fn append(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>)> {
        let [batch, heads, new, head_dim] = keys.dims();
        if values.dims() != keys.dims() {
            return Err(LoraError::ShapeMismatch {
                what: "values given to a KV cache".into(),
                expected: keys.dims().to_vec(),
                found: values.dims().to_vec(),
            });
        }
        // Checked before the buffers are taken: on an error the cache stays as it was.
        if let Some(cached) = &self.keys {
            let [cached_batch, cached_heads, _, cached_dim] = cached.dims();
            if [cached_batch, cached_heads, cached_dim] != [batch, heads, head_dim] {
                return Err(LoraError::ShapeMismatch {
                    what: "keys given to a KV cache".into(),
                    expected: vec![cached_batch, cached_heads, new, cached_dim],
                    found: keys.dims().to_vec(),
                });
            }
        }
        let total = self.len + new;
        let (Some(buffer_k), Some(buffer_v)) = (self.keys.take(), self.values.take()) else {
            // Room for the generated tokens beyond the prompt, so the first steps do not grow.
            let capacity = (total / GROWTH + 1) * GROWTH;
            let device = keys.device();
            let empty = || Tensor::<B, 4>::zeros([batch, heads, capacity, head_dim], &device);
            let range = [0..batch, 0..heads, 0..new, 0..head_dim];
            return Ok(self.store(
                slice_assign(empty(), range.clone(), keys),
                slice_assign(empty(), range, values),
                total,
            ));
        };
        let capacity = buffer_k.dims()[2];
        let grow = |buffer: Tensor<B, 4>| {
            if total <= capacity {
                return buffer;
            }
            let extra = (total - capacity).div_ceil(GROWTH) * GROWTH;
            let device = buffer.device();
            let padding = Tensor::<B, 4>::zeros([batch, heads, extra, head_dim], &device);
            Tensor::cat(vec![buffer, padding], 2)
        };
        let range = [0..batch, 0..heads, self.len..total, 0..head_dim];
        // Written in place: the views of the last step are gone, so the buffers have one holder.
        Ok(self.store(
            slice_assign(grow(buffer_k), range.clone(), keys),
            slice_assign(grow(buffer_v), range, values),
            total,
        ))
    }

    /// The device of its buffers, once it holds any.
    pub fn device(&self) -> Option<B::Device> {
        self.keys.as_ref().map(Tensor::device)
    }

    /// Keeps only the given batch rows (a generation dropping finished sequences).
    ///
    /// # Shapes
    /// - rows: `[kept]`
    pub fn select_rows(&mut self, rows: Tensor<B, 1, Int>) {
        self.keys = self.keys.take().map(|k| k.select(0, rows.clone()));
        self.values = self.values.take().map(|v| v.select(0, rows));
    }

    /// Keeps the buffers holding `len` positions and returns views of those positions.
    fn store(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        len: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let view = |buffer: &Tensor<B, 4>| {
            let [batch, heads, _, head_dim] = buffer.dims();
            buffer
                .clone()
                .slice([0..batch, 0..heads, 0..len, 0..head_dim])
        };
        let held = (view(&keys), view(&values));
        self.keys = Some(keys);
        self.values = Some(values);
        self.len = len;
        held
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor};
    use burn_lora_support::backend::Inference as B;

    use super::*;

    fn random(shape: [usize; 4]) -> Tensor<B, 4> {
        Tensor::random(shape, Distribution::Default, &Default::default())
    }

    /// A refused append leaves the cache as it was: the same length, and the next append
    /// returns the positions cached before it (once, the buffers were taken before the check,
    /// so the cache kept its length but lost its contents).
    #[test]
    fn a_refused_append_changes_nothing() {
        let mut cache = KvCache::<B>::new();
        let (keys, values) = (random([2, 3, 4, 5]), random([2, 3, 4, 5]));
        cache.append(keys.clone(), values.clone()).unwrap();

        for wrong in [[2, 2, 1, 5], [2, 3, 1, 6], [1, 3, 1, 5]] {
            let err = cache.append(random(wrong), random(wrong)).unwrap_err();
            assert!(matches!(err, LoraError::ShapeMismatch { .. }), "{err}");
            assert_eq!(cache.len(), 4);
        }
        let mismatched = cache.append(random([2, 3, 1, 5]), random([2, 3, 2, 5]));
        assert!(matches!(mismatched, Err(LoraError::ShapeMismatch { .. })));
        assert_eq!(cache.len(), 4);

        let (step_keys, step_values) = (random([2, 3, 1, 5]), random([2, 3, 1, 5]));
        let (all_keys, all_values) = cache
            .append(step_keys.clone(), step_values.clone())
            .unwrap();
        assert_eq!(cache.len(), 5);
        let expected_keys = Tensor::cat(vec![keys, step_keys], 2);
        let expected_values = Tensor::cat(vec![values, step_values], 2);
        all_keys
            .into_data()
            .assert_eq(&expected_keys.into_data(), true);
        all_values
            .into_data()
            .assert_eq(&expected_values.into_data(), true);
    }
}
