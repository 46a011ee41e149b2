//! Text classification data for the transformer examples, tests and benches: a labelled corpus
//! read from category files ([`FortuneCorpus`]), a Hugging Face tokenizer read from its
//! `tokenizer.json` with the `tokenizers` crate ([`BertTokenizer`], no Python), and Burn's
//! data-loading pieces over them: a burn-dataset `Dataset` of [`TokenizedItem`]s and a
//! [`TextBatcher`] that pads them into a [`TextBatch`].
//!
//! ```no_run
//! use std::path::Path;
//! use burn::data::dataloader::DataLoaderBuilder;
//! use burn_lora_support::backend::Inference as B;
//! use burn_lora_support::text::{BertTokenizer, FortuneCorpus, PadTo, TextBatcher};
//!
//! let tokenizer = BertTokenizer::from_file(Path::new("all-MiniLM-L6-v2/tokenizer.json"), 64)?;
//! let corpus = FortuneCorpus::load(Path::new("fortunes"), &[])?;
//! let train = tokenizer.encode_dataset(&corpus.train)?;
//! let loader = DataLoaderBuilder::<B, _, _>::new(TextBatcher::new(&tokenizer, PadTo::Max))
//!     .batch_size(16)
//!     .shuffle(0)
//!     .build(train);
//! # Ok::<(), burn_lora_support::DataError>(())
//! ```

mod batch;
mod causal_tokenizer;
mod fortunes;
mod tokenizer;

pub use batch::{PadTo, TextBatch, TextBatcher, TokenizedItem};
pub use causal_tokenizer::CausalTokenizer;
pub use fortunes::{FortuneCorpus, FortuneItem, TEST_EVERY};
pub use tokenizer::BertTokenizer;
