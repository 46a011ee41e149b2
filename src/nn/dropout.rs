//! Dropout that draws its mask in one pass on the CPU backends.

use burn::module::{Content, DisplaySettings, Module, ModuleDisplay};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use crate::error::{LoraError, Result};

/// Burn's `Dropout` (same field, record, display and arithmetic) with a faster mask on the
/// backends that keep tensors in host memory.
///
/// In training (an autodiff backend) each element is zeroed with probability `prob` and the
/// others are scaled by `1 / (1 - prob)` (with `prob = 1` everything is zeroed, where Burn's
/// divides by zero); at inference the input passes through unchanged:
///
/// `y = x ⊙ m / (1 - p)`, `m_i ~ Bernoulli(1 - p)`
///
/// Burn's Flex and NdArray backends draw a random tensor element by element from a
/// cryptographic generator, which was a sixth of a BERT training step on the CPU. On those
/// backends (recognised by [`Backend::name`]) this dropout takes a 64-bit seed from the
/// backend's generator, so that `B::seed` still makes training reproducible, and draws the
/// mask from a small fast generator per block of values, in parallel
/// ([`burn_lora_kernels::dropout`]): on Flex while applying it, forward and backward, never
/// stored; on NdArray into a host buffer, already scaled, so the input is multiplied once. On
/// every other backend (CUDA, WGPU, ...) it runs Burn's dropout, whose mask is drawn on the
/// device.
///
/// # Shapes
/// - input: `[..., any]`
/// - output: the input's shape
#[derive(Module, Clone, Debug)]
#[module(custom_display)]
pub struct Dropout {
    /// The probability of zeroing an element, in `[0, 1]` (checked by [`Dropout::new`]).
    prob: f64,
}

impl TryFrom<burn::nn::Dropout> for Dropout {
    type Error = LoraError;

    /// Burn's dropout with the same probability, checked (Burn's field is public, so it may
    /// hold anything).
    fn try_from(dropout: burn::nn::Dropout) -> Result<Self> {
        Self::new(dropout.prob)
    }
}

/// [`LoraError::InvalidModel`] unless `p` is a probability (`[0, 1]`; NaN is not).
pub(crate) fn check_probability(what: &str, p: f64) -> Result<()> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(LoraError::InvalidModel(format!(
            "{what} must be in [0, 1], got {p}"
        )))
    }
}

impl Dropout {
    /// Dropout zeroing each element with probability `prob`.
    ///
    /// # Errors
    /// [`LoraError::InvalidModel`] unless `prob` is in `[0, 1]` (NaN would zero everything and
    /// a negative value would shrink the activations).
    pub fn new(prob: f64) -> Result<Self> {
        check_probability("dropout probability", prob)?;
        Ok(Self { prob })
    }

    /// Dropout that never drops (the identity).
    pub fn off() -> Self {
        Self { prob: 0.0 }
    }

    /// The probability of zeroing an element.
    pub fn prob(&self) -> f64 {
        self.prob
    }

    /// Whether [`forward`](Self::forward) changes anything on `B`: in training (autodiff) with a
    /// non-zero `prob`.
    pub fn is_active<B: Backend>(&self, device: &B::Device) -> bool {
        B::ad_enabled(device) && self.prob != 0.0
    }

    /// Applies dropout in training; returns the input unchanged on a backend without autodiff
    /// or when `prob` is zero.
    pub fn forward<B: Backend, const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        let device = input.device();
        if !self.is_active::<B>(&device) {
            return input;
        }
        if self.prob >= 1.0 {
            return input.mul_scalar(0.0);
        }
        if !keeps_tensors_in_host_memory::<B>(&device) {
            return burn::nn::Dropout { prob: self.prob }.forward(input);
        }
        let seed = backend_seed::<B>(&device);
        #[cfg(test)]
        tests::HOST_MASK_SEED.set(Some(seed));
        burn_lora_kernels::dropout(input, 1.0 - self.prob, seed)
    }
}

/// Whether `B` is (an autodiff layer over) one of Burn's CPU backends, whose tensors live in host
/// memory, so that a mask built on the host costs no transfer.
fn keeps_tensors_in_host_memory<B: Backend>(device: &B::Device) -> bool {
    let name = B::name(device);
    let inner = name
        .strip_prefix("autodiff<")
        .and_then(|rest| rest.strip_suffix('>'))
        .unwrap_or(&name);
    matches!(inner, "flex" | "ndarray")
}

/// 64 bits from the backend's own generator: two uniform `f32` draws, 24 random bits each, mixed.
fn backend_seed<B: Backend>(device: &B::Device) -> u64 {
    let draws = Tensor::<B, 1>::random([2], Distribution::Default, device)
        .into_data()
        .convert::<f32>();
    let bits: Vec<u64> = draws
        .iter::<f32>()
        .map(|value| u64::from(value.to_bits()))
        .collect();
    // SplitMix64's finaliser spreads the 48 random bits over the whole word.
    let mut z = (bits[0] << 32) ^ bits[1];
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl ModuleDisplay for Dropout {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content.add("prob", &self.prob).optional()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use burn::tensor::TensorData;
    use burn_lora_support::backend::Train;

    use super::*;

    thread_local! {
        /// The seed of the last mask [`Dropout::forward`] drew on the host, on this thread: what
        /// the test below needs to know which mask to expect, with no lock on the backend's
        /// generator, which other tests draw from at the same time.
        pub(super) static HOST_MASK_SEED: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// On a CPU backend, in training, the output is the input times the host mask of the seed
    /// drawn from the backend: Burn's dropout, which draws its own mask, would not give it. On a
    /// GPU backend (`wgpu`, `cuda`) nothing is drawn on the host: Burn's dropout draws the mask
    /// on the device, and the output is still the input zeroed or scaled by `1 / (1 - p)`.
    #[test]
    fn the_mask_is_drawn_on_the_host_on_cpu_backends_only() {
        let device = Default::default();
        let (rows, cols) = (37, 23);
        let values: Vec<f32> = (0..rows * cols).map(|i| 0.5 + i as f32 / 64.0).collect();
        let x =
            Tensor::<Train, 2>::from_data(TensorData::new(values.clone(), [rows, cols]), &device);
        HOST_MASK_SEED.set(None);
        let y: Vec<f32> = Dropout { prob: 0.3 }
            .forward(x)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        if cfg!(any(feature = "wgpu", feature = "cuda")) {
            assert_eq!(
                HOST_MASK_SEED.get(),
                None,
                "a GPU backend drew its mask on the host"
            );
            let scale = 1.0 / 0.7;
            let mut dropped = 0;
            for (y, x) in y.iter().zip(&values) {
                if *y == 0.0 {
                    dropped += 1;
                } else {
                    assert!((y - x * scale).abs() <= 1e-5 * y.abs(), "{y} for {x}");
                }
            }
            // 851 values, each dropped with probability 0.3: 255 expected, σ ≈ 13.
            assert!((180..=330).contains(&dropped), "{dropped} of 851 dropped");
            return;
        }
        let seed = HOST_MASK_SEED
            .get()
            .expect("the mask was drawn on the host");
        let mask = burn_lora_kernels::dropout_mask(rows * cols, 1.0 - 0.3, seed);
        let expected: Vec<f32> = values.iter().zip(&mask).map(|(x, m)| x * m).collect();
        assert!(mask.contains(&0.0) && mask.iter().any(|&m| m != 0.0));
        assert_eq!(y, expected);
    }
}
