//! The fused operations against Burn's decomposed ones, forward on the parent module's backend
//! `B` (Flex, or NdArray), and forward and backward on `A`, the autodiff decorator around it.

use burn::tensor::activation::{gelu as burns_gelu, silu};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, FloatDType, Int, Tensor, TensorData, TensorPrimitive};
use proptest::prelude::*;

use super::{assert_close, random, values, A, B, MIN_RANK, OTHER_FLOATS};
use crate::{
    attention_context, attention_probs, gelu, grouped_attention, layer_norm, linear, lora_linear,
    low_rank, masked_softmax, masked_softmax_filled, merge_heads, picked_log_probs, rms_norm,
    rotary, rotary_heads, silu_mul, split_heads, with_fast_paths,
};

/// Values in `[-3, 3)`, tracked by autodiff.
fn random_ad<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<A, D> {
    Tensor::from_inner(random(shape, seed) * 3.0)
}

/// The output and the gradients of `inputs` under the upstream gradient `upstream`, of `op`
/// on tracked copies of the inputs, as `f32` values whatever the inputs' float type.
fn forward_backward<const D: usize, const N: usize>(
    op: impl Fn([Tensor<A, D>; N]) -> Tensor<A, D>,
    inputs: &[Tensor<A, D>; N],
    upstream: &Tensor<A, D>,
) -> (Vec<f32>, [Vec<f32>; N]) {
    let tracked = inputs.clone().map(|t| t.detach().require_grad());
    let output = op(tracked.clone());
    let grads = (output.clone() * upstream.clone()).sum().backward();
    let input_grads = tracked.map(|t| values(t.grad(&grads).unwrap().cast(FloatDType::F32)));
    (values(output.cast(FloatDType::F32)), input_grads)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn silu_mul_matches_burns_forward_and_backward(
        dims in prop::array::uniform3(1usize..24),
        transposed in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let gate = random_ad(dims, seed);
        // A transposed view: the fused path reads it contiguous.
        let up = if transposed {
            random_ad([dims[0], dims[2], dims[1]], seed + 1).swap_dims(1, 2)
        } else {
            random_ad(dims, seed + 1)
        };
        let upstream = random_ad(dims, seed + 2);
        let burns = forward_backward(|[g, u]| silu(g) * u, &[gate.clone(), up.clone()], &upstream);
        let fused = with_fast_paths::<A, _>(|| {
            forward_backward(|[g, u]| silu_mul(g, u), &[gate.clone(), up.clone()], &upstream)
        });
        assert_close(fused.0, burns.0)?;
        for (fused, burns) in fused.1.into_iter().zip(burns.1) {
            assert_close(fused, burns)?;
        }
        // Without autodiff.
        let plain = |t: &Tensor<A, 3>| t.clone().inner();
        let expected = values(silu(plain(&gate)) * plain(&up));
        let actual = with_fast_paths::<B, _>(|| values(silu_mul(plain(&gate), plain(&up))));
        assert_close(actual, expected)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Rows of any width, the scale tracked or not: Burn's output and gradients (`burn::nn`'s
    /// `RmsNorm` is `x / rms · γ`, the kernel `x · (1 / rms) · γ`: rounding apart).
    #[test]
    fn rms_norm_matches_burns_forward_and_backward(
        rows in 1usize..12,
        width in 1usize..70,
        tracked_gamma in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let x = random_ad([2, rows, width], seed);
        let gamma = random_ad([width], seed + 1);
        let upstream = random_ad([2, rows, width], seed + 2);
        let run = |fast: bool| {
            let x = x.clone().detach().require_grad();
            let gamma = if tracked_gamma {
                gamma.clone().detach().require_grad()
            } else {
                gamma.clone().detach()
            };
            let forward = || rms_norm(x.clone(), gamma.clone(), 1e-5);
            let y = if fast { with_fast_paths::<A, _>(forward) } else { forward() };
            let grads = (y.clone() * upstream.clone()).sum().backward();
            let grad = |t: &Tensor<A, 3>| t.grad(&grads).map(values);
            let gamma_grad = gamma.grad(&grads).map(|g| g.into_data().to_vec::<f32>().unwrap());
            (y.into_data().to_vec::<f32>().unwrap(), grad(&x).unwrap(), gamma_grad)
        };
        let (burns, fused) = (run(false), run(true));
        assert_close(fused.0, burns.0)?;
        assert_close(fused.1, burns.1)?;
        prop_assert_eq!(fused.2.is_some(), tracked_gamma);
        if let (Some(fused), Some(burns)) = (fused.2, burns.2) {
            assert_close(fused, burns)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Rows of any width (a row of one value included: its variance is 0), with and without a
    /// bias, the scale and the bias tracked or not, rows far from zero (the variance taken
    /// about the mean): the output and gradients against Burn's `layer_norm` computed in `f64`,
    /// within 1e-4 (relative beyond 1) plus four times the error of Burn's own `f32` path there.
    /// `f32` rounding is amplified where the exact result cancels: a row of two values has an
    /// input gradient of almost 0 made of terms near 10 (both paths seen 3e-4 and 8e-4 off),
    /// and values near 40 carry 4e-6 each (Burn's `f32` decomposition seen 1.7e-4 off, the fused
    /// pass 1.1e-5); a wrong formula is off by far more than either.
    #[test]
    fn layer_norm_matches_burns_forward_and_backward(
        rows in 1usize..12,
        width in 1usize..70,
        bias in any::<bool>(),
        tracked_gamma in any::<bool>(),
        tracked_beta in any::<bool>(),
        offset in prop::sample::select(vec![0.0f32, 40.0]),
        seed in 0u64..1000,
    ) {
        // Two values near 40 can lie within 1e-3 of each other: their gradient is then the
        // difference of terms 1e3 times larger, and neither path keeps a digit of it.
        let offset = if width > 2 { offset } else { 0.0 };
        let x = random_ad([2, rows, width], seed) + offset;
        let gamma = random_ad([width], seed + 1);
        let beta = random_ad([width], seed + 2);
        let upstream = random_ad([2, rows, width], seed + 3);
        let run = |fast: bool, dtype: FloatDType| {
            let input = |t: &Tensor<A, 1>, tracked: bool| {
                let t = t.clone().detach().cast(dtype);
                if tracked { t.require_grad() } else { t }
            };
            let x = x.clone().detach().cast(dtype).require_grad();
            let gamma = input(&gamma, tracked_gamma);
            let beta = input(&beta, tracked_beta);
            let forward =
                || layer_norm(x.clone(), gamma.clone(), bias.then(|| beta.clone()), 1e-5);
            let y = if fast { with_fast_paths::<A, _>(forward) } else { forward() };
            let grads = (y.clone() * upstream.clone().cast(dtype)).sum().backward();
            let f32s = |t: Tensor<B, 1>| values(t.cast(FloatDType::F32));
            let grad = |t: &Tensor<A, 1>| t.grad(&grads).map(f32s);
            let x_grad = x.grad(&grads).map(|g| values(g.cast(FloatDType::F32)));
            (values(y.inner().cast(FloatDType::F32)), x_grad.unwrap(), grad(&gamma), grad(&beta))
        };
        let exact = run(false, FloatDType::F64);
        let burns = run(false, FloatDType::F32);
        let fused = run(true, FloatDType::F32);
        assert_as_exact_as_burns(&fused.0, &burns.0, &exact.0)?;
        assert_as_exact_as_burns(&fused.1, &burns.1, &exact.1)?;
        prop_assert_eq!(fused.2.is_some(), tracked_gamma);
        prop_assert_eq!(fused.3.is_some(), tracked_beta && bias);
        for ((fused, burns), exact) in [(fused.2, burns.2), (fused.3, burns.3)]
            .into_iter()
            .zip([exact.2, exact.3])
        {
            if let (Some(fused), Some(burns), Some(exact)) = (fused, burns, exact) {
                assert_as_exact_as_burns(&fused, &burns, &exact)?;
            }
        }
        // Without autodiff.
        let plain = |t: &Tensor<A, 3>| t.clone().inner();
        let (gamma, beta) = (gamma.inner(), bias.then(|| beta.inner()));
        let f64s = |t: Tensor<B, 3>| t.cast(FloatDType::F64);
        let burns = values(layer_norm(plain(&x), gamma.clone(), beta.clone(), 1e-5));
        let exact = values(
            layer_norm(
                f64s(plain(&x)),
                gamma.clone().cast(FloatDType::F64),
                beta.clone().map(|beta| beta.cast(FloatDType::F64)),
                1e-5,
            )
            .cast(FloatDType::F32),
        );
        let fused =
            with_fast_paths::<B, _>(|| values(layer_norm(plain(&x), gamma, beta, 1e-5)));
        assert_as_exact_as_burns(&fused, &burns, &exact)?;
    }
}

/// Each of `fused` within `1e-4 · max(1, |exact|)` of `exact`, plus four times Burn's own error
/// there (`burns`).
fn assert_as_exact_as_burns(
    fused: &[f32],
    burns: &[f32],
    exact: &[f32],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(fused.len(), exact.len());
    for (i, ((f, b), e)) in fused.iter().zip(burns).zip(exact).enumerate() {
        let tolerance = 1e-4 * e.abs().max(1.0) + 4.0 * (b - e).abs();
        prop_assert!(
            (f - e).abs() <= tolerance,
            "value {}: {} against the exact {} (Burn's f32: {})",
            i,
            f,
            e,
            b
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Grouped heads, cached keys beyond the queries, random masks (rows fully masked
    /// included) or none: the output and the gradients of query, key and value as exact as
    /// Burn's operations in `f32` (NdArray's softmax gradient is 1e-4 off at times), against
    /// Burn's operations in `f64`.
    #[test]
    fn grouped_attention_matches_burns_forward_and_backward(
        batch in 1usize..3,
        kv_heads in 1usize..3,
        group in 1usize..4,
        seq in 1usize..7,
        past in 0usize..4,
        head_dim in 1usize..9,
        masked in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let (heads, keys) = (kv_heads * group, past + seq);
        let query = random_ad([batch, heads, seq, head_dim], seed);
        let key = random_ad([batch, kv_heads, keys, head_dim], seed + 1);
        let value = random_ad([batch, kv_heads, keys, head_dim], seed + 2);
        let mask: Option<Tensor<A, 4, Bool>> =
            masked.then(|| random_ad([batch, 1, seq, keys], seed + 3).greater_elem(1.0));
        let upstream = random_ad([batch, seq, heads * head_dim], seed + 4);
        let scale = 1.0 / (head_dim as f64).sqrt();
        let inputs = [query, key, value];
        let run = |fast: bool, dtype: FloatDType| {
            let inputs = inputs.clone().map(|t| t.cast(dtype));
            let upstream = upstream.clone().cast(dtype).reshape([batch, seq, heads, head_dim]);
            if fast {
                with_fast_paths::<A, _>(|| forward_backward(
                    |[q, k, v]| grouped_attention(q, k, v, mask.clone(), scale)
                        .reshape([batch, seq, heads, head_dim]),
                    &inputs,
                    &upstream,
                ))
            } else {
                forward_backward(
                    |[q, k, v]| attention_context(attention_probs(q, k, mask.clone(), scale), v, heads)
                        .reshape([batch, seq, heads, head_dim]),
                    &inputs,
                    &upstream,
                )
            }
        };
        let exact = run(false, FloatDType::F64);
        let burns = run(false, FloatDType::F32);
        let fused = run(true, FloatDType::F32);
        assert_as_exact_as_burns(&fused.0, &burns.0, &exact.0)?;
        for ((fused, burns), exact) in fused.1.iter().zip(&burns.1).zip(&exact.1) {
            assert_as_exact_as_burns(fused, burns, exact)?;
        }
        // Without autodiff.
        let [q, k, v] = inputs.map(|t| t.inner());
        let mask = mask.map(|mask| mask.inner());
        let expected =
            values(attention_context(attention_probs(q.clone(), k.clone(), mask.clone(), scale), v.clone(), heads));
        let actual = with_fast_paths::<B, _>(|| values(grouped_attention(q, k, v, mask, scale)));
        assert_close(actual, expected)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Masks broadcast over heads, over queries or over both, random (rows fully masked
    /// included) or none; fills far below the scores (BERT's −10⁴, `f32::MIN`) and within
    /// their range, where the masked keys keep a weight: Burn's output and gradient.
    #[test]
    fn masked_softmax_filled_matches_burns_forward_and_backward(
        batch in 1usize..3,
        heads in 1usize..4,
        queries in 1usize..6,
        keys in 1usize..40,
        per_head in any::<bool>(),
        per_query in any::<bool>(),
        masked in any::<bool>(),
        fill in prop::sample::select(vec![-1.0e4f64, f64::from(f32::MIN), -1.5, 0.5]),
        seed in 0u64..1000,
    ) {
        let scores = random_ad([batch, heads, queries, keys], seed);
        let mask_dims = [
            batch,
            if per_head { heads } else { 1 },
            if per_query { queries } else { 1 },
            keys,
        ];
        let mask: Option<Tensor<A, 4, Bool>> =
            masked.then(|| random_ad(mask_dims, seed + 1).greater_elem(0.5));
        let upstream = random_ad([batch, heads, queries, keys], seed + 2);
        let burns_op = |[s]: [Tensor<A, 4>; 1]| match mask.clone() {
            Some(mask) => burn::tensor::activation::softmax(s.mask_fill(mask, fill), 3),
            None => burn::tensor::activation::softmax(s, 3),
        };
        let burns = forward_backward(burns_op, core::array::from_ref(&scores), &upstream);
        let fused = with_fast_paths::<A, _>(|| forward_backward(
            |[s]| masked_softmax_filled(s, mask.clone(), fill),
            core::array::from_ref(&scores),
            &upstream,
        ));
        assert_close(fused.0, burns.0)?;
        assert_close(fused.1[0].clone(), burns.1[0].clone())?;
        // Without autodiff.
        let (plain, mask) = (scores.inner(), mask.map(|mask| mask.inner()));
        let expected = values(match mask.clone() {
            Some(mask) => burn::tensor::activation::softmax(plain.clone().mask_fill(mask, fill), 3),
            None => burn::tensor::activation::softmax(plain.clone(), 3),
        });
        let actual =
            with_fast_paths::<B, _>(|| values(masked_softmax_filled(plain, mask, fill)));
        assert_close(actual, expected)?;
    }
}

/// The masked softmax runs fused on `B` and `A` for a broadcast mask, and a mask
/// that does not broadcast to the scores is left to Burn.
#[test]
fn masked_softmax_is_fused_for_broadcast_masks() {
    let scores = random_ad([2, 3, 4, 5], 7);
    let mask = random_ad([2, 1, 1, 5], 8).greater_elem(0.0);
    let op = || crate::flex::MaskedSoftmax::new::<A>(Some(mask.clone().into_primitive()), -1e4);
    let fused =
        crate::flex::run::<A, _, 1>(op().unwrap(), [scores.clone().into_primitive().tensor()]);
    assert!(fused.is_ok());
    let plain = scores.clone().inner().into_primitive().tensor();
    let op = crate::flex::MaskedSoftmax::new::<B>(Some(mask.clone().into_primitive()), -1e4);
    assert!(crate::flex::run::<B, _, 1>(op.unwrap(), [plain]).is_ok());
    // A mask over 4 keys for scores over 5: Burn's path, and Burn's error.
    let wrong = random_ad([2, 1, 1, 4], 9).greater_elem(0.0);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        with_fast_paths::<A, _>(|| masked_softmax_filled(scores, Some(wrong), -1e4))
    }));
    assert!(
        result.is_err(),
        "Burn refuses a mask that does not broadcast"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any number of classes, targets anywhere in them, logits scaled up to ±300 (where the
    /// maximum's subtraction matters): Burn's log-probabilities and gradient.
    #[test]
    fn picked_log_probs_match_burns_forward_and_backward(
        batch in 1usize..3,
        seq in 1usize..6,
        classes in 1usize..40,
        spread in prop::sample::select(vec![1.0f32, 10.0, 100.0]),
        seed in 0u64..1000,
    ) {
        let logits = random_ad([batch, seq, classes], seed) * spread;
        let targets: Vec<i64> = (0..batch * seq)
            .map(|i| ((seed as usize + 7 * i) % classes) as i64)
            .collect();
        let targets =
            Tensor::<A, 2, Int>::from_data(TensorData::new(targets, [batch, seq]), &Default::default());
        let upstream = random_ad([batch, seq], seed + 1);
        let run = |fast: bool| {
            let logits = logits.clone().detach().require_grad();
            let forward = || picked_log_probs(logits.clone(), targets.clone());
            let picked = if fast { with_fast_paths::<A, _>(forward) } else { forward() };
            let grads = (picked.clone() * upstream.clone()).sum().backward();
            let grad = logits.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
            (picked.into_data().to_vec::<f32>().unwrap(), grad)
        };
        let (burns, fused) = (run(false), run(true));
        // Log-probabilities down to −600 in f32: relative rounding of 1e-7 is 6e-5 there.
        for (f, b) in fused.0.iter().zip(&burns.0) {
            prop_assert!((f - b).abs() <= 1e-4 * (1.0 + b.abs()), "{} against Burn's {}", f, b);
        }
        assert_close(fused.1, burns.1)?;
    }
}

/// Targets outside the classes take Burn's path, which decides what they mean.
#[test]
fn out_of_range_targets_are_left_to_burn() {
    let targets =
        Tensor::<A, 2, Int>::from_data(TensorData::new(vec![0i64, 5], [1, 2]), &Default::default());
    assert!(crate::flex::PickedLogProbs::new::<A>(targets.clone().into_primitive(), 5).is_none());
    assert!(crate::flex::PickedLogProbs::new::<A>(targets.into_primitive(), 6).is_some());
}

/// Rows of scores, the second with every key masked (a padding position of a left-padded
/// prompt), in f32 and the backend's other float types: every probability is finite, the masked row uniform and the
/// others those of the unmasked keys alone.
#[test]
fn a_fully_masked_row_stays_finite_in_every_float_type() {
    let device = Default::default();
    let scores = Tensor::<B, 4>::from_floats([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]], &device);
    let mask = Tensor::<B, 4, Bool>::from_bool(
        TensorData::from([[[[true, false, false], [true, true, true]]]]),
        &device,
    );
    let (a, b) = (2.0_f32.exp(), 3.0_f32.exp());
    let third = 1.0 / 3.0;
    let expected = [0.0, a / (a + b), b / (a + b), third, third, third];
    // Probabilities ≤ 1 rounded once to the type: f16 keeps 11 significant bits (≤ 5e-4
    // apart), bf16 8 (≤ 4e-3); the tolerances leave room for the softmax's own rounding.
    for &(dtype, tolerance) in [(FloatDType::F32, 1e-6)].iter().chain(OTHER_FLOATS) {
        assert!(B::supports_dtype(&device, DType::from(dtype)));
        let probs = masked_softmax(scores.clone().cast(dtype), mask.clone())
            .cast(FloatDType::F32)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(probs.iter().all(|p| p.is_finite()), "{dtype:?}: {probs:?}");
        for (p, e) in probs.iter().zip(expected) {
            assert!((p - e).abs() < tolerance, "{dtype:?}: {probs:?}");
        }
    }
}

/// Tables of a rotation by `positions · θ`, `[batch, 1, seq, head_dim]`, as burn-lora's
/// `RotaryEmbedding` builds them.
fn tables(batch: usize, seq: usize, head_dim: usize, seed: u64) -> [Tensor<A, 4>; 2] {
    let angles = random_ad([batch, 1, seq, head_dim / 2], seed) * 10.0;
    let angles = Tensor::cat(vec![angles.clone(), angles], 3);
    [angles.clone().cos(), angles.sin()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn rotary_heads_matches_burns_forward_and_backward(
        batch in 1usize..4,
        seq in 1usize..12,
        heads in 1usize..5,
        half in 1usize..9,
        seed in 0u64..1000,
    ) {
        let head_dim = 2 * half;
        let x = random_ad([batch, seq, heads * head_dim], seed);
        let [cos, sin] = tables(batch, seq, head_dim, seed + 1);
        let upstream = random_ad([batch, heads, seq, head_dim], seed + 2);
        let split = |x: Tensor<A, 3>| x.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
        // Both as [batch, heads, seq, head_dim], through a view of the input for Burn's.
        let burns = forward_backward(
            |[x]| rotary(split(x), cos.clone(), sin.clone()).reshape([batch * heads, seq, head_dim]),
            core::array::from_ref(&x),
            &upstream.clone().reshape([batch * heads, seq, head_dim]),
        );
        let fused = with_fast_paths::<A, _>(|| forward_backward(
            |[x]| rotary_heads(x, cos.clone(), sin.clone(), heads)
                .reshape([batch * heads, seq, head_dim]),
            core::array::from_ref(&x),
            &upstream.clone().reshape([batch * heads, seq, head_dim]),
        ));
        assert_close(fused.0, burns.0)?;
        assert_close(fused.1[0].clone(), burns.1[0].clone())?;
        // Without autodiff.
        let plain = |t: &Tensor<A, 4>| t.clone().inner();
        let expected = values(rotary(split(x.clone()).inner(), plain(&cos), plain(&sin)));
        let actual = with_fast_paths::<B, _>(|| {
            values(rotary_heads(x.clone().inner(), plain(&cos), plain(&sin), heads))
        });
        assert_close(actual, expected)?;
    }
}

/// Tables that need a gradient (a learned rotation) take Burn's path, which gives them one;
/// the fused path is for constant tables only.
#[test]
fn tracked_rotary_tables_are_left_to_burn() {
    let [cos, sin] = tables(1, 3, 4, 2);
    let cos = cos.require_grad();
    let inputs = [
        random_ad([1, 3, 8], 1).into_primitive().tensor(),
        cos.clone().into_primitive().tensor(),
        sin.clone().into_primitive().tensor(),
    ];
    let op = crate::flex::RotaryHeads { heads: 2 };
    assert!(crate::flex::run::<A, _, 3>(op, inputs).is_err());
    let output =
        with_fast_paths::<A, _>(|| rotary_heads(random_ad([1, 3, 8], 1), cos.clone(), sin, 2));
    let grads = output.sum().backward();
    assert!(
        cos.grad(&grads).is_some(),
        "the tracked table got no gradient"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Values in ±9 (where `erf` saturates and `φ` vanishes): the exact GELU and its gradient,
    /// as Burn's `erf` and its gradient give them (Burn's `gelu` has the tanh approximation's
    /// gradient on backends that do not override it, NdArray among them).
    #[test]
    fn gelu_matches_burns_forward_and_backward(
        dims in prop::array::uniform2(1usize..40),
        seed in 0u64..1000,
    ) {
        let x = random_ad(dims, seed) * 3.0;
        let upstream = random_ad(dims, seed + 1);
        let exact_gelu = |[x]: [Tensor<A, 2>; 1]| {
            (x.clone() * core::f32::consts::FRAC_1_SQRT_2).erf().add_scalar(1.0) * x * 0.5
        };
        let burns = forward_backward(exact_gelu, core::array::from_ref(&x), &upstream);
        let fused = with_fast_paths::<A, _>(|| {
            forward_backward(|[x]| gelu(x), core::array::from_ref(&x), &upstream)
        });
        // Burn's own `gelu` forward is the same formula.
        assert_close(values(burns_gelu(x.clone().inner())), burns.0.clone())?;
        assert_close(fused.0, burns.0)?;
        assert_close(fused.1[0].clone(), burns.1[0].clone())?;
    }
}

/// The fused path runs on `B` and `A` in `f32`, and gives other float types back.
#[test]
fn silu_mul_is_fused_for_f32_with_and_without_autodiff() {
    let primitives = |t: Tensor<A, 2>| {
        [
            t.clone().into_primitive().tensor(),
            t.into_primitive().tensor(),
        ]
    };
    let x = random_ad([3, 5], 1);
    assert!(crate::flex::run::<A, _, 2>(crate::flex::SiluMul, primitives(x.clone())).is_ok());
    let plain = x.clone().inner();
    let plain = [
        plain.clone().into_primitive().tensor(),
        plain.into_primitive().tensor(),
    ];
    assert!(crate::flex::run::<B, _, 2>(crate::flex::SiluMul, plain).is_ok());
    let wide = x.cast(burn::tensor::FloatDType::F64);
    let given_back = crate::flex::run::<A, _, 2>(crate::flex::SiluMul, primitives(wide.clone()));
    // The inputs come back unchanged, for Burn's path.
    let expected = wide.into_data();
    for input in given_back.expect_err("f64 is not fused") {
        let input = Tensor::<A, 2>::from_primitive(TensorPrimitive::Float(input));
        assert_eq!(input.into_data(), expected);
    }
}

/// LayerNorm runs fused on `B` and `A` in `f32`.
#[test]
fn layer_norm_is_fused_for_f32_with_and_without_autodiff() {
    let op = || crate::flex::LayerNorm { epsilon: 1e-5 };
    let x = random_ad([4, 6], 1);
    let (gamma, beta) = (random_ad([6], 2), random_ad([6], 3));
    let inputs = [
        x.clone().into_primitive().tensor(),
        gamma.clone().into_primitive().tensor(),
        beta.clone().into_primitive().tensor(),
    ];
    assert!(crate::flex::run::<A, _, 3>(op(), inputs).is_ok());
    let inputs = [
        x.inner().into_primitive().tensor(),
        gamma.inner().into_primitive().tensor(),
        beta.inner().into_primitive().tensor(),
    ];
    assert!(crate::flex::run::<B, _, 3>(op(), inputs).is_ok());
}

/// How `linear`'s weight is laid out in memory.
#[derive(Debug, Clone, Copy)]
enum WeightLayout {
    RowMajor,
    /// A transposed view (`[n, k]` in memory, read as `[k, n]`).
    Transposed,
    /// A view with a negative stride (`flip`): Flex's own product.
    Flipped,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// `linear` under autodiff, as one fused node: rank-3 inputs of few rows and many, odd
    /// widths, with and without a bias, the weight and the bias tracked or frozen, the weight
    /// row-major, transposed or flipped: Burn's output and every gradient.
    #[test]
    fn linear_matches_burns_forward_and_backward(
        batch in 1usize..4,
        seq in 1usize..24,
        k in 1usize..48,
        n in 1usize..48,
        bias in any::<bool>(),
        tracked_weight in any::<bool>(),
        layout in prop::sample::select(vec![
            WeightLayout::RowMajor,
            WeightLayout::Transposed,
            WeightLayout::Flipped,
        ]),
        seed in 0u64..1000,
    ) {
        let x = random_ad([batch, seq, k], seed);
        let weight = match layout {
            WeightLayout::RowMajor => random_ad([k, n], seed + 1),
            WeightLayout::Transposed => random_ad([n, k], seed + 1).transpose(),
            WeightLayout::Flipped => random_ad([k, n], seed + 1).flip([0]),
        };
        let b = random_ad([n], seed + 2);
        let upstream = random_ad([batch, seq, n], seed + 3);
        let run = |fast: bool| {
            let x = x.clone().detach().require_grad();
            let weight = if tracked_weight {
                weight.clone().detach().require_grad()
            } else {
                weight.clone().detach()
            };
            let b = bias.then(|| b.clone().detach().require_grad());
            let forward = || linear(x.clone(), weight.clone(), b.clone());
            let y = if fast { with_fast_paths::<A, _>(forward) } else { forward() };
            let grads = (y.clone() * upstream.clone()).sum().backward();
            (
                values(y.inner()),
                values(x.grad(&grads).unwrap()),
                weight.grad(&grads).map(values),
                b.and_then(|b| b.grad(&grads)).map(values),
            )
        };
        let (burns, fused) = (run(false), run(true));
        assert_close(fused.0, burns.0)?;
        assert_close(fused.1, burns.1)?;
        prop_assert_eq!(fused.2.is_some(), tracked_weight);
        prop_assert_eq!(fused.3.is_some(), bias);
        for (fused, burns) in [(fused.2, burns.2), (fused.3, burns.3)] {
            if let (Some(fused), Some(burns)) = (fused, burns) {
                assert_close(fused, burns)?;
            }
        }
    }
}

/// `linear` is one fused node on `A`, and runs on plain `B` too.
#[test]
fn linear_is_fused_for_f32_with_and_without_autodiff() {
    let inputs = |x: Tensor<A, 2>, w: Tensor<A, 2>, b: Tensor<A, 1>| {
        [
            x.into_primitive().tensor(),
            w.into_primitive().tensor(),
            b.into_primitive().tensor(),
        ]
    };
    let (x, w, b) = (
        random_ad([20, 6], 1),
        random_ad([6, 5], 2),
        random_ad([5], 3),
    );
    let tracked = inputs(x.clone().require_grad(), w.clone(), b.clone());
    assert!(crate::flex::run::<A, _, 3>(crate::flex::Linear, tracked).is_ok());
    let plain = [x.inner(), w.inner()].map(|t| t.into_primitive().tensor());
    let [x, w] = plain;
    let plain = [x, w, b.inner().into_primitive().tensor()];
    assert!(crate::flex::run::<B, _, 3>(crate::flex::Linear, plain).is_ok());
}

/// A `[rows, columns]` factor of values in `[-1, 1)`, row-major or as a transposed view.
fn factor(dims: [usize; 2], transposed: bool, seed: u64) -> Tensor<A, 2> {
    if transposed {
        Tensor::from_inner(random([dims[1], dims[0]], seed)).transpose()
    } else {
        Tensor::from_inner(random(dims, seed))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// `lora_linear` under autodiff, as one fused node: few rows and many, odd widths, rank 0
    /// to 5, with and without a bias, the adapter's input `x` itself or another tensor (its
    /// dropout), the base weight tracked or frozen, the factors row-major or transposed views
    /// (PEFT's orientation): Burn's output and every gradient.
    #[test]
    fn lora_linear_matches_burns_forward_and_backward(
        batch in 1usize..4,
        seq in 1usize..24,
        k in 1usize..40,
        n in 1usize..40,
        rank in MIN_RANK..6,
        scale in 0.1f64..4.0,
        bias in any::<bool>(),
        own_adapter_input in any::<bool>(),
        tracked_weight in any::<bool>(),
        transposed in any::<[bool; 3]>(),
        seed in 0u64..1000,
    ) {
        let x: Tensor<A, 3> = Tensor::from_inner(random([batch, seq, k], seed));
        let dropped: Tensor<A, 3> = Tensor::from_inner(random([batch, seq, k], seed + 1));
        let weight = factor([k, n], transposed[0], seed + 2);
        let (lora_a, lora_b) = (
            factor([k, rank], transposed[1], seed + 3),
            factor([rank, n], transposed[2], seed + 4),
        );
        let b: Tensor<A, 1> = Tensor::from_inner(random([n], seed + 5));
        let upstream: Tensor<A, 3> = Tensor::from_inner(random([batch, seq, n], seed + 6));
        let run = |fast: bool| {
            let track = |t: &Tensor<A, 2>| t.clone().detach().require_grad();
            let x = x.clone().detach().require_grad();
            let dropped = own_adapter_input.then(|| dropped.clone().detach().require_grad());
            let weight = if tracked_weight { track(&weight) } else { weight.clone().detach() };
            let (lora_a, lora_b) = (track(&lora_a), track(&lora_b));
            let b = bias.then(|| b.clone().detach().require_grad());
            let forward = || {
                lora_linear(
                    x.clone(),
                    weight.clone(),
                    b.clone(),
                    dropped.clone(),
                    lora_a.clone(),
                    lora_b.clone(),
                    scale,
                )
            };
            let y = if fast { with_fast_paths::<A, _>(forward) } else { forward() };
            let grads = (y.clone() * upstream.clone()).sum().backward();
            let grad = |t: Option<Tensor<A, 2>>| t.and_then(|t| t.grad(&grads)).map(values);
            (
                values(y.inner()),
                [
                    x.grad(&grads).map(values),
                    dropped.and_then(|d| d.grad(&grads)).map(values),
                    grad(Some(weight)),
                    b.and_then(|b| b.grad(&grads)).map(values),
                    grad(Some(lora_a)),
                    grad(Some(lora_b)),
                ],
            )
        };
        let (burns, fused) = (run(false), run(true));
        assert_close(fused.0, burns.0)?;
        for (i, (fused, burns)) in fused.1.into_iter().zip(burns.1).enumerate() {
            prop_assert_eq!(fused.is_some(), burns.is_some(), "gradient {}", i);
            if let (Some(fused), Some(burns)) = (fused, burns) {
                assert_close(fused, burns)?;
            }
        }
    }
}

/// Outside the fast paths `lora_linear` is exactly `linear + low_rank`; inside, on
/// `A`, it is one fused node, and on plain `B` too.
#[test]
fn lora_linear_is_fused_and_exactly_burns_outside_the_scope() {
    let x: Tensor<B, 2> = random([20, 6], 1);
    let (w, a, b) = (random([6, 5], 2), random([6, 2], 3), random([2, 5], 4));
    let exact =
        values(linear(x.clone(), w.clone(), None) + low_rank(x.clone(), a.clone(), b.clone(), 0.5));
    let outside = values(lora_linear(
        x.clone(),
        w.clone(),
        None,
        None,
        a.clone(),
        b.clone(),
        0.5,
    ));
    assert_eq!(outside, exact);
    let op = || crate::flex::LoraLinear {
        scale: 0.5,
        quantized: None,
    };
    let empty = |dims: [usize; 2]| Tensor::<B, 2>::empty(dims, &Default::default());
    let inputs = || {
        [
            x.clone(),
            w.clone(),
            empty([0, 0]),
            empty([0, 6]),
            a.clone(),
            b.clone(),
        ]
        .map(|t| t.into_primitive().tensor())
    };
    assert!(crate::flex::run::<B, _, 6>(op(), inputs()).is_ok());
    let tracked = inputs().map(|t| {
        Tensor::<A, 2>::from_inner(Tensor::from_primitive(TensorPrimitive::Float(t)))
            .require_grad()
            .into_primitive()
            .tensor()
    });
    assert!(crate::flex::run::<A, _, 6>(op(), tracked).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Heads split and merged, from contiguous inputs and from transposed views, one head or
    /// one position included (Burn's view then): Burn's `reshape` and `swap_dims`, values and
    /// gradients, with and without autodiff.
    #[test]
    fn split_and_merge_heads_match_burns_forward_and_backward(
        batch in 1usize..3,
        heads in 1usize..5,
        seq in 1usize..9,
        head_dim in 1usize..9,
        transposed in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let width = heads * head_dim;
        let x = if transposed {
            random_ad([batch, width, seq], seed).swap_dims(1, 2)
        } else {
            random_ad([batch, seq, width], seed)
        };
        // Through rank-3 views on both sides (the helper keeps the rank): contiguous, so free.
        let upstream = random_ad([batch, heads, seq * head_dim], seed + 1);
        let split_with = |split: &dyn Fn(Tensor<A, 3>) -> Tensor<A, 4>, x: Tensor<A, 3>| {
            split(x).reshape([batch, heads, seq * head_dim])
        };
        let burns_split = |x: Tensor<A, 3>| {
            x.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2)
        };
        let burns = forward_backward(
            |[x]| split_with(&burns_split, x),
            core::array::from_ref(&x),
            &upstream,
        );
        let fused = with_fast_paths::<A, _>(|| forward_backward(
            |[x]| split_with(&|x| split_heads(x, heads), x),
            core::array::from_ref(&x),
            &upstream,
        ));
        assert_close(fused.0, burns.0)?;
        assert_close(fused.1[0].clone(), burns.1[0].clone())?;
        // Merged back.
        let split = random_ad([batch * heads, seq, head_dim], seed + 2);
        let upstream = random_ad([batch, seq, width], seed + 3);
        let as_heads = |x: Tensor<A, 3>| x.reshape([batch, heads, seq, head_dim]);
        let burns = forward_backward(
            |[x]| as_heads(x).swap_dims(1, 2).reshape([batch, seq, width]),
            core::array::from_ref(&split),
            &upstream,
        );
        let fused = with_fast_paths::<A, _>(|| forward_backward(
            |[x]| merge_heads(as_heads(x)),
            core::array::from_ref(&split),
            &upstream,
        ));
        assert_close(fused.0, burns.0)?;
        assert_close(fused.1[0].clone(), burns.1[0].clone())?;
        // Without autodiff.
        let plain = x.inner();
        let expected = values(plain.clone().reshape([batch, seq, heads, head_dim]).swap_dims(1, 2));
        let actual = with_fast_paths::<B, _>(|| values(split_heads(plain, heads)));
        assert_close(actual, expected)?;
    }
}

/// Splitting and merging heads are fused on `B` and `A`.
#[test]
fn heads_are_split_and_merged_fused() {
    let x = random_ad([2, 3, 8], 1);
    let split = crate::flex::SplitHeads { heads: 4 };
    assert!(crate::flex::run::<A, _, 1>(split, [x.clone().into_primitive().tensor()]).is_ok());
    let merged = [x.inner().reshape([2, 4, 3, 2]).into_primitive().tensor()];
    assert!(crate::flex::run::<B, _, 1>(crate::flex::MergeHeads, merged).is_ok());
}

/// The mask keeps about `keep` of its values, each `1 / keep`, and is the same for the same seed
/// whatever the number of threads, and another for another seed.
#[test]
fn dropout_mask_keeps_its_share_and_depends_on_the_seed_only() {
    let keep = 0.9;
    let mask = crate::dropout_mask(200_001, keep, 7);
    assert_eq!(mask.len(), 200_001);
    let scale = (1.0 / keep) as f32;
    assert!(mask.iter().all(|&v| v == 0.0 || v == scale));
    let kept = mask.iter().filter(|&&v| v != 0.0).count() as f64 / mask.len() as f64;
    // Binomial standard deviation: sqrt(0.9 · 0.1 / 200001) ≈ 6.7e-4; 5 sigma.
    assert!((kept - keep).abs() < 3.4e-3, "kept share {kept}");
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| crate::dropout_mask(40_001, 0.5, 3))
    };
    assert_eq!(on(1), on(3));
    assert_ne!(on(1), crate::dropout_mask(40_001, 0.5, 4));
    // Blocks are drawn from different streams: the second block is not the first again.
    assert_ne!(on(1)[..16_384], on(1)[16_384..32_768]);
}

/// `dropout` is `x ⊙ mask` and its gradient `dy ⊙ mask`, fused on `A` (a
/// transposed view as input, several blocks) and on `B`, and by the host mask elsewhere: the
/// same values, bit for bit.
#[test]
fn dropout_is_the_input_times_the_mask_forward_and_backward() {
    let (rows, cols, keep, seed) = (301, 97, 0.8, 11);
    let x = random_ad([cols, rows], 1).transpose().require_grad();
    let upstream = random_ad([rows, cols], 2);
    let mask = crate::dropout_mask(rows * cols, keep, seed);
    let times_mask =
        |t: Vec<f32>| -> Vec<f32> { t.iter().zip(&mask).map(|(v, m)| v * m).collect() };
    let y = crate::dropout(x.clone(), keep, seed);
    let grads = (y.clone() * upstream.clone()).sum().backward();
    assert_eq!(values(y.inner()), times_mask(values(x.clone().inner())));
    assert_eq!(
        values(x.grad(&grads).unwrap()),
        times_mask(values(upstream.inner()))
    );
    let plain = x.inner();
    let fused = crate::flex::run::<B, _, 1>(
        crate::flex::Dropout { keep, seed },
        [plain.clone().into_primitive().tensor()],
    );
    assert!(fused.is_ok());
    assert_eq!(
        values(crate::dropout(plain.clone(), keep, seed)),
        times_mask(values(plain.clone()))
    );
    // Another backend's path (`f64` is not fused): the host mask, the same values.
    let wide = plain.clone().cast(burn::tensor::FloatDType::F64);
    let dropped = crate::dropout(wide, keep, seed).cast(burn::tensor::FloatDType::F32);
    assert_eq!(values(dropped), times_mask(values(plain)));
}

/// `forward` inside the fast paths or not.
fn fast_or_not<R: Send>(fast: bool, forward: impl FnOnce() -> R + Send) -> R {
    if fast {
        with_fast_paths::<A, _>(forward)
    } else {
        forward()
    }
}

/// `run(from_quantized, fast)` from the quantized weight, fast paths on and off, gives what it
/// gives from the dense dequantized weight outside them.
fn assert_quantized_matches<const N: usize>(run: impl Fn(bool, bool) -> [Vec<f32>; N]) {
    let expected = run(false, false);
    for fast in [false, true] {
        for (actual, expected) in run(true, fast).into_iter().zip(expected.clone()) {
            assert_close(actual, expected).unwrap();
        }
    }
}

/// A quantized base weight (8 and 4 bits, blocks of 8): the output and the gradients of the
/// input, the bias and both factors are those of `lora_linear` on the dequantized weight,
/// inside the fast paths (one node that dequantizes the weight where it uses it) and outside.
#[test]
fn quantized_lora_linear_is_lora_linear_on_the_dequantized_weight() {
    use burn::tensor::quantization::{QuantLevel, QuantScheme, QuantValue};
    use std::sync::Arc;

    let (k, n, r) = (24, 40, 4);
    let original = values(random([k, n], 2));
    let x: Tensor<A, 3> = Tensor::from_inner(random([2, 12, k], 1));
    let (lora_a, lora_b) = (factor([k, r], false, 3), factor([r, n], true, 4));
    let bias: Tensor<A, 1> = Tensor::from_inner(random([n], 5));
    let upstream: Tensor<A, 3> = Tensor::from_inner(random([2, 12, n], 6));
    for value in [QuantValue::Q8S, QuantValue::Q4F] {
        let scheme = QuantScheme::default()
            .with_value(value)
            .with_level(QuantLevel::block([8]));
        let quantized =
            Arc::new(crate::QuantizedMatrix::quantize(&original, [k, n], &scheme).unwrap());
        let dense: Tensor<A, 2> = Tensor::from_data(
            TensorData::new(quantized.dequantize(), [k, n]),
            &Default::default(),
        );
        let run = |from_quantized: bool, fast: bool| {
            let track = |t: &Tensor<A, 2>| t.clone().detach().require_grad();
            let (x, a, b) = (
                x.clone().detach().require_grad(),
                track(&lora_a),
                track(&lora_b),
            );
            let bias = bias.clone().detach().require_grad();
            let forward = || {
                let (x, bias, a, b) = (x.clone(), Some(bias.clone()), a.clone(), b.clone());
                if from_quantized {
                    crate::quantized_lora_linear(x, &quantized, bias, None, a, b, 0.5)
                } else {
                    lora_linear(x, dense.clone(), bias, None, a, b, 0.5)
                }
            };
            let y = fast_or_not(fast, forward);
            let grads = (y.clone() * upstream.clone()).sum().backward();
            [
                values(y.inner()),
                values(x.grad(&grads).unwrap()),
                values(bias.grad(&grads).unwrap()),
                values(a.grad(&grads).unwrap()),
                values(b.grad(&grads).unwrap()),
            ]
        };
        assert_quantized_matches(run);
        // The fused node takes the quantized weight, with and without autodiff.
        let inputs = |x: Tensor<B, 2>| {
            let device = Default::default();
            [
                x,
                Tensor::empty([0, 0], &device),
                Tensor::<B, 2>::empty([0, n], &device),
                Tensor::empty([0, k], &device),
                lora_a.clone().inner(),
                lora_b.clone().inner(),
            ]
        };
        let op = || crate::flex::LoraLinear {
            scale: 0.5,
            quantized: Some(quantized.clone()),
        };
        let plain = inputs(x.clone().inner().reshape([24, k]));
        let primitives = plain.clone().map(|t| t.into_primitive().tensor());
        assert!(crate::flex::run::<B, _, 6>(op(), primitives).is_ok());
        let tracked = plain.map(|t| Tensor::<A, 2>::from_inner(t).into_primitive().tensor());
        assert!(crate::flex::run::<A, _, 6>(op(), tracked).is_ok());
    }
}

/// A quantized layer without adapter: the output and the gradients of the input and the bias
/// are `linear`'s on the dequantized weight, inside the fast paths (the rank-1 zero adapter's
/// node) and outside, with and without autodiff.
#[test]
fn quantized_linear_is_linear_on_the_dequantized_weight() {
    use burn::tensor::quantization::{QuantLevel, QuantScheme, QuantValue};
    use std::sync::Arc;

    let (k, n) = (24, 40);
    let scheme = QuantScheme::default()
        .with_value(QuantValue::Q4S)
        .with_level(QuantLevel::block([8]));
    let quantized = Arc::new(
        crate::QuantizedMatrix::quantize(&values(random([k, n], 2)), [k, n], &scheme).unwrap(),
    );
    let dense: Tensor<A, 2> = Tensor::from_data(
        TensorData::new(quantized.dequantize(), [k, n]),
        &Default::default(),
    );
    let x: Tensor<A, 3> = Tensor::from_inner(random([2, 12, k], 1));
    let bias: Tensor<A, 1> = Tensor::from_inner(random([n], 5));
    let upstream: Tensor<A, 3> = Tensor::from_inner(random([2, 12, n], 6));
    let run = |from_quantized: bool, fast: bool| {
        let (x, bias) = (
            x.clone().detach().require_grad(),
            bias.clone().detach().require_grad(),
        );
        let forward = || {
            let (x, bias) = (x.clone(), Some(bias.clone()));
            if from_quantized {
                crate::quantized_linear(x, &quantized, bias)
            } else {
                crate::linear(x, dense.clone(), bias)
            }
        };
        let y = fast_or_not(fast, forward);
        let grads = (y.clone() * upstream.clone()).sum().backward();
        [
            values(y.inner()),
            values(x.grad(&grads).unwrap()),
            values(bias.grad(&grads).unwrap()),
        ]
    };
    assert_quantized_matches(run);
    // Without autodiff, few rows and many.
    for rows in [3, 24] {
        let x: Tensor<B, 2> = random([rows, k], 7);
        let expected = crate::linear(x.clone(), dense.clone().inner(), None);
        let actual = with_fast_paths::<B, _>(|| crate::quantized_linear(x, &quantized, None));
        assert_close(values(actual), values(expected)).unwrap();
    }
}
