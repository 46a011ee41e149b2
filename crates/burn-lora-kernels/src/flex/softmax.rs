//! The masked softmax of attention scores in one pass over each row, and its backward in one
//! more; the rows of a mask broadcast over heads and queries.

use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::TensorMetadata;

use super::exp::exp;
use super::fused::{build, contiguous, host_bool, values, FusedOp};
use super::reduce::sum_of_products;

/// Values per parallel chunk, in whole rows.
const CHUNK: usize = 1 << 13;

/// Below this, `eˣ` is taken as 0 (as `f32::exp` underflows to 0 near it); [`exp`] clamps
/// there instead.
const UNDERFLOW: f32 = -87.0;

/// Rows of `width` per chunk.
pub(super) fn chunk(width: usize) -> usize {
    (CHUNK / width.max(1)).max(1) * width.max(1)
}

/// A Flex bool mask on the host, `[batch, heads, queries, keys]` where `heads` and `queries`
/// may be 1 and broadcast; one byte per value, contiguous, non-zero where masked.
#[derive(Debug, Clone)]
pub(crate) struct HostMask {
    mask: FlexTensor,
    dims: [usize; 4],
}

impl HostMask {
    /// The mask of backend `B`, or `None` when `B`'s masks are not a host backend's one-byte tensors.
    pub(crate) fn new<B: Backend>(mask: B::BoolTensorPrimitive) -> Option<Self> {
        let mask = contiguous(&host_bool(mask)?);
        if mask.dtype().size() != 1 {
            return None;
        }
        let dims = mask.shape().dims::<4>();
        Some(Self { mask, dims })
    }
}

/// The mask rows of a softmax: given, or none (a row of zeros for every query).
pub(super) enum MaskRows<'a> {
    Given(&'a [u8], [usize; 4]),
    None(Vec<u8>),
}

impl<'a> MaskRows<'a> {
    /// The rows of `mask`, or zeros of `keys` without one.
    pub(super) fn new(mask: Option<&'a HostMask>, keys: usize) -> Self {
        match mask {
            Some(mask) => {
                let (start, end) = mask.mask.layout().contiguous_offsets().unwrap_or((0, 0));
                Self::Given(&mask.mask.bytes()[start..end], mask.dims)
            }
            None => Self::None(vec![0; keys]),
        }
    }

    /// The row of query `query` of head `head` in batch entry `batch`.
    pub(super) fn row(&self, batch: usize, head: usize, query: usize) -> &[u8] {
        match self {
            Self::Given(mask, [_, heads, queries, keys]) => {
                let head = if *heads == 1 { 0 } else { head };
                let query = if *queries == 1 { 0 } else { query };
                &mask[((batch * heads + head) * queries + query) * keys..][..*keys]
            }
            Self::None(zeros) => zeros,
        }
    }
}

/// `softmax(scores)` over the last dimension with the masked scores set to `fill` (see
/// [`crate::masked_softmax_filled`]); the input is `[scores]`, `[batch, heads, queries, keys]`.
/// The caller checks that the mask's shape broadcasts to the scores'.
#[derive(Debug)]
pub(crate) struct MaskedSoftmax {
    mask: Option<HostMask>,
    fill: f32,
}

impl MaskedSoftmax {
    /// The operation for a mask of backend `B` (or none), or `None` when `B`'s masks are not a
    /// host backend's one-byte tensors (Flex's or NdArray's).
    pub(crate) fn new<B: Backend>(mask: Option<B::BoolTensorPrimitive>, fill: f32) -> Option<Self> {
        let mask = match mask {
            Some(mask) => Some(HostMask::new::<B>(mask)?),
            None => None,
        };
        Some(Self { mask, fill })
    }
}

impl FusedOp<1> for MaskedSoftmax {
    /// The probabilities.
    type State = FlexTensor;

    const DIFFERENTIABLE: [bool; 1] = [true];

    fn forward(&self, [scores]: [FlexTensor; 1]) -> (FlexTensor, Self::State) {
        let scores = contiguous(&scores);
        let [_, heads, queries, keys] = scores.shape().dims::<4>();
        let (raw, mask) = (values(&scores), MaskRows::new(self.mask.as_ref(), keys));
        let probs = build(scores.shape().as_slice(), chunk(keys), |start, out| {
            for (r, out) in out.chunks_exact_mut(keys.max(1)).enumerate() {
                let row = start / keys.max(1) + r;
                let (b, h, i) = (
                    row / (heads * queries),
                    row / queries % heads,
                    row % queries,
                );
                let at = row * keys..(row + 1) * keys;
                softmax_row(&raw[at], mask.row(b, h, i), 1.0, self.fill, out);
            }
        });
        (probs.clone(), probs)
    }

    /// `∂s = P ⊙ (dP − Σ P ⊙ dP)`, zero where masked (the fill's backward).
    fn backward(
        &self,
        probs: Self::State,
        grad: FlexTensor,
        [need_scores]: [bool; 1],
    ) -> [Option<FlexTensor>; 1] {
        if !need_scores {
            return [None];
        }
        let grad = contiguous(&grad);
        let [_, heads, queries, keys] = probs.shape().dims::<4>();
        let (p, dp, mask) = (
            values(&probs),
            values(&grad),
            MaskRows::new(self.mask.as_ref(), keys),
        );
        let scores_grad = build(probs.shape().as_slice(), chunk(keys), |start, out| {
            for (r, out) in out.chunks_exact_mut(keys.max(1)).enumerate() {
                let row = start / keys.max(1) + r;
                let (b, h, i) = (
                    row / (heads * queries),
                    row / queries % heads,
                    row % queries,
                );
                let at = row * keys..(row + 1) * keys;
                softmax_row_backward(&p[at.clone()], &dp[at], mask.row(b, h, i), 1.0, out);
            }
        });
        [Some(scores_grad)]
    }
}

/// One row of weights: `softmax(v)` with `v = raw · scale` where not masked and `fill` where
/// masked. A row with every key masked is uniform, as Burn's fill then softmax make it.
pub(super) fn softmax_row(raw: &[f32], mask: &[u8], scale: f32, fill: f32, out: &mut [f32]) {
    let max = filled_max(raw, mask, scale, fill);
    let sum = exponentials(raw, mask, scale, fill, max, out);
    let inverse = 1.0 / sum;
    for out in out.iter_mut() {
        *out *= inverse;
    }
}

/// One row of `dS = P ⊙ (dP − Σ P ⊙ dP) · scale`, zero where masked.
pub(super) fn softmax_row_backward(
    p: &[f32],
    dp: &[f32],
    mask: &[u8],
    scale: f32,
    out: &mut [f32],
) {
    let dot = sum_of_products(p, dp);
    for (((out, &p), &dp), &m) in out.iter_mut().zip(p).zip(dp).zip(mask) {
        *out = if m == 0 { p * (dp - dot) * scale } else { 0.0 };
    }
}

// Compiled once per instruction set and chosen at run time; `S` is used through the target
// features `with_simd` enables, not by name.

/// The largest of `raw · scale` (not masked) and `fill` (masked), in 16 partial maxima (one
/// vector register) so that the loop vectorises.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn filled_max<S: macerator::Simd>(raw: &[f32], mask: &[u8], scale: f32, fill: f32) -> f32 {
    let value = |s: f32, m: u8| if m == 0 { s * scale } else { fill };
    let mut partial = [f32::NEG_INFINITY; 16];
    let (raw_blocks, mask_blocks) = (raw.chunks_exact(16), mask.chunks_exact(16));
    let tail = raw_blocks
        .remainder()
        .iter()
        .zip(mask_blocks.remainder())
        .fold(f32::NEG_INFINITY, |max, (&s, &m)| max.max(value(s, m)));
    for (raw, mask) in raw_blocks.zip(mask_blocks) {
        for i in 0..16 {
            partial[i] = partial[i].max(value(raw[i], mask[i]));
        }
    }
    partial.iter().fold(tail, |max, &p| max.max(p))
}

/// `out = e^(v − max)` with `v` as in [`softmax_row`]; returns the sum, in 16 partial sums.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn exponentials<S: macerator::Simd>(
    raw: &[f32],
    mask: &[u8],
    scale: f32,
    fill: f32,
    max: f32,
    out: &mut [f32],
) -> f32 {
    let exponential = |s: f32, m: u8| {
        let x = if m == 0 { s * scale } else { fill } - max;
        if x < UNDERFLOW {
            0.0
        } else {
            exp(x)
        }
    };
    let blocks = raw.len() / 16 * 16;
    let (out_blocks, out_tail) = out.split_at_mut(blocks);
    let mut partial = [0.0f32; 16];
    for ((out, raw), mask) in out_blocks
        .chunks_exact_mut(16)
        .zip(raw.chunks_exact(16))
        .zip(mask.chunks_exact(16))
    {
        for i in 0..16 {
            out[i] = exponential(raw[i], mask[i]);
            partial[i] += out[i];
        }
    }
    let mut tail = 0.0;
    for ((out, &s), &m) in out_tail.iter_mut().zip(&raw[blocks..]).zip(&mask[blocks..]) {
        *out = exponential(s, m);
        tail += *out;
    }
    partial.iter().sum::<f32>() + tail
}
