//! Cross-implementation check of LoRA on a transformer against files written by Hugging Face
//! PEFT (`tests/fixtures/peft/bert_tiny_qv`, `bert_tiny_emb` and `minilm_qv`, see their README):
//! a `BertModel`'s state dict, PEFT's adapter for it, and the last hidden states PyTorch computed
//! with the adapter disabled, enabled and merged. burn-lora's [`Bert`] (built from its LoRA-ready
//! blocks) loads both and must reproduce those tensors; saving the loaded adapter must give back
//! PEFT's keys, shapes and config. For the real all-MiniLM-L6-v2 (when `MINILM_DIR` points at
//! it) the `tokenizers` crate must also give PyTorch's token ids, and mean pooling its sentence
//! embeddings.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::safetensors_io::{raw, read_config, read_raw};
use crate::common::{assert_bit_identical, existing_peft_fixture, large_data, max_abs_diff, B};
use burn::tensor::{Int, Tensor, TensorData};
use burn_lora::nn::bert::{Bert, BertConfig};
use burn_lora::{load_adapter, save_adapter, LayerKind, LoraModel, ADAPTER_WEIGHTS_FILE};
use burn_lora_support::text::{BertTokenizer, PadTo, TextBatcher};
use serde_json::Value;

/// Largest absolute difference allowed between a hidden state of burn-lora and PyTorch's on the
/// tiny BERTs.
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

/// The model of `dir/config.json` with its base weights, strictly loaded from the PyTorch state
/// dict `dir/weights`.
fn base_model(dir: &Path, weights: &str) -> Bert<B> {
    let config = BertConfig::from_hf_json(&dir.join("config.json")).expect("config.json reads");
    let mut model = config
        .init::<B>(&Default::default())
        .expect("config builds");
    model
        .load_hf_safetensors(&dir.join(weights), "")
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

fn assert_close<const D: usize>(
    what: &str,
    ours: Tensor<B, D>,
    torch: &Tensor<B, D>,
    tolerance: f32,
) {
    assert_eq!(ours.dims(), torch.dims(), "{what}: shapes differ");
    let diff = max_abs_diff(ours, torch.clone());
    println!("{what}: max |burn - pytorch| = {diff:e}");
    assert!(
        diff <= tolerance,
        "{what}: max |burn - pytorch| = {diff:e} exceeds {tolerance:e}"
    );
}

/// Checks `model` (the fixture's base), then with the fixture's adapter loaded: base, LoRA,
/// disabled, merged, unmerged and merge-and-unload outputs against PyTorch's; then saves the
/// adapter and compares with PEFT's. Returns the base's hidden states and the model with the
/// adapter loaded and active.
fn reproduces_pytorch(
    fixture: &str,
    mut model: Bert<B>,
    tolerance: f32,
    kinds: &[LayerKind],
) -> (Tensor<B, 3>, Bert<B>) {
    let dir = existing_peft_fixture(fixture);
    let io = io(&dir);
    let forward =
        |model: &Bert<B>| model.forward(io.input_ids.clone(), io.attention_mask.clone(), None);
    let assert_close = |what: &str, ours, torch| assert_close(what, ours, torch, tolerance);
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
    assert_bit_identical(forward(&model), base.clone());
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
    (base, model)
}

#[test]
fn bert_with_lora_on_query_and_value_reproduces_pytorch_and_peft() {
    let model = base_model(
        &existing_peft_fixture("bert_tiny_qv"),
        "base_model.safetensors",
    );
    reproduces_pytorch("bert_tiny_qv", model, TOLERANCE, &[LayerKind::Linear]);
}

#[test]
fn bert_with_lora_on_every_projection_and_the_word_embeddings_reproduces_pytorch_and_peft() {
    let model = base_model(
        &existing_peft_fixture("bert_tiny_emb"),
        "base_model.safetensors",
    );
    let kinds = [LayerKind::Linear, LayerKind::Embedding];
    reproduces_pytorch("bert_tiny_emb", model, TOLERANCE, &kinds);
}

#[test]
fn bert_checkpoint_with_a_key_that_fits_nothing_is_an_error_and_changes_nothing() {
    let dir = existing_peft_fixture("bert_tiny_qv");
    let mut model = base_model(&dir, "base_model.safetensors");
    let before = crate::common::snapshot::ParamSnapshot::of(&model);
    let mut tensors = read_raw(&dir.join("base_model.safetensors"));
    tensors[0].key = "encoder.layer.0.attention.self.quary.weight".into();
    let edited = tempfile::tempdir().unwrap();
    let file = edited.path().join("model.safetensors");
    crate::common::safetensors_io::write_raw(&file, &tensors);
    let err = model.load_hf_safetensors(&file, "").unwrap_err();
    assert!(
        err.to_string().contains("quary") || err.to_string().contains("missing"),
        "{err}"
    );
    before.assert_same(
        &crate::common::snapshot::ParamSnapshot::of(&model),
        "failed load",
    );
}

/// Largest absolute difference allowed between burn-lora and PyTorch on the real MiniLM.
///
/// The tiny models' reasoning (see [`TOLERANCE`]) over three times as many layers, with 384- and
/// 1536-term dot products instead of 32- and 64-term ones: rounding grows with the depth and
/// with the square root of the dot products' length. PyTorch itself moved the hidden states by
/// 3.8e-6 (meta.json) merely by merging the adapter, and burn-lora on Flex was seen within 4.3e-6
/// of PyTorch's hidden states and 1.9e-7 of its (unit-length) embeddings. 5e-5 leaves room for
/// backends that sum in yet another order,
/// while the adapter moves hidden states by 2.4 and a wrong mask, scale or transpose by far more
/// than 1e-3.
const MINILM_TOLERANCE: f32 = 5e-5;

#[test]
fn minilm_tokens_hidden_states_and_sentence_embeddings_reproduce_pytorch_and_peft() {
    let Some(model_dir) = large_data(
        "MINILM_DIR",
        "minilm_tokens_hidden_states_and_sentence_embeddings_reproduce_pytorch_and_peft",
    ) else {
        return;
    };
    let dir = existing_peft_fixture("minilm_qv");
    let io = io(&dir);
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    let sentences: Vec<&str> = meta["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();

    // The tokenizers crate reading tokenizer.json gives PyTorch's ids and mask.
    let tokenizer = BertTokenizer::from_file(&model_dir.join("tokenizer.json"), 512).unwrap();
    let ids: Vec<Vec<u32>> = sentences
        .iter()
        .map(|s| tokenizer.encode(s).unwrap())
        .collect();
    let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let (ids, mask, seq) = TextBatcher::new(&tokenizer, PadTo::Longest).pad(&rows);
    let shape = [sentences.len(), seq];
    let as_tensor = |values: Vec<i64>| -> Tensor<B, 2, Int> {
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    };
    assert_eq!(
        as_tensor(ids).into_data(),
        io.input_ids.to_data(),
        "token ids"
    );
    assert_eq!(
        as_tensor(mask).into_data(),
        io.attention_mask.to_data(),
        "attention mask"
    );

    let model = base_model(&model_dir, "model.safetensors");
    let (base, model) =
        reproduces_pytorch("minilm_qv", model, MINILM_TOLERANCE, &[LayerKind::Linear]);

    let tensors = read_raw(&dir.join("io.safetensors"));
    let lora = model.forward(io.input_ids.clone(), io.attention_mask.clone(), None);
    for (key, hidden) in [("e_base", base), ("e_lora", lora)] {
        let embedding = Bert::mean_pool(hidden, io.attention_mask.clone());
        let torch: Tensor<B, 2> = raw(&tensors, key).to_tensor();
        assert_close(
            &format!("minilm {key}"),
            embedding,
            &torch,
            MINILM_TOLERANCE,
        );
    }
}
