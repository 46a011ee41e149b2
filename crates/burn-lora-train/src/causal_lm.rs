//! Fine-tuning a [`CausalLm`] on burn-train's Learner: token sequences as a dataset, a batcher
//! that pads them and masks the labels, and the training and validation steps.

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData, Transaction};
use burn::train::metric::{Adaptor, ItemLazy, LossInput};
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use burn_lora::nn::llama::{causal_lm_nll, CausalLm, CausalLmInput, IGNORE_INDEX};
use burn_lora::{LoraError, LoraModel};

/// One training sequence: token ids, the first `prompt_len` of which take no part in the loss
/// (0 trains on every token, as plain language modelling does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CausalLmItem {
    /// The token ids.
    pub ids: Vec<u32>,
    /// How many leading tokens are prompt: their labels are [`IGNORE_INDEX`].
    pub prompt_len: usize,
}

/// A padded batch: ids, the mask (1 for a token, 0 for padding) and the labels (the ids, with
/// [`IGNORE_INDEX`] on padding and prompt).
///
/// # Shapes
/// - every field: `[batch, longest sequence]`
#[derive(Clone, Debug)]
pub struct CausalLmBatch<B: Backend> {
    /// Token ids, right-padded.
    pub input_ids: Tensor<B, 2, Int>,
    /// 1 for a token, 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
    /// The next-token targets (the loss shifts them).
    pub labels: Tensor<B, 2, Int>,
}

/// Pads [`CausalLmItem`]s on the right to the longest of the batch.
#[derive(Clone, Debug)]
pub struct CausalLmBatcher {
    pad_id: u32,
}

impl CausalLmBatcher {
    /// Pads with `pad_id` (masked, so its value does not matter).
    pub fn new(pad_id: u32) -> Self {
        Self { pad_id }
    }
}

impl<B: Backend> Batcher<B, CausalLmItem, CausalLmBatch<B>> for CausalLmBatcher {
    fn batch(&self, items: Vec<CausalLmItem>, device: &B::Device) -> CausalLmBatch<B> {
        let rows = items.len();
        let longest = items.iter().map(|i| i.ids.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(rows * longest);
        let mut mask = Vec::with_capacity(rows * longest);
        let mut labels = Vec::with_capacity(rows * longest);
        for item in &items {
            for index in 0..longest {
                match item.ids.get(index) {
                    Some(&id) => {
                        ids.push(i64::from(id));
                        mask.push(1);
                        labels.push(if index < item.prompt_len {
                            IGNORE_INDEX
                        } else {
                            i64::from(id)
                        });
                    }
                    None => {
                        ids.push(i64::from(self.pad_id));
                        mask.push(0);
                        labels.push(IGNORE_INDEX);
                    }
                }
            }
        }
        let tensor = |values: Vec<i64>| {
            Tensor::<B, 2, Int>::from_data(TensorData::new(values, [rows, longest]), device)
        };
        CausalLmBatch {
            input_ids: tensor(ids),
            attention_mask: tensor(mask),
            labels: tensor(labels),
        }
    }
}

/// What a step reports: the mean next-token loss of the batch, and the summed loss and count of
/// its tokens (for a perplexity over a whole data set).
pub struct CausalLmOutput<B: Backend> {
    /// Mean negative log-likelihood of the batch's counted tokens.
    pub loss: Tensor<B, 1>,
    /// Summed negative log-likelihood.
    pub nll: Tensor<B, 1>,
    /// Number of counted tokens.
    pub tokens: Tensor<B, 1>,
}

impl<B: Backend> ItemLazy for CausalLmOutput<B> {
    type ItemSync = CausalLmStats;

    fn sync(self) -> CausalLmStats {
        let data = Transaction::default()
            .register(self.loss)
            .register(self.nll)
            .register(self.tokens)
            .execute();
        let mut values = data.into_iter().map(|data| {
            data.convert::<f64>()
                .to_vec::<f64>()
                .ok()
                .and_then(|v| v.first().copied())
                .unwrap_or(f64::NAN)
        });
        let mut next = || values.next().unwrap_or(f64::NAN);
        CausalLmStats {
            loss: next(),
            nll: next(),
            tokens: next(),
        }
    }
}

/// A [`CausalLmOutput`] read back to the host, as the Learner's metrics see it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CausalLmStats {
    /// Mean negative log-likelihood of the batch's counted tokens.
    pub loss: f64,
    /// Summed negative log-likelihood.
    pub nll: f64,
    /// Number of counted tokens.
    pub tokens: f64,
}

impl<B: Backend> Adaptor<LossInput<B>> for CausalLmStats {
    fn adapt(&self) -> LossInput<B> {
        LossInput::new(Tensor::from_data([self.loss as f32], &Default::default()))
    }
}

/// A [`CausalLm`] as burn-train's Learner trains it: next-token cross-entropy on
/// [`CausalLmBatch`]es, padding and prompt labels excluded. Wrap it in
/// [`TrainableOnly`](crate::TrainableOnly) to checkpoint the adapters alone.
///
/// Check a dataset with [`check_dataset`](Self::check_dataset) before training: a step has no
/// way to return an error, so a token the model cannot take (outside its vocabulary, a sequence
/// longer than its positions) would stop the run.
///
/// ```
/// use burn::backend::{Autodiff, Flex};
/// use burn_lora::nn::llama::{CausalLmConfig, Family};
/// use burn_lora::{LoraConfig, LoraModel, Targets};
/// use burn_lora_train::{CausalLmTrainer, TrainableOnly};
///
/// let device = Default::default();
/// let config = CausalLmConfig::new(Family::Llama, 64, 16, 32, 2, 4, 2, 4, 32);
/// let mut trainer = CausalLmTrainer::new(config.init::<Autodiff<Flex>>(&device)?);
/// trainer.attach("default", &LoraConfig::new(4, 8.0), &Targets::names(["q_proj", "v_proj"]))?;
/// let trainer = TrainableOnly::new(trainer); // give this to `Learner::new`
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
#[derive(Module, Debug, LoraModel)]
pub struct CausalLmTrainer<B: Backend> {
    /// The model.
    pub lm: CausalLm<B>,
}

impl<B: Backend> CausalLmTrainer<B> {
    /// Wraps a model.
    pub fn new(lm: CausalLm<B>) -> Self {
        Self { lm }
    }

    /// The logits and loss of one batch.
    ///
    /// # Errors
    /// As [`CausalLm::forward`].
    pub fn try_step(&self, batch: CausalLmBatch<B>) -> Result<CausalLmOutput<B>, LoraError> {
        let input = CausalLmInput::new(batch.input_ids).attention_mask(batch.attention_mask);
        let logits = self.lm.forward(input)?;
        let (nll, tokens) = causal_lm_nll(logits, batch.labels);
        Ok(CausalLmOutput {
            loss: nll.clone() / tokens.clone().clamp_min(1.0),
            nll,
            tokens,
        })
    }

    /// Checks that every item can be trained on: ids inside the vocabulary, length within
    /// `max_position_embeddings`, at least one counted label.
    ///
    /// # Errors
    /// [`LoraError::InvalidInput`] naming the first item that cannot.
    pub fn check_dataset(
        &self,
        items: &(impl Dataset<CausalLmItem> + ?Sized),
    ) -> Result<(), LoraError> {
        let config = self.lm.config();
        for index in 0..items.len() {
            let Some(item) = items.get(index) else {
                continue;
            };
            let invalid =
                |what: String| Err(LoraError::InvalidInput(format!("item {index}: {what}")));
            if let Some(id) = item
                .ids
                .iter()
                .find(|&&id| id as usize >= config.vocab_size)
            {
                return invalid(format!(
                    "token id {id} is outside the vocabulary of {}",
                    config.vocab_size
                ));
            }
            if item.ids.len() > config.max_position_embeddings {
                return invalid(format!(
                    "{} tokens exceed max_position_embeddings {}",
                    item.ids.len(),
                    config.max_position_embeddings
                ));
            }
            if item.prompt_len.max(1) >= item.ids.len() {
                return invalid("no token to predict".into());
            }
        }
        Ok(())
    }

    fn checked_step(&self, batch: CausalLmBatch<B>) -> CausalLmOutput<B> {
        match self.try_step(batch) {
            Ok(output) => output,
            // Unreachable for a dataset `check_dataset` accepted and batches of
            // `CausalLmBatcher`: the Learner gives a step no way to return an error.
            Err(error) => panic!("causal-LM step on an unchecked batch: {error}"),
        }
    }
}

impl<B: AutodiffBackend> TrainStep for CausalLmTrainer<B> {
    type Input = CausalLmBatch<B>;
    type Output = CausalLmOutput<B>;

    fn step(&self, batch: CausalLmBatch<B>) -> TrainOutput<CausalLmOutput<B>> {
        let output = self.checked_step(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl<B: Backend> InferenceStep for CausalLmTrainer<B> {
    type Input = CausalLmBatch<B>;
    type Output = CausalLmOutput<B>;

    fn step(&self, batch: CausalLmBatch<B>) -> CausalLmOutput<B> {
        self.checked_step(batch)
    }
}
