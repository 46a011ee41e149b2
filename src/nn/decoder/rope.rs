//! [`RotaryEmbedding`]: rotary position embeddings in Hugging Face's `rotate_half` layout.

use burn::config::Config;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{LoraError, Result as LoraResult};

/// How the rotary frequencies are rescaled for contexts longer than training's (Hugging Face's
/// `rope_scaling` / `rope_parameters.rope_type`).
#[derive(Config, Debug, PartialEq)]
pub enum RopeScaling {
    /// No rescaling (`"default"`).
    Default,
    /// Every frequency divided by `factor` (`"linear"`: positions interpolated).
    Linear {
        /// The scaling factor (`> 0`).
        factor: f64,
    },
    /// Llama 3's rescaling (`"llama3"`): low frequencies divided by `factor`, high ones kept, the
    /// band between interpolated smoothly.
    Llama3 {
        /// The scaling factor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was trained with.
        original_max_position_embeddings: usize,
    },
}

/// Configuration of a [`RotaryEmbedding`].
#[derive(Config, Debug)]
pub struct RotaryEmbeddingConfig {
    /// Width of each attention head (even).
    pub head_dim: usize,
    /// Base of the geometric progression of frequencies (`rope_theta`).
    #[config(default = 10000.0)]
    pub theta: f64,
    /// Rescaling of the frequencies.
    #[config(default = "RopeScaling::Default")]
    pub scaling: RopeScaling,
}

impl RotaryEmbeddingConfig {
    /// Checks the configuration without computing anything (a `config.json` is checked before
    /// any table of its sizes is allocated).
    ///
    /// # Errors
    /// As [`init`](Self::init).
    pub fn validate(&self) -> LoraResult<()> {
        let invalid = |what: String| Err(LoraError::InvalidModel(what));
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return invalid(format!(
                "rotary embeddings need an even, non-zero head_dim, got {}",
                self.head_dim
            ));
        }
        if !(self.theta.is_finite() && self.theta > 0.0) {
            return invalid(format!("rope_theta must be positive, got {}", self.theta));
        }
        let positive = |name: &str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(LoraError::InvalidModel(format!(
                    "rope scaling {name} must be positive, got {value}"
                )))
            }
        };
        match &self.scaling {
            RopeScaling::Default => Ok(()),
            RopeScaling::Linear { factor } => positive("factor", *factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("factor", *factor)?;
                positive("low_freq_factor", *low_freq_factor)?;
                positive("high_freq_factor", *high_freq_factor)?;
                if high_freq_factor <= low_freq_factor || *original_max_position_embeddings == 0 {
                    return invalid(format!(
                        "llama3 rope scaling needs high_freq_factor > low_freq_factor and an \
                         original context, got {:?}",
                        self.scaling
                    ));
                }
                Ok(())
            }
        }
    }

    /// Computes the frequencies.
    ///
    /// # Errors
    /// [`LoraError::InvalidModel`] for an odd or zero head width, a non-positive theta or a
    /// scaling factor that is not positive and finite.
    pub fn init(&self) -> LoraResult<RotaryEmbedding> {
        self.validate()?;
        // inv_freq_i = 1 / θ^(2i / d), in f32 as Hugging Face computes it.
        let dim = self.head_dim as f32;
        let mut inv_freq: Vec<f32> = (0..self.head_dim / 2)
            .map(|i| 1.0 / (self.theta as f32).powf((2 * i) as f32 / dim))
            .collect();
        match &self.scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => {
                for f in &mut inv_freq {
                    *f /= *factor as f32;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in &mut inv_freq {
                    let freq = f64::from(*f);
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    let scaled = if wavelen < high_wavelen {
                        freq
                    } else if wavelen > low_wavelen {
                        freq / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    };
                    *f = scaled as f32;
                }
            }
        }
        Ok(RotaryEmbedding { inv_freq })
    }
}

/// Rotary position embeddings (Su et al. 2021) as Hugging Face's Llama applies them: the first
/// half of each head's dimensions pairs with the second half (`rotate_half`), not adjacent
/// dimensions.
///
/// `x' = x · cos(p·θ) + rotate_half(x) · sin(p·θ)`, `rotate_half([x₁, x₂]) = [-x₂, x₁]`, with
/// `θ` the frequencies repeated once (`[θ, θ]`) and `p` each token's position id.
///
/// # Shapes
/// - position ids: `[batch, seq]`
/// - [`RopeTables`]: `[batch, 1, seq, head_dim]` each
/// - [`apply`](RopeTables::apply): `[batch, heads, seq, head_dim]` → the same
#[derive(Clone, Debug)]
pub struct RotaryEmbedding {
    /// `1 / θ^(2i/d)` after scaling, `[head_dim / 2]`.
    inv_freq: Vec<f32>,
}

impl RotaryEmbedding {
    /// The frequencies, `[head_dim / 2]`.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Width of the heads it rotates.
    pub fn head_dim(&self) -> usize {
        2 * self.inv_freq.len()
    }

    /// The cosines and sines for these position ids, computed once per forward and shared by
    /// every layer.
    pub fn tables<B: Backend>(&self, positions: Tensor<B, 2, Int>) -> RopeTables<B> {
        let [batch, seq] = positions.dims();
        let device = positions.device();
        let half = self.inv_freq.len();
        let inv_freq =
            Tensor::<B, 1>::from_data(TensorData::new(self.inv_freq.clone(), [half]), &device)
                .reshape([1, 1, half]);
        let angles = positions.float().reshape([batch, seq, 1]) * inv_freq;
        let angles =
            Tensor::cat(vec![angles.clone(), angles], 2).reshape([batch, 1, seq, 2 * half]);
        RopeTables {
            cos: angles.clone().cos(),
            sin: angles.sin(),
        }
    }
}

/// The cosines and sines of one forward's positions, `[batch, 1, seq, head_dim]` each.
#[derive(Clone, Debug)]
pub struct RopeTables<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
}

impl<B: Backend> RopeTables<B> {
    /// Rotates queries or keys ([`burn_lora_kernels::rotary`]).
    ///
    /// # Shapes
    /// - x: `[batch, heads, seq, head_dim]`
    /// - output: the same
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        burn_lora_kernels::rotary(x, self.cos.clone(), self.sin.clone())
    }

    /// Splits a projection into heads and rotates them, in one pass on Flex
    /// ([`burn_lora_kernels::rotary_heads`]): `apply(x.reshape([batch, seq, heads,
    /// head_dim]).swap_dims(1, 2))`.
    ///
    /// # Shapes
    /// - x: `[batch, seq, heads · head_dim]`
    /// - output: `[batch, heads, seq, head_dim]`
    pub fn apply_heads(&self, x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
        burn_lora_kernels::rotary_heads(x, self.cos.clone(), self.sin.clone(), heads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequencies_follow_the_geometric_progression() {
        let rope = RotaryEmbeddingConfig::new(8).init().unwrap();
        let expected = [1.0, 0.1, 0.01, 0.001];
        for (f, e) in rope.inv_freq().iter().zip(expected) {
            assert!((f - e).abs() < 1e-7, "{f} vs {e}");
        }
    }

    #[test]
    fn linear_scaling_divides_every_frequency() {
        let plain = RotaryEmbeddingConfig::new(8).init().unwrap();
        let scaled = RotaryEmbeddingConfig::new(8)
            .with_scaling(RopeScaling::Linear { factor: 4.0 })
            .init()
            .unwrap();
        for (p, s) in plain.inv_freq().iter().zip(scaled.inv_freq()) {
            assert!((p / 4.0 - s).abs() < 1e-9);
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        // Wavelengths 2π/θ: 6.3 (kept), 62.8 (band), 628 and 6283 (divided by 8) for an
        // original context of 256 with factors 1 and 16 (band 16..256).
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 16.0,
            original_max_position_embeddings: 256,
        };
        let plain = RotaryEmbeddingConfig::new(8).init().unwrap();
        let scaled = RotaryEmbeddingConfig::new(8)
            .with_scaling(scaling)
            .init()
            .unwrap();
        let (p, s) = (plain.inv_freq(), scaled.inv_freq());
        assert_eq!(p[0], s[0]);
        assert!(s[1] < p[1] && s[1] > p[1] / 8.0);
        assert!((s[2] - p[2] / 8.0).abs() < 1e-9);
        assert!((s[3] - p[3] / 8.0).abs() < 1e-10);
    }

    #[test]
    fn odd_head_widths_and_bad_factors_are_errors() {
        assert!(RotaryEmbeddingConfig::new(7).init().is_err());
        assert!(RotaryEmbeddingConfig::new(0).init().is_err());
        assert!(RotaryEmbeddingConfig::new(8)
            .with_theta(-1.0)
            .init()
            .is_err());
        assert!(RotaryEmbeddingConfig::new(8)
            .with_scaling(RopeScaling::Linear { factor: 0.0 })
            .init()
            .is_err());
    }
}
