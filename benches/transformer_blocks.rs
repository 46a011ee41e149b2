//! Forward of a transformer encoder (d_model 384, 6 layers, 12 heads, d_ff 1536, batch 16,
//! seq 64, dropout 0) built from burn-lora's blocks without adapters against Burn's own, with the
//! same weights, alternated over three rounds; then, for information, with unmerged rank-8
//! adapters on every layer's query and value. Last, outside criterion, the two are run in
//! alternation forward by forward and the median of the per-pair time ratios is printed: on a
//! busy machine that ratio is steadier than two criterion estimates taken seconds apart.
//!
//! `cargo bench --bench transformer_blocks` (shorter: append `-- --warm-up-time 1
//! --measurement-time 5`).

mod bench_util;

use burn::nn::transformer as burn_transformer;
use burn::tensor::{Distribution, Tensor};
use burn_lora::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn_lora::{LoraConfig, LoraLayer};
use burn_lora_support::backend::{self, Inference};
use burn_store::ModuleSnapshot;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::time::{Duration, Instant};

type B = Inference;

const ROUNDS: usize = 3;

/// Forward pairs of the paired comparison.
const PAIRS: usize = 15;

/// Burn's encoder and burn-lora's, holding the same weights.
fn encoders() -> (
    burn_transformer::TransformerEncoder<B>,
    TransformerEncoder<B>,
) {
    let device = backend::device();
    let config =
        burn_transformer::TransformerEncoderConfig::new(384, 1536, 12, 6).with_dropout(0.0);
    let burn = config.init::<B>(&device);
    let mut ours = TransformerEncoderConfig::new(384, 1536, 12, 6)
        .with_dropout(0.0)
        .init::<B>(&device);
    let result = ours.apply(burn.collect(None, None, false), None, None, false);
    assert!(
        result.errors.is_empty() && result.missing.is_empty(),
        "{result:?}"
    );
    (burn, ours)
}

fn encoder_forward(c: &mut Criterion) {
    let device = backend::device();
    let (burn, ours) = encoders();
    let mut adapted = ours.clone();
    for layer in &mut adapted.layers {
        for linear in [&mut layer.mha.query, &mut layer.mha.value] {
            linear
                .add_adapter("default", &LoraConfig::new(8, 16.0))
                .expect("adapter");
        }
    }
    let x = Tensor::<B, 3>::random([16, 64, 384], Distribution::Normal(0.0, 1.0), &device);

    let mut group = c.benchmark_group(format!("transformer_encoder_384x6/{}", backend::NAME));
    group.sample_size(10);
    for round in 0..ROUNDS {
        group.bench_function(BenchmarkId::new("burn", round), |b| {
            b.iter(|| {
                let y = burn.forward(burn_transformer::TransformerEncoderInput::new(x.clone()));
                bench_util::sync::<B>(&device);
                y
            })
        });
        group.bench_function(BenchmarkId::new("burn_lora", round), |b| {
            b.iter(|| {
                let y = ours.forward(TransformerEncoderInput::new(x.clone()));
                bench_util::sync::<B>(&device);
                y
            })
        });
    }
    group.bench_function("burn_lora_r8_qv_unmerged", |b| {
        b.iter(|| {
            let y = adapted.forward(TransformerEncoderInput::new(x.clone()));
            bench_util::sync::<B>(&device);
            y
        })
    });
    group.finish();

    // The output lives until after the sync, as in criterion's loops above.
    let time = |forward: &dyn Fn() -> Tensor<B, 3>| {
        let start = Instant::now();
        let y = forward();
        bench_util::sync::<B>(&device);
        let elapsed = start.elapsed();
        drop(y);
        elapsed
    };
    let burn_forward = || burn.forward(burn_transformer::TransformerEncoderInput::new(x.clone()));
    let lora_forward = || ours.forward(TransformerEncoderInput::new(x.clone()));
    let pairs: Vec<(Duration, Duration)> = (0..PAIRS)
        .map(|pair| {
            // Each goes first in every other pair.
            if pair % 2 == 0 {
                (time(&burn_forward), time(&lora_forward))
            } else {
                let lora = time(&lora_forward);
                (time(&burn_forward), lora)
            }
        })
        .collect();
    let mut ratios: Vec<f64> = pairs
        .iter()
        .map(|(burn, lora)| lora.as_secs_f64() / burn.as_secs_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    let fastest =
        |pick: fn(&(Duration, Duration)) -> Duration| pairs.iter().map(pick).min().expect("pairs");
    eprintln!(
        "paired, {PAIRS} alternating forwards: burn-lora / Burn median ratio {:.4} \
         (range {:.3}..{:.3}); fastest Burn {:.1?}, fastest burn-lora {:.1?}",
        ratios[PAIRS / 2],
        ratios[0],
        ratios[PAIRS - 1],
        fastest(|p| p.0),
        fastest(|p| p.1),
    );
}

criterion_group!(benches, encoder_forward);
criterion_main!(benches);
