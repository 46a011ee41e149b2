//! One training step (forward + backward + Adam) of the notebook MLP 784-1000-2000-10:
//! full fine-tuning against LoRA on all three layers, each with burn-lora's `FusedAdam` and,
//! for reference, Burn's own `Adam`.
//!
//! `cargo bench --bench train_step` (Flex; add `--features ndarray` for NdArray).

use burn::nn::loss::CrossEntropyLossConfig;
mod bench_util;

use burn::optim::AdamConfig;
use burn::tensor::{Distribution, Int, Tensor};
use burn_lora::{LoraConfig, LoraMlp, LoraMlpConfig, LoraModel};
use burn_lora::{Targets, DEFAULT_ADAPTER};
use burn_lora_support::backend::{self, Train};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// Which Adam implementation a variant uses.
#[derive(Clone, Copy)]
enum Adam {
    /// burn-lora's `FusedAdam`.
    Fused,
    /// Burn's `Adam` (epsilon set to PyTorch's 1e-8, as `FusedAdam`'s default).
    Burn,
}

/// Times one Adam step on a fixed batch for full fine-tuning and LoRA rank 1 and 8.
fn bench_steps(c: &mut Criterion, batch: usize) {
    let device = backend::device();
    let x = Tensor::<Train, 2>::random([batch, 784], Distribution::Normal(0.0, 1.0), &device);
    let labels: Vec<i64> = (0..batch as i64).map(|i| i % 10).collect();
    let y = Tensor::<Train, 1, Int>::from_ints(labels.as_slice(), &device);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);

    let mut group = c.benchmark_group(format!("train_step/{}/batch{batch}", backend::NAME));
    group.sample_size(20);
    let variants: [(&str, Option<usize>, Adam); 5] = [
        ("full", None, Adam::Fused),
        ("lora_r1", Some(1), Adam::Fused),
        ("lora_r8", Some(8), Adam::Fused),
        ("full_burn_adam", None, Adam::Burn),
        ("lora_r1_burn_adam", Some(1), Adam::Burn),
    ];
    for (name, rank, adam) in variants {
        let mut model: LoraMlp<Train> = LoraMlpConfig::notebook().init(&device).unwrap();
        if let Some(rank) = rank {
            model
                .attach(
                    DEFAULT_ADAPTER,
                    &LoraConfig::new(rank, rank as f64),
                    &Targets::all(),
                )
                .unwrap();
        }
        let loss = |model: &LoraMlp<Train>| loss_fn.forward(model.forward(x.clone()), y.clone());
        let id = BenchmarkId::from_parameter(name);
        match adam {
            Adam::Fused => bench_util::bench_fused_adam(&mut group, id, model, &device, loss),
            Adam::Burn => {
                let optim = AdamConfig::new()
                    .with_epsilon(1e-8)
                    .init::<Train, LoraMlp<Train>>();
                bench_util::bench_training(&mut group, id, model, optim, &device, loss);
            }
        }
    }
    group.finish();
}

fn train_step(c: &mut Criterion) {
    bench_steps(c, 10);
    bench_steps(c, 256);
}

criterion_group!(benches, train_step);
criterion_main!(benches);
