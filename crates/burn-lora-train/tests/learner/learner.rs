//! LoRA training through burn-train's `Learner`: only the adapters and the head marked
//! trainable change, the checkpoints hold only them, a run resumed from a checkpoint ends
//! bit-identical to an uninterrupted one, and the multi-device strategy trains the same way.

use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{
    ClassificationOutput, ExecutionStrategy, InferenceStep, Learner, MultiDeviceOptim,
    SupervisedTraining, TrainOutput, TrainStep,
};
use burn_fused_adam::FusedAdamConfig;
use burn_lora::{LoraConfig, LoraLinear, LoraModel, Targets};
use burn_lora_support::backend::{self, Inference, Train};
use burn_lora_train::{
    CheckpointSafe, EpochDataLoaderBuilder, TrainError, TrainableOnly, TrainableRecord,
};
use tempfile::TempDir;

const FEATURES: usize = 8;
const CLASSES: usize = 3;
const ITEMS: usize = 48;
const BATCH: usize = 8;

/// A small model a user might write: a LoRA-ready hidden layer and a plain head.
#[derive(Module, Debug, LoraModel)]
struct Net<B: Backend> {
    hidden: LoraLinear<B>,
    activation: Relu,
    head: Linear<B>,
}

impl<B: Backend> Net<B> {
    fn init(device: &B::Device) -> Self {
        Self {
            hidden: LoraLinear::from_linear(LinearConfig::new(FEATURES, 16).init(device)),
            activation: Relu::new(),
            head: LinearConfig::new(16, CLASSES).init(device),
        }
    }

    fn classify(&self, batch: Batch<B>) -> ClassificationOutput<B> {
        let logits = self
            .head
            .forward(self.activation.forward(self.hidden.forward(batch.x)));
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.y.clone());
        ClassificationOutput::new(loss, logits, batch.y)
    }
}

impl<B: AutodiffBackend> TrainStep for Net<B> {
    type Input = Batch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: Batch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let output = self.classify(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl<B: Backend> InferenceStep for Net<B> {
    type Input = Batch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: Batch<B>) -> ClassificationOutput<B> {
        self.classify(batch)
    }
}

#[derive(Clone, Debug)]
struct Item {
    x: [f32; FEATURES],
    y: i64,
}

#[derive(Clone, Debug)]
struct Batch<B: Backend> {
    x: Tensor<B, 2>,
    y: Tensor<B, 1, Int>,
}

#[derive(Clone)]
struct ItemBatcher;

impl<B: Backend> Batcher<B, Item, Batch<B>> for ItemBatcher {
    fn batch(&self, items: Vec<Item>, device: &B::Device) -> Batch<B> {
        let n = items.len();
        let x: Vec<f32> = items.iter().flat_map(|item| item.x).collect();
        let y: Vec<i64> = items.iter().map(|item| item.y).collect();
        Batch {
            x: Tensor::from_data(TensorData::new(x, [n, FEATURES]), device),
            y: Tensor::from_data(TensorData::new(y, [n]), device),
        }
    }
}

/// A deterministic toy task: the class is which third of the range the feature sum falls in.
fn items() -> Vec<Item> {
    (0..ITEMS)
        .map(|i| {
            let x: [f32; FEATURES] =
                std::array::from_fn(|j| (((i * 7 + j * 13) % 17) as f32 - 8.0) / 8.0);
            let sum: f32 = x.iter().sum();
            let y = if sum < -0.5 {
                0
            } else if sum < 0.5 {
                1
            } else {
                2
            };
            Item { x, y }
        })
        .collect()
}

fn train_loader(epochs_done: usize) -> Arc<dyn DataLoader<Train, Batch<Train>>> {
    EpochDataLoaderBuilder::new(ItemBatcher)
        .batch_size(BATCH)
        .shuffle(11)
        .resume_after(epochs_done)
        .build(InMemDataset::new(items()))
        .unwrap()
}

fn valid_loader() -> Arc<dyn DataLoader<Inference, Batch<Inference>>> {
    DataLoaderBuilder::new(ItemBatcher)
        .batch_size(ITEMS)
        .build(InMemDataset::new(items()))
}

/// The same pretrained base every time (seeded), a fresh rank-4 adapter on `hidden` (its
/// initial values depend on the seed) and the head trainable.
fn lora_net(adapter_seed: u64) -> TrainableOnly<Net<Train>> {
    lora_net_with(adapter_seed, &[("default", LoraConfig::new(4, 8.0))])
}

/// [`lora_net`] with these adapters on `hidden`, attached in this order (the last active).
fn lora_net_with(adapter_seed: u64, adapters: &[(&str, LoraConfig)]) -> TrainableOnly<Net<Train>> {
    // The backend's generator is global: tests running in parallel must not reseed it while
    // this one draws.
    static RNG: Mutex<()> = Mutex::new(());
    let _draw = RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let device = backend::device();
    Train::seed(&device, 3);
    let mut net = Net::<Train>::init(&device);
    // Burn initialises parameters lazily, on first use: draw the base now, from seed 3.
    let _ = (net.hidden.weight(), net.hidden.bias());
    let _ = (
        net.head.weight.val(),
        net.head.bias.as_ref().map(|b| b.val()),
    );
    Train::seed(&device, adapter_seed);
    for (name, config) in adapters {
        net.attach(name, config, &Targets::names(["hidden"]))
            .unwrap();
    }
    net.freeze_base();
    net.mark_trainable(&["head"]).unwrap();
    TrainableOnly::new(net)
}

type Trained = TrainableOnly<Net<Inference>>;

/// Adam, wrapped so that the copy of its record keeps Burn's fused GPU backends' checkpointer
/// thread off the tensors that training goes on using (tracel-ai/burn#4347).
fn adam() -> impl Optimizer<TrainableOnly<Net<Train>>, Train> {
    CheckpointSafe::new(
        FusedAdamConfig::new()
            .init::<Train, TrainableOnly<Net<Train>>>()
            .unwrap(),
        backend::device(),
    )
}

/// Trains with the Learner, checkpointing every epoch into `dir`; `resume` continues from the
/// checkpoint of that epoch.
fn fit(
    model: TrainableOnly<Net<Train>>,
    dir: &Path,
    epochs: usize,
    resume: Option<usize>,
) -> Trained {
    let optim = adam();
    let mut training =
        SupervisedTraining::new(dir, train_loader(resume.unwrap_or(0)), valid_loader())
            .metrics((LossMetric::new(), AccuracyMetric::new()))
            .num_epochs(epochs)
            .with_application_logger(None)
            .with_file_checkpointer(NamedMpkFileRecorder::<FullPrecisionSettings>::new());
    if let Some(epoch) = resume {
        training = training.checkpoint(epoch);
    }
    training.launch(Learner::new(model, optim, 1e-2)).model
}

/// Every trainable parameter's values, by path.
fn values<B: Backend, M: LoraModel<B>>(model: &TrainableOnly<M>) -> Vec<(String, Vec<f32>)> {
    model
        .trainable_record::<B>()
        .params
        .into_iter()
        .map(|p| (p.path, p.value.val().into_data().to_vec().unwrap()))
        .collect()
}

fn all_values<B: Backend>(net: &Net<B>) -> Vec<Vec<f32>> {
    let mut out = vec![
        net.hidden.weight().into_data().to_vec().unwrap(),
        net.head.weight.val().into_data().to_vec().unwrap(),
    ];
    for adapter in net.hidden.adapters() {
        out.push(adapter.lora_a().into_data().to_vec().unwrap());
        out.push(adapter.lora_b().into_data().to_vec().unwrap());
    }
    out
}

use burn_lora::LoraLayer;

#[test]
fn only_the_adapter_and_the_marked_head_train_and_are_checkpointed() {
    let dir = TempDir::new().unwrap();
    let model = lora_net(5);
    let base_before = model.inner().hidden.weight().into_data();
    let trained = fit(model.clone(), dir.path(), 1, None);
    let net = trained.inner();
    assert_eq!(
        net.hidden.weight().into_data(),
        base_before,
        "the frozen base changed"
    );
    let before = all_values(&model.inner().valid());
    let after = all_values(net);
    assert_ne!(before[1], after[1], "the head did not train");
    assert_ne!(before[3], after[3], "the adapter's B did not train");

    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let record: TrainableRecord<Inference> = recorder
        .load(
            dir.path().join("checkpoint").join("model-1"),
            &Default::default(),
        )
        .unwrap();
    let mut paths: Vec<String> = record.params.iter().map(|p| p.path.clone()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "head.bias",
            "head.weight",
            "hidden.adapters.0.lora_a",
            "hidden.adapters.0.lora_b"
        ]
    );
}

#[test]
fn a_run_resumed_from_a_checkpoint_ends_bit_identical_to_an_uninterrupted_one() {
    let straight = TempDir::new().unwrap();
    let uninterrupted = fit(lora_net(5), straight.path(), 3, None);

    let interrupted = TempDir::new().unwrap();
    fit(lora_net(5), interrupted.path(), 1, None);
    // A new process would rebuild the model: same base, a fresh adapter (another random
    // initialisation, which the checkpoint replaces).
    let resumed = fit(lora_net(99), interrupted.path(), 3, Some(1));

    let (a, b) = (values(&uninterrupted), values(&resumed));
    assert_eq!(a.len(), 4);
    for ((path, x), (_, y)) in a.iter().zip(&b) {
        let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{path} differs after resuming");
    }
    // And the base is still the pretrained one.
    assert_eq!(
        uninterrupted.inner().hidden.weight().into_data(),
        resumed.inner().hidden.weight().into_data()
    );
}

#[test]
fn a_record_that_does_not_fit_is_an_error_and_changes_nothing() {
    let model = lora_net(5);
    let record = model.trainable_record::<Train>();
    let mut other = lora_net(6);
    let before = values(&other);

    // Missing entry.
    let mut short = record.params.clone();
    short.pop();
    let error = other
        .load_trainable(TrainableRecord {
            params: short,
            adapters: record.adapters.clone(),
        })
        .unwrap_err();
    assert!(
        matches!(error, TrainError::RecordMismatch(ref m) if m.contains("not in the record")),
        "{error}"
    );

    // An entry the model does not train (the frozen base weight).
    let mut extra = record.params.clone();
    let mut base = extra[0].clone();
    base.path = "hidden.weight".into();
    extra.push(base);
    let error = other
        .load_trainable(TrainableRecord {
            params: extra,
            adapters: record.adapters.clone(),
        })
        .unwrap_err();
    assert!(error.to_string().contains("hidden.weight"), "{error}");

    // A shape that does not fit.
    let mut wrong = record.params.clone();
    wrong[0].shape = vec![1, wrong[0].shape.iter().product()];
    let error = other
        .load_trainable(TrainableRecord {
            params: wrong,
            adapters: record.adapters.clone(),
        })
        .unwrap_err();
    assert!(error.to_string().contains("shape"), "{error}");

    assert_eq!(values(&other), before, "a failed load changed the model");
    other.load_trainable(record).unwrap();
    assert_eq!(values(&other), values(&model));
}

#[test]
fn a_record_of_other_adapters_is_an_error_and_changes_nothing() {
    let (a, b) = (LoraConfig::new(4, 8.0), LoraConfig::new(4, 2.0));
    let source = lora_net_with(5, &[("a", a.clone()), ("b", b.clone())]);
    let record = source.trainable_record::<Train>();
    assert_eq!(record.adapters.len(), 1);
    assert_eq!(record.adapters[0].layer, "hidden");

    // The same parameters by position, but the adapters attached in the other order, under
    // other names, or with another alpha: loaded by position, each would run with the wrong
    // scale or name.
    let others = [
        vec![("b", b.clone()), ("a", a.clone())],
        vec![("a", a.clone()), ("c", b.clone())],
        vec![("a", a.clone()), ("b", LoraConfig::new(4, 3.0))],
        vec![("a", a.clone()), ("b", b.clone().with_use_rslora(true))],
    ];
    for adapters in others {
        let mut other = lora_net_with(6, &adapters);
        let before = values(&other);
        let error = other.load_trainable(record.clone()).unwrap_err();
        assert!(
            matches!(&error, TrainError::RecordMismatch(m) if m.contains("hidden: the record's adapters")),
            "{adapters:?}: {error}"
        );
        assert_eq!(values(&other), before, "a failed load changed the model");
    }

    // Another active adapter is another model too.
    let mut net = lora_net_with(6, &[("a", a.clone()), ("b", b.clone())]).into_inner();
    let active = net.lora_layers()[0].active_adapters().join(",");
    let inactive = if active == "a" { "b" } else { "a" };
    net.set_active_adapter(inactive).unwrap();
    let mut other = TrainableOnly::new(net);
    let error = other.load_trainable(record.clone()).unwrap_err();
    assert!(error.to_string().contains("active"), "{error}");

    let mut same = lora_net_with(6, &[("a", a), ("b", b)]);
    same.load_trainable(record).unwrap();
    assert_eq!(values(&same), values(&source));
}

#[test]
fn the_multi_device_strategy_trains_the_adapter_only() {
    let dir = TempDir::new().unwrap();
    let device = backend::device();
    let model = lora_net(5);
    let base_before = model.inner().hidden.weight().into_data();
    let before = values(&model);
    let optim = adam();
    let trained = SupervisedTraining::new(dir.path(), train_loader(0), valid_loader())
        .metrics((LossMetric::new(), AccuracyMetric::new()))
        .num_epochs(1)
        .with_application_logger(None)
        .with_training_strategy(
            ExecutionStrategy::multi(vec![device; 2], MultiDeviceOptim::OptimMainDevice).into(),
        )
        .launch(Learner::new(model, optim, 1e-2))
        .model;
    assert_eq!(trained.inner().hidden.weight().into_data(), base_before);
    let after = values(&trained);
    assert_eq!(after.len(), before.len());
    assert!(
        after.iter().zip(&before).all(|((_, a), (_, b))| a != b),
        "every trainable parameter moves"
    );
}
