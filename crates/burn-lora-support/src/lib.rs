//! What burn-lora's examples, tests and benches share, kept out of the library so that a crate
//! depending on burn-lora compiles none of it: the backend chosen by cargo feature
//! ([`backend`]), MNIST ([`mnist`]), a labelled text corpus and
//! Hugging Face's tokenizer ([`text`]), classification scores ([`scores`]), the PEFT fixtures shipped with the repository
//! ([`fixtures`]), the parsers' fuzzer ([`fuzz`]) and test helpers ([`testing`]). Not published.

pub mod backend;
mod error;
pub mod fixtures;
pub mod fuzz;
pub mod mnist;
pub mod scores;
pub mod testing;
pub mod text;

pub use error::{DataError, Result};
