//! One training step (forward + backward + Adam) of the notebook MLP 784-1000-2000-10:
//! full fine-tuning against LoRA on all three layers.
//!
//! `cargo bench --bench train_step` (add `--no-default-features --features flex,mnist` for Flex).

use burn::nn::loss::CrossEntropyLossConfig;
mod bench_util;

use burn::optim::AdamConfig;
use burn::tensor::{Distribution, Int, Tensor};
use burn_lora::backend::{self, Train};
use burn_lora::{LoraConfig, LoraMlp, LoraMlpConfig};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// Times one Adam step on a fixed batch for full fine-tuning and LoRA rank 1 and 8.
fn bench_steps(c: &mut Criterion, batch: usize) {
    let device = backend::device();
    let x = Tensor::<Train, 2>::random([batch, 784], Distribution::Normal(0.0, 1.0), &device);
    let labels: Vec<i64> = (0..batch as i64).map(|i| i % 10).collect();
    let y = Tensor::<Train, 1, Int>::from_ints(labels.as_slice(), &device);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);

    let mut group = c.benchmark_group(format!("train_step/{}/batch{batch}", backend::NAME));
    group.sample_size(20);
    let variants: [(&str, Option<usize>); 3] =
        [("full", None), ("lora_r1", Some(1)), ("lora_r8", Some(8))];
    for (name, rank) in variants {
        let mut model: LoraMlp<Train> = LoraMlpConfig::notebook().init(&device).unwrap();
        if let Some(rank) = rank {
            model.attach(&LoraConfig::new(rank, rank as f64)).unwrap();
        }
        let mut optim = AdamConfig::new().init::<Train, LoraMlp<Train>>();
        let mut slot = Some(model);
        group.bench_function(BenchmarkId::from_parameter(name), |bencher| {
            bencher.iter(|| {
                bench_util::step(&mut slot, &mut optim, &device, |model| {
                    loss_fn.forward(model.forward(x.clone()), y.clone())
                })
            })
        });
    }
    group.finish();
}

fn train_step(c: &mut Criterion) {
    bench_steps(c, 10);
    bench_steps(c, 256);
}

criterion_group!(benches, train_step);
criterion_main!(benches);
