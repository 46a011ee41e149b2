//! SmolLM2-135M-Instruct, a real decoder LLM: generation and a LoRA training step, the work of
//! issue 35's targets, beside `benches/pytorch_smollm2.py` (PyTorch + PEFT on the same work).
//!
//! `SMOLLM2_DIR` names the Hugging Face folder `to_hf.py` writes from
//! `../shared/models/SmolLM2-135M-Instruct-Q4_1`; without it the bench says so and measures
//! nothing. Two adapters `a` and `b`, r = 8, alpha 16, sit on the seven projections of every
//! layer (attached: `B = 0`; the cost of an unmerged adapter does not depend on its values).
//!
//! Groups (throughput in new tokens, so criterion's elements/s are tokens/s):
//! 1. `generate`: 64 greedy new tokens after 16-token prompts (no stop token), batch 1 and 8,
//!    adapter `a` unmerged; batch 8 with the rows over `a` and `b` (`mixed`); batch 1 with `a`
//!    merged into the base (`merged`, PyTorch's bare model is its peer).
//! 2. `train_step`: one LoRA step (forward, loss, backward, AdamW) on 8 × 96 random tokens, run
//!    on the CPU backend's threads (`burn_lora_kernels::on_compute_threads`).
//!
//! `SMOLLM2_DIR=… cargo bench --bench smollm2` (about 5 minutes).

mod bench_util;

use std::path::{Path, PathBuf};

use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{Distribution, Int, Tensor};
use burn_fused_adam::FusedAdamConfig;
use burn_lora::nn::llama::{
    causal_lm_loss, CausalLm, CausalLmInput, GenerationConfig, PROJECTIONS,
};
use burn_lora::{LoraConfig, LoraModel, Targets};
use burn_lora_kernels::on_compute_threads;
use burn_lora_support::backend::{self, Inference, Train};
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};

const NEW_TOKENS: usize = 64;
const PROMPT_LEN: usize = 16;

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SMOLLM2_DIR").map(PathBuf::from);
    if dir.is_none() {
        println!("SKIPPED smollm2: set SMOLLM2_DIR to SmolLM2's Hugging Face folder to run it");
    }
    dir
}

/// The model with adapters `a` and `b` on every projection, `a` active.
fn with_adapters<B: burn::tensor::backend::Backend>(dir: &Path) -> CausalLm<B> {
    let mut lm = CausalLm::<B>::from_pretrained(dir, &Default::default()).expect("SmolLM2 loads");
    for name in ["a", "b"] {
        lm.attach(
            name,
            &LoraConfig::new(8, 16.0),
            &Targets::names(PROJECTIONS),
        )
        .expect("the adapter attaches");
    }
    lm.set_active_adapter("a").expect("a exists");
    lm
}

/// `rows` prompts of [`PROMPT_LEN`] ids spread over the vocabulary.
fn prompts(rows: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..rows)
        .map(|row| {
            (0..PROMPT_LEN)
                .map(|i| (3 + (row * PROMPT_LEN + i) * 7919 % (vocab - 3)) as u32)
                .collect()
        })
        .collect()
}

fn generate(c: &mut Criterion) {
    let Some(dir) = model_dir() else { return };
    let lm = with_adapters::<Inference>(&dir);
    let mut merged = lm.clone();
    merged.merge().expect("a merges");
    let vocab = lm.config().vocab_size;
    let config = GenerationConfig::new(NEW_TOKENS).with_stop_tokens(Some(vec![]));
    let mut group = c.benchmark_group(format!("smollm2/{}/generate", backend::NAME));
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for (name, rows, mixed, model) in [
        ("unmerged", 1, false, &lm),
        ("unmerged", 8, false, &lm),
        ("mixed", 8, true, &lm),
        ("merged", 1, false, &merged),
    ] {
        let prompts = prompts(rows, vocab);
        let names: Vec<&str> = (0..rows)
            .map(|row| if mixed && row % 2 == 1 { "b" } else { "a" })
            .collect();
        let batch = mixed.then(|| model.adapter_batch(&names).expect("known adapters"));
        group.throughput(Throughput::Elements((rows * NEW_TOKENS) as u64));
        group.bench_function(BenchmarkId::new(name, rows), |b| {
            b.iter(|| {
                model
                    .generate(&prompts, batch.as_ref(), &config, |_| {})
                    .expect("generates")
            })
        });
    }
    group.finish();
}

fn train_step(c: &mut Criterion) {
    let Some(dir) = model_dir() else { return };
    let device = backend::device();
    let lm = with_adapters::<Train>(&dir);
    let mut optim = FusedAdamConfig::adamw(0.01)
        .init::<Train, CausalLm<Train>>()
        .expect("AdamW");
    let ids = Tensor::<Train, 2, Int>::random(
        [8, 96],
        Distribution::Uniform(0.0, lm.config().vocab_size as f64),
        &device,
    );
    let mut slot = Some(lm);
    let mut group = c.benchmark_group(format!("smollm2/{}/train_step", backend::NAME));
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    group.bench_function("lora_r8_8x96", |b| {
        b.iter(|| {
            let model = slot.take().expect("model");
            let model = on_compute_threads(|| {
                let logits = model
                    .forward(CausalLmInput::new(ids.clone()))
                    .expect("forward");
                let grads = GradientsParams::from_grads(
                    causal_lm_loss(logits, ids.clone()).backward(),
                    &model,
                );
                optim.step(1e-4, model, grads)
            });
            bench_util::sync::<Train>(&device);
            slot = Some(model);
        })
    });
    group.finish();
}

criterion_group!(benches, generate, train_step);
criterion_main!(benches);
