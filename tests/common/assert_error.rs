//! Assertions on [`LoraError`]s about files: the variant and what it names.

use burn_lora::LoraError;
use burn_lora::LoraLayer;

/// Asserts `err` is [`LoraError::InvalidFile`] for a path ending in `file`, in `format`.
pub fn assert_invalid_file(err: &LoraError, file: &str, expected_format: &str, case: &str) {
    assert!(
        is_invalid_file(err, file, expected_format),
        "{case:?}: {err:?}"
    );
}

/// Whether `err` is [`LoraError::InvalidFile`] for a path ending in `file`, in `format`.
pub fn is_invalid_file(err: &LoraError, file: &str, expected_format: &str) -> bool {
    matches!(err, LoraError::InvalidFile { path, format, .. }
        if path.ends_with(file) && format == expected_format)
}

/// Asserts `err` is a [`LoraError::ShapeMismatch`] whose `what` contains `what_contains`, with
/// these shapes.
pub fn assert_shape_mismatch(
    err: &LoraError,
    what_contains: &str,
    expected: &[usize],
    found: &[usize],
) {
    assert!(
        is_shape_mismatch(err, what_contains, expected, found),
        "expected ShapeMismatch of {what_contains:?}, {found:?} instead of {expected:?}; \
         got {err:?}"
    );
}

/// Whether `err` is a [`LoraError::ShapeMismatch`] whose `what` contains `what_contains`, with
/// these shapes.
pub fn is_shape_mismatch(
    err: &LoraError,
    what_contains: &str,
    expected: &[usize],
    found: &[usize],
) -> bool {
    matches!(err, LoraError::ShapeMismatch { what, expected: e, found: f }
        if what.contains(what_contains) && e.as_slice() == expected && f.as_slice() == found)
}
