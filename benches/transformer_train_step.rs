//! One training step (forward, backward, Adam) of a transformer encoder built from burn-lora's
//! blocks (d_model 384, 6 layers, 12 heads, d_ff 1536, dropout 0) on a batch of 16 sequences of
//! 64 embedded tokens, with a squared-output loss: full fine-tuning against LoRA r = 8, alpha 16
//! on every layer's query and value (everything else frozen). The two variants alternate over
//! three rounds in one group, so drift on a busy machine hits both alike.
//!
//! `cargo bench --bench transformer_train_step` (shorter: append `-- --warm-up-time 1
//! --measurement-time 10`).

mod bench_util;

use burn::tensor::{Distribution, Tensor};
use burn_lora::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn_lora::{LoraConfig, LoraModel, Targets};
use burn_lora_support::backend::{self, Train};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// Rounds of the alternation.
const ROUNDS: usize = 3;

fn encoder_train_step(c: &mut Criterion) {
    let device = backend::device();
    let full: TransformerEncoder<Train> = TransformerEncoderConfig::new(384, 1536, 12, 6)
        .with_dropout(0.0)
        .init(&device)
        .expect("a valid encoder configuration");
    let mut lora = full.clone();
    lora.attach(
        "default",
        &LoraConfig::new(8, 16.0),
        &Targets::names(["query", "value"]),
    )
    .expect("query and value take rank 8");
    let x = Tensor::<Train, 3>::random([16, 64, 384], Distribution::Normal(0.0, 1.0), &device);
    let loss = |model: &TransformerEncoder<Train>| {
        model
            .forward(TransformerEncoderInput::new(x.clone()))
            .powf_scalar(2.0)
            .mean()
    };

    let mut group = c.benchmark_group(format!("transformer_train_step_384x6/{}", backend::NAME));
    group.sample_size(10);
    for round in 0..ROUNDS {
        for (name, model) in [("full", &full), ("lora_r8_qv", &lora)] {
            let id = BenchmarkId::new(name, round);
            bench_util::bench_fused_adam(&mut group, id, model.clone(), &device, loss);
        }
    }
    group.finish();
}

criterion_group!(benches, encoder_train_step);
criterion_main!(benches);
