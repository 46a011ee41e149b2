//! The crate's error type.

use thiserror::Error;

/// What can go wrong when training LoRA models with burn-train.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A record of trainable parameters does not fit the model it is loaded into.
    #[error("the trainable-parameter record does not fit the model: {0}")]
    RecordMismatch(String),
    /// A data loader setting is invalid.
    #[error("invalid data loader setting: {0}")]
    InvalidLoader(String),
}

/// `Result` with [`TrainError`].
pub type Result<T> = core::result::Result<T, TrainError>;
