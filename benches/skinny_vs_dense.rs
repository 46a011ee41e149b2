//! One LoRA training step on a single d×d layer (batch 32, rank 8): burn-lora's skinny path
//! `x W + s·((x A) B)` against a "dense ΔW" step that builds `W + s·A B` in every forward (what
//! a `parametrize`-style LoRA does), written here as the baseline.
//!
//! `cargo bench --bench skinny_vs_dense`

mod bench_util;

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use burn_lora::LoraLayer;
use burn_lora::{LoraConfig, LoraLinear, LoraLinearConfig};
use burn_lora_support::backend::{self, Train};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const BATCH: usize = 32;
const RANK: usize = 8;

/// The baseline: a frozen `W` and `b`, trainable `A`, `B`, and a forward that materialises
/// `W + s·A B` (a `[d, d]` tensor and its gradient path) every call.
#[derive(Module, Debug)]
struct DenseDeltaLora<B: Backend> {
    weight: Param<Tensor<B, 2>>,
    bias: Param<Tensor<B, 1>>,
    lora_a: Param<Tensor<B, 2>>,
    lora_b: Param<Tensor<B, 2>>,
}

impl<B: Backend> DenseDeltaLora<B> {
    fn from_layer(layer: &LoraLinear<B>) -> Self {
        let adapter = &layer.adapters()[0];
        Self {
            weight: Param::from_tensor(layer.weight()).set_require_grad(false),
            bias: Param::from_tensor(layer.bias().expect("bias")).set_require_grad(false),
            lora_a: Param::from_tensor(adapter.lora_a()),
            lora_b: Param::from_tensor(adapter.lora_b()),
        }
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let delta = self.lora_a.val().matmul(self.lora_b.val()).mul_scalar(1.0);
        x.matmul(self.weight.val() + delta) + self.bias.val().unsqueeze()
    }
}

fn skinny_vs_dense(c: &mut Criterion) {
    let device = backend::device();
    let mut group = c.benchmark_group(format!("skinny_vs_dense/{}", backend::NAME));
    group.sample_size(10);
    for d in [1024, 4096] {
        let x = Tensor::<Train, 2>::random([BATCH, d], Distribution::Normal(0.0, 1.0), &device);
        let mut layer = LoraLinearConfig::new(d, d).init::<Train>(&device).unwrap();
        layer
            .add_adapter("default", &LoraConfig::new(RANK, RANK as f64))
            .unwrap();
        let dense = DenseDeltaLora::from_layer(&layer);

        bench_util::bench_fused_adam(
            &mut group,
            BenchmarkId::new("skinny", d),
            layer,
            &device,
            |layer: &LoraLinear<Train>| layer.forward(x.clone()).square().mean(),
        );
        bench_util::bench_fused_adam(
            &mut group,
            BenchmarkId::new("dense_delta", d),
            dense,
            &device,
            |model: &DenseDeltaLora<Train>| model.forward(x.clone()).square().mean(),
        );
    }
    group.finish();
}

criterion_group!(benches, skinny_vs_dense);
criterion_main!(benches);
