//! `y = x · W` for a few rows of `x` (decoding), on host slices, split over threads.
//!
//! At one to [`MAX_ROWS`] rows a product reads every weight once and does a few multiply-adds
//! with it, so its speed is the speed at which `W` streams from memory. The `gemm` crate runs
//! one row as a single-threaded loop, and a few rows through its packing kernels, at a third of
//! that speed here. This kernel splits a row-major `W`'s columns (`[k, n]`, a `Linear`'s weight)
//! into one contiguous range per thread and reads each weight once, in the order it lies in
//! memory.
//!
//! The loops are plain Rust, compiled once per instruction set by `macerator::with_simd` and
//! chosen at run time (AVX-512, AVX2, SSE, or scalar), so a binary still runs on a CPU without
//! the wider ones. Multiplies and adds are separate (no fused multiply-add, which would fall back
//! to a slow library call on CPUs without it): the sums differ from `gemm`'s by rounding only.

use rayon::prelude::*;

pub(crate) use crate::matmul::MAX_ROWS;
/// Column ranges are multiples of this: one AVX-512 register of `f32`.
const LANES: usize = 16;
/// Rows of a row-major `W` read together.
const DEPTH_STEP: usize = 4;
/// Below this many weights a thread would start for too little work.
const MIN_WEIGHTS_PER_THREAD: usize = 1 << 15;

/// `x · W` for `x` `[m, k]` row-major (`x.len() == m · k`) and `W` `[k, n]` row-major in `w`,
/// rows `stride` apart; returns `[m, n]` row-major. The caller checks the sizes ([`fits`]).
pub(crate) fn product(
    x: &[f32],
    [m, k, n]: [usize; 3],
    w: &[f32],
    stride: usize,
    threads: usize,
) -> Vec<f32> {
    let ranges = column_ranges(n, k, threads);
    let parts: Vec<Vec<f32>> = ranges
        .par_iter()
        .map(|&(start, end)| {
            let mut part = vec![0.0; m * (end - start)];
            row_major(x, [m, k], w, stride, start..end, &mut part);
            part
        })
        .collect();
    let mut out = vec![0.0; m * n];
    for (&(start, end), part) in ranges.iter().zip(&parts) {
        let width = end - start;
        for (row, values) in part.chunks_exact(width).enumerate() {
            out[row * n + start..row * n + end].copy_from_slice(values);
        }
    }
    out
}

/// Whether `w` holds a row-major `[k, n]` matrix with rows `stride` apart.
pub(crate) fn fits(w: &[f32], [k, n]: [usize; 2], stride: usize) -> bool {
    k > 0
        && n > 0
        && stride >= n
        && (k - 1)
            .checked_mul(stride)
            .and_then(|last| last.checked_add(n))
            .is_some_and(|end| end <= w.len())
}

/// `threads` column ranges of about equal size, in multiples of [`LANES`] but the last, fewer
/// when `W` is small.
fn column_ranges(n: usize, k: usize, threads: usize) -> Vec<(usize, usize)> {
    let by_work = (n * k / MIN_WEIGHTS_PER_THREAD).max(1);
    let blocks = n.div_ceil(LANES);
    let parts = threads.min(by_work).min(blocks).max(1);
    (0..parts)
        .map(|p| {
            let start = (blocks * p / parts) * LANES;
            let end = ((blocks * (p + 1) / parts) * LANES).min(n);
            (start, end)
        })
        .collect()
}

/// Columns `columns` of `x · W` for a row-major `W`, into `out` (`[m, columns.len()]`).
///
/// `W` is read in the order it lies in memory, [`DEPTH_STEP`] rows at a time (as many
/// sequential streams, which the hardware prefetches): each output row gets
/// `Σ x[r, i] · W[i, columns]` over those rows in one pass over its slice of `out`, which stays
/// in the L1 cache; the rows of `W` are read from memory for the first output row, and from
/// the cache for the others.
// `S` is the instruction set `with_simd` compiles the body for; the plain loops use it through
// the target features it enables, not by name.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn row_major<S: macerator::Simd>(
    x: &[f32],
    rows_and_depth: [usize; 2],
    w: &[f32],
    stride: usize,
    columns: core::ops::Range<usize>,
    out: &mut [f32],
) {
    let [m, k] = rows_and_depth;
    let width = columns.len();
    let row = |i: usize| &w[i * stride + columns.start..i * stride + columns.end];
    let whole = k / DEPTH_STEP * DEPTH_STEP;
    for i in (0..whole).step_by(DEPTH_STEP) {
        let (w0, w1, w2, w3) = (row(i), row(i + 1), row(i + 2), row(i + 3));
        for (r, y) in out.chunks_exact_mut(width).enumerate().take(m) {
            let a = &x[r * k + i..r * k + i + DEPTH_STEP];
            let (a0, a1, a2, a3) = (a[0], a[1], a[2], a[3]);
            for ((((y, &v0), &v1), &v2), &v3) in y.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
                *y += (a0 * v0 + a1 * v1) + (a2 * v2 + a3 * v3);
            }
        }
    }
    for i in whole..k {
        let wi = row(i);
        for (r, y) in out.chunks_exact_mut(width).enumerate().take(m) {
            let a = x[r * k + i];
            for (y, &v) in y.iter_mut().zip(wi) {
                *y += a * v;
            }
        }
    }
}
