//! How a LoRA training step (forward, backward, Adam on A and B; batch 32) grows with the rank at
//! d = 2048 and with the width at rank 8.
//!
//! `cargo bench --bench scaling`

mod bench_util;

use burn::tensor::{Distribution, Tensor};
use burn_lora::LoraLayer;
use burn_lora::{LoraConfig, LoraLinear, LoraLinearConfig};
use burn_lora_support::backend::{self, Train};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const BATCH: usize = 32;

fn bench_step(
    c: &mut Criterion,
    group_name: &str,
    cases: &[(usize, usize)],
    label: fn(usize, usize) -> usize,
) {
    let device = backend::device();
    let mut group = c.benchmark_group(format!("{group_name}/{}", backend::NAME));
    group.sample_size(10);
    for &(d, rank) in cases {
        let x = Tensor::<Train, 2>::random([BATCH, d], Distribution::Normal(0.0, 1.0), &device);
        let mut layer = LoraLinearConfig::new(d, d).init::<Train>(&device).unwrap();
        layer
            .add_adapter("default", &LoraConfig::new(rank, rank as f64))
            .unwrap();
        let id = BenchmarkId::from_parameter(label(d, rank));
        bench_util::bench_fused_adam(
            &mut group,
            id,
            layer,
            &device,
            |layer: &LoraLinear<Train>| layer.forward(x.clone()).square().mean(),
        );
    }
    group.finish();
}

fn scaling(c: &mut Criterion) {
    let ranks: Vec<(usize, usize)> = [1, 4, 16, 64].iter().map(|&r| (2048, r)).collect();
    bench_step(c, "lora_step_by_rank_d2048", &ranks, |_, r| r);
    let widths: Vec<(usize, usize)> = [512, 1024, 2048, 4096, 8192]
        .iter()
        .map(|&d| (d, 8))
        .collect();
    bench_step(c, "lora_step_by_width_r8", &widths, |d, _| d);
}

criterion_group!(benches, scaling);
criterion_main!(benches);
