//! The fused operations against Burn's decomposed ones, forward on Flex, and forward and
//! backward on `Autodiff<Flex>`.

use burn::backend::{Autodiff, Flex};
use burn::tensor::activation::silu;
use burn::tensor::{Tensor, TensorPrimitive};
use proptest::prelude::*;

use super::{assert_close, random, values, B};
use crate::{rotary, rotary_heads, silu_mul, with_fast_paths};

type A = Autodiff<Flex>;

/// Values in `[-3, 3)`, tracked by autodiff.
fn random_ad<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<A, D> {
    Tensor::from_inner(random(shape, seed) * 3.0)
}

/// The output and the gradients of `inputs` under the upstream gradient `upstream`, of `op`
/// on tracked copies of the inputs.
fn forward_backward<const D: usize, const N: usize>(
    op: impl Fn([Tensor<A, D>; N]) -> Tensor<A, D>,
    inputs: &[Tensor<A, D>; N],
    upstream: &Tensor<A, D>,
) -> (Vec<f32>, [Vec<f32>; N]) {
    let tracked = inputs.clone().map(|t| t.detach().require_grad());
    let output = op(tracked.clone());
    let grads = (output.clone() * upstream.clone()).sum().backward();
    let input_grads = tracked.map(|t| t.grad(&grads).unwrap().into_data().to_vec().unwrap());
    (output.into_data().to_vec().unwrap(), input_grads)
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

/// The fused path runs on Flex and `Autodiff<Flex>` in `f32`, and gives other float types back.
#[test]
fn silu_mul_is_fused_for_f32_on_flex_with_and_without_autodiff() {
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
    let half = x.cast(burn::tensor::FloatDType::F16);
    let given_back = crate::flex::run::<A, _, 2>(crate::flex::SiluMul, primitives(half));
    assert!(given_back.is_err());
    let _: Vec<Tensor<A, 2>> = given_back
        .unwrap_err()
        .into_iter()
        .map(|t| Tensor::from_primitive(TensorPrimitive::Float(t)))
        .collect();
}
