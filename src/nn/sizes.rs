//! The parameter count a model configuration implies, checked for overflow before anything of
//! that size is allocated.

use crate::error::{LoraError, Result};

/// `Σ Π term` over `terms`: the number of parameters of a model whose tensors (or groups of
/// equal tensors) have these factors.
///
/// # Errors
/// [`LoraError::InvalidModel`] naming `model` when the count, or its size in f32 bytes, does
/// not fit the address space: such a model cannot exist, and building it would abort.
pub(crate) fn check_parameter_count(model: &str, terms: &[&[usize]]) -> Result<usize> {
    terms
        .iter()
        .try_fold(0usize, |sum, factors| {
            let product = factors.iter().try_fold(1usize, |p, f| p.checked_mul(*f))?;
            sum.checked_add(product)
        })
        .filter(|count| {
            count
                .checked_mul(4)
                .is_some_and(|b| b <= isize::MAX as usize)
        })
        .ok_or_else(|| {
            LoraError::InvalidModel(format!(
                "the sizes of this {model} give more parameters than memory can address"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_refuses_overflow() {
        assert_eq!(
            check_parameter_count("MLP", &[&[3, 4], &[4], &[2, 2, 2]]).unwrap(),
            24
        );
        assert!(check_parameter_count("MLP", &[&[usize::MAX, 2]]).is_err());
        assert!(
            check_parameter_count("MLP", &[&[usize::MAX / 2], &[usize::MAX / 2, 1], &[9]]).is_err()
        );
        // Representable as a count but not in bytes.
        assert!(check_parameter_count("MLP", &[&[isize::MAX as usize / 2]]).is_err());
    }
}
