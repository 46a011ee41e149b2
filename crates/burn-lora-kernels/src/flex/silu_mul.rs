//! `silu(gate) ⊙ up` in one pass, and its backward in one pass.

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorMetadata;

use super::exp::sigmoid;
use super::fused::{build, build_pair, contiguous, values, FusedOp};

/// Values per parallel chunk.
const CHUNK: usize = 1 << 12;

/// SwiGLU's product (see [`crate::silu_mul`]).
#[derive(Debug)]
pub(crate) struct SiluMul;

impl FusedOp<2> for SiluMul {
    /// The gate and the up projection, contiguous.
    type State = [FlexTensor; 2];

    const DIFFERENTIABLE: [bool; 2] = [true, true];

    fn forward(&self, [gate, up]: [FlexTensor; 2]) -> (FlexTensor, Self::State) {
        let (gate, up) = (contiguous(&gate), contiguous(&up));
        let (g, u) = (values(&gate), values(&up));
        let output = build(gate.shape().as_slice(), CHUNK, |start, out| {
            forward_values(&g[start..], &u[start..], out)
        });
        (output, [gate, up])
    }

    /// With `s = σ(g)`: `∂/∂g = dy · u · s · (1 + g (1 − s))`, `∂/∂u = dy · g · s`, both in
    /// one pass (the pass reads three tensors from memory, and its arithmetic is free beside
    /// that).
    fn backward(
        &self,
        [gate, up]: Self::State,
        grad: FlexTensor,
        [need_gate, need_up]: [bool; 2],
    ) -> [Option<FlexTensor>; 2] {
        if !(need_gate || need_up) {
            return [None, None];
        }
        let grad = contiguous(&grad);
        let (g, u, dy) = (values(&gate), values(&up), values(&grad));
        let [gate_grad, up_grad] = build_pair(gate.shape().as_slice(), CHUNK, |start, [dg, du]| {
            backward_values(&g[start..], &u[start..], &dy[start..], dg, du)
        });
        [need_gate.then_some(gate_grad), need_up.then_some(up_grad)]
    }
}

// The loops below are compiled once per instruction set and chosen at run time; `S` is used
// through the target features `with_simd` enables, not by name.

/// `out = g · σ(g) · u`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn forward_values<S: macerator::Simd>(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((out, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *out = g * sigmoid(g) * u;
    }
}

/// `dg = dy · u · σ(g) · (1 + g (1 − σ(g)))`, `du = dy · g · σ(g)`.
#[allow(clippy::extra_unused_type_parameters)]
#[macerator::with_simd]
fn backward_values<S: macerator::Simd>(
    g: &[f32],
    u: &[f32],
    dy: &[f32],
    dg: &mut [f32],
    du: &mut [f32],
) {
    for ((((dg, du), &g), &u), &dy) in dg.iter_mut().zip(du).zip(g).zip(u).zip(dy) {
        let s = sigmoid(g);
        *dg = dy * u * s * (1.0 + g * (1.0 - s));
        *du = dy * g * s;
    }
}
