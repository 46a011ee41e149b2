//! Training through burn-train: MNIST loaders from Burn's `DataLoaderBuilder`, and one call that
//! runs the `Learner` (for any classifier: MNIST's and the text one) with Burn's metrics,
//! progress display and summary.

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::Dataset;
use burn::module::AutodiffModule;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainStep};
use burn_fused_adam::FusedAdamConfig;
use burn_lora_support::backend::{self, Inference, Train};
use burn_lora_support::mnist::{MnistBatch, MnistBatcher, MnistItem, MnistSplit};
use burn_lora_train::CheckpointSafe;

/// Batches of the test split for validation and evaluation.
pub const EVAL_BATCH: usize = 1000;

/// A training loader: `dataset` in batches of `batch_size`, shuffled every epoch from `seed`.
pub fn train_loader(
    dataset: impl Dataset<MnistItem> + 'static,
    batch_size: usize,
    seed: u64,
) -> Arc<dyn DataLoader<Train, MnistBatch<Train>>> {
    DataLoaderBuilder::new(MnistBatcher)
        .batch_size(batch_size)
        .shuffle(seed)
        .build(dataset)
}

/// An evaluation loader: `split` in order, in batches of [`EVAL_BATCH`].
pub fn eval_loader<B: burn::tensor::backend::Backend>(
    split: &MnistSplit,
) -> Arc<dyn DataLoader<B, MnistBatch<B>>> {
    DataLoaderBuilder::new(MnistBatcher)
        .batch_size(EVAL_BATCH)
        .build(split.clone())
}

/// One Learner run.
pub struct FitSettings {
    /// The Learner's folder: metric logs, and checkpoints when `checkpoints` is set.
    pub dir: PathBuf,
    /// Adam's learning rate (constant).
    pub lr: f64,
    /// Epochs over the training loader.
    pub epochs: usize,
    /// Whether the Learner writes a checkpoint (model and optimizer records) every epoch.
    pub checkpoints: bool,
    /// `Some(λ)`: AdamW with decoupled weight decay λ; `None`: Adam.
    pub weight_decay: Option<f32>,
}

/// Trains `model` with burn-train's Learner: Adam or AdamW (PyTorch's defaults, the fused
/// update), loss and accuracy on both splits, Burn's progress display and summary. Only
/// parameters that require a gradient are updated. Returns the trained model on the inference
/// backend.
pub fn fit<M, TI, VI>(
    model: M,
    train: Arc<dyn DataLoader<Train, TI>>,
    valid: Arc<dyn DataLoader<Inference, VI>>,
    settings: &FitSettings,
) -> Result<M::InnerModule, Box<dyn std::error::Error>>
where
    M: TrainStep<Input = TI, Output = ClassificationOutput<Train>>
        + AutodiffModule<Train>
        + Display
        + 'static,
    M::InnerModule: InferenceStep<Input = VI, Output = ClassificationOutput<Inference>>,
    TI: Send + 'static,
    VI: Send + 'static,
{
    // Its records are copies, so that the Learner's checkpointer thread never shares a tensor
    // with training (needed on Burn's fused GPU backends: tracel-ai/burn#4347).
    let optim = CheckpointSafe::new(optimizer(settings).init::<Train, M>()?, backend::device());
    let mut training = SupervisedTraining::new(&settings.dir, train, valid)
        .metrics((LossMetric::new(), AccuracyMetric::new()))
        .num_epochs(settings.epochs)
        .with_application_logger(None)
        .summary();
    if settings.checkpoints {
        training =
            training.with_file_checkpointer(NamedMpkFileRecorder::<FullPrecisionSettings>::new());
    }
    let result = training.launch(Learner::new(model, optim, settings.lr));
    Ok(result.model)
}

/// Adam, or AdamW when `settings` has a weight decay (PyTorch's defaults, the fused update).
pub fn optimizer(settings: &FitSettings) -> FusedAdamConfig {
    match settings.weight_decay {
        Some(weight_decay) => FusedAdamConfig::adamw(weight_decay),
        None => FusedAdamConfig::new(),
    }
}
