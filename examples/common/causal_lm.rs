//! The causal-LM examples' plumbing: fortune texts as token sequences, the Learner run, and the
//! held-out loss and perplexity over every token of a split.

use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::{Dataset, InMemDataset};
use burn::train::metric::LossMetric;
use burn::train::{Learner, SupervisedTraining};
use burn_lora::nn::llama::CausalLm;
use burn_lora_support::backend::{Inference, Train};
use burn_lora_support::text::{CausalTokenizer, FortuneItem};
use burn_lora_train::{
    CausalLmBatch, CausalLmBatcher, CausalLmItem, CausalLmTrainer, TrainableOnly,
};

use super::learner::{optimizer, FitSettings};

/// Each text as one training sequence: its tokens (with the tokenizer's beginning-of-sequence
/// token), then `eos` so the model learns where a fortune ends, cut to `max_len` tokens.
pub fn tokenize(
    tokenizer: &CausalTokenizer,
    items: impl Iterator<Item = FortuneItem>,
    eos: Option<u32>,
    max_len: usize,
) -> Result<InMemDataset<CausalLmItem>, Box<dyn std::error::Error>> {
    let mut sequences = Vec::new();
    for item in items {
        let mut ids = tokenizer.encode(&item.text, true)?;
        ids.extend(eos);
        ids.truncate(max_len);
        sequences.push(CausalLmItem { ids, prompt_len: 0 });
    }
    Ok(InMemDataset::new(sequences))
}

/// Batches of `dataset`, padded with `pad`: in order, or shuffled every epoch from `seed`.
pub fn loader<B: burn::tensor::backend::Backend>(
    dataset: Arc<dyn Dataset<CausalLmItem>>,
    batch_size: usize,
    pad: u32,
    shuffle: Option<u64>,
) -> Arc<dyn DataLoader<B, CausalLmBatch<B>>> {
    let builder = DataLoaderBuilder::new(CausalLmBatcher::new(pad)).batch_size(batch_size);
    match shuffle {
        Some(seed) => builder.shuffle(seed).build(dataset),
        None => builder.build(dataset),
    }
}

/// Trains `model` with burn-train's Learner (the loss on both splits, Burn's progress display
/// and summary), checkpointing only what trains; returns it on the inference backend.
pub fn fit(
    model: TrainableOnly<CausalLmTrainer<Train>>,
    train: Arc<dyn DataLoader<Train, CausalLmBatch<Train>>>,
    valid: Arc<dyn DataLoader<Inference, CausalLmBatch<Inference>>>,
    settings: &FitSettings,
) -> Result<CausalLm<Inference>, Box<dyn std::error::Error>> {
    let optim = optimizer(settings).init::<Train, TrainableOnly<CausalLmTrainer<Train>>>()?;
    let training = SupervisedTraining::new(&settings.dir, train, valid)
        .metric_train_numeric(LossMetric::<Inference>::new())
        .metric_valid_numeric(LossMetric::<Inference>::new())
        .num_epochs(settings.epochs)
        .with_application_logger(None)
        .summary();
    let result = training.launch(Learner::new(model, optim, settings.lr));
    Ok(result.model.into_inner().lm)
}

/// Mean next-token loss over every counted token of `loader`, and its perplexity.
#[derive(Clone, Copy, Debug)]
pub struct LmScores {
    /// Mean negative log-likelihood per token (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// How many tokens were predicted.
    pub tokens: f64,
}

/// [`LmScores`] of `lm` on `loader`, summed over tokens (not averaged over batches).
pub fn evaluate(
    lm: &CausalLm<Inference>,
    loader: &Arc<dyn DataLoader<Inference, CausalLmBatch<Inference>>>,
) -> Result<LmScores, Box<dyn std::error::Error>> {
    let trainer = CausalLmTrainer::new(lm.clone());
    let (mut nll, mut tokens) = (0.0, 0.0);
    for batch in loader.iter() {
        let output = trainer.try_step(batch)?;
        nll += output.nll.into_scalar() as f64;
        tokens += output.tokens.into_scalar() as f64;
    }
    let loss = nll / tokens.max(1.0);
    Ok(LmScores {
        loss,
        perplexity: loss.exp(),
        tokens,
    })
}
