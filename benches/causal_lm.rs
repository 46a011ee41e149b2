//! Inference of a Llama-family causal LM with many LoRA adapters: mixed-adapter batches, decode
//! steps with a KV cache, and whole generations.
//!
//! The model is random, of a realistic shape yet small enough for a 2-core CPU: Llama, vocabulary
//! 4096, hidden 768, intermediate 2048, 12 layers, 12 query heads and 4 key/value heads of width
//! 64, 1024 positions (the issue's target is a 12-layer, 768-wide model; its vocabulary is cut to
//! 4096 here so the head does not dominate). Four adapters `a0`..`a3`, rank 8, alpha 16, sit on
//! all seven projections of every layer. They keep the `B = 0` that [`LoraModel::attach`] gives:
//! the cost of a LoRA update does not depend on its values.
//!
//! Groups:
//! 1. `mixed_batch_forward`: a batch of 8 prompts of 32 tokens (logits of the last position
//!    only), every row with one adapter, the rows over four adapters, and the active adapter
//!    without an adapter batch.
//! 2. `mixed_batch_decode_step`: one decoding step of 8 rows at position 32, one adapter or four.
//! 3. `decode_position`: one decoding step of one row with 16, 128 or 512 cached positions, the
//!    adapter unmerged, merged, or none (the time per token should barely grow with the position,
//!    and the merged model should cost what the plain one does).
//! 4. `generate_tokens`: greedy generation of 32 tokens from 16-token prompts, in tokens/s.
//!
//! A decoding step's cache is prefilled once and cloned for every iteration, outside the timing.
//!
//! `cargo bench --bench causal_lm` (shorter: append `-- --warm-up-time 1 --measurement-time 3`).
//!
//! Wall-clock time on a shared 2-core machine cannot resolve the merged model against the plain
//! one (a 2 % target, a ±20 % spread). For an instruction count, `CAUSAL_LM_DECODE_STEPS=<model>:
//! <steps>` (`<model>` one of `a0_unmerged`, `a0_merged`, `plain`) skips criterion and runs that
//! many decoding steps at position 16 after the setup; run it under
//! `valgrind --tool=cachegrind` with two step counts, and the difference of the totals divided by
//! the difference of the counts is the instructions of one step, the setup cancelling out:
//!
//! ```sh
//! RAYON_NUM_THREADS=1 CAUSAL_LM_DECODE_STEPS=a0_merged:2 valgrind --tool=cachegrind \
//!   --cache-sim=no target/release/deps/causal_lm-<hash>
//! ```

mod bench_util;

use std::time::{Duration, Instant};

use burn::tensor::{Int, Tensor, TensorData};
use burn_lora::nn::llama::{
    CausalLm, CausalLmCache, CausalLmConfig, CausalLmInput, Family, GenerationConfig, PROJECTIONS,
};
use burn_lora::{AdapterBatch, LoraConfig, LoraModel, Targets};
use burn_lora_support::backend::{self, Inference};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput,
};

type B = Inference;

const VOCAB: usize = 4096;
const ADAPTERS: [&str; 4] = ["a0", "a1", "a2", "a3"];

/// Rows of the mixed batches.
const BATCH: usize = 8;
/// Prompt length of the batched forward and of the decoding steps' cache.
const PROMPT: usize = 32;

/// The random model with its four adapters, `a0` active.
fn model() -> CausalLm<B> {
    let config = CausalLmConfig::new(Family::Llama, VOCAB, 768, 2048, 12, 12, 4, 64, 1024);
    let mut lm = config.init::<B>(&backend::device()).expect("a valid shape");
    for name in ADAPTERS {
        lm.attach(
            name,
            &LoraConfig::new(8, 16.0),
            &Targets::names(PROJECTIONS),
        )
        .expect("the adapter attaches");
    }
    lm.set_active_adapter("a0").expect("a0 exists");
    lm
}

/// `[rows, len]` token ids, deterministic and spread over the vocabulary.
fn ids(rows: usize, len: usize) -> Tensor<B, 2, Int> {
    let values: Vec<i64> = (0..rows * len)
        .map(|i| (3 + i * 7919 % (VOCAB - 3)) as i64)
        .collect();
    Tensor::from_data(TensorData::new(values, [rows, len]), &backend::device())
}

/// `rows` rows, one adapter for all of them or the four in turn.
fn adapters(lm: &CausalLm<B>, rows: usize, kinds: usize) -> AdapterBatch {
    let names: Vec<&str> = (0..rows).map(|row| ADAPTERS[row % kinds]).collect();
    lm.adapter_batch(&names).expect("known adapters")
}

/// A cache holding a `len`-token prompt of `rows` rows.
fn prefilled(
    lm: &CausalLm<B>,
    rows: usize,
    len: usize,
    batch: Option<&AdapterBatch>,
) -> CausalLmCache<B> {
    let mut input = CausalLmInput::new(ids(rows, len)).last_position_only();
    if let Some(batch) = batch {
        input = input.adapters(batch.clone());
    }
    let mut cache = lm.new_cache();
    lm.forward_cache(input, &mut cache).expect("prefill");
    cache
}

/// Times one decoding step of `lm` after `cache`. Each iteration continues a fresh clone of it;
/// a clone shares the cached buffers, so its first step copies them (copy on write) once, as a
/// real generation never does: that step runs untimed, and the next one is timed.
fn bench_step(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    lm: &CausalLm<B>,
    cache: &CausalLmCache<B>,
    batch: Option<&AdapterBatch>,
) {
    let device = backend::device();
    let mut input = CausalLmInput::new(ids(cache.batch(), 1)).last_position_only();
    if let Some(batch) = batch {
        input = input.adapters(batch.clone());
    }
    let step = |cache: &mut CausalLmCache<B>| {
        let logits = lm.forward_cache(input.clone(), cache).expect("step");
        bench_util::sync::<B>(&device);
        logits
    };
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let mut cache = cache.clone();
                step(&mut cache);
                let start = Instant::now();
                let logits = step(&mut cache);
                timed += start.elapsed();
                drop(logits);
            }
            timed
        })
    });
}

fn mixed_batch_forward(c: &mut Criterion) {
    let device = backend::device();
    let lm = model();
    let input = CausalLmInput::new(ids(BATCH, PROMPT)).last_position_only();
    let mut group = c.benchmark_group(format!("mixed_batch_forward/{}", backend::NAME));
    group.sampling_mode(SamplingMode::Flat);
    let cases = [
        ("one_adapter", Some(adapters(&lm, BATCH, 1))),
        ("four_adapters", Some(adapters(&lm, BATCH, 4))),
        ("active_adapter_no_batch", None),
    ];
    for (name, batch) in cases {
        let input = match batch {
            Some(batch) => input.clone().adapters(batch),
            None => input.clone(),
        };
        let id = BenchmarkId::new(format!("rows_{BATCH}_seq_{PROMPT}"), name);
        group.bench_function(id, |b| {
            b.iter(|| {
                let logits = lm.forward(input.clone()).expect("forward");
                bench_util::sync::<B>(&device);
                logits
            })
        });
    }
    group.finish();
}

fn mixed_batch_decode_step(c: &mut Criterion) {
    let lm = model();
    let mut group = c.benchmark_group(format!("mixed_batch_decode_step/{}", backend::NAME));
    for (name, kinds) in [("one_adapter", 1), ("four_adapters", 4)] {
        let batch = adapters(&lm, BATCH, kinds);
        let cache = prefilled(&lm, BATCH, PROMPT, Some(&batch));
        let id = BenchmarkId::new(format!("rows_{BATCH}_at_position_{PROMPT}"), name);
        bench_step(&mut group, id, &lm, &cache, Some(&batch));
    }
    group.finish();
}

/// The three models of `decode_position`: the adapter `a0` unmerged, merged, and disabled.
fn decode_models() -> [(&'static str, CausalLm<B>); 3] {
    let unmerged = model();
    let mut merged = unmerged.clone();
    merged.merge().expect("a0 merges");
    let mut plain = unmerged.clone();
    plain.set_enabled(false);
    [
        ("a0_unmerged", unmerged),
        ("a0_merged", merged),
        ("plain", plain),
    ]
}

fn decode_position(c: &mut Criterion) {
    let [(_, unmerged), (_, merged), (_, plain)] = decode_models();
    let cases: [(&str, &CausalLm<B>, &[usize]); 3] = [
        ("a0_unmerged", &unmerged, &[16, 128, 512]),
        ("a0_merged", &merged, &[16, 512]),
        ("plain", &plain, &[16, 512]),
    ];
    let mut group = c.benchmark_group(format!("decode_position/{}", backend::NAME));
    for (name, lm, positions) in cases {
        for &position in positions {
            let cache = prefilled(lm, 1, position, None);
            bench_step(
                &mut group,
                BenchmarkId::new(name, position),
                lm,
                &cache,
                None,
            );
        }
    }
    group.finish();
}

fn generate_tokens(c: &mut Criterion) {
    const NEW_TOKENS: usize = 32;
    const PROMPT_LEN: usize = 16;
    let device = backend::device();
    let lm = model();
    let config = GenerationConfig::new(NEW_TOKENS).with_stop_tokens(Some(vec![]));
    let mut group = c.benchmark_group(format!(
        "generate_tokens/{}/greedy_{NEW_TOKENS}_from_{PROMPT_LEN}",
        backend::NAME
    ));
    group.sampling_mode(SamplingMode::Flat);
    for (rows, name, kinds) in [
        (1, "one_adapter", 1),
        (BATCH, "one_adapter", 1),
        (BATCH, "four_adapters", 4),
    ] {
        let prompts: Vec<Vec<u32>> = ids(rows, PROMPT_LEN)
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .expect("ids")
            .chunks(PROMPT_LEN)
            .map(|row| row.iter().map(|&id| id as u32).collect())
            .collect();
        let batch = adapters(&lm, rows, kinds);
        group.throughput(Throughput::Elements((rows * NEW_TOKENS) as u64));
        let id = BenchmarkId::new(format!("rows_{rows}"), name);
        group.bench_function(id, |b| {
            b.iter(|| {
                let out = lm.generate(&prompts, Some(&batch), &config, |_| {});
                bench_util::sync::<B>(&device);
                out.expect("generation")
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short by default (the command line overrides it): the whole bench takes a few minutes.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = mixed_batch_forward, mixed_batch_decode_step, decode_position, generate_tokens
}
/// `CAUSAL_LM_DECODE_STEPS=<model>:<steps>`: that many decoding steps of one model at position
/// 16, each on a fresh clone of the prefilled cache, for an instruction count (see the top).
fn decode_steps_only(spec: &str) {
    let (name, steps) = spec
        .split_once(':')
        .and_then(|(name, steps)| Some((name, steps.parse::<usize>().ok()?)))
        .expect("CAUSAL_LM_DECODE_STEPS=<model>:<steps>");
    let (_, lm) = decode_models()
        .into_iter()
        .find(|(model, _)| *model == name)
        .expect("a model of decode_position: a0_unmerged, a0_merged or plain");
    let device = backend::device();
    let cache = prefilled(&lm, 1, 16, None);
    let input = CausalLmInput::new(ids(1, 1)).last_position_only();
    // The first step of a clone copies the shared cache once (see `bench_step`), so it runs
    // before the counted steps, which continue the same clone.
    let mut cache = cache.clone();
    lm.forward_cache(input.clone(), &mut cache).expect("step");
    for _ in 0..steps {
        lm.forward_cache(input.clone(), &mut cache).expect("step");
    }
    bench_util::sync::<B>(&device);
    println!("{name}: {steps} decoding steps after position 16");
}

fn main() {
    if let Ok(spec) = std::env::var("CAUSAL_LM_DECODE_STEPS") {
        decode_steps_only(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
