//! Plumbing shared by the examples: data, training loops, evaluation tables, charts, timing.
//! Each example is a short story; everything it has in common with another lives here, once.
#![allow(dead_code)]

pub mod causal_lm;
pub mod chart;
pub mod classifier;
pub mod eval;
pub mod learner;
pub mod peak_heap;
pub mod peak_rss;
pub mod store;
pub mod text_classifier;
pub mod timing;

use std::path::PathBuf;
use std::sync::Arc;

use burn::data::dataset::transform::{PartialDataset, ShuffledDataset};
use burn::data::dataset::{Dataset, InMemDataset};

use burn_lora_support::mnist::{Mnist, MnistLoader};

/// Loads MNIST from `dir`, else `MNIST_DIR`, else burn-dataset's cache, else a download.
pub fn load_mnist(dir: Option<PathBuf>) -> Result<Mnist, Box<dyn std::error::Error>> {
    let loader = match dir {
        Some(dir) => MnistLoader::new().dir(dir),
        None => MnistLoader::new(),
    };
    let mnist = loader.load().map_err(|error| match error {
        burn_lora_support::DataError::DataNotFound(message) => {
            format!("{message}\nFor this example: --data-dir <folder> or MNIST_DIR=<folder>.")
        }
        other => other.to_string(),
    })?;
    println!(
        "MNIST from {}: {} training and {} test images",
        mnist.source,
        mnist.train.len(),
        mnist.test.len()
    );
    Ok(mnist)
}

/// Runs `body`; on error prints it (without a backtrace) and exits with status 1.
pub fn exit_on_error(body: impl FnOnce() -> Result<(), Box<dyn std::error::Error>>) {
    if let Err(error) = body() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

/// `items`, or a seeded sample of `limit` of them.
pub fn sample<I: Clone + Send + Sync + 'static>(
    items: InMemDataset<I>,
    limit: Option<usize>,
    seed: u64,
) -> Arc<dyn Dataset<I>> {
    match limit {
        Some(n) if n < items.len() => {
            Arc::new(PartialDataset::new(ShuffledDataset::new(items, seed), 0, n))
        }
        _ => Arc::new(items),
    }
}

/// `given`, else the folder the environment variable `var` names; an error saying which flag or
/// variable to set when neither is a folder.
pub fn folder(given: Option<PathBuf>, var: &str, flag: &str) -> Result<PathBuf, String> {
    let dir = given
        .or_else(|| std::env::var_os(var).map(PathBuf::from))
        .ok_or_else(|| format!("no folder given: pass {flag} <folder> or set {var}"))?;
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!(
            "{} is not a folder ({flag} / {var})",
            dir.display()
        ))
    }
}
