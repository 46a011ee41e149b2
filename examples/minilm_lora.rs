//! A real pretrained transformer, fine-tuned in pure Rust: all-MiniLM-L6-v2 (BERT, 6 layers,
//! 22.7 M parameters) classifies a fortune's category with a linear head on its mean-pooled hidden
//! states, trained three ways — the encoder frozen (head only), LoRA on the
//! attention's query and value (plus the head), and full fine-tuning — then compared in one
//! table: test accuracy, macro-F1, trainable parameters, median step time, peak heap, and the
//! size of what must be saved.
//!
//! Each run trains through burn-train's `Learner` (AdamW, loss and accuracy, Burn's progress
//! display) on burn-dataset datasets: the corpus tokenized once by the `tokenizers` crate
//! from `tokenizer.json`, batched and shuffled by Burn's `DataLoaderBuilder`. The LoRA adapter is
//! saved in Hugging Face PEFT's format, for `PeftModel.from_pretrained` in Python.
//!
//! `cargo run --release --example minilm_lora -- --help` lists the options. The model comes from
//! `--model-dir` or `MINILM_DIR`, the corpus from `--data-dir` or `FORTUNES_DIR`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::quantization::{QuantLevel, QuantScheme, QuantValue};
use burn::tensor::{Tensor, TensorData};
use burn_lora::nn::bert::Bert;
use burn_lora::{
    extract_adapter, save_adapter, save_adapter_converted, save_checkpoint, ExtractRank,
    LoraConfig, LoraInit, LoraModel, Targets,
};
use burn_lora_support::backend::{self, Inference, Train};
use burn_lora_support::scores::ClassificationScores;
use burn_lora_support::text::{
    BertTokenizer, FortuneCorpus, PadTo, TextBatch, TextBatcher, TokenizedItem,
};
use burn_lora_train::TrainableOnly;
use clap::Parser;
use common::learner::{fit, FitSettings};
use common::peak_heap::PeakHeap;
use common::text_classifier::{Mode, SentenceClassifier};
use common::{folder, sample};
use safetensors::tensor::{Dtype, TensorView};

#[global_allocator]
static HEAP: PeakHeap = PeakHeap::new();

/// The adapter's name in the model.
const ADAPTER: &str = "fortunes";

/// Sentences per evaluation batch.
const EVAL_BATCH: usize = 64;

/// Test sentences whose embeddings are saved beside the adapter, for checking it in Python.
const CHECK_SENTENCES: usize = 4;

/// Fine-tune all-MiniLM-L6-v2 to classify fortunes: head only, LoRA, full.
#[derive(Parser, Debug)]
struct Args {
    /// The Hugging Face model folder (config.json, model.safetensors, tokenizer.json); default:
    /// MINILM_DIR.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// The corpus folder, one file per category; default: FORTUNES_DIR.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Categories (file names), comma-separated; default: every file of the folder.
    #[arg(long, value_delimiter = ',')]
    categories: Vec<String>,
    /// Which trainings to run, comma-separated: head, lora, full.
    #[arg(long, value_delimiter = ',', default_value = "head,lora,full")]
    modes: Vec<Mode>,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// LoRA alpha (scale alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// How the adapter starts: kaiming (PEFT's default), gaussian (PEFT's: `A ~ N(0, 1/r²)`), pissa, pissa-niter-K (a
    /// randomised SVD with K power iterations) or olora. PiSSA and OLoRA rewrite the base; the
    /// adapter is then saved converted for the original checkpoint.
    #[arg(long, default_value = "kaiming", value_parser = parse_init)]
    init: LoraInit,
    /// Modules that get adapters: names matched against the end of Hugging Face's module paths
    /// (query, key, value, dense, word_embeddings, ...), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "query,value")]
    targets: Vec<String>,
    /// QLoRA: keep the encoder's linear base weights quantized during the LoRA training, `q8`
    /// or `q4` (Burn's `Q8S` / `Q4S`, one f32 scale per 32 values), or `none`.
    #[arg(long, value_enum, default_value_t = BaseStorage::None)]
    quantize_base: BaseStorage,
    /// Epochs.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Longest sequence in tokens; longer texts are cut, shorter ones padded.
    #[arg(long, default_value_t = 64)]
    max_len: usize,
    /// AdamW learning rate of the head-only training.
    #[arg(long, default_value_t = 1e-3)]
    lr_head: f64,
    /// AdamW learning rate of the LoRA training.
    #[arg(long, default_value_t = 5e-4)]
    lr_lora: f64,
    /// AdamW learning rate of full fine-tuning.
    #[arg(long, default_value_t = 5e-5)]
    lr_full: f64,
    /// AdamW's decoupled weight decay (PyTorch's default).
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f32,
    /// After full fine-tuning, extract an adapter from the fine-tuned encoder at each of these
    /// ranks (truncated SVD of every linear layer's change), comma-separated, and evaluate it on
    /// the pretrained encoder with the fine-tuned head.
    #[arg(long, value_delimiter = ',')]
    extract_ranks: Vec<usize>,
    /// Train on only this many training entries (a seeded sample), for a quick run.
    #[arg(long)]
    train_items: Option<usize>,
    /// Evaluate on only this many test entries (a seeded sample), for a quick run.
    #[arg(long)]
    test_items: Option<usize>,
    /// Random seed (head initialisation, adapters, dropout and batch order).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the Learner's logs and each training's saved files.
    #[arg(long, default_value = "target/minilm_lora")]
    out_dir: PathBuf,
}

/// One row of the results table.
struct Row {
    label: String,
    scores: ClassificationScores,
    trainable: usize,
    total: usize,
    median_step: Option<f64>,
    peak_heap: Option<usize>,
    saved: Vec<(PathBuf, u64)>,
}

fn main() {
    common::exit_on_error(|| run(Args::parse()));
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let model_dir = folder(args.model_dir.clone(), "MINILM_DIR", "--model-dir")?;
    let data_dir = folder(args.data_dir.clone(), "FORTUNES_DIR", "--data-dir")?;
    println!("Backend: {}", backend::NAME);

    let tokenizer = BertTokenizer::from_file(&model_dir.join("tokenizer.json"), args.max_len)?;
    let corpus = FortuneCorpus::load(&data_dir, &args.categories)?;
    let (train_counts, test_counts) = (corpus.counts(&corpus.train), corpus.counts(&corpus.test));
    println!("Corpus {}: category (train / test)", data_dir.display());
    for (i, name) in corpus.categories.iter().enumerate() {
        println!("  {name:<12}{:>6} /{:>5}", train_counts[i], test_counts[i]);
    }
    let train = sample(
        tokenizer.encode_dataset(&corpus.train)?,
        args.train_items,
        args.seed,
    );
    let test = sample(
        tokenizer.encode_dataset(&corpus.test)?,
        args.test_items,
        args.seed,
    );
    println!(
        "{} training and {} test entries, at most {} tokens each",
        train.len(),
        test.len(),
        args.max_len
    );

    let mut rows = Vec::new();
    for &mode in &args.modes {
        println!("\n== {mode}");
        let dir = args.out_dir.join(mode.to_string());
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let model = SentenceClassifier::<Train>::from_pretrained(
            &model_dir,
            corpus.num_classes(),
            &backend::device(),
        )?;
        rows.extend(train_one(
            mode, model, &args, &model_dir, &tokenizer, &train, &test, &dir,
        )?);
    }
    println!("\n{}", table(&rows));
    println!(
        "peak resident memory of this process: {:.0} MiB",
        common::peak_rss::max_rss_kib() as f64 / 1024.0
    );
    Ok(())
}

/// Trains, evaluates and saves one mode; after full fine-tuning, the adapters extracted from it.
#[allow(clippy::too_many_arguments)]
fn train_one(
    mode: Mode,
    mut model: SentenceClassifier<Train>,
    args: &Args,
    model_dir: &Path,
    tokenizer: &BertTokenizer,
    train: &Arc<dyn Dataset<TokenizedItem>>,
    test: &Arc<dyn Dataset<TokenizedItem>>,
    dir: &Path,
) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let device = backend::device();
    Train::seed(&device, args.seed);
    let init = match args.init {
        LoraInit::Gaussian { .. } => LoraInit::Gaussian {
            std: 1.0 / args.rank as f64,
        },
        ref other => other.clone(),
    };
    let lora = LoraConfig::new(args.rank, args.alpha).with_init(init);
    model.prepare(mode, ADAPTER, &lora, &Targets::names(args.targets.clone()))?;
    let label = match (mode, args.quantize_base.scheme()) {
        (Mode::Lora, Some(scheme)) => {
            println!("{}", model.bert.quantize_base(scheme)?);
            format!("{mode} {:?}", scheme.value).to_lowercase()
        }
        _ => mode.to_string(),
    };
    let total = model.num_params();
    let clock = model.clock.clone();
    let model = TrainableOnly::new(model);
    let trainable = model
        .trainable_record::<Train>()
        .params
        .iter()
        .map(|p| p.shape.iter().product::<usize>())
        .sum();
    println!("{trainable} trainable parameters of {total}");

    let lr = match mode {
        Mode::Head => args.lr_head,
        Mode::Lora => args.lr_lora,
        Mode::Full => args.lr_full,
    };
    let settings = FitSettings {
        dir: dir.join("learner"),
        lr,
        epochs: args.epochs,
        checkpoints: false,
        weight_decay: Some(args.weight_decay),
    };
    let batcher = TextBatcher::new(tokenizer, PadTo::Max);
    let train_loader: Arc<dyn DataLoader<Train, TextBatch<Train>>> =
        DataLoaderBuilder::new(batcher)
            .batch_size(args.batch_size)
            .shuffle(args.seed)
            .build(train.clone());
    let test_loader = eval_loader::<Inference>(batcher, test);

    clock.reset();
    HEAP.reset_peak();
    let model = fit(model, train_loader, test_loader.clone(), &settings)?.into_inner();
    let peak_heap = HEAP.peak_bytes();
    let scores = evaluate(&model, &test_loader, model.head.weight.dims()[1]);
    println!(
        "{mode}: test accuracy {:.3}, macro-F1 {:.3}",
        scores.accuracy, scores.macro_f1
    );
    let saved = save(mode, &model, &test_loader, dir)?;
    let mut rows = vec![Row {
        label,
        scores,
        trainable,
        total,
        median_step: clock.median_step(),
        peak_heap: Some(peak_heap),
        saved,
    }];
    if mode == Mode::Full {
        for &rank in &args.extract_ranks {
            rows.push(extracted(&model, rank, model_dir, &test_loader, dir)?);
        }
    }
    Ok(rows)
}

/// An adapter of rank `rank` extracted from the fully fine-tuned `full` (every linear layer of
/// the encoder), on the pretrained encoder with `full`'s head: evaluated and saved.
fn extracted(
    full: &SentenceClassifier<Inference>,
    rank: usize,
    model_dir: &Path,
    test: &Arc<dyn DataLoader<Inference, TextBatch<Inference>>>,
    dir: &Path,
) -> Result<Row, Box<dyn std::error::Error>> {
    let classes = full.head.weight.dims()[1];
    let mut model =
        SentenceClassifier::<Inference>::from_pretrained(model_dir, classes, &backend::device())?;
    let report = extract_adapter(
        &mut model.bert,
        &full.bert,
        ADAPTER,
        ExtractRank::Fixed(rank),
        &Targets::all_linear(),
    )?;
    model.head = full.head.clone();
    let missed = report.iter().map(|l| l.relative_error).sum::<f64>() / report.len() as f64;
    let scores = evaluate(&model, test, classes);
    println!(
        "extracted at r = {rank} from {} layers: test accuracy {:.3}, macro-F1 {:.3}; the \
         adapter misses {:.1} % of a layer's change on average (‖ΔW − A B‖ / ‖ΔW‖)",
        report.len(),
        scores.accuracy,
        scores.macro_f1,
        100.0 * missed
    );
    let adapter_dir = dir.join(format!("extracted_r{rank}"));
    save_adapter(
        &model.bert,
        ADAPTER,
        &adapter_dir,
        &Bert::<Inference>::hf_path_map("")?,
    )?;
    let path = adapter_dir.join(burn_lora::ADAPTER_WEIGHTS_FILE);
    let size = std::fs::metadata(&path)?.len();
    let trainable = model
        .bert
        .lora_layers()
        .iter()
        .filter_map(|layer| layer.adapter(ADAPTER))
        .map(|adapter| adapter.num_params())
        .sum();
    Ok(Row {
        label: format!("r{rank} of full"),
        scores,
        trainable,
        total: model.num_params(),
        median_step: None,
        peak_heap: None,
        saved: vec![(path, size)],
    })
}

/// `--quantize-base`'s values.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum BaseStorage {
    /// The base in f32.
    None,
    /// `Q8S`, one f32 scale per 32 values.
    Q8,
    /// `Q4S`, one f32 scale per 32 values.
    Q4,
}

impl BaseStorage {
    fn scheme(self) -> Option<QuantScheme> {
        let value = match self {
            Self::None => return None,
            Self::Q8 => QuantValue::Q8S,
            Self::Q4 => QuantValue::Q4S,
        };
        Some(
            QuantScheme::default()
                .with_value(value)
                .with_level(QuantLevel::block([32])),
        )
    }
}

/// `--init`'s value.
fn parse_init(name: &str) -> Result<LoraInit, String> {
    Ok(match name {
        "kaiming" => LoraInit::KaimingUniform,
        // The standard deviation is the rank's, set in `train_one`.
        "gaussian" => LoraInit::Gaussian { std: 1.0 },
        "pissa" => LoraInit::Pissa {
            power_iterations: None,
        },
        "olora" => LoraInit::Olora,
        _ => match name.strip_prefix("pissa-niter-").map(str::parse) {
            Some(Ok(iterations)) => LoraInit::Pissa {
                power_iterations: Some(iterations),
            },
            _ => {
                return Err(format!(
                    "{name:?}: kaiming, gaussian, pissa, pissa-niter-K or olora"
                ))
            }
        },
    })
}

/// Test batches in order.
fn eval_loader<B: Backend>(
    batcher: TextBatcher,
    test: &Arc<dyn Dataset<TokenizedItem>>,
) -> Arc<dyn DataLoader<B, TextBatch<B>>> {
    DataLoaderBuilder::new(batcher)
        .batch_size(EVAL_BATCH)
        .build(test.clone())
}

/// Accuracy and macro-F1 of `model` on the test set.
fn evaluate(
    model: &SentenceClassifier<Inference>,
    test: &Arc<dyn DataLoader<Inference, TextBatch<Inference>>>,
    classes: usize,
) -> ClassificationScores {
    let (mut predicted, mut actual) = (Vec::new(), Vec::new());
    for batch in test.iter() {
        let output = model.classify(batch);
        predicted.extend(output.output.argmax(1).into_data().iter::<i64>());
        actual.extend(output.targets.into_data().iter::<i64>());
    }
    let as_classes = |v: Vec<i64>| v.into_iter().map(|c| c as usize).collect::<Vec<_>>();
    ClassificationScores::new(&as_classes(predicted), &as_classes(actual), classes)
}

/// Writes what a user keeps of this training and returns each file with its size: the adapter
/// (PEFT format, Hugging Face's module names) and the head for LoRA, the head for head-only
/// training, the whole model for full fine-tuning. Beside a LoRA adapter go a few test sentences'
/// token ids and embeddings, to check the adapter in Python.
fn save(
    mode: Mode,
    model: &SentenceClassifier<Inference>,
    test: &Arc<dyn DataLoader<Inference, TextBatch<Inference>>>,
    dir: &Path,
) -> Result<Vec<(PathBuf, u64)>, Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    match mode {
        Mode::Full => {
            let path = dir.join("model.safetensors");
            save_checkpoint(model, &path)?;
            files.push(path);
        }
        Mode::Head | Mode::Lora => {
            if mode == Mode::Lora {
                let adapter = dir.join("adapter");
                // As it is, or converted for the original checkpoint after PiSSA or OLoRA.
                save_adapter_converted(
                    &model.bert,
                    ADAPTER,
                    &adapter,
                    &Bert::<Inference>::hf_path_map("")?,
                )?;
                files.push(adapter.join(burn_lora::ADAPTER_WEIGHTS_FILE));
                files.push(adapter.join(burn_lora::ADAPTER_CONFIG_FILE));
                save_embeddings(model, test, &dir.join("embeddings.safetensors"))?;
            }
            let head = dir.join("head.safetensors");
            save_checkpoint(&model.head, &head)?;
            files.push(head);
        }
    }
    files
        .into_iter()
        .map(|path| Ok((path.clone(), std::fs::metadata(&path)?.len())))
        .collect()
}

/// Saves the first [`CHECK_SENTENCES`] test sentences' `input_ids`, `attention_mask` (I64) and
/// sentence embeddings `e_lora` (F32) as safetensors.
fn save_embeddings(
    model: &SentenceClassifier<Inference>,
    test: &Arc<dyn DataLoader<Inference, TextBatch<Inference>>>,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let batch = test.iter().next().ok_or("no test sentence")?;
    let n = CHECK_SENTENCES.min(batch.labels.dims()[0]);
    let ids = batch.input_ids.slice(0..n);
    let mask = batch.attention_mask.slice(0..n);
    let embeddings: Tensor<Inference, 2> = model.embed(&TextBatch {
        input_ids: ids.clone(),
        attention_mask: mask.clone(),
        labels: batch.labels.slice(0..n),
    });
    let ids = ids.into_data().convert::<i64>();
    let mask = mask.into_data().convert::<i64>();
    let embeddings = embeddings.into_data().convert::<f32>();
    let views = [
        ("input_ids", view(Dtype::I64, &ids)?),
        ("attention_mask", view(Dtype::I64, &mask)?),
        ("e_lora", view(Dtype::F32, &embeddings)?),
    ];
    safetensors::serialize_to_file(views, None::<HashMap<String, String>>, path)?;
    Ok(())
}

/// A safetensors view of `data`'s little-endian bytes.
fn view(dtype: Dtype, data: &TensorData) -> Result<TensorView<'_>, safetensors::SafeTensorError> {
    TensorView::new(dtype, data.shape.to_vec(), data.as_bytes())
}

/// The results table.
fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<12}{:>10}{:>10}{:>14}{:>8}{:>12}{:>12}{:>14}\n",
        "mode", "accuracy", "macro-F1", "trainable", "%", "step (ms)", "peak heap", "saved"
    );
    for row in rows {
        let saved: u64 = row.saved.iter().map(|(_, size)| size).sum();
        let step = row
            .median_step
            .map_or("-".to_string(), |s| format!("{:.0}", s * 1e3));
        let heap = row.peak_heap.map_or("-".to_string(), |bytes| {
            format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
        });
        out += &format!(
            "{:<12}{:>10.3}{:>10.3}{:>14}{:>7.2}%{:>12}{:>12}{:>10.2} MB\n",
            row.label,
            row.scores.accuracy,
            row.scores.macro_f1,
            row.trainable,
            100.0 * row.trainable as f64 / row.total as f64,
            step,
            heap,
            saved as f64 / 1e6,
        );
    }
    out += "step: median wall time between training steps (forward, backward, AdamW, loading);\n";
    out += "peak heap: most bytes allocated at once during training; saved: the files below.\n";
    for row in rows {
        for (path, size) in &row.saved {
            out += &format!("  {:<12}{:>12} B  {}\n", row.label, size, path.display());
        }
    }
    out
}
