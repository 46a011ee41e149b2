//! Many adapters in one batch (PEFT's `adapter_names`): every layer kind's `forward_adapters`
//! gives each row exactly what a forward with that row's adapter alone gives, computes the base
//! once, and refuses what it cannot serve.

use crate::common::{max_abs_diff, randn, B};
use burn::tensor::{Int, Tensor};
use burn_lora::{
    AdapterBatch, LoraAdapter, LoraConfig, LoraConv2dConfig, LoraEmbeddingConfig, LoraError,
    LoraLayer, LoraLinearConfig,
};

/// The rows of each batch entry, by adapter: two adapters, a base row, a repeated adapter.
const ROWS: [&str; 5] = ["a", "__base__", "b", "a", "b"];

/// Adds adapters `a` (rank 2) and `b` (rank 3, rsLoRA) with random non-zero factors.
fn add_two<L: LoraLayer<B>>(layer: &mut L) {
    let [d_in, d_out] = layer.adapter_dims();
    for (name, config, seed) in [
        ("a", LoraConfig::new(2, 4.0), 1),
        ("b", LoraConfig::new(3, 3.0).with_use_rslora(true), 5),
    ] {
        let adapter = LoraAdapter::from_factors(
            name,
            &config,
            randn([d_in, config.rank], seed),
            randn([config.rank, d_out], seed + 1),
        )
        .unwrap();
        layer.insert_adapter(adapter).unwrap();
    }
}

/// Checks that row `r` of `mixed` equals row `r` of the forward with `ROWS[r]` alone.
fn assert_rows_match<const D: usize, L: LoraLayer<B>>(
    layer: &mut L,
    mixed: Tensor<B, D>,
    single: impl Fn(&L) -> Tensor<B, D>,
) {
    for (row, name) in ROWS.iter().enumerate() {
        if *name == "__base__" {
            layer.set_enabled(false);
        } else {
            layer.set_enabled(true);
            layer.set_active_adapters(&[name]).unwrap();
        }
        let expected = single(layer).narrow(0, row, 1);
        let got = mixed.clone().narrow(0, row, 1);
        // Both compute in f32, the single forward possibly with the adapter folded into the
        // weight (a convolution at inference): reassociation errors of some ulps (f32 ε = 1.2e-7) of the
        // largest output, which the factors drawn from N(0, 1) make of order 10.
        let largest = crate::common::values(expected.clone())
            .iter()
            .fold(1.0f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(got, expected);
        assert!(
            diff <= 4e-6 * largest,
            "row {row} ({name}) differs by {diff} (largest output {largest})"
        );
    }
    layer.set_enabled(true);
}

#[test]
fn linear_rows_run_their_own_adapters() {
    let mut layer = LoraLinearConfig::new(6, 4)
        .init::<B>(&Default::default())
        .unwrap();
    add_two(&mut layer);
    let x = randn::<B, 3>([5, 3, 6], 9);
    let batch = AdapterBatch::new(&ROWS).unwrap();
    let mixed = layer.forward_adapters(x.clone(), &batch).unwrap();
    assert_rows_match(&mut layer, mixed, |l| l.forward(x.clone()));
}

#[test]
fn embedding_rows_run_their_own_adapters() {
    let mut layer = LoraEmbeddingConfig::new(20, 4)
        .init::<B>(&Default::default())
        .unwrap();
    add_two(&mut layer);
    let ids = Tensor::<B, 2, Int>::from_ints(
        [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12], [0, 19, 3]],
        &Default::default(),
    );
    let batch = AdapterBatch::new(&ROWS).unwrap();
    let mixed = layer.forward_adapters(ids.clone(), &batch).unwrap();
    assert_rows_match(&mut layer, mixed, |l| l.forward(ids.clone()));
}

#[test]
fn conv2d_images_run_their_own_adapters() {
    let mut layer = LoraConv2dConfig::new([3, 4], [3, 3])
        .init::<B>(&Default::default())
        .unwrap();
    add_two(&mut layer);
    let x = randn::<B, 4>([5, 3, 6, 6], 4);
    let batch = AdapterBatch::new(&ROWS).unwrap();
    let mixed = layer.forward_adapters(x.clone(), &batch).unwrap();
    assert_rows_match(&mut layer, mixed, |l| l.forward(x.clone()));
}

#[test]
fn one_adapter_for_every_row_is_the_active_adapter_forward() {
    let mut layer = LoraLinearConfig::new(6, 4)
        .init::<B>(&Default::default())
        .unwrap();
    add_two(&mut layer);
    layer.set_active_adapters(&["b"]).unwrap();
    let x = randn::<B, 2>([3, 6], 2);
    let batch = AdapterBatch::uniform("b", 3).unwrap();
    let diff = max_abs_diff(
        layer.forward_adapters(x.clone(), &batch).unwrap(),
        layer.forward(x),
    );
    assert!(diff < 1e-6, "{diff}");
}

#[test]
fn a_disabled_layer_runs_the_base_for_every_row() {
    let mut layer = LoraLinearConfig::new(6, 4)
        .init::<B>(&Default::default())
        .unwrap();
    add_two(&mut layer);
    layer.set_enabled(false);
    let x = randn::<B, 2>([5, 6], 3);
    let batch = AdapterBatch::new(&ROWS).unwrap();
    crate::common::assert_bit_identical(
        layer.forward_adapters(x.clone(), &batch).unwrap(),
        layer.forward_base(x),
    );
}

#[test]
fn wrong_row_counts_widths_and_merged_layers_are_errors() {
    let mut layer = LoraLinearConfig::new(6, 4)
        .init::<B>(&Default::default())
        .unwrap();
    add_two(&mut layer);
    let batch = AdapterBatch::new(&ROWS).unwrap();
    assert!(matches!(
        layer.forward_adapters(randn::<B, 2>([4, 6], 1), &batch),
        Err(LoraError::InvalidInput(_))
    ));
    assert!(matches!(
        layer.forward_adapters(randn::<B, 2>([5, 7], 1), &batch),
        Err(LoraError::ShapeMismatch { .. })
    ));
    layer.merge().unwrap();
    assert!(matches!(
        layer.forward_adapters(randn::<B, 2>([5, 6], 1), &batch),
        Err(LoraError::Merged(_))
    ));
}
