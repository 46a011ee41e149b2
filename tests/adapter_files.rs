//! Adapter files as artifacts: `save_adapter` / `load_adapter` round trips, the notebook adapter's
//! file size, every kind of bad file (the error names it and the model is left untouched), saves
//! that fail without damaging existing files, and `load_pytorch_base`'s error cases.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_lora::{
    load_adapter, load_pytorch_base, save_adapter, LoraAdapter, LoraConfig, LoraError, LoraInit,
    LoraMlp, LoraMlpConfig, LoraModel, PathMap, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
};
use common::{assert_bit_identical, randn, values, AB, B};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Map, Value};
use tempfile::TempDir;

const PREFIX: &str = "base_model.model.";

// ---------------------------------------------------------------------------------------------
// Helpers: models, snapshots, raw safetensors editing.
// ---------------------------------------------------------------------------------------------

/// A freshly initialised MLP with these widths (input first) and no adapter.
///
/// Burn initialises parameters lazily and `clone` copies the *lazy* state, so clones of an
/// untouched model would each draw their own random weights. Reading every weight first makes
/// clones share one base.
fn base_model(widths: &[usize]) -> LoraMlp<B> {
    let last = widths.len() - 1;
    let model = LoraMlpConfig::new(widths[0], widths[1..last].to_vec(), widths[last])
        .init::<B>(&Default::default())
        .unwrap();
    for layer in model.layers() {
        let _ = (layer.weight(), layer.bias());
    }
    model
}

/// Inserts adapter `name` with random non-zero factors (a stand-in for a trained adapter) on the
/// given layers, each with its own config, and makes it the active adapter.
fn insert_trained(model: &mut LoraMlp<B>, name: &str, layers: &[(usize, LoraConfig)], seed: u64) {
    for (index, config) in layers {
        let layer = model.layer_mut(*index).unwrap();
        let (d_in, d_out) = (layer.d_input(), layer.d_output());
        let seed = seed + 10 * *index as u64;
        let adapter = LoraAdapter::from_factors(
            name,
            config,
            randn([d_in, config.rank], seed),
            randn::<B, 2>([config.rank, d_out], seed + 1).mul_scalar(0.1),
        )
        .unwrap();
        layer.insert_adapter(adapter).unwrap();
    }
    model.freeze_base();
    model.set_active_adapter(name).unwrap();
}

/// The same config on every layer of `model`.
fn on_all(model: &LoraMlp<B>, config: &LoraConfig) -> Vec<(usize, LoraConfig)> {
    (0..model.layers().len())
        .map(|i| (i, config.clone()))
        .collect()
}

/// A deterministic input batch (no RNG, so concurrent tests cannot disturb it).
fn probe(d_input: usize) -> Tensor<B, 2> {
    let values: Vec<f32> = (0..3 * d_input).map(|i| (i as f32 * 0.37).sin()).collect();
    Tensor::<B, 1>::from_floats(values.as_slice(), &Default::default()).reshape([3, d_input])
}

fn bits<Bk: Backend, const D: usize>(tensor: Tensor<Bk, D>) -> Vec<u32> {
    values(tensor).iter().map(|v| v.to_bits()).collect()
}

/// Everything observable about a model, bit for bit: adapter names and states, base weights,
/// adapter factors and the output on a fixed batch.
#[derive(Debug, PartialEq)]
struct Snapshot {
    names: Vec<String>,
    layers: Vec<LayerState>,
    output: Vec<u32>,
}

#[derive(Debug, PartialEq)]
struct LayerState {
    adapters: Vec<String>,
    active: Vec<String>,
    enabled: bool,
    merged: bool,
    weight: Vec<u32>,
    bias: Option<Vec<u32>>,
    factors: Vec<(Vec<u32>, Vec<u32>, u64)>,
}

impl Snapshot {
    /// Panics, naming the first difference (not dumping every value), if `self != other`.
    fn assert_same(&self, other: &Snapshot, context: &str) {
        assert_eq!(self.names, other.names, "adapter names changed ({context})");
        for (index, (a, b)) in self.layers.iter().zip(&other.layers).enumerate() {
            let what = |field: &str| format!("layers.{index} {field} changed ({context})");
            assert_eq!(a.adapters, b.adapters, "{}", what("adapter names"));
            assert_eq!(a.active, b.active, "{}", what("active adapters"));
            assert_eq!(
                (a.enabled, a.merged),
                (b.enabled, b.merged),
                "{}",
                what("state")
            );
            assert!(a.weight == b.weight, "{}", what("base weight"));
            assert!(a.bias == b.bias, "{}", what("base bias"));
            assert!(a.factors == b.factors, "{}", what("adapter factors"));
        }
        assert!(self.output == other.output, "output changed ({context})");
        assert!(self == other);
    }

    fn of(model: &LoraMlp<B>) -> Self {
        let layers = model
            .layers()
            .iter()
            .map(|layer| LayerState {
                adapters: layer
                    .adapter_names()
                    .iter()
                    .map(|n| n.to_string())
                    .collect(),
                active: layer
                    .active_adapters()
                    .iter()
                    .map(|n| n.to_string())
                    .collect(),
                enabled: layer.is_enabled(),
                merged: layer.is_merged(),
                weight: bits(layer.weight()),
                bias: layer.bias().map(bits),
                factors: layer
                    .adapters()
                    .iter()
                    .map(|a| (bits(a.lora_a()), bits(a.lora_b()), a.scale().to_bits()))
                    .collect(),
            })
            .collect();
        let d_input = model.layers()[0].d_input();
        Self {
            names: model.adapter_names(),
            layers,
            output: bits(model.forward(probe(d_input))),
        }
    }
}

/// One tensor of a safetensors file, raw.
#[derive(Debug, Clone)]
struct Raw {
    key: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Asserts `err` is [`LoraError::InvalidFile`] for a path ending in `file`, in `format`.
fn assert_invalid_file(err: &LoraError, file: &str, expected_format: &str, case: &str) {
    assert!(
        matches!(err, LoraError::InvalidFile { path, format, .. }
            if path.ends_with(file) && format == expected_format),
        "{case:?}: {err:?}"
    );
}

/// The tensor named `key` among `tensors` (the test's own fixture: it is there).
fn raw_mut<'a>(tensors: &'a mut [Raw], key: &str) -> &'a mut Raw {
    tensors
        .iter_mut()
        .find(|t| t.key == key)
        .unwrap_or_else(|| panic!("fixture has no tensor {key}"))
}

impl Raw {
    fn f32(key: &str, shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            key: key.to_string(),
            dtype: Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn f32_values(&self) -> Vec<f32> {
        assert_eq!(self.dtype, Dtype::F32);
        self.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}

fn read_raw(path: &Path) -> Vec<Raw> {
    let bytes = std::fs::read(path).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let mut raw: Vec<Raw> = tensors
        .iter()
        .map(|(key, view)| Raw {
            key: key.to_string(),
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            data: view.data().to_vec(),
        })
        .collect();
    raw.sort_by(|a, b| a.key.cmp(&b.key));
    raw
}

fn write_raw(path: &Path, tensors: &[Raw]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            let view = TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap();
            (t.key.clone(), view)
        })
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata)).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Rewrites `dir/adapter_model.safetensors` through `edit`.
fn edit_tensors(dir: &Path, edit: impl FnOnce(&mut Vec<Raw>)) {
    let path = dir.join(ADAPTER_WEIGHTS_FILE);
    let mut tensors = read_raw(&path);
    edit(&mut tensors);
    write_raw(&path, &tensors);
}

/// Rewrites `dir/adapter_config.json` through `edit`.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut Map<String, Value>)) {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

fn read_config(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(ADAPTER_CONFIG_FILE)).unwrap()).unwrap()
}

/// Every file in `dir` with its bytes.
fn dir_contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).unwrap(),
            )
        })
        .collect()
}

fn key(module: &str, factor: &str) -> String {
    format!("{PREFIX}{module}.{factor}.weight")
}

/// Asserts adapter `name` of `a` has bit-identical factors and the same config as adapter
/// `name_b` of `b`, on the same layers.
fn assert_same_factors(a: &LoraMlp<B>, name: &str, b: &LoraMlp<B>, name_b: &str) {
    for (index, (la, lb)) in a.layers().iter().zip(b.layers()).enumerate() {
        match (la.adapter(name), lb.adapter(name_b)) {
            (None, None) => {}
            (Some(x), Some(y)) => {
                assert_eq!(x.rank(), y.rank(), "layers.{index} rank");
                assert_eq!(x.config().alpha, y.config().alpha, "layers.{index} alpha");
                assert_eq!(x.config().use_rslora, y.config().use_rslora);
                assert_eq!(x.scale(), y.scale(), "layers.{index} scale");
                assert_bit_identical(x.lora_a(), y.lora_a());
                assert_bit_identical(x.lora_b(), y.lora_b());
            }
            (x, y) => panic!(
                "layers.{index}: adapter presence differs ({} vs {})",
                x.is_some(),
                y.is_some()
            ),
        }
    }
}

fn assert_same_adapter(a: &LoraMlp<B>, b: &LoraMlp<B>, name: &str) {
    assert_same_factors(a, name, b, name);
}

// ---------------------------------------------------------------------------------------------
// Round trips.
// ---------------------------------------------------------------------------------------------

/// Saves adapter "default" of `source`, loads it into `fresh` (same base), checks factors and
/// outputs are bit-identical, and returns the directory.
fn round_trip(
    source: &LoraMlp<B>,
    mut fresh: LoraMlp<B>,
    paths: &PathMap,
) -> (TempDir, LoraMlp<B>) {
    let dir = tempfile::tempdir().unwrap();
    save_adapter(source, "default", dir.path(), paths).unwrap();
    load_adapter(&mut fresh, "default", dir.path(), paths).unwrap();
    assert_eq!(fresh.adapter_names(), vec!["default"]);
    assert_same_adapter(source, &fresh, "default");
    let x = probe(source.layers()[0].d_input());
    assert_bit_identical(source.forward(x.clone()), fresh.forward(x));
    (dir, fresh)
}

/// Asserts `err` is a [`LoraError::ShapeMismatch`] naming `what` with these shapes.
fn assert_shape_mismatch(
    err: &LoraError,
    what_contains: &str,
    expected: &[usize],
    found: &[usize],
) {
    match err {
        LoraError::ShapeMismatch {
            what,
            expected: e,
            found: f,
        } => {
            assert!(what.contains(what_contains), "{what}");
            assert_eq!(e.as_slice(), expected);
            assert_eq!(f.as_slice(), found);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

#[test]
fn trained_adapter_round_trips_with_bit_identical_factors_and_outputs() {
    let base = base_model(&[784, 32, 16, 10]);
    let mut source = base.clone();
    insert_trained(
        &mut source,
        "default",
        &on_all(&base, &LoraConfig::new(3, 6.0)),
        1,
    );
    let (dir, fresh) = round_trip(&source, base.clone(), &PathMap::identity());
    for layer in fresh.layers() {
        assert_eq!(layer.active_adapters(), vec!["default"]);
        assert_eq!(layer.adapter("default").unwrap().scale(), 2.0);
    }
    // The adapter changes the output, so the comparison above is not vacuous.
    let x = probe(784);
    assert!(common::max_abs_diff(fresh.forward(x.clone()), base.forward(x)) > 1e-3);

    let config = read_config(dir.path());
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 3);
    assert_eq!(config["lora_alpha"].as_f64(), Some(6.0));
    assert_eq!(config["rank_pattern"], json!({}));
    assert_eq!(config["alpha_pattern"], json!({}));
}

#[test]
fn rslora_adapter_round_trips_with_its_scale() {
    let base = base_model(&[784, 32, 10]);
    let mut source = base.clone();
    let config = LoraConfig::new(4, 8.0).with_use_rslora(true);
    insert_trained(&mut source, "default", &on_all(&base, &config), 2);
    let (dir, fresh) = round_trip(&source, base, &PathMap::identity());
    for layer in fresh.layers() {
        let adapter = layer.adapter("default").unwrap();
        assert!(adapter.config().use_rslora);
        assert_eq!(adapter.scale(), 4.0, "alpha 8 / sqrt(4)");
    }
    assert_eq!(read_config(dir.path())["use_rslora"], true);
}

#[test]
fn per_layer_ranks_and_alphas_round_trip_through_rank_and_alpha_patterns() {
    let base = base_model(&[784, 32, 16, 10]);
    let mut source = base.clone();
    let layers = [
        (0, LoraConfig::new(4, 8.0)),
        (1, LoraConfig::new(2, 3.0)),
        (2, LoraConfig::new(1, 0.5)),
    ];
    insert_trained(&mut source, "default", &layers, 3);
    let (dir, fresh) = round_trip(&source, base, &PathMap::identity());
    for ((_, config), layer) in layers.iter().zip(fresh.layers()) {
        let adapter = layer.adapter("default").unwrap();
        assert_eq!(adapter.rank(), config.rank);
        assert_eq!(adapter.config().alpha, config.alpha);
    }
    let config = read_config(dir.path());
    assert_eq!(config["r"], 4);
    assert_eq!(
        config["rank_pattern"],
        json!({"layers.1": 2, "layers.2": 1})
    );
    assert_eq!(
        config["alpha_pattern"],
        json!({"layers.1": 3.0, "layers.2": 0.5})
    );
}

#[test]
fn adapter_on_some_layers_round_trips_and_leaves_the_others_bare() {
    let base = base_model(&[784, 32, 16, 10]);
    let mut source = base.clone();
    insert_trained(&mut source, "default", &[(1, LoraConfig::new(2, 2.0))], 4);
    let (dir, fresh) = round_trip(&source, base, &PathMap::identity());
    let adapted: Vec<usize> = fresh
        .layers()
        .iter()
        .map(|l| l.adapter_names().len())
        .collect();
    assert_eq!(adapted, vec![0, 1, 0]);
    let targets = read_config(dir.path())["target_modules"].clone();
    assert_eq!(targets, json!(["layers.1"]));
}

#[test]
fn keys_with_and_without_the_base_model_prefix_both_load() {
    let (base, source, dir) = saved_default_adapter(5);
    let written = read_raw(&dir.path().join(ADAPTER_WEIGHTS_FILE));
    assert!(
        written.iter().all(|t| t.key.starts_with(PREFIX)),
        "PEFT's prefix is written"
    );

    let mut with_prefix = base.clone();
    load_adapter(
        &mut with_prefix,
        "default",
        dir.path(),
        &PathMap::identity(),
    )
    .unwrap();

    edit_tensors(dir.path(), |tensors| {
        for t in tensors.iter_mut() {
            t.key = t.key.strip_prefix(PREFIX).unwrap().to_string();
        }
    });
    let mut without_prefix = base;
    load_adapter(
        &mut without_prefix,
        "default",
        dir.path(),
        &PathMap::identity(),
    )
    .unwrap();
    assert_same_adapter(&source, &with_prefix, "default");
    assert_same_adapter(&source, &without_prefix, "default");
}

#[test]
fn path_map_renames_keys_on_save_and_load() {
    let base = base_model(&[784, 32, 16, 10]);
    let mut source = base.clone();
    insert_trained(
        &mut source,
        "default",
        &on_all(&base, &LoraConfig::new(2, 4.0)),
        6,
    );
    // The notebook's PyTorch model calls its layers linear1..3.
    let paths = PathMap::identity()
        .rename("layers.0", "linear1")
        .rename("layers.1", "linear2")
        .rename("layers.2", "linear3");
    let (dir, _) = round_trip(&source, base.clone(), &paths);

    let keys: BTreeSet<String> = read_raw(&dir.path().join(ADAPTER_WEIGHTS_FILE))
        .into_iter()
        .map(|t| t.key)
        .collect();
    let expected: BTreeSet<String> = ["linear1", "linear2", "linear3"]
        .iter()
        .flat_map(|m| [key(m, "lora_A"), key(m, "lora_B")])
        .collect();
    assert_eq!(keys, expected);
    let targets: BTreeSet<String> = read_config(dir.path())["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        targets,
        ["linear1", "linear2", "linear3"].map(String::from).into()
    );

    // Without the map the keys name modules the model does not have.
    let mut unmapped = base;
    let before = Snapshot::of(&unmapped);
    let err = load_adapter(&mut unmapped, "default", dir.path(), &PathMap::identity()).unwrap_err();
    assert!(
        matches!(&err, LoraError::UnexpectedKey { key, .. } if key.contains("linear")),
        "{err:?}"
    );
    before.assert_same(&Snapshot::of(&unmapped), &err.to_string());
}

#[test]
fn notebook_rank_1_adapter_file_is_about_27_kb() {
    let mut model = LoraMlpConfig::notebook()
        .init::<B>(&Default::default())
        .unwrap();
    model
        .attach(&LoraConfig::new(1, 1.0).with_init(LoraInit::Gaussian { std: 1.0 }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, "default", dir.path(), &PathMap::identity()).unwrap();
    let bytes = std::fs::read(dir.path().join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data = bytes.len() - 8 - header;
    println!(
        "adapter_model.safetensors: {} bytes ({data} data + {header} header + 8)",
        bytes.len()
    );
    // 6,794 LoRA values (784+1000+2000 in A, 1000+2000+10 in B) as f32.
    assert_eq!(data, 6_794 * 4);
    assert_eq!(data, 27_176);
    assert!(
        (27_000..29_000).contains(&bytes.len()),
        "file is {} bytes",
        bytes.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Bad files: the right error, naming the key or file, and the model untouched.
// ---------------------------------------------------------------------------------------------

/// A valid adapter directory (rank 4, alpha 8, 784-32-10) and a model with the same base that
/// already holds an active adapter "existing".
struct Case {
    dir: TempDir,
    model: LoraMlp<B>,
    source: LoraMlp<B>,
}

/// A base MLP 784-32-10, and a copy holding a trained rank-4 adapter "default" on every layer,
/// saved to a fresh directory.
fn saved_default_adapter(seed: u64) -> (LoraMlp<B>, LoraMlp<B>, TempDir) {
    let base = base_model(&[784, 32, 10]);
    let mut source = base.clone();
    insert_trained(
        &mut source,
        "default",
        &on_all(&base, &LoraConfig::new(4, 8.0)),
        seed,
    );
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&source, "default", dir.path(), &PathMap::identity()).unwrap();
    (base, source, dir)
}

fn case() -> Case {
    let (base, source, dir) = saved_default_adapter(7);
    let mut model = base.clone();
    insert_trained(
        &mut model,
        "existing",
        &on_all(&base, &LoraConfig::new(2, 2.0)),
        8,
    );
    Case { dir, model, source }
}

impl Case {
    /// Loads the directory as `name`, expects an error and checks the model did not change.
    fn load_fails(&mut self, name: &str) -> LoraError {
        let before = Snapshot::of(&self.model);
        let err = load_adapter(&mut self.model, name, self.dir.path(), &PathMap::identity())
            .expect_err("loading a bad adapter must fail");
        before.assert_same(
            &Snapshot::of(&self.model),
            &format!("loading failed with: {err}"),
        );
        println!("{err}");
        err
    }

    fn weights_path(&self) -> std::path::PathBuf {
        self.dir.path().join(ADAPTER_WEIGHTS_FILE)
    }
}

fn names_weights_file(err: &LoraError) -> bool {
    err.to_string().contains(ADAPTER_WEIGHTS_FILE)
}

#[test]
fn valid_case_loads_so_the_bad_cases_fail_for_their_own_reason() {
    let mut case = case();
    load_adapter(
        &mut case.model,
        "incoming",
        case.dir.path(),
        &PathMap::identity(),
    )
    .unwrap();
    assert_eq!(case.model.adapter_names(), vec!["existing", "incoming"]);
    assert_same_factors(&case.source, "default", &case.model, "incoming");
}

#[test]
fn missing_lora_b_tensor_is_missing_key_and_changes_nothing() {
    let mut case = case();
    edit_tensors(case.dir.path(), |t| {
        t.retain(|t| t.key != key("layers.1", "lora_B"))
    });
    let err = case.load_fails("incoming");
    assert!(
        matches!(&err, LoraError::MissingKey { key: k, .. } if *k == key("layers.1", "lora_B")),
        "{err:?}"
    );
    assert!(names_weights_file(&err), "{err}");
}

#[test]
fn extra_tensor_is_unexpected_key_and_changes_nothing() {
    let mut case = case();
    let extra = format!("{PREFIX}layers.0.lora_magnitude_vector");
    edit_tensors(case.dir.path(), |t| {
        t.push(Raw::f32(&extra, vec![32], &[1.0; 32]))
    });
    let err = case.load_fails("incoming");
    assert!(
        matches!(&err, LoraError::UnexpectedKey { key, .. } if *key == extra),
        "{err:?}"
    );
    assert!(names_weights_file(&err), "{err}");
}

#[test]
fn same_tensor_with_and_without_the_prefix_is_unexpected_key_and_changes_nothing() {
    // Which of the two would win depends on hash order, so the file is ambiguous.
    let mut case = case();
    let a = key("layers.0", "lora_A");
    let bare = a.strip_prefix(PREFIX).unwrap().to_string();
    edit_tensors(case.dir.path(), |tensors| {
        let mut copy = tensors.iter().find(|t| t.key == a).unwrap().clone();
        copy.key = bare.clone();
        copy.data.iter_mut().for_each(|b| *b = 0);
        tensors.push(copy);
    });
    let err = case.load_fails("incoming");
    assert!(
        matches!(&err, LoraError::UnexpectedKey { key, reason, .. }
            if (*key == a && reason.contains(&bare)) || (*key == bare && reason.contains(&a))),
        "{err:?}"
    );
}

#[test]
fn tensor_for_a_module_the_model_lacks_is_unexpected_key_and_changes_nothing() {
    let mut case = case();
    let extra = key("layers.5", "lora_A");
    edit_tensors(case.dir.path(), |t| {
        t.push(Raw::f32(&extra, vec![4, 10], &[0.5; 40]))
    });
    let err = case.load_fails("incoming");
    assert!(
        matches!(&err, LoraError::UnexpectedKey { key, .. } if *key == extra),
        "{err:?}"
    );
    assert!(err.to_string().contains("layers.5"), "{err}");
}

#[test]
fn tensor_for_a_module_outside_target_modules_is_unexpected_key_and_changes_nothing() {
    let mut case = case();
    edit_config(case.dir.path(), |c| {
        c.insert("target_modules".into(), json!(["layers.0"]));
    });
    let err = case.load_fails("incoming");
    assert!(
        matches!(&err, LoraError::UnexpectedKey { key, .. } if key.contains("layers.1")),
        "{err:?}"
    );
}

#[test]
fn wrong_input_width_is_shape_mismatch_naming_the_key_and_changes_nothing() {
    let mut case = case();
    let a = key("layers.0", "lora_A");
    edit_tensors(case.dir.path(), |tensors| {
        let t = raw_mut(tensors, &a);
        *t = Raw::f32(&a, vec![4, 783], &vec![0.25; 4 * 783]);
    });
    let err = case.load_fails("incoming");
    match &err {
        LoraError::ShapeMismatch {
            what,
            expected,
            found,
        } => {
            assert_eq!(expected, &vec![4, 784]);
            assert_eq!(found, &vec![4, 783]);
            assert!(what.contains(&a), "{what}");
            assert!(what.contains(ADAPTER_WEIGHTS_FILE), "{what}");
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

#[test]
fn config_rank_differing_from_tensor_rank_is_shape_mismatch_and_changes_nothing() {
    let mut case = case();
    edit_config(case.dir.path(), |c| {
        c.insert("r".into(), json!(2));
    });
    let err = case.load_fails("incoming");
    match &err {
        LoraError::ShapeMismatch {
            what,
            expected,
            found,
        } => {
            assert_eq!(expected[0], 2, "{err}");
            assert_eq!(found[0], 4, "{err}");
            assert!(what.contains("lora_A") || what.contains("lora_B"), "{what}");
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

#[test]
fn rank_pattern_differing_from_a_layer_tensor_rank_is_shape_mismatch_and_changes_nothing() {
    let mut case = case();
    // layers.0 keeps r = 4; layers.1 is told rank 3 but its tensors have rank 4.
    edit_config(case.dir.path(), |c| {
        c.insert("rank_pattern".into(), json!({"layers.1": 3}));
    });
    let err = case.load_fails("incoming");
    assert_shape_mismatch(&err, "layers.1.lora_A", &[3, 32], &[4, 32]);
}

#[test]
fn integer_tensors_are_unsupported_dtype_naming_the_key_and_change_nothing() {
    for (dtype, width, name) in [(Dtype::I32, 4, "I32"), (Dtype::U8, 1, "U8")] {
        let mut case = case();
        let b = key("layers.1", "lora_B");
        edit_tensors(case.dir.path(), |tensors| {
            let t = raw_mut(tensors, &b);
            t.dtype = dtype;
            t.data = vec![1; 10 * 4 * width];
        });
        let err = case.load_fails("incoming");
        assert!(
            matches!(&err, LoraError::UnsupportedDtype { key, dtype, .. } if *key == b && dtype == name),
            "{err:?}"
        );
        assert!(names_weights_file(&err), "{err}");
    }
}

#[test]
fn f16_bf16_and_f64_tensors_load_converted_to_f32() {
    type Convert = fn(f32) -> (Vec<u8>, f32);
    let conversions: [(Dtype, Convert); 3] = [
        (Dtype::F16, |v| {
            let h = half::f16::from_f32(v);
            (h.to_le_bytes().to_vec(), h.to_f32())
        }),
        (Dtype::BF16, |v| {
            let h = half::bf16::from_f32(v);
            (h.to_le_bytes().to_vec(), h.to_f32())
        }),
        (Dtype::F64, |v| ((v as f64).to_le_bytes().to_vec(), v)),
    ];
    for (dtype, convert) in conversions {
        let mut case = case();
        edit_tensors(case.dir.path(), |tensors| {
            for t in tensors.iter_mut() {
                t.data = t
                    .f32_values()
                    .into_iter()
                    .flat_map(|v| convert(v).0)
                    .collect();
                t.dtype = dtype;
            }
        });
        load_adapter(
            &mut case.model,
            "incoming",
            case.dir.path(),
            &PathMap::identity(),
        )
        .unwrap_or_else(|e| panic!("{dtype:?} adapter must load: {e}"));
        for (source, loaded) in case.source.layers().iter().zip(case.model.layers()) {
            let (source, loaded) = (
                source.adapter("default").unwrap(),
                loaded.adapter("incoming").unwrap(),
            );
            for (expected, got) in [
                (source.lora_a(), loaded.lora_a()),
                (source.lora_b(), loaded.lora_b()),
            ] {
                let expected: Vec<u32> = values(expected)
                    .into_iter()
                    .map(|v| convert(v).1.to_bits())
                    .collect();
                assert_eq!(bits(got), expected, "{dtype:?} values");
            }
        }
    }
}

#[test]
fn nan_or_infinite_values_are_non_finite_naming_the_key_and_change_nothing() {
    for bad in [f32::NAN, f32::INFINITY] {
        let mut case = case();
        let a = key("layers.1", "lora_A");
        edit_tensors(case.dir.path(), |tensors| {
            let t = raw_mut(tensors, &a);
            let mut v = t.f32_values();
            v[5] = bad;
            *t = Raw::f32(&a, t.shape.clone(), &v);
        });
        let err = case.load_fails("incoming");
        assert!(
            matches!(&err, LoraError::NonFinite(what) if what.contains(&a)),
            "{err:?}"
        );
        assert!(names_weights_file(&err), "{err}");
    }
}

#[test]
fn truncated_garbage_and_empty_weight_files_are_invalid_file_and_change_nothing() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    type Mutate = Box<dyn Fn(Vec<u8>) -> Vec<u8>>;
    let cases: [(&str, Mutate); 6] = [
        (
            "truncated in the data",
            Box::new(|b: Vec<u8>| b[..b.len() - 7].to_vec()),
        ),
        (
            "truncated in half",
            Box::new(|b: Vec<u8>| b[..b.len() / 2].to_vec()),
        ),
        (
            "truncated in the header",
            Box::new(|b: Vec<u8>| b[..40].to_vec()),
        ),
        (
            "shorter than the length prefix",
            Box::new(|b: Vec<u8>| b[..5].to_vec()),
        ),
        ("garbage bytes", Box::new(move |_| garbage.clone())),
        ("empty", Box::new(|_| Vec::new())),
    ];
    for (what, mutate) in cases {
        let mut case = case();
        let path = case.weights_path();
        std::fs::write(&path, mutate(std::fs::read(&path).unwrap())).unwrap();
        let err = case.load_fails("incoming");
        assert_invalid_file(&err, ADAPTER_WEIGHTS_FILE, "safetensors", what);
    }
}

#[test]
fn invalid_json_config_is_invalid_file_and_changes_nothing() {
    for text in ["{ \"r\": 4, ", "", "[1, 2, 3]", "{\"peft_type\": \"LORA\"}"] {
        let mut case = case();
        std::fs::write(case.dir.path().join(ADAPTER_CONFIG_FILE), text).unwrap();
        let err = case.load_fails("incoming");
        assert_invalid_file(&err, ADAPTER_CONFIG_FILE, "adapter_config.json", text);
    }
}

#[test]
fn ia3_config_is_unsupported_and_changes_nothing() {
    let mut case = case();
    edit_config(case.dir.path(), |c| {
        c.insert("peft_type".into(), json!("IA3"));
    });
    let err = case.load_fails("incoming");
    assert!(
        matches!(&err, LoraError::Unsupported(what) if what.contains("IA3") && what.contains(ADAPTER_CONFIG_FILE)),
        "{err:?}"
    );
}

#[test]
fn dora_config_is_unsupported_and_changes_nothing() {
    let mut case = case();
    edit_config(case.dir.path(), |c| {
        c.insert("use_dora".into(), json!(true));
    });
    let err = case.load_fails("incoming");
    assert!(
        matches!(&err, LoraError::Unsupported(what) if what.contains("use_dora") && what.contains(ADAPTER_CONFIG_FILE)),
        "{err:?}"
    );
}

#[test]
fn missing_files_or_directory_are_io_errors_naming_the_path_and_change_nothing() {
    for file in [ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE] {
        let mut case = case();
        std::fs::remove_file(case.dir.path().join(file)).unwrap();
        let err = case.load_fails("incoming");
        assert!(
            matches!(&err, LoraError::Io { path, .. } if path.ends_with(file)),
            "{file}: {err:?}"
        );
    }
    let mut case = case();
    let gone = case.dir.path().join("no-such-adapter");
    let before = Snapshot::of(&case.model);
    let err = load_adapter(&mut case.model, "incoming", &gone, &PathMap::identity()).unwrap_err();
    assert!(
        matches!(&err, LoraError::Io { path, .. } if path.contains("no-such-adapter")),
        "{err:?}"
    );
    before.assert_same(&Snapshot::of(&case.model), &err.to_string());
}

#[test]
fn loading_under_an_existing_name_is_duplicate_adapter_and_changes_nothing() {
    let mut case = case();
    let err = case.load_fails("existing");
    assert_eq!(err, LoraError::DuplicateAdapter("existing".into()));
}

#[test]
fn loading_under_an_empty_name_is_invalid_adapter_name_and_changes_nothing() {
    let mut case = case();
    let err = case.load_fails("");
    assert_eq!(err, LoraError::InvalidAdapterName(String::new()));
}

#[test]
fn loading_while_another_layer_is_merged_is_merged_error_and_changes_nothing() {
    let base = base_model(&[784, 32, 16, 10]);
    // The file adapts layers.1 and layers.2 only.
    let mut source = base.clone();
    let config = LoraConfig::new(2, 2.0);
    insert_trained(
        &mut source,
        "default",
        &[(1, config.clone()), (2, config.clone())],
        9,
    );
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&source, "default", dir.path(), &PathMap::identity()).unwrap();

    // The model has an adapter on layers.0 only, merged in place.
    let mut model = base;
    insert_trained(&mut model, "existing", &[(0, config)], 10);
    model.merge().unwrap();
    assert!(model.layers()[0].is_merged());
    let before = Snapshot::of(&model);
    let err = load_adapter(&mut model, "incoming", dir.path(), &PathMap::identity()).unwrap_err();
    assert!(matches!(err, LoraError::Merged(_)), "{err:?}");
    before.assert_same(&Snapshot::of(&model), &format!("failed with: {err}"));
}

// ---------------------------------------------------------------------------------------------
// Failed saves never damage existing files.
// ---------------------------------------------------------------------------------------------

#[test]
fn failed_save_of_a_diverged_adapter_leaves_existing_files_byte_identical() {
    let device = Default::default();
    let mut model = LoraMlpConfig::new(12, vec![8], 4)
        .init::<AB>(&device)
        .unwrap();
    model
        .attach(&LoraConfig::new(2, 4.0).with_init(LoraInit::Gaussian { std: 1.0 }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, "default", dir.path(), &PathMap::identity()).unwrap();
    let before = dir_contents(dir.path());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        vec![ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE]
    );

    // A diverged training step: a NaN batch gives NaN gradients, SGD writes NaN into B.
    let x = Tensor::<AB, 2>::full([2, 12], f32::NAN, &device);
    let loss = model.forward(x).sum();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = SgdConfig::new().init().step(0.1, model, grads);
    assert!(
        values(model.layers()[0].adapter("default").unwrap().lora_b())
            .iter()
            .any(|v| v.is_nan())
    );

    let err = save_adapter(&model, "default", dir.path(), &PathMap::identity()).unwrap_err();
    assert!(matches!(err, LoraError::NonFinite(_)), "{err:?}");
    assert_eq!(
        dir_contents(dir.path()),
        before,
        "existing files were changed"
    );
}

#[test]
fn failed_save_of_an_unknown_adapter_leaves_existing_files_byte_identical() {
    let case = case();
    let before = dir_contents(case.dir.path());
    let err =
        save_adapter(&case.source, "nope", case.dir.path(), &PathMap::identity()).unwrap_err();
    assert_eq!(err, LoraError::UnknownAdapter("nope".into()));
    assert_eq!(dir_contents(case.dir.path()), before);
}

#[test]
fn saving_under_a_regular_file_is_an_io_error() {
    let case = case();
    let blocker = case.dir.path().join("blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    for target in [blocker.join("adapter"), blocker.clone()] {
        let err = save_adapter(&case.source, "default", &target, &PathMap::identity()).unwrap_err();
        assert!(
            matches!(err, LoraError::Io { .. }),
            "{}: {err:?}",
            target.display()
        );
    }
    assert_eq!(std::fs::read(&blocker).unwrap(), b"not a directory");
}

// ---------------------------------------------------------------------------------------------
// load_pytorch_base.
// ---------------------------------------------------------------------------------------------

/// The PyTorch state dict of `model`'s base: `layers.N.weight [out, in]`, `layers.N.bias [out]`.
fn state_dict(model: &LoraMlp<B>) -> Vec<Raw> {
    model
        .layers()
        .iter()
        .enumerate()
        .flat_map(|(i, layer)| {
            let (d_in, d_out) = (layer.d_input(), layer.d_output());
            [
                Raw::f32(
                    &format!("layers.{i}.weight"),
                    vec![d_out, d_in],
                    &values(layer.weight().transpose()),
                ),
                Raw::f32(
                    &format!("layers.{i}.bias"),
                    vec![d_out],
                    &values(layer.bias().unwrap()),
                ),
            ]
        })
        .collect()
}

#[test]
fn pytorch_base_loads_transposed_and_bit_identical_keeping_adapters() {
    let source = base_model(&[20, 12, 6]);
    let file = tempfile::tempdir().unwrap();
    let path = file.path().join("base.safetensors");
    write_raw(&path, &state_dict(&source));

    let mut model = base_model(&[20, 12, 6]);
    let layers = on_all(&model, &LoraConfig::new(2, 2.0));
    insert_trained(&mut model, "existing", &layers, 11);
    load_pytorch_base(&mut model, &path, &PathMap::identity()).unwrap();
    for (a, b) in source.layers().iter().zip(model.layers()) {
        assert_bit_identical(a.weight(), b.weight());
        assert_bit_identical(a.bias().unwrap(), b.bias().unwrap());
    }
    assert_eq!(model.adapter_names(), vec!["existing"]);
}

/// Writes `source`'s state dict edited by `edit`, loads it into a model with different weights
/// and an adapter, expects an error and checks the model did not change.
fn base_load_fails(edit: impl FnOnce(&mut Vec<Raw>)) -> LoraError {
    let source = base_model(&[20, 12, 6]);
    let mut tensors = state_dict(&source);
    edit(&mut tensors);
    let file = tempfile::tempdir().unwrap();
    let path = file.path().join("base.safetensors");
    write_raw(&path, &tensors);

    let mut model = base_model(&[20, 12, 6]);
    let layers = on_all(&model, &LoraConfig::new(2, 2.0));
    insert_trained(&mut model, "existing", &layers, 12);
    let before = Snapshot::of(&model);
    let err = load_pytorch_base(&mut model, &path, &PathMap::identity()).unwrap_err();
    before.assert_same(&Snapshot::of(&model), &format!("failed with: {err}"));
    assert!(err.to_string().contains("base.safetensors"), "{err}");
    err
}

#[test]
fn pytorch_base_missing_weight_or_bias_is_missing_key_and_changes_nothing() {
    for missing in ["layers.1.weight", "layers.0.bias"] {
        let err = base_load_fails(|t| t.retain(|t| t.key != missing));
        assert!(
            matches!(&err, LoraError::MissingKey { key, .. } if key == missing),
            "{err:?}"
        );
    }
}

#[test]
fn pytorch_base_wrong_shape_is_shape_mismatch_and_changes_nothing() {
    // Burn's orientation [in, out] instead of PyTorch's [out, in].
    let err = base_load_fails(|tensors| {
        let t = raw_mut(tensors, "layers.0.weight");
        t.shape = vec![20, 12];
    });
    assert_shape_mismatch(&err, "layers.0.weight", &[12, 20], &[20, 12]);
}

#[test]
fn pytorch_base_unexpected_key_is_unexpected_key_and_changes_nothing() {
    let err = base_load_fails(|t| t.push(Raw::f32("layers.2.weight", vec![3, 6], &[0.0; 18])));
    assert!(
        matches!(&err, LoraError::UnexpectedKey { key, .. } if key == "layers.2.weight"),
        "{err:?}"
    );
}

#[test]
fn pytorch_base_non_float_or_non_finite_tensor_is_an_error_and_changes_nothing() {
    let err = base_load_fails(|tensors| {
        let t = raw_mut(tensors, "layers.1.bias");
        t.dtype = Dtype::I32;
    });
    assert!(
        matches!(&err, LoraError::UnsupportedDtype { key, .. } if key == "layers.1.bias"),
        "{err:?}"
    );
    let err = base_load_fails(|tensors| {
        let t = raw_mut(tensors, "layers.1.bias");
        t.data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert!(
        matches!(&err, LoraError::NonFinite(what) if what.contains("layers.1.bias")),
        "{err:?}"
    );
}
