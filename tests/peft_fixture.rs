//! Cross-implementation check against files written by Hugging Face PEFT (PyTorch).
//!
//! `../shared/fixtures/peft/mlp_r4` holds a 784-64-32-10 ReLU MLP's PyTorch state dict, the rank-4
//! (alpha 8) adapter PEFT saved for it, and the outputs PyTorch computed with the adapter
//! disabled, enabled and merged. Loading both into burn-lora must reproduce those outputs, and
//! saving the loaded adapter again must give back PEFT's file.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use burn_lora::{
    load_adapter, load_pytorch_base, save_adapter, LoraMlp, LoraMlpConfig, LoraModel, PathMap,
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
};
use common::{assert_bit_identical, max_abs_diff, B};
use safetensors::{Dtype, SafeTensors};
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

/// The fixture folder; fails loudly when it is missing (CI always has it).
fn fixture_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/peft/mlp_r4");
    assert!(
        dir.is_dir(),
        "PEFT fixture folder {} is missing: these tests need the files PEFT wrote \
         (see ../shared/fixtures/peft/README.md); CI always has them",
        dir.display()
    );
    dir
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The f32 values of a tensor stored as F32 in a safetensors file.
fn f32_values(tensors: &SafeTensors<'_>, key: &str) -> (Vec<usize>, Vec<f32>) {
    let view = tensors
        .tensor(key)
        .unwrap_or_else(|e| panic!("tensor {key}: {e}"));
    assert_eq!(view.dtype(), Dtype::F32, "{key} must be F32");
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

/// `x`, `y_base`, `y_lora`, `y_merged` from `io.safetensors`.
fn io_tensors() -> BTreeMap<String, Tensor<B, 2>> {
    let bytes = read(&fixture_dir().join("io.safetensors"));
    let tensors = SafeTensors::deserialize(&bytes).expect("io.safetensors parses");
    ["x", "y_base", "y_lora", "y_merged"]
        .into_iter()
        .map(|key| {
            let (shape, values) = f32_values(&tensors, key);
            let tensor = Tensor::from_data(TensorData::new(values, shape), &Default::default());
            (key.to_string(), tensor)
        })
        .collect()
}

/// The fixture's base model with PEFT's adapter loaded under [`NAME`].
fn loaded_model() -> LoraMlp<B> {
    let dir = fixture_dir();
    let mut model = LoraMlpConfig::new(784, vec![64, 32], 10)
        .init::<B>(&Default::default())
        .unwrap();
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

/// Tensors (key → (dtype, shape, raw bytes)) and metadata of a safetensors file.
type TensorMap = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn tensor_map(bytes: &[u8]) -> (TensorMap, Option<std::collections::HashMap<String, String>>) {
    let tensors = SafeTensors::deserialize(bytes).expect("valid safetensors");
    let (_, metadata) = SafeTensors::read_metadata(bytes).unwrap();
    let map = tensors
        .iter()
        .map(|(key, view)| {
            (
                key.to_string(),
                (view.dtype(), view.shape().to_vec(), view.data().to_vec()),
            )
        })
        .collect();
    (map, metadata.metadata().clone())
}

#[test]
fn saving_the_loaded_peft_adapter_reproduces_peft_files_bit_for_bit() {
    let dir = fixture_dir().join("adapter");
    let model = loaded_model();
    let out = tempfile::tempdir().unwrap();
    save_adapter(&model, NAME, out.path(), &PathMap::identity()).unwrap();

    let (theirs, _) = tensor_map(&read(&dir.join(ADAPTER_WEIGHTS_FILE)));
    let (ours, metadata) = tensor_map(&read(&out.path().join(ADAPTER_WEIGHTS_FILE)));
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "key sets differ"
    );
    for (key, (dtype, shape, data)) in &theirs {
        let (our_dtype, our_shape, our_data) = &ours[key];
        assert_eq!(*our_dtype, Dtype::F32, "{key} dtype");
        assert_eq!(dtype, our_dtype, "{key} dtype");
        assert_eq!(shape, our_shape, "{key} shape");
        // Same bytes = same f32 bits: load (transpose) then save (transpose back) is exact.
        assert!(data == our_data, "{key}: values are not bit-identical");
    }
    let metadata = metadata.expect("metadata present");
    assert_eq!(metadata.get("format").map(String::as_str), Some("pt"));

    let theirs: Value = serde_json::from_slice(&read(&dir.join(ADAPTER_CONFIG_FILE))).unwrap();
    let ours: Value = serde_json::from_slice(&read(&out.path().join(ADAPTER_CONFIG_FILE))).unwrap();
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
    let targets = |config: &Value| -> BTreeSet<String> {
        config["target_modules"]
            .as_array()
            .expect("target_modules is a list")
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(targets(&ours), targets(&theirs));

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
