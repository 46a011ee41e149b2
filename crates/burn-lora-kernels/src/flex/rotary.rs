//! Rotary position embeddings applied while splitting a projection into heads, and the
//! backward of both in one pass.

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorMetadata;

use super::fused::{build, contiguous, values, FusedOp};

/// Rotates the heads of `[batch, seq, heads · head_dim]` into `[batch, heads, seq, head_dim]`
/// (see [`crate::rotary_heads`]); the inputs are `[x, cos, sin]`, the tables
/// `[batch, 1, seq, head_dim]`. The caller checks the shapes.
#[derive(Debug)]
pub(crate) struct RotaryHeads {
    pub(crate) heads: usize,
}

impl FusedOp<3> for RotaryHeads {
    /// The tables, contiguous.
    type State = [FlexTensor; 2];

    const DIFFERENTIABLE: [bool; 3] = [true, false, false];

    fn forward(&self, [x, cos, sin]: [FlexTensor; 3]) -> (FlexTensor, Self::State) {
        let (x, cos, sin) = (contiguous(&x), contiguous(&cos), contiguous(&sin));
        let [batch, seq, width] = x.shape().dims();
        let (heads, dim) = (self.heads, width / self.heads);
        let (xs, c, s) = (values(&x), values(&cos), values(&sin));
        // One chunk per (batch, head) plane of the output.
        let output = build(&[batch, heads, seq, dim], seq * dim, |start, plane| {
            let (b, h) = (start / (seq * dim) / heads, start / (seq * dim) % heads);
            for (t, out) in plane.chunks_exact_mut(dim).enumerate() {
                let token = b * seq + t;
                let x = &xs[token * width + h * dim..][..dim];
                let table = token * dim..(token + 1) * dim;
                rotate(x, &c[table.clone()], &s[table], out);
            }
        });
        (output, [cos, sin])
    }

    /// The rotation is orthogonal: its transpose rotates back, `∂x = g cos + rotate_halfᵀ(g
    /// sin)` with `rotate_halfᵀ([a₁, a₂]) = [a₂, −a₁]`, written in the input's layout.
    fn backward(
        &self,
        [cos, sin]: Self::State,
        grad: FlexTensor,
        [need_x, _, _]: [bool; 3],
    ) -> [Option<FlexTensor>; 3] {
        if !need_x {
            return [None, None, None];
        }
        let grad = contiguous(&grad);
        let [batch, heads, seq, dim] = grad.shape().dims();
        let (g, c, s) = (values(&grad), values(&cos), values(&sin));
        // One chunk per token of the input.
        let x_grad = build(&[batch, seq, heads * dim], heads * dim, |start, row| {
            let token = start / (heads * dim);
            let (b, t) = (token / seq, token % seq);
            let table = token * dim..(token + 1) * dim;
            let (c, s) = (&c[table.clone()], &s[table]);
            for (h, out) in row.chunks_exact_mut(dim).enumerate() {
                let g = &g[((b * heads + h) * seq + t) * dim..][..dim];
                rotate_back(g, c, s, out);
            }
        });
        [Some(x_grad), None, None]
    }
}

// Compiled once per instruction set and chosen at run time; `S` is used through the target
// features `with_simd` enables, not by name.

/// `out = x cos + rotate_half(x) sin`, `rotate_half([x₁, x₂]) = [−x₂, x₁]`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn rotate<S: macerator::Simd>(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    let (x1, x2) = x.split_at(half);
    let (c1, c2) = cos.split_at(half);
    let (s1, s2) = sin.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    for i in 0..half {
        o1[i] = x1[i] * c1[i] - x2[i] * s1[i];
        o2[i] = x2[i] * c2[i] + x1[i] * s2[i];
    }
}

/// `out = g cos + [g₂ sin₂, −g₁ sin₁]`: the transpose of [`rotate`].
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn rotate_back<S: macerator::Simd>(g: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = g.len() / 2;
    let (g1, g2) = g.split_at(half);
    let (c1, c2) = cos.split_at(half);
    let (s1, s2) = sin.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    for i in 0..half {
        o1[i] = g1[i] * c1[i] + g2[i] * s2[i];
        o2[i] = g2[i] * c2[i] - g1[i] * s1[i];
    }
}
