//! The fused operations of `burn-lora-kernels` against Burn's decomposed operations, forward and
//! backward on `Autodiff<Flex>`, at the shapes of one SmolLM2-135M layer in a LoRA training step
//! (batch 8 × 96 tokens, width 576, 9 query heads and 3 key/value heads of 64, feed-forward
//! 1536, vocabulary 49,152); LayerNorm, GELU, the split into heads and back and the masked
//! softmax at MiniLM's step (batch 16 × 64, width 384, feed-forward 1536, 12 heads).
//!
//! Each operation is timed as `burn` (Burn's operations: the function outside
//! `with_fast_paths`) and `fused` (inside it), both on the backend's compute threads; one
//! iteration is the forward, `(y · g).sum()` with a fixed random `g`, and the backward. The
//! `mul_sum` row is that wrapper alone, the floor under every other row.
//!
//! `cargo bench --bench fused_ops` (shorter: append `-- --warm-up-time 1 --measurement-time 3`).

mod bench_util;

use burn::tensor::{Bool, Distribution, Int, Tensor};
use burn_lora_kernels::{
    gelu, grouped_attention, layer_norm, linear, masked_softmax_filled, merge_heads,
    on_compute_threads, picked_log_probs, rms_norm, rotary_heads, silu_mul, split_heads,
    with_fast_paths,
};
use burn_lora_support::backend::{self, Train};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

type B = Train;

const BATCH: usize = 8;
const SEQ: usize = 96;
const WIDTH: usize = 576;
const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const HIDDEN: usize = 1536;
const VOCAB: usize = 49_152;

fn random<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &backend::device())
}

/// Times `forward` (tracked inputs to output) with its backward, as Burn's operations and
/// fused.
fn bench_op<const D: usize>(
    c: &mut Criterion,
    name: &str,
    forward: impl Fn() -> Tensor<B, D> + Sync,
) {
    let upstream = forward()
        .detach()
        .random_like(Distribution::Normal(0.0, 1.0));
    let mut group = c.benchmark_group(format!("fused_ops/{}/{name}", backend::NAME));
    group.sample_size(20);
    for fused in [false, true] {
        let id = BenchmarkId::from_parameter(if fused { "fused" } else { "burn" });
        group.bench_function(id, |b| {
            b.iter(|| {
                on_compute_threads(|| {
                    let step = || (forward() * upstream.clone()).sum().backward();
                    if fused {
                        with_fast_paths::<B, _>(step)
                    } else {
                        step()
                    }
                })
            })
        });
    }
    group.finish();
}

fn fused_ops(c: &mut Criterion) {
    let device = backend::device();
    let x = random([BATCH, SEQ, WIDTH]).require_grad();
    bench_op(c, "mul_sum", || x.clone());
    let gamma = random([WIDTH]);
    bench_op(c, "rms_norm", || rms_norm(x.clone(), gamma.clone(), 1e-5));

    let query = random([BATCH, SEQ, HEADS * HEAD_DIM]).require_grad();
    let angles = random([BATCH, 1, SEQ, HEAD_DIM]);
    let (cos, sin) = (angles.clone().cos(), angles.sin());
    bench_op(c, "rotary_heads", || {
        rotary_heads(query.clone(), cos.clone(), sin.clone(), HEADS)
    });

    let gate = random([BATCH, SEQ, HIDDEN]).require_grad();
    let up = random([BATCH, SEQ, HIDDEN]).require_grad();
    bench_op(c, "silu_mul", || silu_mul(gate.clone(), up.clone()));
    // MiniLM's LayerNorm (with a bias), batch 16 × 64 × 384.
    let hidden_state = random([16, 64, 384]).require_grad();
    let (norm_gamma, norm_beta) = (random([384]).require_grad(), random([384]).require_grad());
    bench_op(c, "layer_norm", || {
        layer_norm(
            hidden_state.clone(),
            norm_gamma.clone(),
            Some(norm_beta.clone()),
            1e-12,
        )
    });
    // MiniLM's feed-forward projection, 16 · 64 rows × 384 → 1536 (as one matrix on both
    // paths), the weight frozen.
    let rows = hidden_state.clone().reshape([16 * 64, 384]);
    let ff_weight = random([384, HIDDEN]);
    let ff_bias = random([HIDDEN]);
    bench_op(c, "linear", || {
        linear(rows.clone(), ff_weight.clone(), Some(ff_bias.clone()))
    });
    // MiniLM's feed-forward activation, batch 16 × 64 × 1536.
    let hidden = random([16, 64, HIDDEN]).require_grad();
    bench_op(c, "gelu", || gelu(hidden.clone()));

    let q = random([BATCH, HEADS, SEQ, HEAD_DIM]).require_grad();
    let k = random([BATCH, KV_HEADS, SEQ, HEAD_DIM]).require_grad();
    let v = random([BATCH, KV_HEADS, SEQ, HEAD_DIM]).require_grad();
    // Causal: position i attends to keys 0..=i.
    let mask = Tensor::<B, 2, Bool>::triu_mask([SEQ, SEQ], 1, &device)
        .reshape([1, 1, SEQ, SEQ])
        .repeat_dim(0, BATCH);
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    bench_op(c, "grouped_attention", || {
        grouped_attention(q.clone(), k.clone(), v.clone(), Some(mask.clone()), scale)
    });

    // MiniLM's projections into its 12 heads of 32, and its context out of them.
    bench_op(c, "split_heads", || split_heads(hidden_state.clone(), 12));
    let context = random([16, 12, 64, 32]).require_grad();
    bench_op(c, "merge_heads", || merge_heads(context.clone()));

    // MiniLM's attention weights: 16 × 12 heads × 64 × 64 scores, BERT's padding mask (a
    // quarter of the keys padded) broadcast over heads and queries, its fill of −10⁴.
    let scores = random([16, 12, 64, 64]).require_grad();
    let padding = Tensor::<B, 1, Int>::arange(0..64, &device)
        .reshape([1, 1, 1, 64])
        .repeat_dim(0, 16)
        .greater_equal_elem(48);
    bench_op(c, "masked_softmax_filled", || {
        masked_softmax_filled(scores.clone(), Some(padding.clone()), -1.0e4)
    });

    let logits = random([BATCH, SEQ, VOCAB]).require_grad();
    let targets = Tensor::<B, 2, Int>::random(
        [BATCH, SEQ],
        Distribution::Uniform(0.0, VOCAB as f64),
        &device,
    );
    bench_op(c, "picked_log_probs", || {
        picked_log_probs(logits.clone(), targets.clone())
    });
}

criterion_group!(benches, fused_ops);
criterion_main!(benches);
