//! [`CausalLm::generate`]: batched generation with a KV cache, greedy or sampled, each row with
//! its own adapter if asked.

use burn::config::Config;
use burn::tensor::backend::Backend;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::model::{int_tensor, CausalLm, CausalLmInput};
use super::sampling::Sampling;
use crate::error::{LoraError, Result as LoraResult};
use crate::layers::adapter_batch::AdapterBatch;

/// What [`CausalLm::generate`] does, as the arguments of Hugging Face's `generate`.
#[derive(Config, Debug)]
pub struct GenerationConfig {
    /// The most tokens generated per prompt (`max_new_tokens`).
    pub max_new_tokens: usize,
    /// Greedy or sampled.
    #[config(default = "Sampling::Greedy")]
    pub sampling: Sampling,
    /// Seed of the sampler: the same seed, prompts and model give the same tokens. Each prompt
    /// has a sampler of its own, seeded from this seed and its row: its tokens do not depend on
    /// the other prompts of the batch.
    #[config(default = 0)]
    pub seed: u64,
    /// Tokens that end a sequence (kept as its last token); the model's `eos_token_ids` when
    /// `None`, no stop token when empty.
    #[config(default = "None")]
    pub stop_tokens: Option<Vec<u32>>,
    /// The id used to left-pad shorter prompts (its value does not matter: padding is masked);
    /// the model's `pad_token_id` when `None`, else 0.
    #[config(default = "None")]
    pub pad_token: Option<u32>,
}

/// The outcome of [`CausalLm::generate`], one entry per prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// The new tokens of each prompt (without the prompt), a stop token included as the last.
    pub tokens: Vec<Vec<u32>>,
    /// Whether each sequence ended on a stop token (else it reached `max_new_tokens`).
    pub stopped: Vec<bool>,
}

/// One generated token, as the streaming callback of [`CausalLm::generate`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenEvent {
    /// Which prompt it continues.
    pub row: usize,
    /// Its index among that prompt's new tokens.
    pub index: usize,
    /// The token id.
    pub token: u32,
    /// Whether it is a stop token (the row's last).
    pub stop: bool,
}

impl<B: Backend> CausalLm<B> {
    /// Continues each prompt with up to `config.max_new_tokens` tokens, all prompts in one
    /// batch: shorter prompts are left-padded (Hugging Face's position ids), the prompt runs
    /// once through the model, then each step feeds one token per sequence through the
    /// [`CausalLmCache`](super::CausalLmCache). A sequence ends at a stop token and leaves the
    /// batch; `on_token` sees every token as it is chosen, in row order within a step.
    ///
    /// `adapters` names one adapter (or [`BASE_ADAPTER`](crate::BASE_ADAPTER)) per prompt, as
    /// PEFT's `generate(..., adapter_names=[...])`; `None` runs the active adapters.
    ///
    /// # Errors
    /// [`LoraError::InvalidInput`] for no prompt, an empty prompt, a token outside the
    /// vocabulary, a prompt plus `max_new_tokens` longer than `max_position_embeddings`, an
    /// adapter batch of another length or invalid sampling parameters, and
    /// [`LoraError::UnknownAdapter`] / [`LoraError::Merged`] as [`CausalLm::forward`]; all
    /// checked before anything runs.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        adapters: Option<&AdapterBatch>,
        config: &GenerationConfig,
        mut on_token: impl FnMut(TokenEvent),
    ) -> LoraResult<Generation> {
        let invalid = |what: String| Err(LoraError::InvalidInput(what));
        if prompts.is_empty() {
            return invalid("generation needs at least one prompt".into());
        }
        if let Some(row) = prompts.iter().position(Vec::is_empty) {
            return invalid(format!("prompt {row} is empty"));
        }
        config.sampling.validate()?;
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let max = self.config().max_position_embeddings;
        if longest + config.max_new_tokens > max {
            return invalid(format!(
                "a prompt of {longest} tokens and {} new ones exceed the model's \
                 max_position_embeddings of {max}",
                config.max_new_tokens
            ));
        }
        if let Some(batch) = adapters {
            batch.check_rows(prompts.len())?;
        }
        let stop_tokens = config
            .stop_tokens
            .clone()
            .unwrap_or_else(|| self.config().eos_token_ids.clone());
        let pad = config.pad_token.or(self.config().pad_token_id).unwrap_or(0);
        let device = self.model.norm.gamma.device();

        let rows = prompts.len();
        let mut input = CausalLmInput::left_padded(prompts, pad, &device).last_position_only();
        if let Some(batch) = adapters {
            input = input.adapters(batch.clone());
        }

        let mut cache = self.new_cache();
        // One sampler per prompt, so that a row's draws depend on the seed, its own logits and
        // its place in the batch, never on the other rows (which may stop earlier or sample
        // otherwise).
        let mut rngs: Vec<SmallRng> = (0..rows)
            .map(|row| SmallRng::seed_from_u64(row_seed(config.seed, row)))
            .collect();
        let mut generation = Generation {
            tokens: vec![Vec::new(); rows],
            stopped: vec![false; rows],
        };
        // The original rows still generating, in batch order.
        let mut running: Vec<usize> = (0..rows).collect();
        let mut running_adapters = adapters.cloned();
        let vocab = self.config().vocab_size;
        for step in 0..config.max_new_tokens {
            let logits = self.forward_cache(input, &mut cache)?;
            let values = logits
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| LoraError::InvalidInput(format!("reading the logits: {e:?}")))?;
            let mut next = Vec::with_capacity(running.len());
            let mut still_running = Vec::with_capacity(running.len());
            // The logits are `[running.len(), vocab]` (one position per running row), and every
            // `row` is one of the `rows` original prompts that `generation` holds.
            for (position, &row) in running.iter().enumerate() {
                let row_logits = &values[position * vocab..(position + 1) * vocab];
                let token = config.sampling.pick(row_logits, &mut rngs[row]);
                let stop = stop_tokens.contains(&token);
                generation.tokens[row].push(token);
                on_token(TokenEvent {
                    row,
                    index: step,
                    token,
                    stop,
                });
                if stop {
                    generation.stopped[row] = true;
                } else {
                    still_running.push(position);
                    next.push(i64::from(token));
                }
            }
            if still_running.is_empty() || step + 1 == config.max_new_tokens {
                break;
            }
            if still_running.len() < running.len() {
                cache.select_rows(&still_running)?;
                // `still_running` holds positions into `running`.
                running = still_running.iter().map(|&p| running[p]).collect();
                running_adapters = running_adapters
                    .map(|batch| batch.select_rows(&still_running))
                    .transpose()?;
            }
            let count = running.len();
            input = CausalLmInput::new(int_tensor(next, [count, 1], &device))
                .last_position_only()
                .ids_in_vocabulary();
            if let Some(batch) = &running_adapters {
                input = input.adapters(batch.clone());
            }
        }
        Ok(generation)
    }
}

/// The seed of row `row`'s sampler: `seed` and the row mixed by SplitMix64's finaliser, so that
/// neighbouring rows draw unrelated streams.
fn row_seed(seed: u64, row: usize) -> u64 {
    let mut z = seed
        ^ (row as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use burn::tensor::{Int, Tensor, TensorData};
    use burn_lora_support::backend::Inference as B;

    use super::*;
    use crate::nn::ids::DEVICE_READS;
    use crate::nn::llama::{CausalLmConfig, Family};

    fn logits(tensor: Tensor<B, 3>) -> Vec<f32> {
        tensor.into_data().convert::<f32>().to_vec::<f32>().unwrap()
    }

    /// The steps of a left-padded generation, as `generate` runs them, read nothing back from
    /// the device (their positions and padding mask are kept and extended there) on any
    /// backend, and give the logits of the general path: the whole sequence, prompt and new
    /// tokens, run again without a cache, its mask and positions built on the host. On a GPU
    /// backend a read per step would wait for the device at every token; the tolerance covers
    /// the two paths' kernels (attention over a cache against one pass, reductions in another
    /// order on a GPU backend).
    #[test]
    fn decoding_steps_read_nothing_back_and_match_the_uncached_forward() {
        let device = Default::default();
        let vocab = 61;
        let model = CausalLmConfig::new(Family::Llama, vocab, 32, 48, 2, 4, 2, 8, 64)
            .init::<B>(&device)
            .unwrap();
        let prompts = vec![vec![5, 9, 13, 2, 7], vec![11, 3]];
        let pad = 0;
        let mut cache = model.new_cache();
        let prompt = CausalLmInput::left_padded(&prompts, pad, &device).last_position_only();
        let mut last = model.forward_cache(prompt, &mut cache).unwrap();
        let mut sequences = prompts.clone();
        for step in 0..4 {
            // Greedy tokens from the last logits: the next step's input.
            let values = logits(last);
            let next: Vec<u32> = values
                .chunks(vocab)
                .map(|row| {
                    let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
                    best.map(|(id, _)| id as u32).unwrap()
                })
                .collect();
            for (sequence, &token) in sequences.iter_mut().zip(&next) {
                sequence.push(token);
            }
            let ids = next.iter().map(|&t| i64::from(t)).collect::<Vec<_>>();
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 1]), &device);
            let input = CausalLmInput::new(ids)
                .last_position_only()
                .ids_in_vocabulary();
            let reads = DEVICE_READS.load(Ordering::SeqCst);
            last = model.forward_cache(input, &mut cache).unwrap();
            assert_eq!(
                DEVICE_READS.load(Ordering::SeqCst),
                reads,
                "step {step} read from the device"
            );

            let whole = CausalLmInput::left_padded(&sequences, pad, &device).last_position_only();
            let reads = DEVICE_READS.load(Ordering::SeqCst);
            let expected = logits(model.forward(whole).unwrap());
            assert!(
                DEVICE_READS.load(Ordering::SeqCst) > reads,
                "the general path checks its ids and mask on the host"
            );
            let got = logits(last.clone());
            assert_eq!(got.len(), 2 * vocab);
            for (g, e) in got.iter().zip(&expected) {
                assert!((g - e).abs() <= 1e-4, "step {step}: {g} against {e}");
            }
        }
    }
}
