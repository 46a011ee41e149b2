//! What a Burn record of a LoRA model promises: each adapter's name, configuration and active
//! flag travel with its factors, and loading makes the model's adapters exactly the record's,
//! whatever the receiving model had attached, in whatever order, with whatever alpha. A
//! base-only record keeps the model's adapters; the merged state is the record's; a corrupt
//! identity is the recorder's error.

use crate::common::{
    assert_bit_identical, base_model, insert_trained, max_abs_diff, on_all, probe, B,
};
use burn::module::Module;
use burn::record::{
    FullPrecisionSettings, NamedMpkBytesRecorder, PrettyJsonFileRecorder, Recorder,
};
use burn_lora::{LoraConfig, LoraLayer, LoraMlp, LoraModel};

/// `model`'s record through Burn's recorder (bytes), loaded into `target`.
fn through_recorder(model: &LoraMlp<B>, target: LoraMlp<B>) -> LoraMlp<B> {
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(model.clone().into_record(), ()).unwrap();
    let record = recorder.load(bytes, &Default::default()).unwrap();
    target.load_record(record)
}

/// Inserts adapter `name` with random factors (from `seed`) on every layer, active.
fn insert_everywhere(model: &mut LoraMlp<B>, name: &str, config: LoraConfig, seed: u64) {
    let layers = on_all(model, &config);
    insert_trained(model, name, &layers, seed);
}

/// A 6-5-4 model with adapters "a" (rank 2, alpha 4) and "b" (rank 1, alpha 3, rsLoRA) on every
/// layer, "a" active, factors drawn from `seed`.
fn two_adapters(seed: u64) -> LoraMlp<B> {
    let mut model = base_model(&[6, 5, 4]);
    let b = LoraConfig::new(1, 3.0).with_use_rslora(true);
    insert_everywhere(&mut model, "b", b, seed + 100);
    let a = LoraConfig::new(2, 4.0);
    insert_everywhere(&mut model, "a", a, seed);
    model
}

/// Per layer: the adapters' names, configs and active flags.
fn identities(model: &LoraMlp<B>) -> Vec<Vec<(String, LoraConfig, bool)>> {
    model
        .layers()
        .iter()
        .map(|layer| {
            layer
                .adapters()
                .iter()
                .map(|a| (a.name().to_string(), a.config().clone(), a.is_active()))
                .collect()
        })
        .collect()
}

#[test]
fn a_record_restores_adapter_names_configs_and_active_flags_in_its_own_order() {
    let source = two_adapters(1);
    // The receiving model attached the same names in the other order, with other alphas and
    // other factors, and another adapter active.
    let mut target = base_model(&[6, 5, 4]);
    let a = LoraConfig::new(2, 9.0);
    insert_everywhere(&mut target, "a", a, 50);
    let b = LoraConfig::new(1, 1.0);
    insert_everywhere(&mut target, "b", b, 60);
    let x = probe(6);
    let expected = source.forward(x.clone());
    assert!(max_abs_diff(target.forward(x.clone()), expected.clone()) > 1e-3);

    let loaded = through_recorder(&source, target);
    assert_eq!(identities(&loaded), identities(&source));
    assert_bit_identical(loaded.forward(x), expected);
}

#[test]
fn a_record_with_adapters_loads_them_into_a_bare_model() {
    let source = two_adapters(2);
    let loaded = through_recorder(&source, base_model(&[6, 5, 4]));
    assert_eq!(identities(&loaded), identities(&source));
    let x = probe(6);
    assert_bit_identical(loaded.forward(x.clone()), source.forward(x));
}

#[test]
fn a_record_with_fewer_adapters_leaves_only_those() {
    let mut source = base_model(&[6, 5, 4]);
    insert_everywhere(&mut source, "only", LoraConfig::new(2, 2.0), 3);
    let loaded = through_recorder(&source, two_adapters(4));
    assert_eq!(loaded.adapter_names(), vec!["only".to_string()]);
    let x = probe(6);
    assert_bit_identical(loaded.forward(x.clone()), source.forward(x));
}

#[test]
fn a_base_only_record_keeps_the_models_adapters() {
    let target = two_adapters(5);
    let before = identities(&target);
    let factors: Vec<_> = target.layers()[0]
        .adapters()
        .iter()
        .map(|a| a.lora_a())
        .collect();
    // Another base, no adapter: a pretrained checkpoint.
    let base = base_model(&[6, 5, 4]);
    let loaded = through_recorder(&base, target);
    assert_eq!(identities(&loaded), before);
    for (adapter, factor) in loaded.layers()[0].adapters().iter().zip(factors) {
        assert_bit_identical(adapter.lora_a(), factor);
    }
    // The base is the record's.
    for (layer, base) in loaded.layers().iter().zip(base.layers()) {
        assert_bit_identical(layer.weight(), base.weight());
    }
}

#[test]
fn the_merged_state_is_the_records() {
    let mut merged = two_adapters(6);
    merged.merge().unwrap();
    let x = probe(6);
    let expected = merged.forward(x.clone());

    // Into an unmerged model with other adapters: merged, with the record's names.
    let mut loaded = through_recorder(&merged, two_adapters(7));
    assert!(loaded.is_merged());
    for layer in loaded.layers() {
        assert_eq!(layer.merged_adapters(), ["a".to_string()]);
    }
    assert_bit_identical(loaded.forward(x.clone()), expected.clone());
    loaded.unmerge().unwrap();
    assert!(max_abs_diff(loaded.forward(x.clone()), expected) < 1e-5);

    // An unmerged record into a merged model: unmerged, and merging again works.
    let unmerged = two_adapters(8);
    let mut target = two_adapters(9);
    target.merge().unwrap();
    let mut loaded = through_recorder(&unmerged, target);
    assert!(!loaded.is_merged());
    assert_bit_identical(loaded.forward(x.clone()), unmerged.forward(x));
    loaded.merge().unwrap();
}

/// A change to a record's JSON text.
type Edit = fn(&str) -> String;

/// Writes `model` with Burn's JSON recorder, lets `edit` change the text, and loads it back.
fn load_edited_json(
    model: &LoraMlp<B>,
    edit: impl Fn(&str) -> String,
) -> Result<LoraMlp<B>, burn::record::RecorderError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model");
    let recorder = PrettyJsonFileRecorder::<FullPrecisionSettings>::default();
    model.clone().save_file(path.clone(), &recorder).unwrap();
    let file = path.with_extension("json");
    let text = std::fs::read_to_string(&file).unwrap();
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit must change the record");
    std::fs::write(&file, edited).unwrap();
    base_model(&[6, 5, 4]).load_file(path, &recorder, &Default::default())
}

#[test]
fn a_corrupt_adapter_identity_is_the_recorders_error() {
    let mut model = base_model(&[6, 5, 4]);
    insert_everywhere(&mut model, "only", LoraConfig::new(2, 2.0), 10);
    // The edits are checked to apply; loading the unedited file works.
    assert!(load_edited_json(&model, |t| t.replace("\"alpha\": 2.0", "\"alpha\": 2.5")).is_ok());
    let cases: [(&str, Edit); 3] = [
        ("empty name", |t| {
            t.replace("\"name\": \"only\"", "\"name\": \"\"")
        }),
        ("rank zero", |t| t.replace("\"rank\": 2", "\"rank\": 0")),
        ("negative alpha", |t| {
            t.replace("\"alpha\": 2.0", "\"alpha\": -1.0")
        }),
    ];
    for (what, edit) in cases {
        assert!(load_edited_json(&model, edit).is_err(), "{what} loaded");
    }
}
