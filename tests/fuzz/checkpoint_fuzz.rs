//! Fuzzing `load_pytorch_checkpoint`: whatever is done to a PyTorch state dict in safetensors,
//! loading it never panics, a failed load leaves every parameter of the model (base and
//! adapters) bit-identical, and a load that succeeds writes finite base weights and leaves the
//! adapters alone.
//!
//! The seeds are PyTorch's state dict of a 12-4-3 MLP (`tests/fixtures/peft/mlp_r6_narrow`) and
//! the corpus under `tests/fixtures/fuzz/pytorch_checkpoint/` (the same in F16 and BF16).

use crate::common::snapshot::{ParamSnapshot, Snapshot};
use crate::common::{existing_peft_fixture, insert_trained, values, B};
use burn_lora::{load_pytorch_checkpoint, LoadOptions, LoraConfig, LoraMlpConfig, PathMap};
use burn_lora_support::fuzz::{variant_name, Format, Fuzz, SAFETENSORS_WORDS};

#[test]
fn mutated_pytorch_checkpoints_never_panic_and_failed_loads_change_nothing() {
    let seed = existing_peft_fixture("mlp_r6_narrow").join("base_model.safetensors");
    let mut target = LoraMlpConfig::new(12, vec![4], 3)
        .init::<B>(&Default::default())
        .unwrap();
    for layer in target.layers() {
        let _ = (layer.weight(), layer.bias());
    }
    insert_trained(&mut target, "existing", &[(0, LoraConfig::new(2, 4.0))], 70);
    let params = ParamSnapshot::of(&target);
    let adapters = Snapshot::of(&target).layers;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");

    let report = Fuzz::new("pytorch_checkpoint", Format::Safetensors)
        .seed_file(&seed)
        .words(&[
            "layers.0.weight",
            "layers.0.bias",
            "layers.1.weight",
            "layers.1.bias",
        ])
        .words(SAFETENSORS_WORDS)
        .cases(150)
        .run(|bytes| {
            std::fs::write(&file, bytes).map_err(|e| e.to_string())?;
            let mut model = target.clone();
            match load_pytorch_checkpoint(
                &mut model,
                &file,
                &PathMap::identity(),
                &LoadOptions::new(),
            ) {
                Ok(_) => {
                    for (index, layer) in model.layers().iter().enumerate() {
                        let weight = values(layer.weight());
                        if weight.iter().any(|v| !v.is_finite()) {
                            return Err(format!("layers.{index}: loaded non-finite weights"));
                        }
                    }
                    let after = Snapshot::of(&model).layers;
                    for (index, (old, new)) in adapters.iter().zip(&after).enumerate() {
                        if old.factors != new.factors || old.adapters != new.adapters {
                            return Err(format!(
                                "loading the base changed layers.{index}'s adapters"
                            ));
                        }
                    }
                    Ok("Ok".into())
                }
                Err(e) => {
                    if ParamSnapshot::of(&model) != params {
                        return Err(format!(
                            "the model changed although loading failed with: {e}"
                        ));
                    }
                    Ok(variant_name(&e))
                }
            }
        });
    assert!(
        report.count_except("Ok") > 0,
        "no mutated checkpoint was refused: {report:?}"
    );
    assert!(
        report.outcomes.contains_key("Ok") || report.cases < 50,
        "no mutated checkpoint loaded: {report:?}"
    );
}
