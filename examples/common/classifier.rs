//! The examples' model for burn-train: the notebook MLP as a digit classifier, with the
//! cross-entropy steps the Learner calls. This is what a user writes for their own model.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use burn_lora::{LoraMlp, LoraModel};
use burn_lora_support::mnist::MnistBatch;

/// The notebook MLP with a loss: logits from `mlp`, cross-entropy against the digit.
#[derive(Module, Debug, LoraModel)]
pub struct MnistClassifier<B: Backend> {
    /// The 784-1000-2000-10 MLP (adapters and all).
    pub mlp: LoraMlp<B>,
}

impl<B: Backend> MnistClassifier<B> {
    /// Wraps `mlp`.
    pub fn new(mlp: LoraMlp<B>) -> Self {
        Self { mlp }
    }

    /// Logits, loss and targets of one batch.
    pub fn classify(&self, batch: MnistBatch<B>) -> ClassificationOutput<B> {
        let logits = self.mlp.forward(batch.images);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, logits, batch.targets)
    }
}

impl<B: AutodiffBackend> TrainStep for MnistClassifier<B> {
    type Input = MnistBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: MnistBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let output = self.classify(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl<B: Backend> InferenceStep for MnistClassifier<B> {
    type Input = MnistBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: MnistBatch<B>) -> ClassificationOutput<B> {
        self.classify(batch)
    }
}
