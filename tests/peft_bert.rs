//! Cross-implementation check of LoRA on a transformer against files written by Hugging Face
//! PEFT (`tests/fixtures/peft/bert_tiny_qv` and `bert_tiny_emb`, see their README): a random
//! tiny `BertModel`'s state dict, PEFT's adapter for it, and the last hidden states PyTorch
//! computed with the adapter disabled, enabled and merged. burn-lora's [`Bert`] (built from its
//! LoRA-ready blocks) loads both and must reproduce those tensors; saving the loaded adapter
//! must give back PEFT's keys, shapes and config.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Int, Tensor};
use burn_lora::nn::bert::{Bert, BertConfig};
use burn_lora::{load_adapter, save_adapter, LayerKind, LoraModel, ADAPTER_WEIGHTS_FILE};
use common::safetensors_io::{raw, read_config, read_raw};
use common::{assert_bit_identical, existing_peft_fixture, max_abs_diff, B};
use serde_json::Value;

/// Largest absolute difference allowed between a hidden state of burn-lora and PyTorch's.
///
/// Hidden states come out of a LayerNorm, so they are of order 1. Both sides compute in f32
/// through two encoder layers: 32- and 64-term dot products summed in different orders, a
/// softmax, an exact (erf) GELU and two LayerNorms each; each step adds a few ulps, and the
/// LayerNorm divides by a standard deviation that can be small for some rows. PyTorch itself saw
/// |h_merged - h_lora| ≈ 4.8e-7 (meta.json) merely from reassociating `W x + s·B A x`, and
/// burn-lora's outputs were seen within 1e-6 of PyTorch's. 1e-5 leaves room for that rounding,
/// while a wrong transpose, scale, mask or GELU moves hidden states by 1e-2 or more (the
/// adapters move them by 0.04 and 2.6).
const TOLERANCE: f32 = 1e-5;

/// The adapter name used when loading PEFT's adapter.
const NAME: &str = "peft";

/// The fixture's model with its base weights, strictly loaded from the PyTorch state dict.
fn base_model(dir: &Path) -> Bert<B> {
    let config = BertConfig::from_hf_json(&dir.join("config.json")).expect("config.json reads");
    let mut model = config
        .init::<B>(&Default::default())
        .expect("config builds");
    model
        .load_hf_safetensors(&dir.join("base_model.safetensors"), "")
        .expect("every key of the state dict loads");
    model
}

/// `input_ids`, `attention_mask` and the hidden states of `io.safetensors`.
struct Io {
    input_ids: Tensor<B, 2, Int>,
    attention_mask: Tensor<B, 2, Int>,
    hidden: BTreeMap<&'static str, Tensor<B, 3>>,
}

fn io(dir: &Path) -> Io {
    let tensors = read_raw(&dir.join("io.safetensors"));
    Io {
        input_ids: raw(&tensors, "input_ids").to_int_tensor(),
        attention_mask: raw(&tensors, "attention_mask").to_int_tensor(),
        hidden: ["h_base", "h_lora", "h_merged"]
            .into_iter()
            .map(|key| (key, raw(&tensors, key).to_tensor()))
            .collect(),
    }
}

fn assert_close(what: &str, ours: Tensor<B, 3>, torch: &Tensor<B, 3>) {
    assert_eq!(ours.dims(), torch.dims(), "{what}: shapes differ");
    let diff = max_abs_diff(ours, torch.clone());
    println!("{what}: max |burn - pytorch| = {diff:e}");
    assert!(
        diff <= TOLERANCE,
        "{what}: max |burn - pytorch| = {diff:e} exceeds {TOLERANCE:e}"
    );
}

/// Loads the fixture, its adapter, and checks base, LoRA, disabled, merged, unmerged and
/// merge-and-unload outputs against PyTorch's; then saves the adapter and compares with PEFT's.
fn reproduces_pytorch(fixture: &str, kinds: &[LayerKind]) {
    let dir = existing_peft_fixture(fixture);
    let io = io(&dir);
    let forward =
        |model: &Bert<B>| model.forward(io.input_ids.clone(), io.attention_mask.clone(), None);
    let mut model = base_model(&dir);
    let base = forward(&model);
    assert_close(
        &format!("{fixture} h_base"),
        base.clone(),
        &io.hidden["h_base"],
    );

    load_adapter(
        &mut model,
        NAME,
        &dir.join("adapter"),
        &Bert::<B>::hf_path_map("").unwrap(),
    )
    .expect("PEFT's adapter loads");
    let adapted: Vec<LayerKind> = model
        .lora_layers()
        .iter()
        .filter(|layer| layer.adapter(NAME).is_some())
        .map(|layer| layer.kind())
        .collect();
    for kind in kinds {
        assert!(
            adapted.contains(kind),
            "{fixture}: no {kind:?} layer got the adapter"
        );
    }
    assert_close(
        &format!("{fixture} h_lora"),
        forward(&model),
        &io.hidden["h_lora"],
    );

    model.set_enabled(false);
    assert_bit_identical(forward(&model), base);
    model.set_enabled(true);

    model.merge().expect("merges");
    assert_close(
        &format!("{fixture} h_merged (in place)"),
        forward(&model),
        &io.hidden["h_merged"],
    );
    model.unmerge().expect("unmerges");
    let plain = model.merge_and_unload().expect("merge and unload");
    assert!(plain.adapter_names().is_empty());
    assert_close(
        &format!("{fixture} h_merged (unloaded)"),
        forward(&plain),
        &io.hidden["h_merged"],
    );

    let saved = tempfile::tempdir().unwrap();
    save_adapter(
        &model,
        NAME,
        saved.path(),
        &Bert::<B>::hf_path_map("").unwrap(),
    )
    .expect("saves");
    let shapes = |dir: &Path| -> BTreeMap<String, Vec<usize>> {
        read_raw(&dir.join(ADAPTER_WEIGHTS_FILE))
            .into_iter()
            .map(|t| (t.key, t.shape))
            .collect()
    };
    assert_eq!(
        shapes(saved.path()),
        shapes(&dir.join("adapter")),
        "{fixture}: keys and shapes"
    );
    let ours = read_config(saved.path());
    let peft = read_config(&dir.join("adapter"));
    for field in ["r", "lora_alpha", "use_rslora", "peft_type", "lora_dropout"] {
        assert_eq!(ours[field], peft[field], "{fixture}: config field {field}");
    }
    let targets = |config: &Value| -> Vec<String> {
        let mut names: Vec<String> = config["target_modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().rsplit('.').next().unwrap().to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    assert_eq!(
        targets(&ours),
        targets(&peft),
        "{fixture}: targeted module names"
    );
}

#[test]
fn bert_with_lora_on_query_and_value_reproduces_pytorch_and_peft() {
    reproduces_pytorch("bert_tiny_qv", &[LayerKind::Linear]);
}

#[test]
fn bert_with_lora_on_every_projection_and_the_word_embeddings_reproduces_pytorch_and_peft() {
    reproduces_pytorch("bert_tiny_emb", &[LayerKind::Linear, LayerKind::Embedding]);
}

#[test]
fn bert_checkpoint_with_a_key_that_fits_nothing_is_an_error_and_changes_nothing() {
    let dir = existing_peft_fixture("bert_tiny_qv");
    let mut model = base_model(&dir);
    let before = common::snapshot::ParamSnapshot::of(&model);
    let mut tensors = read_raw(&dir.join("base_model.safetensors"));
    tensors[0].key = "encoder.layer.0.attention.self.quary.weight".into();
    let edited = tempfile::tempdir().unwrap();
    let file = edited.path().join("model.safetensors");
    common::safetensors_io::write_raw(&file, &tensors);
    let err = model.load_hf_safetensors(&file, "").unwrap_err();
    assert!(
        err.to_string().contains("quary") || err.to_string().contains("missing"),
        "{err}"
    );
    before.assert_same(&common::snapshot::ParamSnapshot::of(&model), "failed load");
}
