//! LoRA fine-tuning of a causal language model in pure Rust: any Llama, Qwen2 or Mistral folder
//! from Hugging Face learns to write fortunes of one category.
//!
//! The model and its tokenizer (`tokenizers` crate, `tokenizer.json`) load from `--model-dir`,
//! or from a llama.cpp GGUF file with `--gguf` (the tokenizer from its metadata; the adapter is
//! then also saved for llama.cpp);
//! the texts of one category of the fortune corpus (`--data-dir` or `FORTUNES_DIR`) become
//! next-token training sequences. An adapter on every projection trains through burn-train's
//! `Learner` (adapter-only checkpoints, `TrainableOnly`), then the example prints the held-out
//! loss and perplexity with the adapter off and on, generates a few continuations with the base
//! and with the adapter, saves the adapter in PEFT's format, reloads it into a fresh copy of the
//! base and checks it gives the same logits, and checks the base is bit-identical to the file.
//!
//! `cargo run --release --example causal_lm_lora -- --help` lists the options. Without
//! `--model-dir` it runs on the repository's tiny random Llama (`tests/fixtures/peft/llama_tiny`,
//! a byte-level tokenizer), which shows the mechanics, not the quality.

mod common;

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn_lora::nn::llama::{CausalLm, CausalLmInput, GenerationConfig, Sampling};
use burn_lora::{load_adapter, save_adapter, GgufFile, LoraConfig, LoraModel, PathMap, Targets};
use burn_lora_support::backend::{self, Inference, Train};
use burn_lora_support::testing::assert_bit_identical;
use burn_lora_support::text::{CausalTokenizer, FortuneCorpus};
use burn_lora_train::{CausalLmTrainer, TrainableOnly};
use clap::Parser;
use common::causal_lm::{evaluate, fit, loader, tokenize, LmScores};
use common::learner::FitSettings;
use common::{folder, sample};

/// The adapter's name.
const ADAPTER: &str = "fortunes";

/// Fine-tune a causal LM on one category of fortunes with LoRA.
#[derive(Parser, Debug)]
struct Args {
    /// A Hugging Face causal-LM folder (config.json, model.safetensors or its shards,
    /// tokenizer.json); default: the repository's tiny random Llama.
    #[arg(long, conflicts_with = "gguf")]
    model_dir: Option<PathBuf>,
    /// A llama.cpp GGUF file instead (the tokenizer from its metadata): the adapter is then also
    /// saved for llama.cpp (`adapter.gguf`).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// The corpus folder, one file per category; default: FORTUNES_DIR.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The category whose fortunes the adapter learns.
    #[arg(long, default_value = "computers")]
    category: String,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// LoRA alpha (scale alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// Modules that get adapters (the end of their module paths), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    targets: Vec<String>,
    /// Epochs.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Longest training sequence in tokens; longer texts are cut.
    #[arg(long, default_value_t = 96)]
    max_len: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Train on only this many texts (a seeded sample).
    #[arg(long)]
    train_items: Option<usize>,
    /// Evaluate on only this many held-out texts (a seeded sample).
    #[arg(long)]
    test_items: Option<usize>,
    /// Continuations generated with the base and with the adapter.
    #[arg(long, default_value_t = 3)]
    samples: usize,
    /// New tokens per continuation.
    #[arg(long, default_value_t = 40)]
    new_tokens: usize,
    /// Random seed (adapter initialisation, batch order, sampling).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the Learner's logs and the adapter.
    #[arg(long, default_value = "target/causal_lm_lora")]
    out_dir: PathBuf,
}

fn main() {
    common::exit_on_error(|| run(Args::parse()));
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let source = match (&args.model_dir, &args.gguf) {
        (_, Some(file)) => Source::Gguf(file.clone()),
        (Some(dir), None) => Source::Folder(dir.clone()),
        (None, None) => Source::Folder(burn_lora_support::fixtures::peft_fixture("llama_tiny")),
    };
    let data_dir = folder(args.data_dir.clone(), "FORTUNES_DIR", "--data-dir")?;
    let device = backend::device();
    println!(
        "Backend: {}; model {}",
        backend::NAME,
        source.path().display()
    );
    Train::seed(&device, args.seed);

    // The model, its tokenizer and the texts of one category.
    let mut lm = source.load::<Train>(&device)?;
    let tokenizer = source.tokenizer()?;
    let config = lm.config().clone();
    let pad = config
        .pad_token_id
        .or(config.eos_token_ids.first().copied())
        .unwrap_or(0);
    let eos = config.eos_token_ids.first().copied();
    let corpus = FortuneCorpus::load(&data_dir, &[])?;
    let label = corpus
        .categories
        .iter()
        .position(|c| *c == args.category)
        .ok_or_else(|| format!("no category {:?} in {:?}", args.category, corpus.categories))?;
    let of_category = |split: &burn::data::dataset::InMemDataset<_>| {
        burn::data::dataset::Dataset::iter(split)
            .filter(|item: &burn_lora_support::text::FortuneItem| item.label == label)
            .collect::<Vec<_>>()
    };
    let (train_texts, test_texts) = (of_category(&corpus.train), of_category(&corpus.test));
    let train = sample(
        tokenize(&tokenizer, train_texts.into_iter(), eos, args.max_len)?,
        args.train_items,
        args.seed,
    );
    let test = sample(
        tokenize(
            &tokenizer,
            test_texts.clone().into_iter(),
            eos,
            args.max_len,
        )?,
        args.test_items,
        args.seed,
    );
    println!(
        "{}: {} training and {} held-out texts, at most {} tokens each",
        args.category,
        train.len(),
        test.len(),
        args.max_len
    );

    // LoRA on the projections; everything else frozen.
    let lora = LoraConfig::new(args.rank, args.alpha);
    lm.attach(ADAPTER, &lora, &Targets::names(args.targets.clone()))?;
    println!("{}", lm.parameter_report()?);
    let trainer = CausalLmTrainer::new(lm);
    trainer.check_dataset(train.as_ref())?;
    trainer.check_dataset(test.as_ref())?;
    let eval = loader::<Inference>(test.clone(), args.batch_size, pad, None);
    let mut before = trainer.lm.valid();
    before.set_enabled(false);
    let base_scores = evaluate(&before, &eval)?;

    let dir = args.out_dir.clone();
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let settings = FitSettings {
        dir: dir.join("learner"),
        lr: args.lr,
        epochs: args.epochs,
        checkpoints: true,
        weight_decay: Some(0.01),
    };
    let train_loader = loader::<Train>(train, args.batch_size, pad, Some(args.seed));
    let mut lm = fit(
        TrainableOnly::new(trainer),
        train_loader,
        eval.clone(),
        &settings,
    )?;
    let adapted_scores = evaluate(&lm, &eval)?;
    lm.set_enabled(false);
    let disabled_scores = evaluate(&lm, &eval)?;
    lm.set_enabled(true);
    println!(
        "\nHeld-out next-token loss ({} tokens):",
        adapted_scores.tokens
    );
    print_scores("base", &base_scores);
    print_scores("adapter off", &disabled_scores);
    print_scores("adapter on", &adapted_scores);

    // A few continuations of held-out openings, with the base and with the adapter.
    let prompts: Vec<Vec<u32>> = test_texts
        .iter()
        .take(args.samples)
        .map(|item| {
            let ids = tokenizer.encode(&item.text, true)?;
            Ok(ids[..ids.len().min(8)].to_vec())
        })
        .collect::<Result<_, burn_lora_support::DataError>>()?;
    let generation = GenerationConfig::new(args.new_tokens)
        .with_sampling(Sampling::Sample {
            temperature: 0.8,
            top_k: Some(40),
            top_p: Some(0.95),
        })
        .with_seed(args.seed);
    for (name, enabled) in [("base", false), ("adapter", true)] {
        lm.set_enabled(enabled);
        let out = lm.generate(&prompts, None, &generation, |_| {})?;
        println!("\nSamples with the {name}:");
        for (prompt, tokens) in prompts.iter().zip(&out.tokens) {
            let text = tokenizer.decode(&[prompt.as_slice(), tokens].concat())?;
            println!("  {:?}", text);
        }
    }
    lm.set_enabled(true);

    // Save in PEFT's format, reload into a fresh base: same logits; the base untouched.
    let adapter_dir = dir.join("adapter");
    save_adapter(&lm, ADAPTER, &adapter_dir, &PathMap::identity())?;
    let mut fresh = source.load::<Inference>(&device)?;
    let probe = CausalLmInput::left_padded(&prompts, pad, &device);
    let mut trained_base = lm.clone();
    trained_base.set_enabled(false);
    assert_bit_identical(
        trained_base.forward(probe.clone())?,
        fresh.forward(probe.clone())?,
    );
    println!(
        "\nThe frozen base is bit-identical to {}",
        source.path().display()
    );
    load_adapter(&mut fresh, ADAPTER, &adapter_dir, &PathMap::identity())?;
    assert_bit_identical(fresh.forward(probe.clone())?, lm.forward(probe)?);
    println!(
        "Adapter saved to {} and reloaded into a fresh base: the same logits",
        adapter_dir.display()
    );
    let base = match &source {
        Source::Folder(dir) => format!("\"{}\"", dir.display()),
        Source::Gguf(file) => format!(
            "\"{}\", gguf_file=\"{}\"",
            file.parent().unwrap_or(file).display(),
            file.file_name().unwrap_or_default().to_string_lossy()
        ),
    };
    println!(
        "In Python:\n  from peft import PeftModel\n  from transformers import AutoModelForCausalLM\n  \
         base = AutoModelForCausalLM.from_pretrained({base})\n  \
         model = PeftModel.from_pretrained(base, \"{}\")",
        adapter_dir.display()
    );
    if let Source::Gguf(file) = &source {
        let gguf = dir.join("adapter.gguf");
        lm.save_adapter_gguf(ADAPTER, &gguf)?;
        println!(
            "For llama.cpp: {} (llama-cli -m {} --lora {})",
            gguf.display(),
            file.display(),
            gguf.display()
        );
    }
    if adapted_scores.loss >= base_scores.loss {
        return Err(format!(
            "the adapter did not lower the held-out loss ({:.4} → {:.4})",
            base_scores.loss, adapted_scores.loss
        )
        .into());
    }
    Ok(())
}

/// Where the model comes from: a Hugging Face folder or a GGUF file.
enum Source {
    Folder(PathBuf),
    Gguf(PathBuf),
}

impl Source {
    fn path(&self) -> &Path {
        match self {
            Source::Folder(path) | Source::Gguf(path) => path,
        }
    }

    fn load<B: Backend>(&self, device: &B::Device) -> burn_lora::Result<CausalLm<B>> {
        match self {
            Source::Folder(dir) => CausalLm::from_pretrained(dir, device),
            Source::Gguf(file) => CausalLm::from_gguf(file, device),
        }
    }

    fn tokenizer(&self) -> Result<CausalTokenizer, Box<dyn std::error::Error>> {
        Ok(match self {
            Source::Folder(dir) => CausalTokenizer::from_file(&dir.join("tokenizer.json"))?,
            Source::Gguf(file) => {
                CausalTokenizer::from_tokenizer(GgufFile::open(file)?.tokenizer()?, file)
            }
        })
    }
}

fn print_scores(name: &str, scores: &LmScores) {
    println!(
        "  {name:<12} loss {:.4}  perplexity {:.2}",
        scores.loss, scores.perplexity
    );
}
