//! Inference latency: a plain `Linear` against the same layer with an unmerged rank-8 adapter and
//! with the adapter merged (d = 4096, batch 1 and 256), and the same for the notebook MLP.
//!
//! `cargo bench --bench inference`

mod bench_util;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Distribution, Tensor};
use burn_lora::LoraLayer;
use burn_lora::{
    LoraAdapter, LoraConfig, LoraLinear, LoraLinearConfig, LoraMlp, LoraMlpConfig, LoraModel,
};
use burn_lora_support::backend::{self, Inference};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

type B = Inference;

fn randn<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &backend::device())
}

/// A layer with a rank-`rank` adapter whose factors are random (a trained stand-in).
fn adapted(layer: &mut LoraLinear<B>, rank: usize) {
    let (d_in, d_out) = (layer.d_input(), layer.d_output());
    let config = LoraConfig::new(rank, rank as f64);
    let adapter = LoraAdapter::from_factors(
        "default",
        &config,
        randn([d_in, rank]).mul_scalar(0.01),
        randn([rank, d_out]).mul_scalar(0.01),
    )
    .expect("adapter");
    layer.insert_adapter(adapter).expect("insert");
}

fn single_layer(c: &mut Criterion) {
    let device = backend::device();
    let d = 4096;
    let mut lora = LoraLinearConfig::new(d, d)
        .init::<B>(&device)
        .expect("layer");
    let plain = Linear {
        weight: Param::from_tensor(lora.weight()),
        bias: lora.bias().map(Param::from_tensor),
    };
    adapted(&mut lora, 8);
    let merged = lora.merge_to_linear().expect("merge");

    let mut group = c.benchmark_group(format!("inference_linear4096_r8/{}", backend::NAME));
    group.sample_size(20);
    for batch in [1, 256] {
        let x = randn([batch, d]);
        group.bench_function(BenchmarkId::new("plain", batch), |b| {
            b.iter(|| {
                let y = plain.forward(x.clone());
                bench_util::sync::<B>(&device);
                y
            })
        });
        group.bench_function(BenchmarkId::new("lora_unmerged", batch), |b| {
            b.iter(|| {
                let y = lora.forward(x.clone());
                bench_util::sync::<B>(&device);
                y
            })
        });
        group.bench_function(BenchmarkId::new("lora_merged", batch), |b| {
            b.iter(|| {
                let y = merged.forward(x.clone());
                bench_util::sync::<B>(&device);
                y
            })
        });
    }
    group.finish();
}

fn notebook_mlp(c: &mut Criterion) {
    let device = backend::device();
    let plain: LoraMlp<B> = LoraMlpConfig::notebook().init(&device).expect("mlp");
    let mut lora = plain.clone();
    for index in 0..3 {
        adapted(lora.layer_mut(index).expect("layer"), 1);
    }
    let merged = lora.merge_and_unload().expect("merge");
    let plain = LoraMlp::from_linears(
        merged
            .layers()
            .iter()
            .zip(lora.layers())
            .map(|(_, l)| Linear {
                weight: Param::from_tensor(l.weight()),
                bias: l.bias().map(Param::from_tensor),
            })
            .collect(),
    )
    .expect("plain");

    let mut group = c.benchmark_group(format!("inference_notebook_mlp_r1/{}", backend::NAME));
    group.sample_size(20);
    for batch in [1, 256] {
        let x = randn([batch, 784]);
        for (name, model) in [
            ("plain", &plain),
            ("lora_unmerged", &lora),
            ("lora_merged", &merged),
        ] {
            group.bench_function(BenchmarkId::new(name, batch), |b| {
                b.iter(|| {
                    let y = model.forward(x.clone());
                    bench_util::sync::<B>(&device);
                    y
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, single_layer, notebook_mlp);
criterion_main!(benches);
