//! Peak resident memory of one LoRA training step (forward, loss and backward) on a random
//! 12-layer, 768-wide Llama (intermediate 3072, 12 heads, vocabulary 4096: 113 M weights in its
//! linear layers, 453 MB in f32), batch 1 × 128 tokens, an adapter of rank 8 on all seven
//! projections, with the frozen base in f32 or quantized by `LoraModel::quantize_base` (8 or 4
//! bits, a scale per 32 values: QLoRA), each mode in its own process.
//!
//! The model is built in f32 and then quantized; the peak is restarted after that (freed memory
//! returned with `malloc_trim`, the high-water mark reset through `/proc/self/clear_refs`, so
//! Linux only), and measures the step alone: the weights at rest, what the step allocates, and
//! the dequantized weights it holds at once (`quantized_lora_linear` dequantizes a layer's
//! weight for its product and again in the backward).
//!
//! `cargo run --release --example quantized_base_memory` runs the three modes and prints each
//! peak, the linear weights' bytes at rest and the ratios to f32; `-- --mode f32|q8|q4` runs one.

mod common;

use burn::tensor::quantization::{QuantLevel, QuantScheme, QuantValue};
use burn::tensor::{Int, Tensor, TensorData};
use burn_lora::nn::llama::{causal_lm_loss, CausalLmConfig, CausalLmInput, Family, PROJECTIONS};
use burn_lora::{LayerKind, LoraConfig, LoraModel, Targets};
use burn_lora_kernels::on_compute_threads;
use burn_lora_support::backend::{self, Train};
use clap::{Parser, ValueEnum};
use common::peak_rss::{peak_since_reset_kib, reset_peak, run_mode};

type B = Train;

/// Errors cross the compute threads.
type Error = Box<dyn std::error::Error + Send + Sync>;

const LAYERS: usize = 12;
const WIDTH: usize = 768;
const HIDDEN: usize = 3072;
const HEADS: usize = 12;
const VOCAB: usize = 4096;
const TOKENS: usize = 128;
const RANK: usize = 8;
const BLOCK: u8 = 32;

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Mode {
    F32,
    Q8,
    Q4,
}

/// Peak memory of a LoRA step with the frozen base in f32 or quantized.
#[derive(Parser, Debug)]
struct Args {
    /// Run one mode in this process; without it, run all three as child processes.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
}

fn main() -> Result<(), Error> {
    match Args::parse().mode {
        Some(mode) => {
            let (peak, bytes) = on_compute_threads(|| step(mode))?;
            println!("{peak} {bytes}");
        }
        None => {
            let f32 = child("f32")?;
            println!(
                "One LoRA step of a random {LAYERS}-layer, {WIDTH}-wide Llama ({}, {TOKENS} tokens, rank {RANK} on {}):",
                backend::NAME,
                PROJECTIONS.join(", ")
            );
            println!(
                "  mode  step's peak RSS   linear weights at rest   ratios to f32 (peak, weights)"
            );
            for (name, mode) in [("f32", None), ("q8", Some("q8")), ("q4", Some("q4"))] {
                let (peak, bytes) = match mode {
                    Some(mode) => child(mode)?,
                    None => f32,
                };
                println!(
                    "  {name:<4} {:>11.1} MiB {:>17.1} MiB        {:.3}, {:.3}",
                    peak as f64 / 1024.0,
                    bytes as f64 / (1024.0 * 1024.0),
                    peak as f64 / f32.0 as f64,
                    bytes as f64 / f32.1 as f64
                );
            }
        }
    }
    Ok(())
}

/// Builds the model (quantized in `q8` and `q4`), restarts the peak and runs one step; returns
/// the step's peak RSS in KiB and the linear weights' bytes.
fn step(mode: Mode) -> Result<(u64, usize), Error> {
    let device = backend::device();
    let config = CausalLmConfig::new(
        Family::Llama,
        VOCAB,
        WIDTH,
        HIDDEN,
        LAYERS,
        HEADS,
        HEADS,
        WIDTH / HEADS,
        2 * TOKENS,
    );
    let mut lm = config.init::<B>(&device)?;
    lm.attach(
        "qlora",
        &LoraConfig::new(RANK, 16.0),
        &Targets::names(PROJECTIONS),
    )?;
    let value = match mode {
        Mode::F32 => None,
        Mode::Q8 => Some(QuantValue::Q8S),
        Mode::Q4 => Some(QuantValue::Q4S),
    };
    let scheme = value.map(|value| {
        QuantScheme::default()
            .with_value(value)
            .with_level(QuantLevel::block([BLOCK]))
    });
    let bytes = match scheme {
        Some(scheme) => lm.quantize_base(scheme)?.quantized_bytes,
        None => lm
            .lora_layers()
            .iter()
            .filter(|layer| layer.kind() == LayerKind::Linear)
            .map(|layer| 4 * layer.base_weight_shape().iter().product::<usize>())
            .sum(),
    };
    let ids: Vec<i64> = (0..TOKENS as i64)
        .map(|i| (i * 31) % VOCAB as i64)
        .collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, TOKENS]), &device);
    reset_peak()?;
    let logits = lm.forward(CausalLmInput::new(ids.clone()))?;
    let grads = causal_lm_loss(logits, ids).backward();
    let peak = peak_since_reset_kib()?;
    let trained: f32 = lm
        .lora_layers()
        .iter()
        .filter_map(|layer| layer.adapter("qlora"))
        .map(|adapter| {
            adapter
                .lora_b()
                .grad(&grads)
                .map_or(0.0, |g| g.abs().sum().into_scalar())
        })
        .sum();
    if !(trained.is_finite() && trained > 0.0) {
        return Err("no gradient reached the adapters".into());
    }
    Ok((peak, bytes))
}

/// Runs this program with `--mode <mode>` and reads the peak and the bytes it prints.
fn child(mode: &str) -> Result<(u64, usize), Error> {
    let text = run_mode(mode)?;
    let mut fields = text.split_whitespace();
    let peak = fields.next().ok_or("no peak printed")?.parse()?;
    let bytes = fields.next().ok_or("no size printed")?.parse()?;
    Ok((peak, bytes))
}
