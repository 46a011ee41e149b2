//! Loading a Hugging Face causal-LM folder with `CausalLm::from_pretrained`: the time from the
//! folder to a model ready to run, for each folder named by `SMOLLM2_DIR` (the folder
//! `../shared/models/SmolLM2-135M-Instruct-Q4_1/to_hf.py` writes, f32) and `LLAMA_1B_DIR` (a
//! ~1.1 B-parameter BF16 checkpoint, `python benches/random_llama.py OUT_DIR`). A variable that
//! is unset skips its model, and says so.
//!
//! `benches/pytorch_load.py <folder>` times transformers' `from_pretrained` on the same folder;
//! run the two in turn. The peak memory of a load is a process's own figure:
//! `cargo run --release --example load_checkpoint -- --model-dir <folder>` reports it.
//!
//! `cargo bench --bench load_checkpoint` (shorter: append `-- --warm-up-time 1
//! --measurement-time 10`).

use std::path::PathBuf;

use burn_lora::nn::llama::CausalLm;
use burn_lora_support::backend::{self, Inference};
use criterion::{criterion_group, criterion_main, Criterion};

/// The models: their variable, and their name in the report.
const MODELS: [(&str, &str); 2] = [
    ("SMOLLM2_DIR", "smollm2_135m_f32"),
    ("LLAMA_1B_DIR", "llama_1b_bf16"),
];

fn load_checkpoint(c: &mut Criterion) {
    let device = backend::device();
    let mut group = c.benchmark_group(format!("load_checkpoint/{}", backend::NAME));
    group.sample_size(10);
    for (variable, name) in MODELS {
        let Some(dir) = std::env::var_os(variable).map(PathBuf::from) else {
            eprintln!("{name}: skipped, {variable} is not set");
            continue;
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let lm = CausalLm::<Inference>::from_pretrained(&dir, &device)
                    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
                std::hint::black_box(lm)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, load_checkpoint);
criterion_main!(benches);
