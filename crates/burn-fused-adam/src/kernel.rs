//! The Adam update of one parameter as a single pass over host memory.
//!
//! Burn's tensor-level Adam makes about a dozen passes over every parameter (each scalar
//! multiply, add, square, square root and divide is its own operation with its own buffer). On
//! a CPU backend those passes are memory-bound, so one fused loop that reads the parameter,
//! gradient and both moments once and writes them once is several times faster. The arithmetic
//! is the same as Burn's, operation for operation, so the results agree to the last bit or two.

use rayon::prelude::*;

/// Elements per parallel chunk; below two chunks the update runs on the calling thread.
const CHUNK: usize = 1 << 16;

/// Gradients and first moments smaller than this in magnitude are taken as zero, and second
/// moments smaller than its square, unless epsilon is so small that this would change an update
/// (see [`AdamCoefficients::tiny`]). Without this, a parameter whose gradient has died out (a
/// saturated softmax, a dead unit) drives the moments into subnormal floats, whose arithmetic
/// costs x86 cores about a hundred times as much: the step was seen to slow down 6×.
pub(crate) const TINY: f32 = 1e-16;

/// The most a flush may change a parameter's update, relative to the learning rate.
const FLUSH_EFFECT: f32 = 1e-8;

/// The scalars of one Adam step at time `t`, precomputed once per step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AdamCoefficients {
    /// `β₁`.
    pub beta_1: f32,
    /// `β₂`.
    pub beta_2: f32,
    /// `√(1 - β₂ᵗ) / (1 - β₁ᵗ)`: both bias corrections in one factor.
    pub correction: f32,
    /// `ε · √(1 - β₂ᵗ)`: epsilon in the units of the uncorrected second moment.
    pub epsilon: f32,
    /// The learning rate.
    pub lr: f32,
    /// L2 penalty added to the gradient (`g + λ·θ`), 0 for none.
    pub l2_penalty: f32,
    /// Decoupled decay factor `1 - lr·λ` applied to the parameter (AdamW), 1 for none.
    pub decay: f32,
    /// Gradients (after the L2 penalty) and first moments smaller than this in magnitude are
    /// flushed to zero.
    pub tiny: f32,
    /// Second moments smaller than this are flushed to zero.
    pub tiny_square: f32,
}

impl AdamCoefficients {
    /// The coefficients of step `time` (counted from 1).
    pub fn new(
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        lr: f64,
        weight_decay: f32,
        decoupled: bool,
        time: usize,
    ) -> Self {
        let time = i32::try_from(time).unwrap_or(i32::MAX);
        let correction_2 = (1.0 - beta_2.powi(time)).sqrt();
        let correction_1 = 1.0 - beta_1.powi(time);
        let lr = lr as f32;
        let (tiny, tiny_square) = Self::tiny(epsilon, correction_1, correction_2);
        Self {
            beta_1,
            beta_2,
            correction: correction_2 / correction_1,
            epsilon: epsilon * correction_2,
            lr,
            l2_penalty: if decoupled { 0.0 } else { weight_decay },
            decay: if decoupled {
                1.0 - lr * weight_decay
            } else {
                1.0
            },
            tiny,
            tiny_square,
        }
    }

    /// The flush thresholds of a step: [`TINY`] and its square, lowered where epsilon is small
    /// enough for them to matter. The update is `lr · m̂ / (√v̂ + ε)`, with `m̂ = m / (1 - β₁ᵗ)`
    /// and `√v̂ = √v / √(1 - β₂ᵗ)`, so
    ///
    /// - a first moment below `1e-8 · ε · (1 - β₁ᵗ)` moves the update by less than `lr · 1e-8`,
    ///   and by no more at any later step, where it would have decayed; a gradient enters the
    ///   moment with weight `1 - β₁ < 1`, so the same threshold covers it;
    /// - a second moment below `(ε · √(1 - β₂ᵗ) · 2⁻²⁵)²` has a root too small to change
    ///   `√v + ε · √(1 - β₂ᵗ)` when rounded.
    ///
    /// With the default settings the thresholds are at least `1e-17` and `8e-35`: every stored
    /// value is 0 or larger, and no product in the loop underflows. A much smaller `ε` asks for
    /// the small values, and gets them (at the speed of subnormal arithmetic, if it comes to
    /// that).
    fn tiny(epsilon: f32, correction_1: f32, correction_2: f32) -> (f32, f32) {
        let tiny = TINY.min(FLUSH_EFFECT * epsilon * correction_1);
        let unseen = epsilon * correction_2 * f32::EPSILON / 4.0;
        (tiny, (TINY * TINY).min(unseen * unseen))
    }
}

/// Updates `param`, `moment_1` and `moment_2` in place from `grad`. All four slices have the
/// same length and the same element order. Large parameters are split across rayon's threads.
pub(crate) fn adam_update(
    param: &mut [f32],
    grad: &[f32],
    moment_1: &mut [f32],
    moment_2: &mut [f32],
    c: &AdamCoefficients,
) {
    debug_assert!(
        grad.len() == param.len() && moment_1.len() == param.len() && moment_2.len() == param.len()
    );
    if param.len() < 2 * CHUNK {
        update_chunk(param, grad, moment_1, moment_2, c);
        return;
    }
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(moment_1.par_chunks_mut(CHUNK))
        .zip(moment_2.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| update_chunk(p, g, m, v, c));
}

/// The same update when `param` is shared with another holder (burn-train's Learner keeps its
/// copy of the model during the step): the gradient, read once and not needed afterwards, is
/// overwritten with the new parameter values, so the caller hands the gradient's buffer back as
/// the parameter. No buffer is allocated, zeroed or copied.
pub(crate) fn adam_update_over_grad(
    param: &[f32],
    grad: &mut [f32],
    moment_1: &mut [f32],
    moment_2: &mut [f32],
    c: &AdamCoefficients,
) {
    debug_assert!(
        grad.len() == param.len() && moment_1.len() == param.len() && moment_2.len() == param.len()
    );
    if param.len() < 2 * CHUNK {
        update_chunk_over_grad(param, grad, moment_1, moment_2, c);
        return;
    }
    param
        .par_chunks(CHUNK)
        .zip(grad.par_chunks_mut(CHUNK))
        .zip(moment_1.par_chunks_mut(CHUNK))
        .zip(moment_2.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| update_chunk_over_grad(p, g, m, v, c));
}

/// [`update_chunk`] reading the parameter from `p` and writing it over `g`.
fn update_chunk_over_grad(
    p: &[f32],
    g: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    c: &AdamCoefficients,
) {
    if c.l2_penalty != 0.0 {
        update_loop_over_grad::<true>(p, g, m, v, c);
    } else {
        update_loop_over_grad::<false>(p, g, m, v, c);
    }
}

/// [`update_loop`] reading the parameter from `p` and writing it over `g`.
#[inline(always)]
fn update_loop_over_grad<const L2: bool>(
    p: &[f32],
    g: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    c: &AdamCoefficients,
) {
    for (((&p, slot), m), v) in p
        .iter()
        .zip(g.iter_mut())
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        let grad = *slot;
        *slot = p;
        update_element::<L2>(slot, grad, m, v, c);
    }
}

/// One chunk, with the weight-decay branch taken outside the loop so the loop vectorises.
fn update_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &AdamCoefficients) {
    if c.l2_penalty != 0.0 {
        update_loop::<true>(p, g, m, v, c);
    } else {
        update_loop::<false>(p, g, m, v, c);
    }
}

/// The fused loop. The operation order follows Burn's `Adam` exactly:
/// `m = β₁m + (1-β₁)g`, `v = β₂v + (1-β₂)g²`, `θ = θ - lr · (m·c) / (√v + ε')`.
#[inline(always)]
fn update_loop<const L2: bool>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    c: &AdamCoefficients,
) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        update_element::<L2>(p, g, m, v, c);
    }
}

/// One element of the update.
#[inline(always)]
fn update_element<const L2: bool>(
    p: &mut f32,
    g: f32,
    m: &mut f32,
    v: &mut f32,
    c: &AdamCoefficients,
) {
    let (b1, b2) = (c.beta_1, c.beta_2);
    let (f1, f2) = (1.0 - b1, 1.0 - b2);
    let g = flush(if L2 { *p * c.l2_penalty + g } else { g }, c.tiny);
    *m = flush(*m * b1 + g * f1, c.tiny);
    *v = flush(*v * b2 + g * g * f2, c.tiny_square);
    let step = (*m * c.correction) / (v.sqrt() + c.epsilon) * c.lr;
    *p = *p * c.decay - step;
}

/// `x`, or 0 when `|x| < tiny` (NaN stays NaN). Compiles to a compare and a blend.
#[inline(always)]
fn flush(x: f32, tiny: f32) -> f32 {
    if x.abs() < tiny {
        0.0
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook (PyTorch) formulation, in f64.
    fn reference(p: f64, g: f64, m: f64, v: f64, t: i32, lr: f64) -> (f64, f64, f64) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let m = b1 * m + (1.0 - b1) * g;
        let v = b2 * v + (1.0 - b2) * g * g;
        let m_hat = m / (1.0 - b1.powi(t));
        let v_hat = v / (1.0 - b2.powi(t));
        (p - lr * m_hat / (v_hat.sqrt() + eps), m, v)
    }

    #[test]
    fn matches_textbook_adam_across_chunks() {
        let n = 2 * CHUNK + 17;
        let mut p: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) / 10.0).collect();
        let g: Vec<f32> = (0..n).map(|i| ((i % 31) as f32 - 15.0) / 7.0).collect();
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        let (mut rp, mut rm, mut rv): (Vec<f64>, Vec<f64>, Vec<f64>) = (
            p.iter().map(|&x| x as f64).collect(),
            vec![0.0; n],
            vec![0.0; n],
        );
        for t in 1..=3 {
            let c = AdamCoefficients::new(0.9, 0.999, 1e-8, 1e-2, 0.0, false, t);
            adam_update(&mut p, &g, &mut m, &mut v, &c);
            for i in 0..n {
                (rp[i], rm[i], rv[i]) = reference(rp[i], g[i] as f64, rm[i], rv[i], t as i32, 1e-2);
            }
        }
        for i in 0..n {
            assert!(
                (p[i] as f64 - rp[i]).abs() < 1e-5,
                "param {i}: {} vs {}",
                p[i],
                rp[i]
            );
            assert!((m[i] as f64 - rm[i]).abs() < 1e-5, "m {i}");
            assert!((v[i] as f64 - rv[i]).abs() < 1e-5, "v {i}");
        }
    }

    #[test]
    fn weight_decay_coupled_and_decoupled() {
        // With a zero gradient and zero moments the Adam step is zero, so only the decay acts.
        let (mut m, mut v) = (vec![0.0f32; 4], vec![0.0f32; 4]);
        let mut p = vec![2.0f32; 4];
        let c = AdamCoefficients::new(0.9, 0.999, 1e-8, 0.1, 0.5, true, 1);
        adam_update(&mut p, &[0.0; 4], &mut m, &mut v, &c);
        assert_eq!(p, vec![2.0 * (1.0 - 0.1 * 0.5); 4]);

        // Coupled: the penalty enters the gradient, so the moments see λθ.
        let (mut m, mut v) = (vec![0.0f32; 4], vec![0.0f32; 4]);
        let mut p = vec![2.0f32; 4];
        let c = AdamCoefficients::new(0.9, 0.999, 1e-8, 0.1, 0.5, false, 1);
        adam_update(&mut p, &[0.0; 4], &mut m, &mut v, &c);
        assert!(
            (m[0] - 0.1 * 1.0).abs() < 1e-7,
            "m = (1-β₁)·λθ, got {}",
            m[0]
        );
        assert!(
            p[0] < 2.0 && p[0] > 1.8,
            "θ moves against the penalty: {}",
            p[0]
        );
    }

    #[test]
    fn vanishing_gradients_flush_to_zero_instead_of_going_subnormal() {
        let (mut m, mut v) = (vec![1e-3f32; 2], vec![1e-6f32; 2]);
        let mut p = vec![1.0f32; 2];
        let before = p.clone();
        // A gradient that has died out: subnormal, then exactly zero for many steps.
        for t in 1..=2000 {
            let g = if t == 1 {
                [1e-40f32, -1e-39]
            } else {
                [0.0, 0.0]
            };
            let c = AdamCoefficients::new(0.9, 0.999, 1e-8, 1e-3, 0.0, false, t);
            adam_update(&mut p, &g, &mut m, &mut v, &c);
            for x in m.iter().chain(&v) {
                assert!(
                    *x == 0.0 || x.is_normal(),
                    "step {t}: subnormal moment {x:e}"
                );
            }
        }
        assert_eq!(m, vec![0.0; 2], "the first moment decays to exactly zero");
        assert!(
            p.iter().zip(&before).all(|(a, b)| a < b),
            "the early momentum still moved θ"
        );
        assert!(p.iter().all(|x| x.is_finite()));
    }
}
