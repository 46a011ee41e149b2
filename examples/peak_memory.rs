//! Peak resident memory of training a 4-layer 4096-wide MLP for a few steps, with LoRA (rank 8)
//! against full fine-tuning, each in its own process (`getrusage` max RSS).
//!
//! `cargo run --release --example peak_memory` runs both and prints the ratio;
//! `-- --mode lora` or `-- --mode full` runs one and prints its peak in KiB.

mod common;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{Distribution, Int, Tensor};
use burn_fused_adam::FusedAdamConfig;
use burn_lora::{LoraConfig, LoraMlp, LoraMlpConfig, LoraModel};
use burn_lora::{Targets, DEFAULT_ADAPTER};
use burn_lora_support::backend::{self, Train};
use clap::{Parser, ValueEnum};
use common::peak_rss::{max_rss_kib, run_mode};

const WIDTH: usize = 4096;
const BATCH: usize = 32;
const STEPS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Mode {
    Lora,
    Full,
}

/// Measure peak memory of LoRA against full fine-tuning.
#[derive(Parser, Debug)]
struct Args {
    /// Run one mode in this process; without it, run both as child processes.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Args::parse().mode {
        Some(mode) => {
            train(mode)?;
            println!("{}", max_rss_kib());
        }
        None => {
            let lora = child("lora")?;
            let full = child("full")?;
            println!(
                "Peak RSS training a 4x{WIDTH} MLP ({}, batch {BATCH}, {STEPS} Adam steps):",
                backend::NAME
            );
            println!("  LoRA rank 8 : {:>9.1} MiB", lora as f64 / 1024.0);
            println!("  full        : {:>9.1} MiB", full as f64 / 1024.0);
            println!("  ratio       : {:>9.3}", lora as f64 / full as f64);
        }
    }
    Ok(())
}

/// Runs this program with `--mode <mode>` and reads the peak it prints.
fn child(mode: &str) -> Result<u64, Box<dyn std::error::Error>> {
    Ok(run_mode(mode)?.trim().parse()?)
}

fn train(mode: Mode) -> Result<(), Box<dyn std::error::Error>> {
    let device = backend::device();
    let mut model: LoraMlp<Train> =
        LoraMlpConfig::new(WIDTH, vec![WIDTH, WIDTH, WIDTH], WIDTH).init(&device)?;
    if mode == Mode::Lora {
        model.attach(DEFAULT_ADAPTER, &LoraConfig::new(8, 8.0), &Targets::all())?;
    }
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = FusedAdamConfig::new()
        .init::<Train, LoraMlp<Train>>()
        .expect("default Adam settings are valid");
    let x = Tensor::<Train, 2>::random([BATCH, WIDTH], Distribution::Normal(0.0, 1.0), &device);
    let labels: Vec<i64> = (0..BATCH as i64).collect();
    let y = Tensor::<Train, 1, Int>::from_ints(labels.as_slice(), &device);
    for _ in 0..STEPS {
        let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    Ok(())
}
