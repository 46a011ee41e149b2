//! `LoraLinear` forward, toggling, switching and merging, checked against values computed by hand.
//!
//! Tolerance: the LoRA path computes `x W + s·((x A) B)` while the references compute
//! `x (W + s·A B)`; the two differ only in f32 summation order. With inputs and weights of order
//! one and inner sizes ≤ 64, each output sums ≤ 64 products, so the rounding differences stay
//! below ~64 · 2⁻²⁴ · |terms| ≈ 1e-5; we allow 1e-4 absolute.

use crate::common::{assert_bit_identical, max_abs_diff, randn, values, AB, B};
use burn::module::AutodiffModule;
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn_lora::LoraLayer;
use burn_lora::{LoraAdapter, LoraConfig, LoraError, LoraLinear, LoraLinearConfig};

/// See the module docs; wider on CUDA (`crate::common::matmul_tol`).
fn tol() -> f32 {
    crate::common::matmul_tol(1e-4)
}

/// A 24 → 16 layer holding one adapter with random (non-zero) factors.
fn adapted_layer(config: &LoraConfig, seed: u64) -> LoraLinear<B> {
    let mut layer = LoraLinearConfig::new(24, 16)
        .init::<B>(&Default::default())
        .unwrap();
    let adapter = LoraAdapter::from_factors(
        "trained",
        config,
        randn([24, config.rank], seed),
        randn([config.rank, 16], seed + 1),
    )
    .unwrap();
    layer.insert_adapter(adapter).unwrap();
    layer
}

/// `x (W + s·A B) + b`, computed densely by hand.
fn reference(layer: &LoraLinear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let adapter = &layer.adapters()[0];
    let delta = adapter
        .lora_a()
        .matmul(adapter.lora_b())
        .mul_scalar(adapter.scale());
    let bias = layer.bias().unwrap().unsqueeze::<2>();
    x.matmul(layer.weight() + delta) + bias
}

#[test]
fn output_at_attach_equals_base() {
    let device = Default::default();
    let mut layer = LoraLinearConfig::new(24, 16).init::<B>(&device).unwrap();
    let x = randn::<B, 2>([5, 24], 1);
    let before = layer.forward(x.clone());
    layer
        .add_adapter("default", &LoraConfig::new(4, 8.0))
        .unwrap();
    // B = 0, so the adapter adds exact zeros.
    assert_bit_identical(layer.forward(x), before);
    let adapter = layer.adapter("default").unwrap();
    assert_eq!(adapter.shapes(), ([24, 4], [4, 16]));
    assert!(crate::common::values(adapter.lora_b())
        .iter()
        .all(|v| *v == 0.0));
    assert!(crate::common::values(adapter.lora_a())
        .iter()
        .any(|v| *v != 0.0));
}

#[test]
fn lora_forward_equals_dense_reference() {
    let config = LoraConfig::new(3, 6.0);
    let layer = adapted_layer(&config, 10);
    let x = randn::<B, 2>([7, 24], 2);
    let diff = max_abs_diff(layer.forward(x.clone()), reference(&layer, x.clone()));
    assert!(diff < tol(), "max |lora - reference| = {diff}");
    // And the adapter really contributes something.
    let base_diff = max_abs_diff(layer.forward(x.clone()), layer.forward_base(x));
    assert!(
        base_diff > 0.1,
        "adapter contribution too small: {base_diff}"
    );
}

#[test]
fn forward_accepts_higher_rank_inputs() {
    let layer = adapted_layer(&LoraConfig::new(2, 2.0), 20);
    let x3 = randn::<B, 3>([2, 3, 24], 3);
    let flat = x3.clone().reshape([6, 24]);
    let y3 = layer.forward(x3).reshape([6, 16]);
    let diff = max_abs_diff(y3, layer.forward(flat));
    assert!(diff < tol(), "{diff}");
}

#[test]
fn rslora_forward_uses_alpha_over_sqrt_rank() {
    let plain = LoraConfig::new(4, 8.0);
    let rs = plain.clone().with_use_rslora(true);
    let layer_plain = adapted_layer(&plain, 30);
    let layer_rs = adapted_layer(&rs, 30);
    let x = randn::<B, 2>([3, 24], 4);
    let delta_plain = layer_plain.forward(x.clone()) - layer_plain.forward_base(x.clone());
    let delta_rs = layer_rs.forward(x.clone()) - layer_rs.forward_base(x.clone());
    // scale 8/√4 = 4 against 8/4 = 2: the adapter's contribution doubles.
    let diff = max_abs_diff(delta_rs, delta_plain.mul_scalar(2.0));
    assert!(diff < tol(), "{diff}");
    let diff = max_abs_diff(layer_rs.forward(x.clone()), reference(&layer_rs, x));
    assert!(diff < tol(), "{diff}");
}

#[test]
fn disabled_adapter_output_is_bit_identical_to_base() {
    let mut layer = adapted_layer(&LoraConfig::new(2, 4.0), 40);
    let x = randn::<B, 2>([6, 24], 5);
    let base = Linear {
        weight: Param::from_tensor(layer.weight()),
        bias: layer.bias().map(Param::from_tensor),
    };
    layer.set_enabled(false);
    assert!(!layer.is_enabled());
    assert_bit_identical(layer.forward(x.clone()), base.forward(x.clone()));
    layer.set_enabled(true);
    assert!(max_abs_diff(layer.forward(x.clone()), base.forward(x)) > 0.1);
}

#[test]
fn merged_linear_matches_unmerged_layer() {
    let layer = adapted_layer(&LoraConfig::new(4, 8.0), 50);
    let weight_before = layer.weight();
    let x = randn::<B, 2>([9, 24], 6);
    let merged = layer.merge_to_linear().unwrap();
    let diff = max_abs_diff(merged.forward(x.clone()), layer.forward(x.clone()));
    assert!(diff < tol(), "max |merged - lora| = {diff}");
    // The merged weight is W + s·AB, and the source layer keeps its exact base.
    let expected = weight_before.clone() + layer.adapters()[0].delta_weight();
    assert!(max_abs_diff(merged.weight.val(), expected) < 1e-6);
    assert_bit_identical(layer.weight(), weight_before);
    assert!(!layer.is_merged());
}

#[test]
fn in_place_merge_then_unmerge_restores_the_base_within_tolerance() {
    let mut layer = adapted_layer(&LoraConfig::new(4, 8.0), 60);
    let x = randn::<B, 2>([4, 24], 7);
    let original_weight = layer.weight();
    let lora_output = layer.forward(x.clone());

    layer.merge().unwrap();
    assert!(layer.is_merged());
    let diff = max_abs_diff(layer.forward(x.clone()), lora_output);
    assert!(diff < tol(), "merged forward differs by {diff}");
    // Merging twice, switching or adding while merged are errors.
    assert!(matches!(layer.merge(), Err(LoraError::Merged(_))));
    assert!(matches!(
        layer.add_adapter("other", &LoraConfig::new(1, 1.0)),
        Err(LoraError::Merged(_))
    ));

    layer.unmerge().unwrap();
    assert!(!layer.is_merged());
    // (W + ΔW) - ΔW: two roundings of values |W| + |ΔW| ≲ 50 in f32.
    let diff = max_abs_diff(layer.weight(), original_weight);
    assert!(diff < 1e-5, "unmerged weight differs by {diff}");
    assert!(matches!(layer.unmerge(), Err(LoraError::NotMerged)));
}

#[test]
fn merging_a_non_finite_adapter_is_an_error_and_keeps_the_base() {
    let mut layer = LoraLinearConfig::new(4, 3)
        .init::<B>(&Default::default())
        .unwrap();
    let weight = layer.weight();
    let config = LoraConfig::new(1, 1.0);
    let a = Tensor::<B, 2>::from_floats([[1.0], [f32::NAN], [0.0], [0.0]], &Default::default());
    let b = Tensor::<B, 2>::from_floats([[1.0, 1.0, 1.0]], &Default::default());
    // A non-finite factor cannot even become an adapter...
    assert!(matches!(
        LoraAdapter::from_factors("bad", &config, a, b.clone()),
        Err(LoraError::NonFinite(_))
    ));
    // ...and an overflowing sum cannot be merged.
    let huge = Tensor::<B, 2>::from_floats([[3e38], [3e38], [3e38], [3e38]], &Default::default());
    let adapter = LoraAdapter::from_factors("huge", &config, huge, b.mul_scalar(3.0)).unwrap();
    layer.insert_adapter(adapter).unwrap();
    assert!(matches!(layer.merge(), Err(LoraError::NonFinite(_))));
    assert!(matches!(
        layer.merge_to_linear(),
        Err(LoraError::NonFinite(_))
    ));
    assert!(!layer.is_merged());
    assert_bit_identical(layer.weight(), weight);
}

#[test]
fn dropout_is_applied_in_training_and_off_at_inference() {
    let config = LoraConfig::new(4, 8.0).with_dropout(0.5);
    let mut layer = LoraLinearConfig::new(24, 16)
        .init::<AB>(&Default::default())
        .unwrap();
    let adapter =
        LoraAdapter::from_factors("d", &config, randn([24, 4], 70), randn([4, 16], 71)).unwrap();
    layer.insert_adapter(adapter).unwrap();
    let x = randn::<AB, 2>([8, 24], 8);

    // Training (autodiff backend): the mask is random, so two passes differ.
    let t1 = layer.forward(x.clone());
    let t2 = layer.forward(x.clone());
    assert!(
        max_abs_diff(t1, t2) > 1e-3,
        "dropout was not applied in training"
    );

    // Inference (`valid()`): deterministic and equal to the dense reference without dropout.
    let valid = layer.valid();
    let xi = x.inner();
    let v1 = valid.forward(xi.clone());
    assert_bit_identical(v1.clone(), valid.forward(xi.clone()));
    let diff = max_abs_diff(v1, reference(&valid, xi));
    assert!(diff < tol(), "{diff}");
}

#[test]
fn named_adapters_switch_without_touching_the_base() {
    let mut layer = adapted_layer(&LoraConfig::new(2, 2.0), 80);
    let second = LoraAdapter::from_factors(
        "second",
        &LoraConfig::new(3, 3.0),
        randn([24, 3], 81),
        randn([3, 16], 82),
    )
    .unwrap();
    let weight_before = layer.weight();
    layer.insert_adapter(second).unwrap();
    assert_eq!(layer.adapter_names(), vec!["trained", "second"]);
    assert_eq!(layer.active_adapters(), vec!["second"]);

    let x = randn::<B, 2>([3, 24], 9);
    let base = layer.forward_base(x.clone());
    let with = |layer: &mut LoraLinear<B>, names: &[&str]| {
        layer.set_active_adapters(names).unwrap();
        layer.forward(x.clone())
    };
    let y_first = with(&mut layer, &["trained"]) - base.clone();
    let y_second = with(&mut layer, &["second"]) - base.clone();
    let y_both = with(&mut layer, &["trained", "second"]) - base.clone();
    let diff = max_abs_diff(y_both, y_first + y_second);
    assert!(diff < tol(), "two active adapters must add: {diff}");
    assert_bit_identical(with(&mut layer, &[]), base);

    assert!(matches!(
        layer.set_active_adapters(&["nope"]),
        Err(LoraError::UnknownAdapter(_))
    ));
    assert!(matches!(
        layer.add_adapter("second", &LoraConfig::new(1, 1.0)),
        Err(LoraError::DuplicateAdapter(_))
    ));
    assert!(matches!(
        layer.add_adapter("", &LoraConfig::new(1, 1.0)),
        Err(LoraError::InvalidAdapterName(_))
    ));
    let removed = layer.remove_adapter("trained").unwrap();
    assert_eq!(removed.name(), "trained");
    assert_eq!(layer.adapter_names(), vec!["second"]);
    assert_bit_identical(layer.weight(), weight_before);
}

#[test]
fn adapter_factors_must_fit_the_layer() {
    let mut layer = LoraLinearConfig::new(24, 16)
        .init::<B>(&Default::default())
        .unwrap();
    let config = LoraConfig::new(2, 2.0);
    let wrong =
        LoraAdapter::from_factors("w", &config, randn([23, 2], 1), randn([2, 16], 2)).unwrap();
    let err = layer.insert_adapter(wrong).unwrap_err();
    assert!(matches!(err, LoraError::ShapeMismatch { .. }), "{err}");
    let err = LoraAdapter::<B>::from_factors("r", &config, randn([24, 3], 1), randn([3, 16], 2))
        .unwrap_err();
    assert!(err.to_string().contains("lora_A"), "{err}");
    assert!(layer.adapters().is_empty());
}

/// A decoding step's input (`[batch, 1, d]`, several rows) feeding two bias-free projections
/// whose outputs are multiplied, as a SwiGLU block's gate and up: every row gets its own
/// products. Burn 0.21's fused wgpu backend got every row after the first wrong here with its
/// broadcast batched product (see `burn_lora_kernels::linear`); the reference is computed on the
/// host.
#[test]
fn two_projections_of_one_step_give_every_row_its_own_products() {
    let (rows, d_in, d_out) = (2, 64, 96);
    let layer = |seed| {
        LoraLinear::<B>::from_linear(Linear {
            weight: Param::from_tensor(randn([d_in, d_out], seed)),
            bias: None,
        })
    };
    let (gate, up) = (layer(31), layer(37));
    // The input comes out of another operation, as a norm's output does.
    let x = randn::<B, 3>([rows, 1, d_in], 41).mul_scalar(0.5);
    let product = values(gate.forward(x.clone()) * up.forward(x.clone()));
    let (x, wg, wu) = (
        values(x.reshape([rows, d_in])),
        values(gate.weight()),
        values(up.weight()),
    );
    let dot = |row: usize, w: &[f32], col: usize| -> f32 {
        (0..d_in)
            .map(|k| x[row * d_in + k] * w[k * d_out + col])
            .sum()
    };
    // Each product sums 64 terms of order one twice: within 1e-4 of the host's sums.
    for row in 0..rows {
        for col in 0..d_out {
            let expected = dot(row, &wg, col) * dot(row, &wu, col);
            let got = product[row * d_out + col];
            let bound = tol() * (1.0 + expected.abs());
            assert!(
                (got - expected).abs() < bound,
                "row {row}, column {col}: {got} for {expected}"
            );
        }
    }
}
