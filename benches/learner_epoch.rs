//! burn-train's `Learner` against a hand-written training loop: one pretraining epoch of the
//! notebook MLP on MNIST (batch 10, Adam 1e-3), both fed by the same Burn data loader.
//!
//! `cargo bench --bench learner_epoch` needs `MNIST_DIR` (it says so and exits otherwise). An
//! epoch takes about a minute here, too long for criterion's samples: the two run alternately
//! (`LEARNER_EPOCH_ROUNDS` rounds, default 3, which one goes first alternating), each round
//! printing both times, then the medians and their ratio. `LEARNER_EPOCH_IMAGES` trains on the
//! first N training images instead of all 60,000; `LEARNER_EPOCH_ONLY=hand` or `=learner` runs
//! one of the two (for a profiler).

#[path = "../examples/common/classifier.rs"]
mod classifier;
#[path = "../examples/common/learner.rs"]
mod learner;

use std::time::Instant;

use burn::data::dataset::transform::PartialDataset;
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::train::TrainStep;
use burn_fused_adam::FusedAdamConfig;
use burn_lora::{LoraMlp, LoraMlpConfig};
use burn_lora_support::backend::{self, Inference, Train};
use burn_lora_support::mnist::{Mnist, MnistLoader};
use classifier::MnistClassifier;
use learner::{eval_loader, fit, train_loader, FitSettings};

const BATCH: usize = 10;
const LR: f64 = 1e-3;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fresh_model() -> MnistClassifier<Train> {
    let device = backend::device();
    Train::seed(&device, 0);
    let mlp: LoraMlp<Train> = LoraMlpConfig::notebook()
        .init(&device)
        .expect("the notebook MLP");
    MnistClassifier::new(mlp)
}

/// The epoch as a loop written by hand: forward, backward, fused Adam step.
fn hand_loop(mnist: &Mnist, images: usize) -> f64 {
    let mut model = fresh_model();
    let mut optim = FusedAdamConfig::new()
        .init::<Train, MnistClassifier<Train>>()
        .expect("Adam");
    let loader = train_loader(
        PartialDataset::new(mnist.train.clone(), 0, images),
        BATCH,
        0,
    );
    let start = Instant::now();
    for batch in loader.iter() {
        let output = TrainStep::step(&model, batch);
        let grads: GradientsParams = output.grads;
        model = optim.step(LR, model, grads);
    }
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(model.valid());
    seconds
}

/// The same epoch through the Learner, as the examples run it (metrics, progress, summary,
/// the validation pass over the test split).
fn with_learner(mnist: &Mnist, images: usize) -> f64 {
    let model = fresh_model();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let settings = FitSettings {
        dir: dir.path().to_path_buf(),
        lr: LR,
        epochs: 1,
        checkpoints: false,
        weight_decay: None,
    };
    let train = train_loader(
        PartialDataset::new(mnist.train.clone(), 0, images),
        BATCH,
        0,
    );
    let valid = eval_loader::<Inference>(&mnist.test);
    let start = Instant::now();
    let trained = fit(model, train, valid, &settings).expect("the Learner's epoch");
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(trained);
    seconds
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    if std::env::var_os(burn_lora_support::mnist::ENV_VAR).is_none() {
        println!("learner_epoch: skipped, set MNIST_DIR to the folder with the MNIST files");
        return;
    }
    let mnist = MnistLoader::new().download(false).load().expect("MNIST");
    let images = env_usize("LEARNER_EPOCH_IMAGES", mnist.train.len()).min(mnist.train.len());
    let rounds = env_usize("LEARNER_EPOCH_ROUNDS", 3).max(1);
    println!(
        "learner_epoch ({}): {images} images, batch {BATCH}, {rounds} rounds",
        backend::NAME
    );
    match std::env::var("LEARNER_EPOCH_ONLY").as_deref() {
        Ok("hand") => return println!("hand loop {:.2} s", hand_loop(&mnist, images)),
        Ok("learner") => return println!("Learner {:.2} s", with_learner(&mnist, images)),
        _ => {}
    }
    let (mut hand, mut learner) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            hand.push(hand_loop(&mnist, images));
            learner.push(with_learner(&mnist, images));
        } else {
            learner.push(with_learner(&mnist, images));
            hand.push(hand_loop(&mnist, images));
        }
        eprintln!(
            "round {round}: hand loop {:.2} s, Learner {:.2} s",
            hand[round], learner[round]
        );
    }
    let (hand, learner) = (median(hand), median(learner));
    println!(
        "median epoch: hand loop {hand:.2} s, Learner {learner:.2} s, ratio {:.3}",
        learner / hand
    );
}
