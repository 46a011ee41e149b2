//! Fuzzing `load_adapter`: whatever is done to the files of a PEFT adapter (its
//! `adapter_model.safetensors`, its `adapter_config.json`), loading never panics, a failed load
//! leaves the model exactly as it was, and a load that succeeds adds a finite adapter and leaves
//! the base and the model's other adapters bit-identical.
//!
//! The seeds are the files PEFT wrote for a 12-4-3 MLP (`tests/fixtures/peft/mlp_r6_narrow`)
//! and the corpus under `tests/fixtures/fuzz/`; see `burn_lora_support::fuzz` for the mutations
//! and `tests/fixtures/fuzz/README.md` for long runs.

use std::path::Path;

use crate::common::snapshot::Snapshot;
use crate::common::{existing_peft_fixture, insert_trained, load_pytorch_base, B};
use burn_lora::{
    load_adapter, LoraConfig, LoraLayer, LoraMlp, LoraMlpConfig, LoraModel, PathMap,
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
};
use burn_lora_support::fuzz::{variant_name, Format, Fuzz, SAFETENSORS_WORDS};

/// The fixture's base with adapter "existing" on its last layer, and the fixture's adapter folder.
fn setup() -> (LoraMlp<B>, std::path::PathBuf) {
    let fixture = existing_peft_fixture("mlp_r6_narrow");
    let mut model = LoraMlpConfig::new(12, vec![4], 3)
        .init::<B>(&Default::default())
        .unwrap();
    load_pytorch_base(
        &mut model,
        &fixture.join("base_model.safetensors"),
        &PathMap::identity(),
    )
    .unwrap();
    insert_trained(&mut model, "existing", &[(1, LoraConfig::new(1, 1.0))], 60);
    (model, fixture.join("adapter"))
}

/// Loads the adapter in `dir` into a copy of `target` and checks the properties; returns the
/// outcome (`Ok` or the error's variant).
fn check_load(target: &LoraMlp<B>, before: &Snapshot, dir: &Path) -> Result<String, String> {
    let mut model = target.clone();
    match load_adapter(&mut model, "fuzzed", dir, &PathMap::identity()) {
        Ok(()) => {
            let mut names = model.adapter_names();
            names.sort();
            if names != ["existing", "fuzzed"] {
                return Err(format!("loaded, but the adapters are {names:?}"));
            }
            let after = Snapshot::of(&model);
            for (index, (old, new)) in before.layers.iter().zip(&after.layers).enumerate() {
                if old.weight != new.weight || old.bias != new.bias {
                    return Err(format!("loading changed the base of layers.{index}"));
                }
                if new.factors.get(..old.factors.len()) != Some(&old.factors[..]) {
                    return Err(format!("loading changed another adapter of layers.{index}"));
                }
            }
            for layer in model.layers() {
                if let Some(adapter) = layer.adapter("fuzzed") {
                    adapter
                        .ensure_finite()
                        .map_err(|e| format!("loaded a non-finite adapter: {e}"))?;
                }
            }
            Ok("Ok".into())
        }
        Err(e) => {
            if e.to_string().is_empty() {
                return Err(format!("an error with no message: {e:?}"));
            }
            if Snapshot::of(&model) != *before {
                return Err(format!(
                    "the model changed although loading failed with: {e}"
                ));
            }
            Ok(variant_name(&e))
        }
    }
}

/// Fuzzes one of the two files, the other staying PEFT's.
fn fuzz_file(target_name: &str, file: &str, format: Format, words: &[&str], cases: u32) {
    let (target, adapter) = setup();
    let before = Snapshot::of(&target);
    let dir = tempfile::tempdir().unwrap();
    for name in [ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE] {
        std::fs::copy(adapter.join(name), dir.path().join(name)).unwrap();
    }
    // PEFT's files load, so the failures below come from the mutations.
    assert_eq!(check_load(&target, &before, dir.path()), Ok("Ok".into()));

    let report = Fuzz::new(target_name, format)
        .seed_file(&adapter.join(file))
        .words(words)
        .cases(cases)
        .run(|bytes| {
            std::fs::write(dir.path().join(file), bytes).map_err(|e| e.to_string())?;
            check_load(&target, &before, dir.path())
        });
    assert!(
        report.count_except("Ok") > 0,
        "no mutated input was refused: the mutations do not reach the parser ({report:?})"
    );
}

#[test]
fn mutated_adapter_weights_never_panic_and_failed_loads_change_nothing() {
    let mut words = vec![
        "base_model.model.layers.0.lora_A.weight",
        "base_model.model.layers.1.lora_B.weight",
        "base_model.model.layers.0.lora_magnitude_vector",
        "lora_embedding_A",
    ];
    words.extend_from_slice(SAFETENSORS_WORDS);
    fuzz_file(
        "adapter_model",
        ADAPTER_WEIGHTS_FILE,
        Format::Safetensors,
        &words,
        150,
    );
}

#[test]
fn mutated_adapter_config_never_panics_and_failed_loads_change_nothing() {
    let words = [
        "r",
        "lora_alpha",
        "target_modules",
        "rank_pattern",
        "alpha_pattern",
        "use_rslora",
        "use_dora",
        "fan_in_fan_out",
        "lora_bias",
        "bias",
        "peft_type",
        "LORA",
        "IA3",
        "none",
        "all",
        "lora_only",
        "layers.0",
        "layers.1",
        "layers\\.[0-9]+",
        "modules_to_save",
        "layers_to_transform",
        "layers_pattern",
        "exclude_modules",
        "init_lora_weights",
        "pissa",
        "task_type",
    ];
    fuzz_file(
        "adapter_config",
        ADAPTER_CONFIG_FILE,
        Format::Json,
        &words,
        150,
    );
}
