//! Loads a Hugging Face causal-LM folder (`config.json` and `model.safetensors`, or its shards)
//! and reports what loading costs: the time, the weights' size in the backend's float type, the
//! process's peak resident memory (`VmHWM`) and its peak heap, each against that size.
//!
//! `cargo run --release --example load_checkpoint -- --model-dir <folder> [--float bf16]`; each
//! run is a fresh process, so the peaks are the load's own. `benches/pytorch_load.py` measures
//! transformers' `from_pretrained` on the same folder the same way.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::backend::set_default_float_dtype;
use burn::tensor::FloatDType;
use burn::tensor::Tensor;
use burn_lora::nn::llama::CausalLm;
use burn_lora_support::backend::{self, Inference};
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
    let lm = CausalLm::<Inference>::from_pretrained(&args.model_dir, &device)?;
    let seconds = start.elapsed().as_secs_f64();
    let heap = HEAP.peak_bytes() as f64;
    let rss = peak_rss_bytes()? as f64;

    let dtype = Tensor::<Inference, 1>::empty([0], &device).dtype();
    let weights = (lm.num_params() * dtype.size()) as f64;
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
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
    Ok(())
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
