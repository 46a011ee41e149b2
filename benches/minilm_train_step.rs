//! One training step (forward, backward, AdamW) of all-MiniLM-L6-v2 with a classification head
//! (8 classes), batch 16, sequence 64, dropout as in the model's config: full fine-tuning
//! against LoRA r = 8, alpha 16 on every layer's query and value (the encoder frozen, the head
//! trained), the same LoRA with DoRA (`use_dora`), and with the encoder's linear base weights
//! quantized (QLoRA: `quantize_base`, `Q8S` and `Q4S`, a scale per 32 values). The model has MiniLM's shape with random
//! weights (speed does not depend on them), so it needs no data. The variants alternate over
//! three rounds in one group, so drift on a busy machine hits them alike.
//!
//! A second group times the unmerged inference forward of the LoRA and the DoRA model (the
//! DoRA norms kept between forwards, as at inference), alternating the same way.
//!
//! A second group times only the matrix products of the LoRA step's frozen encoder
//! ([`FROZEN_ENCODER_MATMULS`]) on the inference backend, the floor that Burn's matmul sets under
//! that step; `benches/pytorch_minilm_step.py` times the same products in PyTorch.
//!
//! `cargo bench --bench minilm_train_step` (Flex), `cargo bench --features ndarray --bench
//! minilm_train_step` (NdArray); shorter: append `-- --warm-up-time 1 --measurement-time 10`.

mod bench_util;
// The examples' model, shared rather than copied; the bench uses only part of those modules.
#[allow(dead_code)]
#[path = "../examples/common/text_classifier.rs"]
mod text_classifier;
#[allow(dead_code)]
#[path = "../examples/common/timing.rs"]
mod timing;

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::quantization::{QuantLevel, QuantScheme, QuantValue};
use burn::tensor::{Distribution, Int, Tensor};
use burn_fused_adam::FusedAdamConfig;
use burn_lora::nn::bert::BertConfig;
use burn_lora::{LoraConfig, LoraModel, Targets};
use burn_lora_support::backend::{self, Inference, Train};
use burn_lora_support::text::TextBatch;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use text_classifier::{Mode, SentenceClassifier};

/// Rounds of the alternation.
const ROUNDS: usize = 3;
const BATCH: usize = 16;
const SEQ: usize = 64;
const CLASSES: usize = 8;

fn minilm_train_step(c: &mut Criterion) {
    let device = backend::device();
    Train::seed(&device, 0);
    // all-MiniLM-L6-v2's config.json: vocabulary 30,522, 384 wide, 6 layers, 12 heads, 1,536.
    let config = BertConfig::new(30_522, 384, 6, 12, 1_536, 512).with_hidden_dropout_prob(0.1);
    let bert = config.init::<Train>(&device).expect("MiniLM's shape");
    let full = SentenceClassifier::new(bert, CLASSES, &device);
    let mut lora = full.clone();
    lora.prepare(
        Mode::Lora,
        "default",
        &LoraConfig::new(8, 16.0),
        &Targets::names(["query", "value"]),
    )
    .expect("query and value take rank 8");
    let mut dora = full.clone();
    dora.prepare(
        Mode::Lora,
        "default",
        &LoraConfig::new(8, 16.0).with_use_dora(true),
        &Targets::names(["query", "value"]),
    )
    .expect("query and value take rank 8 with DoRA");

    let quantized = |value| {
        let mut model = lora.clone();
        let scheme = QuantScheme::default()
            .with_value(value)
            .with_level(QuantLevel::block([32]));
        model
            .bert
            .quantize_base(scheme)
            .expect("MiniLM's widths take blocks of 32");
        model
    };
    let (qlora_q8, qlora_q4) = (quantized(QuantValue::Q8S), quantized(QuantValue::Q4S));

    let ids = Tensor::<Train, 2>::random(
        [BATCH, SEQ],
        Distribution::Uniform(0.0, config.vocab_size as f64),
        &device,
    )
    .int();
    let batch = TextBatch {
        input_ids: ids,
        attention_mask: Tensor::<Train, 2, Int>::ones([BATCH, SEQ], &device),
        labels: Tensor::<Train, 1>::random(
            [BATCH],
            Distribution::Uniform(0.0, CLASSES as f64),
            &device,
        )
        .int(),
    };
    let loss = |model: &SentenceClassifier<Train>| model.classify(batch.clone()).loss;

    let mut group = c.benchmark_group(format!("minilm_train_step_b16_s64/{}", backend::NAME));
    group.sample_size(10);
    for round in 0..ROUNDS {
        for (name, model) in [
            ("full", &full),
            ("lora_r8_qv", &lora),
            ("dora_r8_qv", &dora),
            ("qlora_q8_r8_qv", &qlora_q8),
            ("qlora_q4_r8_qv", &qlora_q4),
        ] {
            let optim = FusedAdamConfig::adamw(0.01)
                .init::<Train, SentenceClassifier<Train>>()
                .expect("AdamW");
            let id = BenchmarkId::new(name, round);
            bench_util::bench_training(&mut group, id, model.clone(), optim, &device, loss);
        }
    }
    group.finish();

    // Unmerged inference of the two adapted models, on the inference backend.
    let batch = TextBatch {
        input_ids: batch.input_ids.inner(),
        attention_mask: batch.attention_mask.inner(),
        labels: batch.labels.inner(),
    };
    let (lora, dora) = (lora.valid(), dora.valid());
    let mut group = c.benchmark_group(format!("minilm_inference_b16_s64/{}", backend::NAME));
    group.sample_size(10);
    for round in 0..ROUNDS {
        for (name, model) in [("lora_r8_qv", &lora), ("dora_r8_qv", &dora)] {
            group.bench_function(BenchmarkId::new(name, round), |b| {
                b.iter(|| {
                    std::hint::black_box(model.embed(&batch));
                    bench_util::sync::<Inference>(&device);
                })
            });
        }
    }
    group.finish();
}

/// The matrix products of one LoRA training step of MiniLM's encoder at batch 16, sequence 64
/// (1,024 tokens, 12 heads of 32), per layer, as `(count, batch, m, k, n)`: `count` products of
/// `[batch, m, k] · [batch, k, n]`. Forward: query, key, value and output projections, the two
/// feed-forward layers, scores and context; backward: the input gradients of those six layers
/// (the frozen weights need none) and the attention's four. The adapters' rank-8 products, under
/// 1 % of the work, are left out. 7.5 GFLOP per layer, 45 for the six.
const FROZEN_ENCODER_MATMULS: [(usize, usize, usize, usize, usize); 5] = [
    (8, 1, 1024, 384, 384),
    (2, 1, 1024, 384, 1536),
    (2, 1, 1024, 1536, 384),
    (2, 192, 64, 32, 64),
    (4, 192, 64, 64, 32),
];

/// Layers of MiniLM's encoder.
const LAYERS: usize = 6;

fn frozen_encoder_matmuls(c: &mut Criterion) {
    let device = backend::device();
    Inference::seed(&device, 0);
    let operands: Vec<(Tensor<Inference, 3>, Tensor<Inference, 3>)> = FROZEN_ENCODER_MATMULS
        .iter()
        .flat_map(|&(count, batch, m, k, n)| {
            let device = &device;
            (0..count).map(move |_| {
                (
                    Tensor::random([batch, m, k], Distribution::Default, device),
                    Tensor::random([batch, k, n], Distribution::Default, device),
                )
            })
        })
        .collect();
    let mut group = c.benchmark_group(format!("minilm_lora_step_matmuls/{}", backend::NAME));
    group.sample_size(10);
    group.bench_function("frozen_encoder_6_layers", |b| {
        b.iter(|| {
            for _ in 0..LAYERS {
                for (x, y) in &operands {
                    std::hint::black_box(x.clone().matmul(y.clone()));
                }
            }
            bench_util::sync::<Inference>(&device);
        })
    });
    group.finish();
}

criterion_group!(benches, minilm_train_step, frozen_encoder_matmuls);
criterion_main!(benches);
