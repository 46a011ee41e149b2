//! Inference latency of the embedding and convolution LoRA layers against Burn's own layers,
//! with a rank-8 adapter unmerged and merged:
//!
//! - `LoraEmbedding` (vocab 30000, d_model 384; ids `[32, 128]`) against `Embedding`;
//! - `LoraConv2d` (64 → 64 channels, 3x3, padding 1; input `[16, 64, 32, 32]`) against
//!   `Conv2d`, plus `two_convs`: PEFT's unfused adapter computation
//!   `conv(x, W) + b + s · conv₁ₓ₁(conv(x, Aᵀ), Bᵀ)` (what `LoraConv2d` runs under autodiff and
//!   for small inputs, where folding the adapter into the kernel does not pay).
//!
//! `cargo bench --bench layer_kinds` runs them with criterion. On a shared machine the wall
//! times drift with the load; `cargo bench --bench layer_kinds -- paired` instead times each
//! LoRA variant interleaved with its plain layer (alternating order, 100 pairs) and prints the
//! ratio of the medians, which the load affects alike on both sides.

mod bench_util;

use std::time::Instant;

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, PaddingConfig2d};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Int, Tensor};
use burn_lora::{
    LoraAdapter, LoraConfig, LoraConv2d, LoraConv2dConfig, LoraEmbedding, LoraEmbeddingConfig,
    LoraLayer,
};
use burn_lora_support::backend::{self, Inference};
use criterion::{BenchmarkId, Criterion};

type B = Inference;

const RANK: usize = 8;
const VOCAB: usize = 30_000;
const D_MODEL: usize = 384;
const IDS: [usize; 2] = [32, 128];
const CHANNELS: usize = 64;
const IMAGE: [usize; 4] = [16, CHANNELS, 32, 32];

fn randn<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &backend::device())
}

/// A rank-8 adapter with random factors (a trained stand-in) on `layer`.
fn adapted(layer: &mut dyn LoraLayer<B>) {
    let [d_in, d_out] = layer.adapter_dims();
    let config = LoraConfig::new(RANK, 2.0 * RANK as f64);
    let adapter = LoraAdapter::from_factors(
        "default",
        &config,
        randn([d_in, RANK]).mul_scalar(0.01),
        randn([RANK, d_out]).mul_scalar(0.01),
    )
    .expect("adapter");
    layer.insert_adapter(adapter).expect("insert");
}

/// Burn's `Embedding`, the same table with an adapter, and that adapter merged.
struct Embeddings {
    plain: Embedding<B>,
    lora: LoraEmbedding<B>,
    merged: Embedding<B>,
    ids: Tensor<B, 2, Int>,
}

fn embeddings() -> Embeddings {
    let device = backend::device();
    let mut lora = LoraEmbeddingConfig::new(VOCAB, D_MODEL)
        .init::<B>(&device)
        .expect("layer");
    let plain = Embedding {
        weight: Param::from_tensor(lora.weight()),
    };
    adapted(&mut lora);
    let merged = lora.merge_to_embedding().expect("merge");
    let ids = Tensor::random(IDS, Distribution::Uniform(0.0, VOCAB as f64), &device);
    Embeddings {
        plain,
        lora,
        merged,
        ids,
    }
}

/// Burn's `Conv2d`, the same layer with an adapter, that adapter merged, and PEFT's unfused
/// computation of the adapted layer.
struct Convs {
    plain: Conv2d<B>,
    lora: LoraConv2d<B>,
    merged: Conv2d<B>,
    x: Tensor<B, 4>,
}

impl Convs {
    /// `conv(x, W) + b + s · conv₁ₓ₁(conv(x, Aᵀ), Bᵀ)`, as PEFT computes it.
    fn two_convs(&self) -> Tensor<B, 4> {
        let adapter = self.lora.adapter("default").expect("adapter");
        let kernel_a = adapter.lora_a().transpose().reshape([RANK, CHANNELS, 3, 3]);
        let kernel_b = adapter.lora_b().transpose().reshape([CHANNELS, RANK, 1, 1]);
        let same = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let pointwise = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let hidden = conv2d(self.x.clone(), kernel_a, None, same).mul_scalar(adapter.scale());
        self.plain.forward(self.x.clone()) + conv2d(hidden, kernel_b, None, pointwise)
    }
}

fn convs() -> Convs {
    let device = backend::device();
    let padding = PaddingConfig2d::Explicit(1, 1, 1, 1);
    let mut lora = LoraConv2dConfig::new([CHANNELS, CHANNELS], [3, 3])
        .with_padding(padding.clone())
        .init::<B>(&device)
        .expect("layer");
    let plain = Conv2d {
        weight: Param::from_tensor(lora.weight()),
        bias: lora.bias().map(Param::from_tensor),
        stride: lora.stride(),
        kernel_size: lora.kernel_size(),
        dilation: lora.dilation(),
        groups: lora.groups(),
        padding,
    };
    adapted(&mut lora);
    let merged = lora.merge_to_conv2d().expect("merge");
    Convs {
        plain,
        lora,
        merged,
        x: randn(IMAGE),
    }
}

/// Times `forward` as benchmark `name` of `group`, waiting for the backend each iteration.
fn bench<T>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    size: &str,
    forward: impl Fn() -> T,
) {
    let device = backend::device();
    group.bench_function(BenchmarkId::new(name, size), |bencher| {
        bencher.iter(|| {
            let y = forward();
            bench_util::sync::<B>(&device);
            y
        })
    });
}

fn embedding_layer(c: &mut Criterion) {
    let e = embeddings();
    let size = format!("{}x{}", IDS[0], IDS[1]);
    let mut group = c.benchmark_group(format!("embedding_30000x384_r8/{}", backend::NAME));
    group.sample_size(50);
    bench(&mut group, "plain", &size, || {
        e.plain.forward(e.ids.clone())
    });
    bench(&mut group, "lora_unmerged", &size, || {
        e.lora.forward(e.ids.clone())
    });
    bench(&mut group, "lora_merged", &size, || {
        e.merged.forward(e.ids.clone())
    });
    group.finish();
}

fn conv_layer(c: &mut Criterion) {
    let v = convs();
    let size = format!("{}x{}x{}", IMAGE[0], IMAGE[2], IMAGE[3]);
    let mut group = c.benchmark_group(format!("conv2d_64x64_3x3_r8/{}", backend::NAME));
    group.sample_size(20);
    bench(&mut group, "plain", &size, || v.plain.forward(v.x.clone()));
    bench(&mut group, "lora_unmerged", &size, || {
        v.lora.forward(v.x.clone())
    });
    bench(&mut group, "lora_merged", &size, || {
        v.merged.forward(v.x.clone())
    });
    bench(&mut group, "two_convs", &size, || v.two_convs());
    group.finish();
}

/// Times `base` and `other` interleaved (alternating which goes first) `pairs` times and prints
/// both medians and their ratio.
fn paired<T, U>(name: &str, pairs: usize, base: impl Fn() -> T, other: impl Fn() -> U) {
    let device = backend::device();
    let time = |f: &dyn Fn()| {
        let start = Instant::now();
        f();
        bench_util::sync::<B>(&device);
        start.elapsed().as_secs_f64() * 1e3
    };
    let run_base = || {
        std::hint::black_box(base());
    };
    let run_other = || {
        std::hint::black_box(other());
    };
    for _ in 0..3 {
        time(&run_base);
        time(&run_other);
    }
    let (mut base_ms, mut other_ms) = (Vec::new(), Vec::new());
    for pair in 0..pairs {
        if pair % 2 == 0 {
            base_ms.push(time(&run_base));
            other_ms.push(time(&run_other));
        } else {
            other_ms.push(time(&run_other));
            base_ms.push(time(&run_base));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (base_ms, other_ms) = (median(base_ms), median(other_ms));
    println!(
        "{name:40} plain {base_ms:8.3} ms   lora {other_ms:8.3} ms   ratio {:.3}",
        other_ms / base_ms
    );
}

fn paired_ratios() {
    println!("paired medians ({}):", backend::NAME);
    let e = embeddings();
    let plain = || e.plain.forward(e.ids.clone());
    paired("embedding lora_unmerged / plain", 100, plain, || {
        e.lora.forward(e.ids.clone())
    });
    paired("embedding lora_merged / plain", 100, plain, || {
        e.merged.forward(e.ids.clone())
    });
    drop(e);
    let v = convs();
    let plain = || v.plain.forward(v.x.clone());
    paired("conv2d lora_unmerged / plain", 100, plain, || {
        v.lora.forward(v.x.clone())
    });
    paired("conv2d lora_merged / plain", 100, plain, || {
        v.merged.forward(v.x.clone())
    });
    paired("conv2d two_convs / plain", 100, plain, || v.two_convs());
}

fn main() {
    if std::env::args().skip(1).any(|arg| arg == "paired") {
        paired_ratios();
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    embedding_layer(&mut criterion);
    conv_layer(&mut criterion);
    criterion.final_summary();
}
