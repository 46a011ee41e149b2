//! Weighted combination of adapters is exact: its ΔW is the weighted sum of the sources' ΔW.

use crate::common::{base_model, insert_trained, max_abs_diff, on_all, randn, B};
use burn_lora::LoraLayer;
use burn_lora::{LoraConfig, LoraError, LoraMlp, LoraModel};

/// A 16-12-6 model with two adapters holding random factors: "a" (rank 2, alpha 4) on both
/// layers and "b" (rank 3, rsLoRA) on the first only, active there.
fn model_with_two_adapters() -> LoraMlp<B> {
    let mut model = base_model(&[16, 12, 6]);
    let a = on_all(&model, &LoraConfig::new(2, 4.0));
    insert_trained(&mut model, "a", &a, 0);
    let b = LoraConfig::new(3, 3.0).with_use_rslora(true);
    insert_trained(&mut model, "b", &[(0, b)], 2);
    model
}

#[test]
fn combined_delta_equals_the_weighted_sum_of_deltas() {
    let mut model = model_with_two_adapters();
    let (wa, wb) = (0.7, -1.5);
    model
        .combine_adapters("mix", &[("a", wa), ("b", wb)])
        .unwrap();
    assert_eq!(model.adapter_names(), vec!["a", "b", "mix"]);

    // Layer 0 holds both sources: rank 2 + 3 = 5, scale 1.
    let layer = &model.layers()[0];
    let mix = layer.adapter("mix").unwrap();
    assert_eq!(mix.rank(), 5);
    assert_eq!(mix.scale(), 1.0);
    let expected = layer.adapter("a").unwrap().delta_weight().mul_scalar(wa)
        + layer.adapter("b").unwrap().delta_weight().mul_scalar(wb);
    let diff = max_abs_diff(mix.delta_weight(), expected);
    // Same products, summed over 5 instead of 2+3 terms: f32 rounding only.
    assert!(diff < crate::common::matmul_tol(1e-5), "layer 0: {diff}");

    // Layer 1 holds only "a": the combination is wa·ΔW_a.
    let layer = &model.layers()[1];
    let mix = layer.adapter("mix").unwrap();
    assert_eq!(mix.rank(), 2);
    let expected = layer.adapter("a").unwrap().delta_weight().mul_scalar(wa);
    assert!(max_abs_diff(mix.delta_weight(), expected) < crate::common::matmul_tol(1e-5));
}

#[test]
fn combined_adapter_output_adds_the_weighted_contributions() {
    let mut model = model_with_two_adapters();
    let x = randn::<B, 2>([4, 16], 99);
    let layer_out = |model: &mut LoraMlp<B>, name: &str| {
        model.set_active_adapter(name).unwrap();
        model.layers()[0].forward(x.clone())
    };
    let base = model.layers()[0].forward_base(x.clone());
    let ya = layer_out(&mut model, "a") - base.clone();
    let yb = layer_out(&mut model, "b") - base.clone();
    model
        .combine_adapters("half", &[("a", 0.5), ("b", 0.5)])
        .unwrap();
    assert_eq!(model.layers()[0].active_adapters(), vec!["half"]);
    let ymix = model.layers()[0].forward(x.clone()) - base;
    let diff = max_abs_diff(ymix, (ya + yb).mul_scalar(0.5));
    assert!(diff < crate::common::matmul_tol(1e-4), "{diff}");
}

#[test]
fn combination_errors_change_nothing() {
    let mut model = model_with_two_adapters();
    assert_eq!(
        model.combine_adapters("mix", &[("a", 1.0), ("nope", 1.0)]),
        Err(LoraError::UnknownAdapter("nope".into()))
    );
    assert_eq!(
        model.combine_adapters("a", &[("b", 1.0)]),
        Err(LoraError::DuplicateAdapter("a".into()))
    );
    assert!(matches!(
        model.combine_adapters("mix", &[("a", f64::NAN)]),
        Err(LoraError::NonFinite(_))
    ));
    model.merge().unwrap();
    assert!(matches!(
        model.combine_adapters("mix", &[("a", 1.0)]),
        Err(LoraError::Merged(_))
    ));
    model.unmerge().unwrap();
    assert_eq!(model.adapter_names(), vec!["a", "b"]);
}

#[test]
fn combined_adapter_above_the_layer_rank_saves_and_loads_back() {
    use burn_lora::{load_adapter, save_adapter, PathMap};

    // One layer with 10 outputs; 8 + 8 = 16 > min(12, 10).
    let mut model = base_model(&[12, 10]);
    let config = LoraConfig::new(8, 8.0);
    insert_trained(&mut model, "a", &[(0, config.clone())], 1);
    insert_trained(&mut model, "b", &[(0, config)], 2);
    model
        .combine_adapters("mix", &[("a", 0.5), ("b", 0.5)])
        .unwrap();
    assert_eq!(model.layers()[0].adapter("mix").unwrap().rank(), 16);
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, "mix", dir.path(), &PathMap::identity()).unwrap();

    let mut fresh = model.clone();
    fresh.remove_adapter("mix").unwrap();
    load_adapter(&mut fresh, "mix", dir.path(), &PathMap::identity()).unwrap();
    let x = crate::common::probe(12);
    crate::common::assert_bit_identical(fresh.forward(x.clone()), model.forward(x));
}
