//! Loads a Hugging Face causal-LM folder (`config.json` and `model.safetensors`, or its shards)
//! and reports what loading costs: the time, the weights' size in the backend's float type, the
//! process's peak resident memory (`VmHWM`) and its peak heap, each against that size.
//!
//! With `--train-steps N` it then attaches LoRA (r = 8 on the seven projections) and runs N
//! AdamW steps on random tokens, timing each and reporting the peak RSS after them.
//!
//! `cargo run --release --example load_checkpoint -- --model-dir <folder> [--float bf16]
//! [--train-steps 2]`; each run is a fresh process, so the peaks are the load's own. `benches/pytorch_load.py` measures
//! transformers' `from_pretrained` on the same folder the same way.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{set_default_float_dtype, Backend};
use burn::tensor::{Distribution, FloatDType, Int, Tensor};
use burn_fused_adam::FusedAdamConfig;
use burn_lora::nn::llama::{causal_lm_loss, CausalLm, CausalLmInput, PROJECTIONS};
use burn_lora::{LoraConfig, LoraModel, Targets};
use burn_lora_kernels::on_compute_threads;
use burn_lora_support::backend::{self, Inference, Train};
use clap::{Parser, ValueEnum};

use common::peak_heap::PeakHeap;

#[global_allocator]
static HEAP: PeakHeap = PeakHeap::new();

/// Measure loading a causal-LM checkpoint.
#[derive(Parser, Debug)]
struct Args {
    /// A Hugging Face folder: config.json and model.safetensors (or its index and shards).
    #[arg(long)]
    model_dir: PathBuf,
    /// The backend's float type (Burn's device setting): f32, bf16 or f16. The weights are
    /// converted into it as they load, and a checkpoint already in it is taken as it is.
    #[arg(long, value_enum, default_value = "f32")]
    float: Float,
    /// LoRA training steps to run after the load (r = 8 on the seven projections, AdamW).
    #[arg(long, default_value_t = 0)]
    train_steps: usize,
    /// Rows of a training batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Tokens per row of a training batch.
    #[arg(long, default_value_t = 128)]
    seq: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Float {
    F32,
    Bf16,
    F16,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = backend::device();
    let float = match args.float {
        Float::F32 => FloatDType::F32,
        Float::Bf16 => FloatDType::BF16,
        Float::F16 => FloatDType::F16,
    };
    set_default_float_dtype::<Inference>(&device, float)?;
    let before = peak_rss_bytes()?;
    HEAP.reset_peak();
    let start = Instant::now();
    // Loaded on the training backend when steps follow: the same weights, the same reader.
    let lm = CausalLm::<Train>::from_pretrained(&args.model_dir, &device)?;
    let seconds = start.elapsed().as_secs_f64();
    let heap = HEAP.peak_bytes() as f64;
    let rss = peak_rss_bytes()? as f64;

    let dtype = Tensor::<Inference, 1>::empty([0], &device).dtype();
    let weights = (lm.num_params() * dtype.size()) as f64;
    println!(
        "{} on {}: {} parameters, {:.1} MiB as {dtype:?}",
        args.model_dir.display(),
        backend::NAME,
        lm.num_params(),
        mib(weights)
    );
    println!("load time      : {seconds:.2} s");
    println!(
        "peak RSS       : {:.1} MiB = {:.3}x the weights ({:.1} MiB before loading)",
        mib(rss),
        rss / weights,
        mib(before as f64)
    );
    println!(
        "peak heap      : {:.1} MiB = {:.3}x the weights",
        mib(heap),
        heap / weights
    );
    if args.train_steps > 0 {
        train(lm, &args, &device)?;
    }
    Ok(())
}

/// `args.train_steps` LoRA steps (r = 8, alpha 16 on the seven projections, AdamW) on random
/// token ids of `args.batch` × `args.seq`, each timed, then the process's peak RSS.
fn train(
    mut lm: CausalLm<Train>,
    args: &Args,
    device: &burn::tensor::Device<Train>,
) -> Result<(), Box<dyn std::error::Error>> {
    let targets = Targets::names(PROJECTIONS);
    lm.attach("default", &LoraConfig::new(8, 16.0), &targets)?;
    let mut optim = FusedAdamConfig::adamw(0.01).init::<Train, CausalLm<Train>>()?;
    let vocab = lm.config().vocab_size as f64;
    let mut slot = Some(lm);
    for step in 1..=args.train_steps {
        let ids = Tensor::<Train, 2, Int>::random(
            [args.batch, args.seq],
            Distribution::Uniform(0.0, vocab),
            device,
        );
        let start = Instant::now();
        let model = slot.take().ok_or("no model")?;
        // The step on the CPU backend's own threads: its thousands of operations then share
        // work with threads that are already awake (about 10 % of a step on Flex here).
        let model = on_compute_threads(|| -> Result<_, burn_lora::LoraError> {
            let logits = model.forward(CausalLmInput::new(ids.clone()))?;
            let loss = causal_lm_loss(logits, ids);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            Ok(optim.step(1e-4, model, grads))
        })?;
        slot = Some(model);
        Train::sync(device)?;
        println!(
            "LoRA step {step} : {:.2} s (batch {} x {} tokens)",
            start.elapsed().as_secs_f64(),
            args.batch,
            args.seq
        );
    }
    println!(
        "peak RSS       : {:.1} MiB after the training steps",
        mib(peak_rss_bytes()? as f64)
    );
    Ok(())
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// The process's peak resident memory so far, from `/proc/self/status` (Linux).
fn peak_rss_bytes() -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .ok_or("no VmHWM line in /proc/self/status")?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}
