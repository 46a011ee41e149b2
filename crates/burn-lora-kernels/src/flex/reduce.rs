//! Reductions over rows (sums, sums of products, maxima), vectorised in 16 partial results.

// Compiled once per instruction set and chosen at run time; `S` is used through the target
// features `with_simd` enables, not by name.

/// `Σ a ⊙ b`, in 16 partial sums (one vector register) so that the loop vectorises.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn sum_of_products<S: macerator::Simd>(a: &[f32], b: &[f32]) -> f32 {
    let mut partial = [0.0f32; 16];
    let (a_blocks, b_blocks) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a_blocks
        .remainder()
        .iter()
        .zip(b_blocks.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in a_blocks.zip(b_blocks) {
        for i in 0..16 {
            partial[i] += a[i] * b[i];
        }
    }
    partial.iter().sum::<f32>() + tail
}

/// `Σ a`, in 16 partial sums.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn sum<S: macerator::Simd>(a: &[f32]) -> f32 {
    let mut partial = [0.0f32; 16];
    let blocks = a.chunks_exact(16);
    let tail: f32 = blocks.remainder().iter().sum();
    for a in blocks {
        for i in 0..16 {
            partial[i] += a[i];
        }
    }
    partial.iter().sum::<f32>() + tail
}

/// `Σ (a − centre)²`, in 16 partial sums.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn sum_of_squares_about<S: macerator::Simd>(a: &[f32], centre: f32) -> f32 {
    let mut partial = [0.0f32; 16];
    let blocks = a.chunks_exact(16);
    let tail: f32 = blocks
        .remainder()
        .iter()
        .map(|a| (a - centre) * (a - centre))
        .sum();
    for a in blocks {
        for i in 0..16 {
            partial[i] += (a[i] - centre) * (a[i] - centre);
        }
    }
    partial.iter().sum::<f32>() + tail
}

/// `Σ a ⊙ (b − centre)`, in 16 partial sums.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn sum_of_products_about<S: macerator::Simd>(a: &[f32], b: &[f32], centre: f32) -> f32 {
    let mut partial = [0.0f32; 16];
    let (a_blocks, b_blocks) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a_blocks
        .remainder()
        .iter()
        .zip(b_blocks.remainder())
        .map(|(a, b)| a * (b - centre))
        .sum();
    for (a, b) in a_blocks.zip(b_blocks) {
        for i in 0..16 {
            partial[i] += a[i] * (b[i] - centre);
        }
    }
    partial.iter().sum::<f32>() + tail
}

/// `max a` (`−∞` for an empty row), in 16 partial maxima.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
pub(super) fn maximum<S: macerator::Simd>(a: &[f32]) -> f32 {
    let mut partial = [f32::NEG_INFINITY; 16];
    let blocks = a.chunks_exact(16);
    let tail = blocks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for a in blocks {
        for i in 0..16 {
            partial[i] = partial[i].max(a[i]);
        }
    }
    partial.iter().copied().fold(tail, f32::max)
}
