//! `y = x · W` for a few rows of `x` (decoding), on host slices, split over threads.
//!
//! At one to [`MAX_ROWS`] rows a product reads every weight once and does a few multiply-adds
//! with it, so its speed is the speed at which `W` streams from memory. The `gemm` crate runs
//! one row as a single-threaded loop, and a few rows through its packing kernels, at a third of
//! that speed here. This kernel splits a row-major `W`'s columns (`[k, n]`, a `Linear`'s weight)
//! into one contiguous range per thread and reads each weight once, in the order it lies in
//! memory.
//!
//! The ranges run on the [`team`](super::team)'s helpers, which stay awake between the products
//! of a step (Rayon's threads fall asleep between them, and waking them cost more than a small
//! product).
//!
//! The loops are plain Rust, compiled once per instruction set by `macerator::with_simd` and
//! chosen at run time (AVX-512, AVX2, SSE, or scalar), so a binary still runs on a CPU without
//! the wider ones. Multiplies and adds are separate (no fused multiply-add, which would fall back
//! to a slow library call on CPUs without it): the sums differ from `gemm`'s by rounding only.

use std::sync::Arc;

use burn::backend::flex::FlexTensor;

use super::team::team;
pub(crate) use crate::matmul::MAX_ROWS;
/// Column ranges are multiples of this: one AVX-512 register of `f32`.
const LANES: usize = 16;
/// Rows of a transposed `W` dotted with every row of `x` before the next ones are read.
const COLUMN_BLOCK: usize = 8;
/// Rows of a row-major `W` read together.
const DEPTH_STEP: usize = 4;
/// Below this many weights a thread would start for too little work.
const MIN_WEIGHTS_PER_THREAD: usize = 1 << 15;

/// How a matrix `W` `[k, n]` lies in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Row `i` of `W` at `i · stride` (a `Linear`'s weight, or a column slice of one).
    RowMajor,
    /// Column `j` of `W` at `j · stride`: `Wᵀ` row-major (tied embeddings read transposed).
    Transposed,
}

/// A host tensor's buffer, which a helper thread can hold (a clone shares it).
#[derive(Clone, Debug)]
pub(crate) enum HostBuffer {
    Flex(FlexTensor),
    #[cfg(feature = "ndarray")]
    NdArray(burn::backend::ndarray::NdArrayTensor),
}

impl HostBuffer {
    /// The buffer's `f32` values in the order they lie in memory (from the lowest address: the
    /// first value of a view whose strides are not negative), or nothing.
    fn values(&self) -> &[f32] {
        match self {
            Self::Flex(tensor) => tensor.storage::<f32>(),
            #[cfg(feature = "ndarray")]
            Self::NdArray(burn::backend::ndarray::NdArrayTensor::F32(storage)) => {
                storage.view().to_slice_memory_order().unwrap_or(&[])
            }
            #[cfg(feature = "ndarray")]
            Self::NdArray(_) => &[],
        }
    }
}

/// A matrix `W` `[k, n]` in a host buffer, which a helper thread can hold: its rows (or
/// columns, [`Layout::Transposed`]) start at `start` of the buffer's `f32` values and lie
/// `stride` apart.
#[derive(Clone, Debug)]
pub(crate) struct SharedMatrix {
    buffer: HostBuffer,
    start: usize,
    stride: usize,
    layout: Layout,
}

impl SharedMatrix {
    /// `W` `[k, n]` in `buffer`'s `f32` values, or `None` when the buffer does not hold it.
    pub(crate) fn new(
        buffer: HostBuffer,
        start: usize,
        stride: usize,
        layout: Layout,
        [k, n]: [usize; 2],
    ) -> Option<Self> {
        let matrix = Self {
            buffer,
            start,
            stride,
            layout,
        };
        let values = matrix.buffer.values().get(start..)?;
        let lines = match layout {
            Layout::RowMajor => [k, n],
            Layout::Transposed => [n, k],
        };
        fits(values, lines, stride).then_some(matrix)
    }

    /// The buffer's values from the matrix's first one.
    fn values(&self) -> &[f32] {
        // In bounds: `new` checked it.
        &self.buffer.values()[self.start..]
    }
}

/// `x · W` for `x` `[m, k]` row-major (`x.len() == m · k`) and `W` `[k, n]`; returns `[m, n]`
/// row-major, its columns split in up to `threads` ranges.
pub(crate) fn product(
    x: Arc<[f32]>,
    [m, k, n]: [usize; 3],
    w: &SharedMatrix,
    threads: usize,
) -> Vec<f32> {
    let ranges = column_ranges(n, k, threads);
    let jobs = ranges
        .iter()
        .map(|&(start, end)| {
            let (x, w) = (Arc::clone(&x), w.clone());
            Box::new(move || {
                let mut part = vec![0.0; m * (end - start)];
                let kernel = match w.layout {
                    Layout::RowMajor => row_major,
                    Layout::Transposed => transposed,
                };
                kernel(&x, [m, k], w.values(), w.stride, start..end, &mut part);
                part
            }) as Box<dyn FnOnce() -> Vec<f32> + Send>
        })
        .collect();
    let parts = team().run(jobs);
    let mut out = vec![0.0; m * n];
    for (&(start, end), part) in ranges.iter().zip(&parts) {
        let width = end - start;
        for (row, values) in part.chunks_exact(width).enumerate() {
            out[row * n + start..row * n + end].copy_from_slice(values);
        }
    }
    out
}

/// Whether `w` holds `lines` lines of `width` values each, `stride` apart.
fn fits(w: &[f32], [lines, width]: [usize; 2], stride: usize) -> bool {
    lines > 0
        && width > 0
        && stride >= width
        && (lines - 1)
            .checked_mul(stride)
            .and_then(|last| last.checked_add(width))
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

/// Columns `columns` of `x · W` for a transposed `W` (`Wᵀ` `[n, k]` row-major, rows `stride`
/// apart), into `out` (`[m, columns.len()]`): each output is the dot product of a row of `x`
/// and a row of `Wᵀ`.
///
/// `Wᵀ` is read in the order it lies in memory, [`COLUMN_BLOCK`] rows at a time; each block is
/// read from memory for the first row of `x` and from the L1 cache for the others.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn transposed<S: macerator::Simd>(
    x: &[f32],
    rows_and_depth: [usize; 2],
    w: &[f32],
    stride: usize,
    columns: core::ops::Range<usize>,
    out: &mut [f32],
) {
    let [m, k] = rows_and_depth;
    let width = columns.len();
    for block in (columns.start..columns.end).step_by(COLUMN_BLOCK) {
        let block_end = (block + COLUMN_BLOCK).min(columns.end);
        for r in 0..m {
            let a = &x[r * k..(r + 1) * k];
            let y = &mut out[r * width..(r + 1) * width];
            for j in block..block_end {
                y[j - columns.start] = dot(a, &w[j * stride..j * stride + k]);
            }
        }
    }
}

/// `Σ a[i] · b[i]`, in [`LANES`] partial sums (inlined into the caller's instruction set).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; LANES];
    let whole = a.len() / LANES * LANES;
    for (a, b) in a[..whole]
        .chunks_exact(LANES)
        .zip(b[..whole].chunks_exact(LANES))
    {
        for ((sum, &a), &b) in sums.iter_mut().zip(a).zip(b) {
            *sum += a * b;
        }
    }
    let tail: f32 = a[whole..].iter().zip(&b[whole..]).map(|(a, b)| a * b).sum();
    sums.iter().sum::<f32>() + tail
}
