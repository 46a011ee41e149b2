//! Peak resident memory of one LoRA training step (forward and backward) through the frozen
//! projections of a 12-layer, 768-wide transformer (per layer q, k, v, o of 768 × 768, up of
//! 768 × 3072, down of 3072 × 768; 85 M weights, 340 MB in f32), batch 1 × 128 tokens, an
//! adapter of rank 8 on every projection, with the base weights in f32 (`lora_linear`) or
//! quantized (`quantized_lora_linear`, 8 or 4 bits, a scale per 32 values), each mode in its
//! own process (`getrusage` max RSS). The projections are chained without attention: the weights
//! are what the memory is about. Quantized weights are made one at a time, so the f32 model never
//! exists whole.
//!
//! `cargo run --release --example quantized_base_memory` runs the three modes and prints each
//! peak, the weights' bytes at rest and the ratios to f32; `-- --mode f32|q8|q4` runs one.

mod common;

use std::process::Command;
use std::sync::Arc;

use burn::tensor::quantization::{QuantLevel, QuantScheme, QuantValue};
use burn::tensor::{Distribution, Tensor, TensorData};
use burn_lora_kernels::{
    lora_linear, on_compute_threads, quantized_lora_linear, with_fast_paths, QuantizedMatrix,
};
use burn_lora_support::backend::{self, Train};
use clap::{Parser, ValueEnum};
use common::peak_rss::max_rss_kib;

type B = Train;

/// Errors cross the compute threads.
type Error = Box<dyn std::error::Error + Send + Sync>;

const LAYERS: usize = 12;
const WIDTH: usize = 768;
const HIDDEN: usize = 3072;
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

/// A frozen projection's weight, and its adapter's factors (tracked).
struct Projection {
    weight: Weight,
    lora_a: Tensor<B, 2>,
    lora_b: Tensor<B, 2>,
}

enum Weight {
    Dense(Tensor<B, 2>),
    Quantized(Arc<QuantizedMatrix>),
}

fn main() -> Result<(), Error> {
    match Args::parse().mode {
        Some(mode) => {
            let bytes = on_compute_threads(|| step(mode))?;
            println!("{} {bytes}", max_rss_kib());
        }
        None => {
            let f32 = child("f32")?;
            println!(
                "One LoRA step through {LAYERS} layers of {WIDTH}-wide projections ({}, {TOKENS} tokens, rank {RANK}):",
                backend::NAME
            );
            println!("  mode  peak RSS    weights at rest   ratios to f32 (peak, weights)");
            for (name, mode) in [("f32", None), ("q8", Some("q8")), ("q4", Some("q4"))] {
                let (peak, bytes) = match mode {
                    Some(mode) => child(mode)?,
                    None => f32,
                };
                println!(
                    "  {name:<4} {:>8.1} MiB {:>10.1} MiB      {:.3}, {:.3}",
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

/// Builds the projections and runs one forward and backward; returns the weights' bytes.
fn step(mode: Mode) -> Result<usize, Error> {
    let device = backend::device();
    let scheme = |value| {
        QuantScheme::default()
            .with_value(value)
            .with_level(QuantLevel::block([BLOCK]))
    };
    let mut bytes = 0;
    let mut projection = |d_in: usize, d_out: usize| -> Result<Projection, Error> {
        let values: Tensor<B, 2> =
            Tensor::random([d_in, d_out], Distribution::Normal(0.0, 0.02), &device);
        let weight = match mode {
            Mode::F32 => {
                bytes += d_in * d_out * 4;
                Weight::Dense(values)
            }
            Mode::Q8 | Mode::Q4 => {
                let value = if mode == Mode::Q8 {
                    QuantValue::Q8S
                } else {
                    QuantValue::Q4S
                };
                let data = values.into_data().to_vec::<f32>()?;
                let matrix = QuantizedMatrix::quantize(&data, [d_in, d_out], &scheme(value))?;
                bytes += matrix.bytes();
                Weight::Quantized(Arc::new(matrix))
            }
        };
        let factor = |shape: [usize; 2]| {
            Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, 0.02), &device).require_grad()
        };
        Ok(Projection {
            weight,
            lora_a: factor([d_in, RANK]),
            lora_b: factor([RANK, d_out]),
        })
    };
    let mut layers = Vec::new();
    for _ in 0..LAYERS {
        let mut layer = Vec::new();
        for _ in 0..4 {
            layer.push(projection(WIDTH, WIDTH)?);
        }
        layer.push(projection(WIDTH, HIDDEN)?);
        layer.push(projection(HIDDEN, WIDTH)?);
        layers.push(layer);
    }
    let input: Tensor<B, 3> = Tensor::from_data(
        TensorData::new(vec![0.01f32; TOKENS * WIDTH], [1, TOKENS, WIDTH]),
        &device,
    );
    with_fast_paths::<B, _>(|| {
        let mut x = input;
        for p in layers.iter().flatten() {
            let (a, b) = (p.lora_a.clone(), p.lora_b.clone());
            x = match &p.weight {
                Weight::Dense(w) => lora_linear(x, w.clone(), None, None, a, b, 2.0),
                Weight::Quantized(w) => quantized_lora_linear(x, w, None, None, a, b, 2.0),
            };
        }
        let grads = x.sum().backward();
        let norm: f32 = layers
            .iter()
            .flatten()
            .map(|p| {
                p.lora_b
                    .grad(&grads)
                    .map_or(0.0, |g| g.abs().sum().into_scalar())
            })
            .sum();
        assert!(
            norm.is_finite() && norm > 0.0,
            "no gradient reached the adapters"
        );
    });
    Ok(bytes)
}

/// Runs this program with `--mode <mode>` and reads the peak and the bytes it prints.
fn child(mode: &str) -> Result<(u64, usize), Error> {
    let output = Command::new(std::env::current_exe()?)
        .args(["--mode", mode])
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "--mode {mode} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let text = String::from_utf8(output.stdout)?;
    let mut fields = text.split_whitespace();
    let peak = fields.next().ok_or("no peak printed")?.parse()?;
    let bytes = fields.next().ok_or("no size printed")?.parse()?;
    Ok((peak, bytes))
}
