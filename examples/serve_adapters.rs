//! Serving many adapters from one base: load a Hugging Face causal LM once and several PEFT
//! adapters beside it, then generate for a batch of prompts in which every row has its own
//! adapter, in one batch. The same prompts also run with one adapter for the whole batch, and
//! adapter by adapter (one `generate` per adapter, one after the other), and the mixed batch
//! must give, row for row, the tokens of the adapter-by-adapter runs.
//!
//! `cargo run --release --example serve_adapters -- --help`. By default: the tiny random Llama
//! of `tests/fixtures/peft/llama_tiny` with its two PEFT adapters. The prompts are random token
//! ids (seeded), so no tokenizer is needed.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn_lora::nn::llama::{CausalLm, GenerationConfig};
use burn_lora::{load_adapter, LoraModel, PathMap, BASE_ADAPTER};
use burn_lora_support::backend::{self, Inference};
use burn_lora_support::fixtures::peft_fixture;
use clap::Parser;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Generate for a batch of prompts, each with its own LoRA adapter, on one base.
#[derive(Parser, Debug)]
struct Args {
    /// A Hugging Face Llama, Qwen2 or Mistral folder; default: the repository's llama_tiny
    /// fixture.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// An adapter as NAME=DIR (a PEFT folder), repeated; default: the fixture's adapter_a and
    /// adapter_b as task_a and task_b.
    #[arg(long = "adapter", value_name = "NAME=DIR", value_parser = parse_adapter)]
    adapters: Vec<(String, PathBuf)>,
    /// Number of prompts: the adapters in turn, and the last one with the base alone.
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    /// Tokens per prompt, random ids in 3..vocab_size.
    #[arg(long, default_value_t = 16)]
    prompt_len: usize,
    /// Tokens generated per prompt (greedy, no stop token).
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Seed of the prompts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Timed runs of each way; the fastest is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

fn parse_adapter(arg: &str) -> Result<(String, PathBuf), String> {
    match arg.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
            Ok((name.to_string(), PathBuf::from(dir)))
        }
        _ => Err(format!("expected NAME=DIR, got {arg:?}")),
    }
}

fn main() {
    common::exit_on_error(|| run(Args::parse()));
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let device = backend::device();
    let fixture = peft_fixture("llama_tiny");
    let fixture = fixture.canonicalize().unwrap_or(fixture);
    let model_dir = args.model_dir.clone().unwrap_or_else(|| fixture.clone());
    let adapters = if args.adapters.is_empty() {
        vec![
            ("task_a".to_string(), fixture.join("adapter_a")),
            ("task_b".to_string(), fixture.join("adapter_b")),
        ]
    } else {
        args.adapters.clone()
    };

    // 1. The base once, every adapter beside it.
    let mut lm = CausalLm::<Inference>::from_pretrained(&model_dir, &device)?;
    for (name, dir) in &adapters {
        load_adapter(&mut lm, name, dir, &PathMap::identity())?;
    }
    let config = lm.config();
    println!(
        "{} on {}: {:?}, {} layers, hidden {}, vocabulary {}; adapters {:?}",
        model_dir.display(),
        backend::NAME,
        config.family,
        config.num_hidden_layers,
        config.hidden_size,
        config.vocab_size,
        adapters.iter().map(|(name, _)| name).collect::<Vec<_>>(),
    );

    // 2. Random prompts; row i runs adapter i mod n, the last row the base alone.
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let ids = (config.vocab_size - 3) as u64;
    let prompts: Vec<Vec<u32>> = (0..args.prompts)
        .map(|_| {
            (0..args.prompt_len)
                .map(|_| (3 + rng.next_u64() % ids) as u32)
                .collect()
        })
        .collect();
    let mut names: Vec<&str> = (0..args.prompts)
        .map(|row| adapters[row % adapters.len()].0.as_str())
        .collect();
    if let Some(last) = names.last_mut() {
        *last = BASE_ADAPTER;
    }
    println!(
        "{} prompts of {} tokens, {} new tokens each; rows' adapters {names:?}",
        args.prompts, args.prompt_len, args.new_tokens
    );

    // 3. The three ways, each timed at its fastest of `repeats` runs after one untimed run.
    let generation = GenerationConfig::new(args.new_tokens).with_stop_tokens(Some(vec![]));
    let generate = |rows: &[usize], adapter: &[&str]| -> burn_lora::Result<Vec<Vec<u32>>> {
        let batch = lm.adapter_batch(adapter)?;
        let prompts: Vec<Vec<u32>> = rows.iter().map(|&row| prompts[row].clone()).collect();
        Ok(lm
            .generate(&prompts, Some(&batch), &generation, |_| {})?
            .tokens)
    };
    let all_rows: Vec<usize> = (0..args.prompts).collect();
    let first = adapters[0].0.as_str();
    generate(&all_rows, &names)?;

    let (one, one_time) = fastest(args.repeats, || {
        generate(&all_rows, &vec![first; args.prompts])
    })?;
    let (mixed, mixed_time) = fastest(args.repeats, || generate(&all_rows, &names))?;
    // Adapter by adapter: the rows of each name (the base included), one generate call each.
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (row, &name) in names.iter().enumerate() {
        match groups.iter_mut().find(|(n, _)| *n == name) {
            Some((_, rows)) => rows.push(row),
            None => groups.push((name, vec![row])),
        }
    }
    let (separate, separate_time) = fastest(args.repeats, || {
        let mut tokens = vec![Vec::new(); args.prompts];
        for (name, rows) in &groups {
            for (&row, out) in rows.iter().zip(generate(rows, &vec![*name; rows.len()])?) {
                tokens[row] = out;
            }
        }
        Ok(tokens)
    })?;

    // 4. The table, and the check.
    let tokens = args.prompts * args.new_tokens;
    println!(
        "\n{:<38}{:>7}{:>8}{:>12}{:>12}",
        "", "calls", "tokens", "time (ms)", "tokens/s"
    );
    let one_label = format!("one adapter ({first}) for every row");
    for (what, calls, time) in [
        (one_label.as_str(), 1, one_time),
        ("mixed batch, one adapter per row", 1, mixed_time),
        ("adapter by adapter", groups.len(), separate_time),
    ] {
        println!(
            "{what:<38}{calls:>7}{tokens:>8}{:>12.1}{:>12.0}",
            time.as_secs_f64() * 1e3,
            tokens as f64 / time.as_secs_f64()
        );
    }
    let differing: Vec<usize> = (0..args.prompts)
        .filter(|&r| mixed[r] != separate[r])
        .collect();
    if !differing.is_empty() {
        return Err(format!(
            "the mixed batch's tokens differ from the adapter-by-adapter runs in rows {differing:?}"
        )
        .into());
    }
    let changed = (0..args.prompts).filter(|&r| mixed[r] != one[r]).count();
    println!(
        "\nThe mixed batch gave the adapter-by-adapter runs' tokens in all {} rows \
         ({changed} of them differ from the {first}-only run's).",
        args.prompts
    );
    Ok(())
}

/// Runs `body` `repeats` times (at least once): its last result and its fastest time.
fn fastest<T>(
    repeats: usize,
    mut body: impl FnMut() -> burn_lora::Result<T>,
) -> burn_lora::Result<(T, Duration)> {
    let mut best = Duration::MAX;
    let mut result = None;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        result = Some(body()?);
        best = best.min(start.elapsed());
    }
    Ok((result.expect("at least one run"), best))
}
