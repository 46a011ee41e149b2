//! Adapters as artifacts: train two LoRA adapters on one frozen MNIST base (digit 9 and another
//! digit), save each as a PEFT-format folder, then load the base once plus both adapters and
//! switch between them in memory — base, each adapter, and their exact combination.
//!
//! `cargo run --release --example adapter_switch -- --help`. The base is the notebook example's
//! `pretrained.safetensors` when it exists (`--base`), otherwise it is pretrained here first.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::data::dataset::transform::{PartialDataset, ShuffledDataset};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn_lora::Targets;
use burn_lora::{
    load_adapter, save_adapter, LoraConfig, LoraInit, LoraMlp, LoraMlpConfig, LoraModel, PathMap,
};
use burn_lora_support::backend::{self, Inference, Train};
use burn_lora_support::mnist::Mnist;
use burn_lora_train::TrainableOnly;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use clap::Parser;
use common::classifier::MnistClassifier;
use common::eval::{evaluate, table};
use common::learner::{eval_loader, fit, train_loader, FitSettings};

/// Train two adapters on one base, then switch between them without reloading the base.
#[derive(Parser, Debug)]
struct Args {
    /// Folder with the four MNIST IDX files; default: MNIST_DIR, then the cache.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The pretrained base (Burn safetensors, as written by the mnist_lora example).
    #[arg(long, default_value = "target/mnist_lora/pretrained.safetensors")]
    base: PathBuf,
    /// The second adapter's digit (the first is always 9).
    #[arg(long, default_value_t = 4)]
    other_digit: u8,
    /// Fine-tuning steps per adapter (batch 10, Adam 1e-3), at most one epoch of the digit.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 1)]
    rank: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
    /// Weight of each adapter in the combination.
    #[arg(long, default_value_t = 1.0)]
    mix: f64,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the two adapter folders.
    #[arg(long, default_value = "target/adapter_switch")]
    out_dir: PathBuf,
}

/// The notebook's batch size, for pretraining and fine-tuning.
const BATCH: usize = 10;

fn main() {
    common::exit_on_error(|| run(Args::parse()));
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let device = backend::device();
    Train::seed(&device, args.seed);
    let mnist = common::load_mnist(args.data_dir.clone())?;
    let base = base_model(&args, &mnist)?;

    // 1. Two adapters, each trained on the frozen base and saved alone.
    let digits = [9, args.other_digit];
    let names: Vec<String> = digits.iter().map(|d| format!("digit{d}")).collect();
    for (digit, name) in digits.iter().zip(&names) {
        let mut model = MnistClassifier::new(base.clone());
        let config =
            LoraConfig::new(args.rank, args.alpha).with_init(LoraInit::Gaussian { std: 1.0 });
        model.attach(name, &config, &Targets::all())?;
        model.freeze_base();
        let split = mnist.train.only_digit(*digit);
        let seed = args.seed + u64::from(*digit);
        let images = (args.steps * BATCH).min(split.len());
        let subset = PartialDataset::new(ShuffledDataset::new(split, seed), 0, images);
        let settings = FitSettings {
            dir: args.out_dir.join("learner").join(name),
            lr: 1e-3,
            epochs: 1,
            checkpoints: true,
            weight_decay: None,
        };
        let model = fit(
            TrainableOnly::new(model),
            train_loader(subset, BATCH, seed),
            eval_loader::<Inference>(&mnist.test),
            &settings,
        )?
        .into_inner();
        let dir = args.out_dir.join(name);
        save_adapter(&model.mlp, name, &dir, &PathMap::identity())?;
        let bytes = std::fs::metadata(dir.join(burn_lora::ADAPTER_WEIGHTS_FILE))?.len();
        println!("Saved adapter {name} to {} ({bytes} bytes)", dir.display());
    }

    // 2. Load the base once, then both adapters beside it.
    let start = Instant::now();
    let mut model = load_base::<Inference>(&args.base)?;
    let base_load = start.elapsed();
    for name in &names {
        load_adapter(
            &mut model,
            name,
            &args.out_dir.join(name),
            &PathMap::identity(),
        )?;
    }
    println!(
        "Loaded the base once ({:.1} ms) and adapters {:?}",
        base_load.as_secs_f64() * 1e3,
        model.adapter_names()
    );
    let weights: Vec<(&str, f64)> = names.iter().map(|n| (n.as_str(), args.mix)).collect();
    model.combine_adapters("combined", &weights)?;

    // 3. Switch in memory and evaluate each variant.
    let mut reports = Vec::new();
    model.set_enabled(false);
    reports.push(("base".to_string(), evaluate(&model, &mnist.test)));
    model.set_enabled(true);
    for name in names.iter().map(String::as_str).chain(["combined"]) {
        let start = Instant::now();
        model.set_active_adapter(name)?;
        let switch = start.elapsed();
        println!("switch to {name:<9} {:>8.1} µs", switch.as_secs_f64() * 1e6);
        reports.push((name.to_string(), evaluate(&model, &mnist.test)));
    }
    let columns: Vec<(&str, &common::eval::EvalReport)> =
        reports.iter().map(|(n, r)| (n.as_str(), r)).collect();
    println!("\n{}", table(&columns));
    println!(
        "\nSwitching touches only adapter state; loading the base from disk took {:.1} ms.",
        base_load.as_secs_f64() * 1e3
    );
    Ok(())
}

/// The notebook's pretrained base: from `args.base` if it exists, otherwise pretrained here and
/// saved there. Returned on the training backend, without adapters.
fn base_model(args: &Args, mnist: &Mnist) -> Result<LoraMlp<Train>, Box<dyn std::error::Error>> {
    if args.base.exists() {
        println!("Base from {}", args.base.display());
        return load_base::<Train>(&args.base);
    }
    println!(
        "{} not found: pretraining the base first",
        args.base.display()
    );
    let mlp: LoraMlp<Train> = LoraMlpConfig::notebook().init(&backend::device())?;
    let settings = FitSettings {
        dir: args.out_dir.join("learner").join("pretrain"),
        lr: 1e-3,
        epochs: 1,
        checkpoints: false,
        weight_decay: None,
    };
    let model = fit(
        MnistClassifier::new(mlp),
        train_loader(mnist.train.clone(), BATCH, args.seed),
        eval_loader::<Inference>(&mnist.test),
        &settings,
    )?;
    common::store::save_model(&model.mlp, &args.base)?;
    Ok(LoraMlp::from_inner(model.mlp))
}

/// The notebook MLP with its weights read from a Burn safetensors file.
fn load_base<B: Backend>(path: &Path) -> Result<LoraMlp<B>, Box<dyn std::error::Error>> {
    let mut model: LoraMlp<B> = LoraMlpConfig::notebook().init(&Default::default())?;
    let result = model.load_from(&mut SafetensorsStore::from_file(path))?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        return Err(format!(
            "{}: does not fit the notebook MLP: {result:?}",
            path.display()
        )
        .into());
    }
    Ok(model)
}
