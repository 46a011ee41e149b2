//! The transformer examples' model for burn-train: a pretrained BERT encoder with a linear head
//! on its mean-pooled hidden states, the cross-entropy steps the Learner calls, and the three
//! ways of fine-tuning it. This is what a user writes for their own BERT classifier.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use burn_lora::nn::bert::{Bert, BertConfig};
use burn_lora::{LoraConfig, LoraModel, Targets};
use burn_lora_support::text::TextBatch;

use super::timing::StepClock;

/// Which parameters train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The encoder frozen; only the head trains.
    Head,
    /// LoRA adapters on the encoder, trained with the head; the encoder's weights frozen.
    Lora,
    /// Every parameter trains.
    Full,
}

impl Mode {
    /// Every mode, in the order of the results table.
    pub const ALL: [Mode; 3] = [Mode::Head, Mode::Lora, Mode::Full];
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Head => "head",
            Mode::Lora => "lora",
            Mode::Full => "full",
        })
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Mode::ALL
            .into_iter()
            .find(|mode| mode.to_string() == s)
            .ok_or_else(|| format!("unknown mode {s:?} (head, lora, full)"))
    }
}

/// A BERT encoder and a linear head on the mean of its last hidden states over the tokens
/// (not L2-normalised: a unit-length input would make the head learn several times slower at
/// the same learning rate).
#[derive(Module, Debug, LoraModel)]
pub struct SentenceClassifier<B: Backend> {
    /// The encoder (LoRA-ready).
    pub bert: Bert<B>,
    /// `[hidden_size] → [classes]`.
    pub head: Linear<B>,
    /// Records when each training step starts (not a parameter).
    #[module(skip)]
    pub clock: StepClock,
}

impl<B: Backend> SentenceClassifier<B> {
    /// Puts a fresh head for `classes` classes on `bert`.
    pub fn new(bert: Bert<B>, classes: usize, device: &B::Device) -> Self {
        let hidden = bert.embeddings.word_embeddings.d_model();
        Self {
            bert,
            head: LinearConfig::new(hidden, classes).init(device),
            clock: StepClock::default(),
        }
    }

    /// Reads a Hugging Face BERT checkpoint folder (`config.json`, `model.safetensors`) and
    /// puts a fresh head for `classes` classes on it.
    pub fn from_pretrained(
        dir: &Path,
        classes: usize,
        device: &B::Device,
    ) -> Result<Self, burn_lora::LoraError> {
        let config = BertConfig::from_hf_json(&dir.join("config.json"))?;
        let mut bert = config.init(device)?;
        bert.load_hf_safetensors(&dir.join("model.safetensors"), "")?;
        Ok(Self::new(bert, classes, device))
    }

    /// Sets which parameters train: for [`Mode::Lora`], attaches adapter `adapter` with
    /// `config` on `targets` first. The head always trains.
    pub fn prepare(
        &mut self,
        mode: Mode,
        adapter: &str,
        config: &LoraConfig,
        targets: &Targets,
    ) -> Result<(), burn_lora::LoraError> {
        match mode {
            Mode::Full => {}
            Mode::Head => {
                self.freeze_base();
                self.mark_trainable(&["head"])?;
            }
            Mode::Lora => {
                self.attach(adapter, config, targets)?;
                self.mark_trainable(&["head"])?;
            }
        }
        Ok(())
    }

    /// The encoder's last hidden states `[batch, seq, hidden]` of a batch.
    pub fn encode(&self, batch: &TextBatch<B>) -> Tensor<B, 3> {
        let mask = batch.attention_mask.clone();
        self.bert.forward(batch.input_ids.clone(), mask, None)
    }

    /// Sentence embeddings `[batch, hidden]` of a batch (mean-pooled, L2-normalised).
    pub fn embed(&self, batch: &TextBatch<B>) -> Tensor<B, 2> {
        Bert::mean_pool(self.encode(batch), batch.attention_mask.clone())
    }

    /// Logits, loss and targets of one batch: the head on the masked mean of the hidden states.
    pub fn classify(&self, batch: TextBatch<B>) -> ClassificationOutput<B> {
        let pooled = Bert::masked_mean(self.encode(&batch), batch.attention_mask.clone());
        let logits = self.head.forward(pooled);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.labels.clone());
        ClassificationOutput::new(loss, logits, batch.labels)
    }
}

impl<B: AutodiffBackend> TrainStep for SentenceClassifier<B> {
    type Input = TextBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: TextBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        self.clock.tick();
        let output = self.classify(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl<B: Backend> InferenceStep for SentenceClassifier<B> {
    type Input = TextBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: TextBatch<B>) -> ClassificationOutput<B> {
        self.classify(batch)
    }
}
