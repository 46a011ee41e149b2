//! The matrix products of one decoding step of SmolLM2-135M, at batch 1 and 8: the formulations
//! of issue 35's matmul step side by side.
//!
//! Thirty layers of random weights of SmolLM2's shapes (q and o `576 × 576`, k and v
//! `576 × 192`, gate and up `576 × 1536`, down `1536 × 576`; 420 MB, more than any cache, as a
//! real decoding step reads them) and the tied head (`[49,152, 576]` read transposed). Groups:
//! - `projections/<rows>`: the 210 products of one step, layer after layer;
//! - `head/<rows>`: the head's product.
//!
//! Each is timed as Burn's `matmul` (`burn`) and as `burn_lora_kernels::matmul` (`kernels`), run
//! on the backend's compute threads (`burn_lora_kernels::with_fast_paths`) as `CausalLm` runs
//! a step.
//!
//! `cargo bench --bench decode_matmul` (shorter: append `-- --warm-up-time 1 --measurement-time 3`).

mod bench_util;

use burn::tensor::{Distribution, Tensor};
use burn_lora_kernels::with_fast_paths;
use burn_lora_support::backend::{self, Inference};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

type B = Inference;

const LAYERS: usize = 30;
const HIDDEN: usize = 576;
const KV: usize = 192;
const INTERMEDIATE: usize = 1536;
const VOCAB: usize = 49_152;

fn random<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
    Tensor::random(
        shape,
        Distribution::Uniform(-0.05, 0.05),
        &backend::device(),
    )
}

/// `[d_input, d_output]` of the seven projections of a layer, in the order a step runs them.
const PROJECTIONS: [[usize; 2]; 7] = [
    [HIDDEN, HIDDEN],
    [HIDDEN, KV],
    [HIDDEN, KV],
    [HIDDEN, HIDDEN],
    [HIDDEN, INTERMEDIATE],
    [HIDDEN, INTERMEDIATE],
    [INTERMEDIATE, HIDDEN],
];

type Product = fn(Tensor<B, 2>, Tensor<B, 2>) -> Tensor<B, 2>;
const WAYS: [(&str, Product); 2] = [
    ("burn", |x, w| x.matmul(w)),
    ("kernels", burn_lora_kernels::matmul),
];

fn decode_matmul(c: &mut Criterion) {
    let device = backend::device();
    let weights: Vec<Vec<Tensor<B, 2>>> = (0..LAYERS)
        .map(|_| PROJECTIONS.iter().map(|&shape| random(shape)).collect())
        .collect();
    let bytes: usize = LAYERS * PROJECTIONS.iter().map(|[k, n]| k * n * 4).sum::<usize>();
    let embeddings = random([VOCAB, HIDDEN]);
    for rows in [1, 8] {
        let inputs = [random([rows, HIDDEN]), random([rows, INTERMEDIATE])];
        let mut group = c.benchmark_group(format!("decode_matmul/{}/projections", backend::NAME));
        group
            .sample_size(10)
            .throughput(Throughput::Bytes(bytes as u64));
        for (name, product) in WAYS {
            group.bench_function(BenchmarkId::new(name, rows), |b| {
                b.iter(|| {
                    with_fast_paths::<B, _>(|| {
                        for layer in &weights {
                            for (w, [k, _]) in layer.iter().zip(PROJECTIONS) {
                                let x = inputs[usize::from(k == INTERMEDIATE)].clone();
                                std::hint::black_box(product(x, w.clone()));
                            }
                        }
                    });
                    bench_util::sync::<B>(&device);
                })
            });
        }
        group.finish();
        let mut group = c.benchmark_group(format!("decode_matmul/{}/head", backend::NAME));
        group
            .sample_size(10)
            .throughput(Throughput::Bytes((VOCAB * HIDDEN * 4) as u64));
        for (name, product) in WAYS {
            group.bench_function(BenchmarkId::new(name, rows), |b| {
                b.iter(|| {
                    let logits = with_fast_paths::<B, _>(|| {
                        product(inputs[0].clone(), embeddings.clone().transpose())
                    });
                    bench_util::sync::<B>(&device);
                    logits
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, decode_matmul);
criterion_main!(benches);
