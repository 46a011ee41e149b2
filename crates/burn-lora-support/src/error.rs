//! The error of the data loaders.

use thiserror::Error;

/// What can go wrong while finding, reading or batching a data set.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DataError {
    /// A file or directory could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The path involved.
        path: String,
        /// What the operating system said.
        message: String,
    },
    /// A data file is malformed: wrong magic number, truncated, oversized, counts that disagree.
    #[error("{path}: {reason}")]
    InvalidData {
        /// The file (or the argument) at fault.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A data set was found nowhere; the message lists the places searched and how to fix it.
    #[error("{0}")]
    DataNotFound(String),
}

/// `Result` with [`DataError`] as the error.
pub type Result<T> = core::result::Result<T, DataError>;
