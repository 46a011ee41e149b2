//! Merging in place keeps the base: unmerge is exact, a disabled merged layer is the base, and a
//! model saved while merged loads back to the same outputs whether the model it loads into is
//! merged or not (Burn's recorder and burn-store alike). Loads go into a model with another base
//! and other factors, so that only a load that works gives the source's outputs.

use crate::common::{
    assert_bit_identical, base_model, insert_trained, max_abs_diff, on_all, probe, B,
};
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::Tensor;
use burn_lora::LoraLayer;
use burn_lora::{save_checkpoint, LoraConfig, LoraMlp, LoraModel};
use burn_store::{ModuleSnapshot, SafetensorsStore};

/// A 10-8-6 model with a trained-looking adapter "default" on every layer, and a clone of it
/// (sharing its base and factors) that stays unmerged.
fn trained_pair() -> (LoraMlp<B>, LoraMlp<B>) {
    let model = trained(7);
    let twin = model.clone();
    (model, twin)
}

/// A fresh 10-8-6 model with a trained-looking adapter "default" (rank 3, alpha 6) on every
/// layer, drawn from `seed`.
fn trained(seed: u64) -> LoraMlp<B> {
    let mut model = base_model(&[10, 8, 6]);
    let layers = on_all(&model, &LoraConfig::new(3, 6.0));
    insert_trained(&mut model, "default", &layers, seed);
    model
}

/// A model of the same architecture as [`trained`]'s with another base and other
/// factors, to load into: checked to compute other outputs than `source` on `x`, so that
/// matching outputs after loading prove the load.
fn other_target(source: &LoraMlp<B>, x: &Tensor<B, 2>) -> LoraMlp<B> {
    let target = trained(1234);
    let diff = max_abs_diff(target.forward(x.clone()), source.forward(x.clone()));
    assert!(
        diff > 1e-2,
        "the target computes what the source does already ({diff})"
    );
    target
}

/// Merged and unmerged computations of the same model differ only by f32 reassociation.
const MERGE_TOL: f32 = 1e-5;

/// Bytes of `model` through Burn's recorder, loaded into `target`.
fn through_recorder(model: &LoraMlp<B>, target: LoraMlp<B>) -> LoraMlp<B> {
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(model.clone().into_record(), ()).unwrap();
    let record = recorder.load(bytes, &Default::default()).unwrap();
    target.load_record(record)
}

#[test]
fn model_saved_merged_loads_into_an_unmerged_model_with_the_same_outputs() {
    let mut merged = trained(7);
    merged.merge().unwrap();
    let x = probe(10);
    let expected = merged.forward(x.clone());
    let unmerged = other_target(&merged, &x);

    let loaded = through_recorder(&merged, unmerged);
    let diff = max_abs_diff(loaded.forward(x), expected);
    assert!(diff < MERGE_TOL, "outputs differ by {diff}");
}

#[test]
fn model_saved_unmerged_loads_into_a_merged_model_with_the_same_outputs() {
    let unmerged = trained(7);
    let x = probe(10);
    let expected = unmerged.forward(x.clone());
    let mut target = other_target(&unmerged, &x);
    target.merge().unwrap();

    let loaded = through_recorder(&unmerged, target);
    assert!(!loaded.layers().iter().any(|l| l.is_merged()));
    assert_bit_identical(loaded.forward(x), expected);
}

#[test]
fn model_saved_merged_loads_into_a_merged_model_bit_identical() {
    let mut merged = trained(7);
    merged.merge().unwrap();
    let x = probe(10);
    let mut target = other_target(&merged, &x);
    target.merge().unwrap();
    let loaded = through_recorder(&merged, target);
    assert_bit_identical(loaded.forward(x.clone()), merged.forward(x));
}

#[test]
fn checkpoint_saved_merged_loads_through_burn_store_with_the_same_outputs() {
    let mut merged = trained(7);
    merged.merge().unwrap();
    let x = probe(10);
    let expected = merged.forward(x.clone());
    let mut unmerged = other_target(&merged, &x);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save_checkpoint(&merged, &path).unwrap();

    let result = unmerged
        .load_from(&mut SafetensorsStore::from_file(&path))
        .unwrap();
    assert!(result.errors.is_empty(), "{result:?}");
    let diff = max_abs_diff(unmerged.forward(x), expected);
    assert!(diff < MERGE_TOL, "outputs differ by {diff}");
}

#[test]
fn unmerge_restores_the_base_and_the_outputs_bit_for_bit() {
    let (mut model, twin) = trained_pair();
    let x = probe(10);
    model.merge().unwrap();
    assert!(model.layers().iter().all(|l| l.is_merged()));
    model.unmerge().unwrap();
    for (layer, original) in model.layers().iter().zip(twin.layers()) {
        assert_bit_identical(layer.weight(), original.weight());
    }
    assert_bit_identical(model.forward(x.clone()), twin.forward(x));
}

#[test]
fn disabled_merged_model_is_exactly_the_base() {
    let (mut model, mut twin) = trained_pair();
    let x = probe(10);
    twin.set_enabled(false);
    let base = twin.forward(x.clone());
    model.merge().unwrap();
    model.set_enabled(false);
    assert_bit_identical(model.forward(x.clone()), base);
    model.set_enabled(true);
    twin.set_enabled(true);
    let diff = max_abs_diff(
        model.forward(x.clone()),
        twin.merge_and_unload().unwrap().forward(x),
    );
    assert!(diff < MERGE_TOL, "{diff}");
}
