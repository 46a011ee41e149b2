//! [`Sampling`]: how the next token is chosen from a row of logits.

use burn::config::Config;
use rand::rngs::SmallRng;
use rand::Rng;

use crate::error::{LoraError, Result as LoraResult};

/// How [`CausalLm::generate`](super::CausalLm::generate) picks each token, as Hugging Face's
/// `do_sample`, `temperature`, `top_k` and `top_p`.
#[derive(Config, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first one on a tie), as `do_sample=False`.
    Greedy,
    /// A token drawn from the softmax of `logits / temperature`, restricted to the `top_k` most
    /// likely tokens and then to the smallest set whose probability reaches `top_p` (in that
    /// order, as Hugging Face's logits warpers).
    Sample {
        /// Divides the logits (`> 0`; below 1 sharpens, above 1 flattens).
        temperature: f64,
        /// Keep only the `k` most likely tokens (`≥ 1`).
        top_k: Option<usize>,
        /// Keep the most likely tokens whose probabilities sum to at least `p` (`(0, 1]`).
        top_p: Option<f64>,
    },
}

impl Sampling {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`LoraError::InvalidInput`] for a temperature that is not positive and finite, `top_k`
    /// of 0 or `top_p` outside `(0, 1]`.
    pub fn validate(&self) -> LoraResult<()> {
        let Sampling::Sample {
            temperature,
            top_k,
            top_p,
        } = self
        else {
            return Ok(());
        };
        let invalid = |what: String| Err(LoraError::InvalidInput(what));
        if !(temperature.is_finite() && *temperature > 0.0) {
            return invalid(format!("temperature must be positive, got {temperature}"));
        }
        if *top_k == Some(0) {
            return invalid("top_k must be at least 1".into());
        }
        if let Some(p) = top_p {
            if !(*p > 0.0 && *p <= 1.0) {
                return invalid(format!("top_p must be in (0, 1], got {p}"));
            }
        }
        Ok(())
    }

    /// The next token for one row of logits. `rng` is drawn from only when sampling.
    pub(crate) fn pick(&self, logits: &[f32], rng: &mut SmallRng) -> u32 {
        match self {
            Sampling::Greedy => argmax(logits),
            Sampling::Sample {
                temperature,
                top_k,
                top_p,
            } => sample(logits, *temperature, *top_k, *top_p, rng),
        }
    }
}

/// The index of the largest value, the first one on a tie (NaN never wins).
fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    // The loop runs only on a non-empty slice, and `best` is always an index already visited.
    for (index, value) in values.iter().enumerate() {
        if *value > values[best] || values[best].is_nan() {
            best = index;
        }
    }
    best as u32
}

fn sample(
    logits: &[f32],
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
    rng: &mut SmallRng,
) -> u32 {
    // Tokens by decreasing logit (ties by id), then each cut keeps a prefix. Indexing: `order`
    // holds indices of `logits`, is not empty past the early return, and every cut keeps at least
    // one token (`top_k` at least 1, `top_p` at least the first), so `weights` is never empty and
    // is no longer than `order`.
    let mut order: Vec<usize> = (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect();
    if order.is_empty() {
        return 0;
    }
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if let Some(k) = top_k {
        order.truncate(k.max(1));
    }
    let max = f64::from(logits[order[0]]);
    let mut weights: Vec<f64> = order
        .iter()
        .map(|&i| ((f64::from(logits[i]) - max) / temperature).exp())
        .collect();
    if let Some(p) = top_p {
        let total: f64 = weights.iter().sum();
        let mut cumulative = 0.0;
        let mut keep = weights.len();
        for (index, weight) in weights.iter().enumerate() {
            cumulative += weight / total;
            if cumulative >= p {
                keep = index + 1;
                break;
            }
        }
        weights.truncate(keep);
    }
    let total: f64 = weights.iter().sum();
    let mut threshold = uniform(rng) * total;
    for (index, weight) in weights.iter().enumerate() {
        if threshold < *weight {
            return order[index] as u32;
        }
        threshold -= weight;
    }
    order[weights.len() - 1] as u32
}

/// A uniform draw in `[0, 1)` with 53 random bits.
fn uniform(rng: &mut SmallRng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn sampled(logits: &[f32], sampling: &Sampling, draws: usize) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut counts = vec![0; logits.len()];
        for _ in 0..draws {
            counts[sampling.pick(logits, &mut rng) as usize] += 1;
        }
        counts
    }

    #[test]
    fn greedy_takes_the_first_largest_logit() {
        let mut rng = SmallRng::seed_from_u64(0);
        assert_eq!(Sampling::Greedy.pick(&[0.5, 2.0, 2.0, -1.0], &mut rng), 1);
        assert_eq!(Sampling::Greedy.pick(&[f32::NAN, 1.0], &mut rng), 1);
    }

    #[test]
    fn top_k_keeps_only_the_most_likely_tokens() {
        let sampling = Sampling::Sample {
            temperature: 1.0,
            top_k: Some(2),
            top_p: None,
        };
        let counts = sampled(&[1.0, 3.0, 2.9, 0.0], &sampling, 2000);
        assert_eq!(counts[0] + counts[3], 0);
        assert!(counts[1] > 0 && counts[2] > 0);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities ≈ 0.84, 0.11, 0.04, 0.01: p = 0.9 keeps the first two.
        let logits = [4.0, 2.0, 1.0, 0.0];
        let sampling = Sampling::Sample {
            temperature: 1.0,
            top_k: None,
            top_p: Some(0.9),
        };
        let counts = sampled(&logits, &sampling, 4000);
        assert_eq!(counts[2] + counts[3], 0);
        let share = counts[0] as f64 / 4000.0;
        // 0.84 / 0.95 renormalised; binomial sd ≈ 0.005.
        assert!((share - 0.884).abs() < 0.03, "share {share}");
    }

    #[test]
    fn a_low_temperature_approaches_greedy_and_draws_follow_the_seed() {
        let sampling = Sampling::Sample {
            temperature: 1e-3,
            top_k: None,
            top_p: None,
        };
        assert_eq!(sampled(&[0.0, 1.0, 0.5], &sampling, 100)[1], 100);
        let flat = Sampling::Sample {
            temperature: 1.0,
            top_k: None,
            top_p: None,
        };
        let logits = [0.0; 16];
        assert_eq!(sampled(&logits, &flat, 50), sampled(&logits, &flat, 50));
    }

    #[test]
    fn invalid_parameters_are_errors() {
        let sample = |temperature, top_k, top_p| Sampling::Sample {
            temperature,
            top_k,
            top_p,
        };
        assert!(sample(0.0, None, None).validate().is_err());
        assert!(sample(f64::NAN, None, None).validate().is_err());
        assert!(sample(1.0, Some(0), None).validate().is_err());
        assert!(sample(1.0, None, Some(0.0)).validate().is_err());
        assert!(sample(1.0, None, Some(1.5)).validate().is_err());
        assert!(sample(0.7, Some(40), Some(0.9)).validate().is_ok());
    }
}
