//! The crate's error type.

use thiserror::Error;

/// An optimizer hyper-parameter outside its valid range (a beta outside `[0, 1)`, ...).
#[derive(Debug, Clone, PartialEq, Error)]
#[error("optimizer setting {name} = {value} is invalid: it must be {expected}")]
pub struct InvalidSetting {
    /// The setting.
    pub name: String,
    /// The value given.
    pub value: f64,
    /// The valid range, in words.
    pub expected: String,
}

/// `Result` with [`InvalidSetting`] as the error.
pub type Result<T> = core::result::Result<T, InvalidSetting>;
