//! What burn-lora's examples, tests and benches share, kept out of the library so that a crate
//! depending on burn-lora compiles none of it: the backend chosen by cargo feature
//! ([`backend`]), MNIST ([`mnist`]), the PEFT fixtures shipped with the repository
//! ([`fixtures`]) and test helpers ([`testing`]). Not published.

pub mod backend;
mod error;
pub mod fixtures;
pub mod mnist;
pub mod testing;

pub use error::{DataError, Result};
