//! Cross-implementation check against files written by Hugging Face PEFT (PyTorch).
//!
//! `tests/fixtures/peft/mlp_r4` holds a 784-64-32-10 ReLU MLP's PyTorch state dict, the rank-4
//! (alpha 8) adapter PEFT saved for it, and the outputs PyTorch computed with the adapter
//! disabled, enabled and merged. Loading both into burn-lora must reproduce those outputs, and
//! saving the loaded adapter again must give back PEFT's file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::common::safetensors_io::{
    assert_same_adapter_tensors, raw, read_config, read_metadata, read_raw, target_modules,
};
use crate::common::{assert_bit_identical, load_pytorch_base, max_abs_diff, B};
use burn::tensor::Tensor;
use burn_lora::LoraLayer;
use burn_lora::{
    load_adapter, save_adapter, LoraMlp, LoraMlpConfig, LoraModel, PathMap, ADAPTER_WEIGHTS_FILE,
};
use serde_json::Value;

/// Largest absolute difference allowed between a burn-lora output and PyTorch's.
///
/// The outputs are of order 1 (PyTorch saw |y_lora - y_base| up to 0.47). Both sides compute in
/// f32 but sum the 784-, 64- and 32-term dot products in different orders (PyTorch's MKL kernels
/// against Burn's matmul), so each output differs by a few ulps of the partial sums. PyTorch
/// itself saw |y_merged - y_lora| ≈ 2.7e-7 (meta.json) from merely reassociating `W x + s·B A x`.
/// 1e-5 leaves ample room for that rounding while any wrong transpose, scale or missing bias
/// would show up as errors of order 1e-2 or more.
const TOLERANCE: f32 = 1e-5;

/// The adapter name used when loading PEFT's adapter.
const NAME: &str = "peft";

/// The `mlp_r4` fixture folder.
fn fixture_dir() -> PathBuf {
    fixture("mlp_r4")
}

/// A fixture folder of the repository; fails loudly when it is missing.
fn fixture(name: &str) -> PathBuf {
    crate::common::existing_peft_fixture(name)
}

/// `x`, `y_base`, `y_lora`, `y_merged` from `mlp_r4/io.safetensors`.
fn io_tensors() -> BTreeMap<String, Tensor<B, 2>> {
    io_tensors_of(&fixture_dir())
}

/// `x`, `y_base`, `y_lora`, `y_merged` from a fixture's `io.safetensors`.
fn io_tensors_of(dir: &std::path::Path) -> BTreeMap<String, Tensor<B, 2>> {
    let tensors = read_raw(&dir.join("io.safetensors"));
    ["x", "y_base", "y_lora", "y_merged"]
        .into_iter()
        .map(|key| (key.to_string(), raw(&tensors, key).to_tensor()))
        .collect()
}

/// The `mlp_r4` base model with PEFT's adapter loaded under [`NAME`].
fn loaded_model() -> LoraMlp<B> {
    loaded_model_of(&fixture_dir(), LoraMlpConfig::new(784, vec![64, 32], 10))
}

/// A fixture's base model (of this shape) with PEFT's adapter loaded under [`NAME`].
fn loaded_model_of(dir: &std::path::Path, config: LoraMlpConfig) -> LoraMlp<B> {
    let mut model = config.init::<B>(&Default::default()).unwrap();
    load_pytorch_base(
        &mut model,
        &dir.join("base_model.safetensors"),
        &PathMap::identity(),
    )
    .expect("the PyTorch base loads");
    load_adapter(&mut model, NAME, &dir.join("adapter"), &PathMap::identity())
        .expect("PEFT's adapter loads");
    model
}

fn assert_close(what: &str, ours: Tensor<B, 2>, torch: Tensor<B, 2>) -> f32 {
    assert_eq!(ours.dims(), torch.dims(), "{what}: shapes differ");
    let diff = max_abs_diff(ours, torch);
    println!("{what}: max |burn - pytorch| = {diff:e}");
    assert!(
        diff <= TOLERANCE,
        "{what}: max |burn - pytorch| = {diff:e} exceeds {TOLERANCE:e}"
    );
    diff
}

#[test]
fn peft_adapter_loads_with_rank_4_and_scale_2_on_every_layer() {
    let model = loaded_model();
    assert_eq!(model.adapter_names(), vec![NAME]);
    for (index, layer) in model.layers().iter().enumerate() {
        let adapter = layer
            .adapter(NAME)
            .unwrap_or_else(|| panic!("layers.{index} has no adapter"));
        assert_eq!(adapter.rank(), 4, "layers.{index} rank");
        assert_eq!(adapter.scale(), 2.0, "layers.{index} scale (alpha 8 / r 4)");
        assert_eq!(layer.active_adapters(), vec![NAME]);
        let ([d_in, r_a], [r_b, d_out]) = adapter.shapes();
        assert_eq!((r_a, r_b), (4, 4));
        assert_eq!((d_in, d_out), (layer.d_input(), layer.d_output()));
    }
}

#[test]
fn disabled_enabled_and_merged_outputs_match_pytorch_within_1e_5() {
    let io = io_tensors();
    let x = io["x"].clone();
    let mut model = loaded_model();

    model.set_enabled(false);
    let base = assert_close(
        "adapter disabled vs y_base",
        model.forward(x.clone()),
        io["y_base"].clone(),
    );
    model.set_enabled(true);
    let lora = assert_close(
        "adapter enabled vs y_lora",
        model.forward(x.clone()),
        io["y_lora"].clone(),
    );

    // The adapter must actually matter, or the comparison above proves nothing.
    assert!(max_abs_diff(io["y_lora"].clone(), io["y_base"].clone()) > 0.1);

    let unloaded = model.merge_and_unload().unwrap();
    assert!(unloaded.adapter_names().is_empty());
    let merged = assert_close(
        "merge_and_unload vs y_merged",
        unloaded.forward(x.clone()),
        io["y_merged"].clone(),
    );

    model.merge().unwrap();
    let in_place = assert_close(
        "in-place merge vs y_merged",
        model.forward(x),
        io["y_merged"].clone(),
    );
    println!(
        "max diffs against PyTorch: base {base:e}, lora {lora:e}, merge_and_unload {merged:e}, \
         merge {in_place:e} (tolerance {TOLERANCE:e}; PyTorch's own merged-vs-lora 2.7e-7)"
    );
}

#[test]
fn saving_the_loaded_peft_adapter_reproduces_peft_files_bit_for_bit() {
    let dir = fixture_dir().join("adapter");
    let model = loaded_model();
    let out = tempfile::tempdir().unwrap();
    save_adapter(&model, NAME, out.path(), &PathMap::identity()).unwrap();

    assert_same_adapter_tensors(&dir, out.path());
    let metadata = read_metadata(&out.path().join(ADAPTER_WEIGHTS_FILE));
    assert_eq!(metadata.get("format").map(String::as_str), Some("pt"));

    let theirs: Value = read_config(&dir);
    let ours: Value = read_config(out.path());
    assert_eq!(ours["peft_type"], theirs["peft_type"]);
    assert_eq!(ours["peft_type"], "LORA");
    assert_eq!(ours["r"].as_u64(), theirs["r"].as_u64());
    assert_eq!(ours["r"].as_u64(), Some(4));
    // PEFT writes `8`, burn-lora `8.0`: compare as numbers.
    assert_eq!(ours["lora_alpha"].as_f64(), theirs["lora_alpha"].as_f64());
    assert_eq!(ours["lora_alpha"].as_f64(), Some(8.0));
    assert_eq!(
        ours["lora_dropout"].as_f64(),
        theirs["lora_dropout"].as_f64()
    );
    assert_eq!(ours["use_rslora"], theirs["use_rslora"]);
    assert_eq!(ours["bias"], theirs["bias"]);
    assert_eq!(target_modules(&ours), target_modules(&theirs));

    // burn-lora writes every field PEFT wrote, with PEFT's defaults for the variants it does not
    // implement, except PEFT's own version stamp: burn-lora is not PEFT.
    let peft_only: BTreeSet<&str> = ["peft_version"].into();
    let our_fields: BTreeSet<&str> = ours
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let missing: Vec<&str> = theirs
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|field| !our_fields.contains(field))
        .collect();
    println!("PEFT config fields burn-lora does not write: {missing:?}");
    let unexpected: Vec<&&str> = missing
        .iter()
        .filter(|f| !peft_only.contains(**f))
        .collect();
    assert!(
        unexpected.is_empty(),
        "burn-lora's adapter_config.json lacks PEFT fields {unexpected:?}"
    );
}

#[test]
fn adapter_saved_from_peft_files_loads_back_to_the_same_outputs() {
    let io = io_tensors();
    let model = loaded_model();
    let out = tempfile::tempdir().unwrap();
    save_adapter(&model, NAME, out.path(), &PathMap::identity()).unwrap();

    let mut again = LoraMlpConfig::new(784, vec![64, 32], 10)
        .init::<B>(&Default::default())
        .unwrap();
    load_pytorch_base(
        &mut again,
        &fixture_dir().join("base_model.safetensors"),
        &PathMap::identity(),
    )
    .unwrap();
    load_adapter(&mut again, NAME, out.path(), &PathMap::identity()).unwrap();
    assert_bit_identical(
        model.forward(io["x"].clone()),
        again.forward(io["x"].clone()),
    );
}

#[test]
fn peft_adapter_whose_rank_exceeds_the_layer_widths_loads_and_matches_pytorch() {
    // A 12-4-3 MLP with rank 6 on both layers: 6 > min(12, 4) and 6 > min(4, 3).
    let dir = fixture("mlp_r6_narrow");
    let io = io_tensors_of(&dir);
    let x = io["x"].clone();
    let mut model = loaded_model_of(&dir, LoraMlpConfig::new(12, vec![4], 3));
    for layer in model.layers() {
        assert_eq!(layer.adapter(NAME).unwrap().rank(), 6);
    }
    assert!(max_abs_diff(io["y_lora"].clone(), io["y_base"].clone()) > 0.1);
    assert_close(
        "rank 6: enabled vs y_lora",
        model.forward(x.clone()),
        io["y_lora"].clone(),
    );
    model.set_enabled(false);
    assert_close(
        "rank 6: disabled vs y_base",
        model.forward(x.clone()),
        io["y_base"].clone(),
    );
    model.set_enabled(true);
    let merged = model.merge_and_unload().unwrap();
    assert_close(
        "rank 6: merged vs y_merged",
        merged.forward(x),
        io["y_merged"].clone(),
    );
}
