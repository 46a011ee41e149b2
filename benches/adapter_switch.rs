//! Switching the active adapter (only adapter state changes) against loading the notebook
//! MLP's base weights from disk.
//!
//! `cargo bench --bench adapter_switch`

use burn::tensor::{Distribution, Tensor};
use burn_lora::LoraLayer;
use burn_lora::{LoraAdapter, LoraConfig, LoraMlp, LoraMlpConfig, LoraModel};
use burn_lora_support::backend::{self, Inference};
use burn_store::{ModuleSnapshot, SafetensorsStore};
use criterion::{criterion_group, criterion_main, Criterion};

type B = Inference;

fn adapter_switch(c: &mut Criterion) {
    let device = backend::device();
    let mut model: LoraMlp<B> = LoraMlpConfig::notebook().init(&device).unwrap();
    for name in ["digit9", "digit4"] {
        for index in 0..3 {
            let layer = model.layer_mut(index).unwrap();
            let (d_in, d_out) = (layer.d_input(), layer.d_output());
            let adapter = LoraAdapter::from_factors(
                name,
                &LoraConfig::new(1, 1.0),
                Tensor::random([d_in, 1], Distribution::Default, &device),
                Tensor::random([1, d_out], Distribution::Default, &device),
            )
            .unwrap();
            layer.insert_adapter(adapter).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let base_file = dir.path().join("base.safetensors");
    let plain: LoraMlp<B> = LoraMlpConfig::notebook().init(&device).unwrap();
    plain
        .save_into(&mut SafetensorsStore::from_file(&base_file))
        .unwrap();

    let mut group = c.benchmark_group(format!("adapter_switch/{}", backend::NAME));
    group.sample_size(20);
    let mut toggle = false;
    group.bench_function("set_active_adapter", |b| {
        b.iter(|| {
            toggle = !toggle;
            model
                .set_active_adapter(if toggle { "digit9" } else { "digit4" })
                .unwrap();
        })
    });
    group.bench_function("load_base_from_disk", |b| {
        b.iter(|| {
            let mut fresh: LoraMlp<B> = LoraMlpConfig::notebook().init(&device).unwrap();
            fresh
                .load_from(&mut SafetensorsStore::from_file(&base_file))
                .unwrap();
            fresh
        })
    });
    group.finish();
}

criterion_group!(benches, adapter_switch);
criterion_main!(benches);
