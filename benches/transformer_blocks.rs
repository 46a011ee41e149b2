//! Forward of a transformer encoder (d_model 384, 6 layers, 12 heads, d_ff 1536, batch 16,
//! seq 64, dropout 0) built from burn-lora's blocks without adapters against Burn's own, with the
//! same weights, alternated over three rounds; then, for information, with unmerged rank-8
//! adapters on every layer's query and value. Last, outside criterion, the three run
//! interleaved forward by forward and the median of each one's time ratio to Burn's in the same
//! round is printed, in wall-clock and in process CPU time: on a busy machine these are steadier
//! than criterion estimates taken seconds apart, the CPU times most (with `RAYON_NUM_THREADS=1`
//! they count the computation alone, not the threads' waiting).
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

/// Criterion rounds, each timing Burn then burn-lora.
const ROUNDS: usize = 3;

/// Rounds of the interleaved comparison.
const ROUNDS_INTERLEAVED: usize = 15;

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
        .init::<B>(&device)
        .expect("a valid encoder configuration");
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
        let (wall, cpu) = (Instant::now(), process_cpu_time());
        let y = forward();
        bench_util::sync::<B>(&device);
        let elapsed = [wall.elapsed(), process_cpu_time() - cpu];
        drop(y);
        elapsed
    };
    let lora_forward =
        |encoder: &TransformerEncoder<B>| encoder.forward(TransformerEncoderInput::new(x.clone()));
    let variants: [(&str, &dyn Fn() -> Tensor<B, 3>); 3] = [
        ("Burn", &|| {
            burn.forward(burn_transformer::TransformerEncoderInput::new(x.clone()))
        }),
        ("burn-lora", &|| lora_forward(&ours)),
        ("burn-lora r8 q/v unmerged", &|| lora_forward(&adapted)),
    ];
    // times[round][variant] = [wall, cpu], each variant going first in turn.
    let times: Vec<Vec<[Duration; 2]>> = (0..ROUNDS_INTERLEAVED)
        .map(|round| {
            let mut row = vec![[Duration::ZERO; 2]; variants.len()];
            for k in 0..variants.len() {
                let v = (round + k) % variants.len();
                row[v] = time(variants[v].1);
            }
            row
        })
        .collect();
    let median_ratio = |v: usize, clock: usize| {
        let mut ratios: Vec<f64> = times
            .iter()
            .map(|row| row[v][clock].as_secs_f64() / row[0][clock].as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios[ROUNDS_INTERLEAVED / 2]
    };
    eprintln!(
        "interleaved, {ROUNDS_INTERLEAVED} rounds: median of (time / Burn's in the same round)"
    );
    for (v, (name, _)) in variants.iter().enumerate() {
        let fastest = |clock: usize| times.iter().map(|row| row[v][clock]).min().expect("rounds");
        eprintln!(
            "  {name:<26} wall {:.4} (fastest {:.1?}), process CPU {:.4} (least {:.1?})",
            median_ratio(v, 0),
            fastest(0),
            median_ratio(v, 1),
            fastest(1),
        );
    }
}

/// CPU time used so far by all threads of this process.
fn process_cpu_time() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to write into.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    assert_eq!(status, 0, "clock_gettime");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

criterion_group!(benches, encoder_forward);
criterion_main!(benches);
