//! The notebook, end to end: pretrain an over-sized MLP on MNIST, adapt it to one digit with
//! rank-1 LoRA while the base stays frozen, and toggle the adapter on and off.
//!
//! Both trainings run through burn-train's `Learner` (Burn's metrics, progress display and
//! summary) on burn-dataset datasets batched by Burn's `DataLoaderBuilder`. The fine-tuning
//! Learner checkpoints the adapter only ([`TrainableOnly`]).
//!
//! `cargo run --release --example mnist_lora -- --help` lists the options; the defaults are the
//! notebook's. Data comes from `--data-dir`, `MNIST_DIR`, burn-dataset's cache, or a download.

mod common;

use std::path::{Path, PathBuf};

use burn::data::dataset::transform::{PartialDataset, ShuffledDataset};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::TensorData;
use burn_lora::{save_adapter, LoraConfig, LoraInit, LoraMlp, LoraMlpConfig, LoraModel, PathMap};
use burn_lora::{Targets, DEFAULT_ADAPTER};
use burn_lora_support::backend::{self, Inference, Train};
use burn_lora_train::TrainableOnly;
use clap::Parser;
use common::classifier::MnistClassifier;
use common::eval::{evaluate, table};
use common::learner::{eval_loader, fit, train_loader, FitSettings};
use common::timing::Phases;

/// Pretrain on MNIST, then fine-tune a LoRA adapter on one digit.
#[derive(Parser, Debug)]
struct Args {
    /// Folder with the four MNIST IDX files (gzipped or not); default: MNIST_DIR, then the cache.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Pretraining epochs.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Pretrain on the first N training images only (default: all 60,000, as the notebook). A
    /// shorter run for slow backends; the fine-tuning and the tests are unchanged.
    #[arg(long)]
    pretrain_images: Option<usize>,
    /// Batch size (pretraining and fine-tuning).
    #[arg(long, default_value_t = 10)]
    batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// LoRA rank.
    #[arg(long, default_value_t = 1)]
    rank: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
    /// Fine-tuning steps.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// The digit to adapt to.
    #[arg(long, default_value_t = 9)]
    digit: u8,
    /// Random seed (initialisation and batch order).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the pretrained model, the adapter and the chart.
    #[arg(long, default_value = "target/mnist_lora")]
    out_dir: PathBuf,
}

fn main() {
    common::exit_on_error(|| run(Args::parse()));
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut phases = Phases::default();
    let device = backend::device();
    Train::seed(&device, args.seed);
    println!("Backend: {}", backend::NAME);

    // 1. Data.
    let mnist = phases.time("load MNIST", || common::load_mnist(args.data_dir.clone()))?;

    // 2. Pretrain the plain MLP 784-1000-2000-10 with the Learner.
    let pretrain_images = match args.pretrain_images {
        None => mnist.train.len(),
        Some(n) if (1..=mnist.train.len()).contains(&n) => n,
        Some(n) => {
            return Err(format!(
                "--pretrain-images {n}: give 1 to {} (the training images)",
                mnist.train.len()
            )
            .into())
        }
    };
    let mlp: LoraMlp<Train> = LoraMlpConfig::notebook().init(&device)?;
    let pretrain = FitSettings {
        dir: args.out_dir.join("pretrain"),
        lr: args.lr,
        epochs: args.epochs,
        checkpoints: false,
        weight_decay: None,
    };
    let pretrained_model = phases.time("pretrain", || {
        fit(
            MnistClassifier::new(mlp),
            train_loader(
                PartialDataset::new(mnist.train.clone(), 0, pretrain_images),
                args.batch_size,
                args.seed,
            ),
            eval_loader::<Inference>(&mnist.test),
            &pretrain,
        )
    })?;
    let pretrained = phases.time("test pretrained", || {
        evaluate(&pretrained_model.mlp, &mnist.test)
    });
    println!("\n{}\n", table(&[("pretrained", &pretrained)]));
    let base_before = base_tensors(&pretrained_model.mlp);

    // 3. Attach rank-1 LoRA to all three layers: A ~ N(0, 1), B = 0; the base is frozen.
    let mut model = MnistClassifier::<Train>::from_inner(pretrained_model.clone());
    let lora = LoraConfig::new(args.rank, args.alpha).with_init(LoraInit::Gaussian { std: 1.0 });
    phases.time("attach LoRA", || {
        model.attach(DEFAULT_ADAPTER, &lora, &Targets::all())
    })?;
    model.freeze_base();
    println!("{}\n", model.parameter_report()?);

    // 4. Fine-tune only the adapters on one digit: `steps` batches of a seeded shuffle of its
    //    images, through the Learner, which checkpoints the adapter alone.
    let digit_split = mnist.train.only_digit(args.digit);
    let images = args.steps * args.batch_size;
    if images > digit_split.len() {
        return Err(format!(
            "--steps {} needs {images} images of digit {} but there are {} (one epoch)",
            args.steps,
            args.digit,
            digit_split.len()
        )
        .into());
    }
    println!(
        "{} training images of digit {}; fine-tuning on {images} of them",
        digit_split.len(),
        args.digit
    );
    let subset = PartialDataset::new(ShuffledDataset::new(digit_split, args.seed), 0, images);
    let fine_tune = FitSettings {
        dir: args.out_dir.join("fine_tune"),
        lr: args.lr,
        epochs: 1,
        checkpoints: true,
        weight_decay: None,
    };
    let model = phases.time("fine-tune adapters", || {
        fit(
            TrainableOnly::new(model),
            train_loader(subset, args.batch_size, args.seed),
            eval_loader::<Inference>(&mnist.test),
            &fine_tune,
        )
    })?;
    let mut model = model.into_inner();
    report_checkpoint(&fine_tune.dir.join("checkpoint"))?;

    // 5. The base is bit-for-bit what it was; then test with the adapter on and off.
    let unchanged = phases.time("verify base", || base_tensors(&model.mlp) == base_before);
    println!(
        "Base weights and biases bit-identical to the pretrained ones ({} tensors): {}",
        base_before.len(),
        if unchanged { "yes" } else { "NO" }
    );
    let with_lora = phases.time("test with LoRA", || evaluate(&model.mlp, &mnist.test));
    model.set_enabled(false);
    let without_lora = phases.time("test without LoRA", || evaluate(&model.mlp, &mnist.test));
    model.set_enabled(true);
    println!(
        "\n{}\n",
        table(&[
            ("pretrained", &pretrained),
            ("LoRA on", &with_lora),
            ("LoRA off", &without_lora)
        ])
    );
    let digit = args.digit as usize;
    println!(
        "Digit {digit}: {} wrong pretrained, {} with the adapter, {} with it disabled",
        pretrained.wrong[digit], with_lora.wrong[digit], without_lora.wrong[digit]
    );

    // 6. Write the pretrained base, the adapter alone (PEFT format) and the chart.
    phases.time(
        "save outputs",
        || -> Result<(), Box<dyn std::error::Error>> {
            std::fs::create_dir_all(&args.out_dir)?;
            let base_path = args.out_dir.join("pretrained.safetensors");
            common::store::save_model(&pretrained_model.mlp, &base_path)?;
            let adapter_dir = args.out_dir.join("adapter");
            save_adapter(
                &model.mlp,
                burn_lora::DEFAULT_ADAPTER,
                &adapter_dir,
                &PathMap::identity(),
            )?;
            let chart = args.out_dir.join("wrong_counts.svg");
            common::chart::wrong_counts_chart(
                &chart,
                &format!(
                    "MNIST test errors per digit (LoRA rank {} on digit {digit})",
                    args.rank
                ),
                &[
                    ("pretrained", pretrained.wrong),
                    ("LoRA on", with_lora.wrong),
                    ("LoRA off", without_lora.wrong),
                ],
            )?;
            println!(
                "Wrote {}, {} and {}",
                base_path.display(),
                adapter_dir.display(),
                chart.display()
            );
            Ok(())
        },
    )?;
    println!("\n{}", phases.report());

    if !unchanged {
        return Err("the frozen base changed during fine-tuning".into());
    }
    if with_lora.wrong[digit] >= pretrained.wrong[digit] {
        return Err(format!(
            "the adapter did not reduce digit {digit}'s errors ({} pretrained, {} with it)",
            pretrained.wrong[digit], with_lora.wrong[digit]
        )
        .into());
    }
    if without_lora != pretrained {
        return Err("with the adapter disabled the results differ from the pretrained ones".into());
    }
    Ok(())
}

/// The Learner's checkpoint files and their sizes: the adapter and its optimizer state only.
fn report_checkpoint(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)?
        .map(|entry| {
            let entry = entry?;
            Ok((
                entry.file_name().to_string_lossy().into_owned(),
                entry.metadata()?.len(),
            ))
        })
        .collect::<std::io::Result<_>>()?;
    files.sort();
    let listed: Vec<String> = files
        .iter()
        .map(|(name, bytes)| format!("{name} ({bytes} bytes)"))
        .collect();
    println!(
        "Learner checkpoint in {}: {}",
        dir.display(),
        listed.join(", ")
    );
    Ok(())
}

/// Every base weight and bias, as raw data (compared bit for bit).
fn base_tensors<B: Backend>(model: &LoraMlp<B>) -> Vec<TensorData> {
    model
        .layers()
        .iter()
        .flat_map(|layer| {
            let mut tensors = vec![layer.weight().into_data()];
            tensors.extend(layer.bias().map(|b| b.into_data()));
            tensors
        })
        .collect()
}
