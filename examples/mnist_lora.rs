//! The notebook, end to end: pretrain an over-sized MLP on MNIST, adapt it to one digit with
//! rank-1 LoRA while the base stays frozen, and toggle the adapter on and off.
//!
//! `cargo run --release --example mnist_lora -- --help` lists the options; the defaults are the
//! notebook's. Data comes from `--data-dir`, `MNIST_DIR`, burn-dataset's cache, or a download.

mod common;

use std::path::PathBuf;

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::TensorData;
use burn_lora::{save_adapter, LoraConfig, LoraInit, LoraMlp, LoraMlpConfig, LoraModel, PathMap};
use burn_lora::{Targets, DEFAULT_ADAPTER};
use burn_lora_support::backend::{self, Train};
use clap::Parser;
use common::eval::{evaluate, table};
use common::timing::Phases;
use common::train::{train, TrainSettings};

/// Pretrain on MNIST, then fine-tune a LoRA adapter on one digit.
#[derive(Parser, Debug)]
struct Args {
    /// Folder with the four MNIST IDX files (gzipped or not); default: MNIST_DIR, then the cache.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Pretraining epochs.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
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

    // 2. Pretrain the plain MLP 784-1000-2000-10.
    let model: LoraMlp<Train> = LoraMlpConfig::notebook().init(&device)?;
    let settings = TrainSettings {
        label: "pretrain",
        lr: args.lr,
        batch_size: args.batch_size,
        epochs: args.epochs,
        max_steps: None,
        seed: args.seed,
    };
    let (mut model, loss) = phases.time("pretrain", || train(model, &mnist.train, &settings))?;
    println!("Pretraining done, running loss {loss:.4}");

    let pretrained = phases.time("test pretrained", || evaluate(&model.valid(), &mnist.test))?;
    println!("\n{}\n", table(&[("pretrained", &pretrained)]));
    let base_before = base_tensors(&model);
    let pretrained_model = model.valid();

    // 3. Attach rank-1 LoRA to all three layers: A ~ N(0, 1), B = 0; the base is frozen.
    let lora = LoraConfig::new(args.rank, args.alpha).with_init(LoraInit::Gaussian { std: 1.0 });
    phases.time("attach LoRA", || {
        model.attach(DEFAULT_ADAPTER, &lora, &Targets::all())
    })?;
    println!("{}\n", model.parameter_report());

    // 4. Fine-tune only the adapters on one digit.
    let digit_split = mnist.train.only_digit(args.digit);
    println!(
        "{} training images of digit {}",
        digit_split.len(),
        args.digit
    );
    let settings = TrainSettings {
        label: "fine-tune",
        max_steps: Some(args.steps),
        epochs: args
            .steps
            .div_ceil(digit_split.len().div_ceil(args.batch_size))
            .max(1),
        ..settings
    };
    let (mut model, loss) = phases.time("fine-tune adapters", || {
        train(model, &digit_split, &settings)
    })?;
    println!("Fine-tuning done, running loss {loss:.4}");

    // 5. The base is bit-for-bit what it was; then test with the adapter on and off.
    let unchanged = phases.time("verify base", || base_tensors(&model) == base_before);
    println!(
        "Base weights and biases bit-identical to the pretrained ones ({} tensors): {}",
        base_before.len(),
        if unchanged { "yes" } else { "NO" }
    );
    let with_lora = phases.time("test with LoRA", || evaluate(&model.valid(), &mnist.test))?;
    model.set_enabled(false);
    let without_lora = phases.time("test without LoRA", || {
        evaluate(&model.valid(), &mnist.test)
    })?;
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
            common::store::save_model(&pretrained_model, &base_path)?;
            let adapter_dir = args.out_dir.join("adapter");
            save_adapter(
                &model,
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
    if without_lora != pretrained {
        return Err("with the adapter disabled the results differ from the pretrained ones".into());
    }
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
