//! Adapter files as artifacts: `save_adapter` / `load_adapter` round trips, the notebook adapter's
//! file size, one table of every kind of bad adapter (each refused with its own error, naming the
//! key or file, and the model left untouched), and saves that fail without damaging existing
//! files.
//!
//! The parsers' own cases (every dtype, every way bytes can be broken, every PEFT config field)
//! are unit tests in `src/io/tensor_file.rs` and `src/io/peft_config.rs`; `load_pytorch_base` is
//! tested in `tests/files/pytorch_base.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::common::assert_error::{is_invalid_file, is_shape_mismatch};
use crate::common::safetensors_io::{
    edit_config, edit_tensors, key, raw, raw_mut, read_config, read_raw, Raw, PEFT_PREFIX,
};
use crate::common::snapshot::{bits, Snapshot};
use crate::common::{
    assert_bit_identical, base_model, insert_trained, on_all, probe, values, AB, B,
};
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::Tensor;
use burn_lora::{
    load_adapter, save_adapter, LoraConfig, LoraError, LoraInit, LoraMlp, LoraMlpConfig, LoraModel,
    PathMap, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
};
use burn_lora::{LoraLayer, Targets, DEFAULT_ADAPTER};
use safetensors::Dtype;
use serde_json::json;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

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

/// A valid adapter directory (rank 4, alpha 8, 784-32-10, saved from `source`) and `model`: the
/// same base holding an active adapter "existing" (rank 2) on every layer.
struct Fixture {
    dir: TempDir,
    /// Where `load_adapter` reads from: `dir` unless a case moves it.
    load_from: PathBuf,
    base: LoraMlp<B>,
    source: LoraMlp<B>,
    model: LoraMlp<B>,
}

fn fixture() -> Fixture {
    let (base, source, dir) = saved_default_adapter(7);
    let mut model = base.clone();
    insert_trained(
        &mut model,
        "existing",
        &on_all(&base, &LoraConfig::new(2, 2.0)),
        8,
    );
    Fixture {
        load_from: dir.path().to_path_buf(),
        dir,
        base,
        source,
        model,
    }
}

impl Fixture {
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn weights_path(&self) -> PathBuf {
        self.dir().join(ADAPTER_WEIGHTS_FILE)
    }
}

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

// ---------------------------------------------------------------------------------------------
// Round trips.
// ---------------------------------------------------------------------------------------------

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
    assert!(crate::common::max_abs_diff(fresh.forward(x.clone()), base.forward(x)) > 1e-3);

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
        written.iter().all(|t| t.key.starts_with(PEFT_PREFIX)),
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
            t.key = t.key.strip_prefix(PEFT_PREFIX).unwrap().to_string();
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
        .attach(
            DEFAULT_ADAPTER,
            &LoraConfig::new(1, 1.0).with_init(LoraInit::Gaussian { std: 1.0 }),
            &Targets::all(),
        )
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

/// The load path of a non-F32 file (each dtype's conversion is a unit test of `tensor_file`).
#[test]
fn bf16_adapter_loads_with_the_bf16_values_as_f32() {
    let mut f = fixture();
    edit_tensors(f.dir(), |tensors| {
        for t in tensors.iter_mut() {
            t.data = t
                .f32_values()
                .into_iter()
                .flat_map(|v| half::bf16::from_f32(v).to_le_bytes())
                .collect();
            t.dtype = Dtype::BF16;
        }
    });
    load_adapter(&mut f.model, "incoming", &f.load_from, &PathMap::identity()).unwrap();
    for (source, loaded) in f.source.layers().iter().zip(f.model.layers()) {
        let (source, loaded) = (
            source.adapter("default").unwrap(),
            loaded.adapter("incoming").unwrap(),
        );
        for (original, got) in [
            (source.lora_a(), loaded.lora_a()),
            (source.lora_b(), loaded.lora_b()),
        ] {
            let original = values(original);
            let rounded: Vec<u32> = original
                .iter()
                .map(|v| half::bf16::from_f32(*v).to_f32().to_bits())
                .collect();
            // bf16 drops mantissa bits, so the file really held other values than the source.
            let original: Vec<u32> = original.iter().map(|v| v.to_bits()).collect();
            assert_ne!(rounded, original);
            assert_eq!(bits(got), rounded, "bf16 values as f32");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bad adapters: the right error, naming the key or file, and the model untouched.
// ---------------------------------------------------------------------------------------------

/// One way to break a load: `edit` changes the fixture's adapter directory, where it is loaded
/// from, or the model; loading under `load_as` must then fail with an error `expect` accepts.
struct BadCase {
    name: String,
    load_as: &'static str,
    edit: Box<dyn Fn(&mut Fixture)>,
    expect: Box<dyn Fn(&LoraError) -> bool>,
}

/// A case that loads the edited fixture as "incoming".
fn bad(
    name: impl Into<String>,
    edit: impl Fn(&mut Fixture) + 'static,
    expect: impl Fn(&LoraError) -> bool + 'static,
) -> BadCase {
    BadCase {
        name: name.into(),
        load_as: "incoming",
        edit: Box::new(edit),
        expect: Box::new(expect),
    }
}

impl BadCase {
    fn loaded_as(mut self, name: &'static str) -> Self {
        self.load_as = name;
        self
    }
}

fn names_weights_file(err: &LoraError) -> bool {
    err.to_string().contains(ADAPTER_WEIGHTS_FILE)
}

/// Every bad adapter `load_adapter` must refuse. The parsers' finer variants (each dtype, each
/// way bytes can be broken, each unsupported config field) are unit tests of `tensor_file` and
/// `peft_config`; one of each kind here proves the load path reports it and changes nothing.
fn bad_cases() -> Vec<BadCase> {
    let mut cases = vec![
        bad(
            "missing_lora_b_tensor_is_missing_key_naming_the_weights_file",
            |f| {
                edit_tensors(f.dir(), |t| {
                    t.retain(|t| t.key != key("layers.1", "lora_B"))
                })
            },
            |err| {
                matches!(err, LoraError::MissingKey { key: k, .. } if *k == key("layers.1", "lora_B"))
                    && names_weights_file(err)
            },
        ),
        bad(
            "extra_non_lora_tensor_is_unexpected_key_naming_the_weights_file",
            |f| {
                let extra = format!("{PEFT_PREFIX}layers.0.weight");
                edit_tensors(f.dir(), |t| t.push(Raw::f32(&extra, vec![32], &[1.0; 32])))
            },
            |err| {
                let extra = format!("{PEFT_PREFIX}layers.0.weight");
                matches!(err, LoraError::UnexpectedKey { key, .. } if *key == extra)
                    && names_weights_file(err)
            },
        ),
        bad(
            "dora_magnitude_in_a_plain_lora_file_is_unexpected_key_naming_use_dora",
            |f| {
                let extra = format!("{PEFT_PREFIX}layers.0.lora_magnitude_vector");
                edit_tensors(f.dir(), |t| t.push(Raw::f32(&extra, vec![32], &[1.0; 32])))
            },
            |err| {
                let extra = format!("{PEFT_PREFIX}layers.0.lora_magnitude_vector");
                matches!(err, LoraError::UnexpectedKey { key, reason, .. }
                    if *key == extra && reason.contains("use_dora"))
                    && names_weights_file(err)
            },
        ),
        bad(
            // Which of the two would win depends on hash order, so the file is ambiguous.
            "same_tensor_with_and_without_the_prefix_is_unexpected_key_naming_both",
            |f| {
                let a = key("layers.0", "lora_A");
                edit_tensors(f.dir(), |tensors| {
                    let mut copy = raw(tensors, &a).clone();
                    copy.key = a.strip_prefix(PEFT_PREFIX).unwrap().to_string();
                    copy.data.iter_mut().for_each(|b| *b = 0);
                    tensors.push(copy);
                })
            },
            |err| {
                let a = key("layers.0", "lora_A");
                let bare = a.strip_prefix(PEFT_PREFIX).unwrap();
                matches!(err, LoraError::UnexpectedKey { key, reason, .. }
                    if (*key == a && reason.contains(bare)) || (key == bare && reason.contains(&a)))
            },
        ),
        bad(
            "tensor_for_a_module_the_model_lacks_is_unexpected_key_naming_the_module",
            |f| {
                let extra = key("layers.5", "lora_A");
                edit_tensors(f.dir(), |t| {
                    t.push(Raw::f32(&extra, vec![4, 10], &[0.5; 40]))
                })
            },
            |err| {
                matches!(err, LoraError::UnexpectedKey { key: k, .. } if *k == key("layers.5", "lora_A"))
                    && err.to_string().contains("layers.5")
            },
        ),
        bad(
            "tensor_for_a_module_outside_target_modules_is_unexpected_key",
            |f| {
                edit_config(f.dir(), |c| {
                    c.insert("target_modules".into(), json!(["layers.0"]));
                })
            },
            |err| matches!(err, LoraError::UnexpectedKey { key, .. } if key.contains("layers.1")),
        ),
        bad(
            "wrong_input_width_is_shape_mismatch_naming_the_key_and_file",
            |f| {
                let a = key("layers.0", "lora_A");
                edit_tensors(f.dir(), |tensors| {
                    *raw_mut(tensors, &a) = Raw::f32(&a, vec![4, 783], &vec![0.25; 4 * 783]);
                })
            },
            |err| {
                is_shape_mismatch(err, &key("layers.0", "lora_A"), &[4, 784], &[4, 783])
                    && is_shape_mismatch(err, ADAPTER_WEIGHTS_FILE, &[4, 784], &[4, 783])
            },
        ),
        bad(
            "config_rank_differing_from_tensor_rank_is_shape_mismatch",
            |f| {
                edit_config(f.dir(), |c| {
                    c.insert("r".into(), json!(2));
                })
            },
            |err| {
                matches!(err, LoraError::ShapeMismatch { what, expected, found }
                    if expected[0] == 2 && found[0] == 4
                        && (what.contains("lora_A") || what.contains("lora_B")))
            },
        ),
        bad(
            // layers.0 keeps r = 4; layers.1 is told rank 3 but its tensors have rank 4.
            "rank_pattern_differing_from_a_layer_tensor_rank_is_shape_mismatch",
            |f| {
                edit_config(f.dir(), |c| {
                    c.insert("rank_pattern".into(), json!({"layers.1": 3}));
                })
            },
            |err| is_shape_mismatch(err, "layers.1.lora_A", &[3, 32], &[4, 32]),
        ),
        bad(
            // The header is valid; the data section is short.
            "weights_file_truncated_in_the_data_is_invalid_safetensors_file",
            |f| {
                let path = f.weights_path();
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
            },
            |err| is_invalid_file(err, ADAPTER_WEIGHTS_FILE, "safetensors"),
        ),
        bad(
            "truncated_json_config_is_invalid_config_file",
            |f| std::fs::write(f.dir().join(ADAPTER_CONFIG_FILE), "{ \"r\": 4, ").unwrap(),
            |err| is_invalid_file(err, ADAPTER_CONFIG_FILE, "adapter_config.json"),
        ),
        bad(
            "ia3_config_is_unsupported_naming_the_type_and_config_file",
            |f| {
                edit_config(f.dir(), |c| {
                    c.insert("peft_type".into(), json!("IA3"));
                })
            },
            |err| {
                matches!(err, LoraError::Unsupported(what)
                    if what.contains("IA3") && what.contains(ADAPTER_CONFIG_FILE))
            },
        ),
        bad(
            "dora_config_without_magnitudes_is_missing_key_naming_the_magnitude",
            |f| {
                edit_config(f.dir(), |c| {
                    c.insert("use_dora".into(), json!(true));
                })
            },
            |err| {
                matches!(err, LoraError::MissingKey { key, .. }
                    if key.ends_with("lora_magnitude_vector"))
            },
        ),
        bad(
            "missing_adapter_directory_is_io_error_naming_it",
            |f| f.load_from = f.dir().join("no-such-adapter"),
            |err| matches!(err, LoraError::Io { path, .. } if path.contains("no-such-adapter")),
        ),
        bad(
            "existing_adapter_name_is_duplicate_adapter",
            |_| {},
            |err| *err == LoraError::DuplicateAdapter("existing".into()),
        )
        .loaded_as("existing"),
        bad(
            "empty_adapter_name_is_invalid_adapter_name",
            |_| {},
            |err| *err == LoraError::InvalidAdapterName(String::new()),
        )
        .loaded_as(""),
        bad(
            // The file adapts layers.1 only; the model's only adapter is merged into layers.0.
            "merged_layer_the_file_does_not_adapt_is_merged_error",
            |f| {
                edit_tensors(f.dir(), |t| t.retain(|t| !t.key.contains("layers.0.")));
                edit_config(f.dir(), |c| {
                    c.insert("target_modules".into(), json!(["layers.1"]));
                });
                let mut model = f.base.clone();
                insert_trained(&mut model, "existing", &[(0, LoraConfig::new(2, 2.0))], 10);
                model.merge().unwrap();
                assert!(model.layers()[0].is_merged() && !model.layers()[1].is_merged());
                f.model = model;
            },
            |err| matches!(err, LoraError::Merged(names) if names == &["existing"]),
        ),
    ];
    for (dtype, width) in [(Dtype::I32, 4), (Dtype::U8, 1)] {
        cases.push(bad(
            format!("{dtype:?}_tensor_is_unsupported_dtype_naming_the_key_and_file").to_lowercase(),
            move |f| {
                edit_tensors(f.dir(), |tensors| {
                    let t = raw_mut(tensors, &key("layers.1", "lora_B"));
                    t.dtype = dtype;
                    t.data = vec![1; 10 * 4 * width];
                })
            },
            move |err| {
                matches!(err, LoraError::UnsupportedDtype { key: k, dtype: d, .. }
                    if *k == key("layers.1", "lora_B") && *d == format!("{dtype:?}"))
                    && names_weights_file(err)
            },
        ));
    }
    for (what, value) in [("nan", f32::NAN), ("infinite", f32::INFINITY)] {
        cases.push(bad(
            format!("{what}_value_is_non_finite_naming_the_key_and_file"),
            move |f| {
                let a = key("layers.1", "lora_A");
                edit_tensors(f.dir(), |tensors| {
                    let t = raw_mut(tensors, &a);
                    let mut v = t.f32_values();
                    v[5] = value;
                    *t = Raw::f32(&a, t.shape.clone(), &v);
                })
            },
            |err| {
                matches!(err, LoraError::NonFinite(what) if what.contains(&key("layers.1", "lora_A")))
                    && names_weights_file(err)
            },
        ));
    }
    for file in [ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE] {
        cases.push(bad(
            format!("missing_{}_is_io_error_naming_it", file.replace('.', "_")),
            move |f| std::fs::remove_file(f.dir().join(file)).unwrap(),
            move |err| matches!(err, LoraError::Io { path, .. } if path.ends_with(file)),
        ));
    }
    cases
}

#[test]
fn every_bad_adapter_is_refused_with_its_own_error_and_changes_nothing() {
    // The unedited fixture loads, so each bad case below fails for its own reason.
    let mut valid = fixture();
    load_adapter(
        &mut valid.model,
        "incoming",
        &valid.load_from,
        &PathMap::identity(),
    )
    .unwrap();
    assert_eq!(valid.model.adapter_names(), vec!["existing", "incoming"]);
    assert_same_factors(&valid.source, "default", &valid.model, "incoming");

    let cases = bad_cases();
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
    for case in &cases {
        let mut f = fixture();
        (case.edit)(&mut f);
        let before = Snapshot::of(&f.model);
        let err = load_adapter(
            &mut f.model,
            case.load_as,
            &f.load_from,
            &PathMap::identity(),
        )
        .err()
        .unwrap_or_else(|| panic!("{}: loading a bad adapter must fail", case.name));
        before.assert_same(
            &Snapshot::of(&f.model),
            &format!("{}: loading failed with: {err}", case.name),
        );
        assert!((case.expect)(&err), "{}: wrong error {err:?}", case.name);
        println!("{}: {err}", case.name);
    }
    println!("{} bad adapters refused", cases.len());
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
        .attach(
            DEFAULT_ADAPTER,
            &LoraConfig::new(2, 4.0).with_init(LoraInit::Gaussian { std: 1.0 }),
            &Targets::all(),
        )
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
    let f = fixture();
    let before = dir_contents(f.dir());
    let err = save_adapter(&f.source, "nope", f.dir(), &PathMap::identity()).unwrap_err();
    assert_eq!(err, LoraError::UnknownAdapter("nope".into()));
    assert_eq!(dir_contents(f.dir()), before);
}

#[test]
fn save_failing_on_the_config_leaves_the_existing_weights_byte_identical() {
    let f = fixture();
    let weights = std::fs::read(f.weights_path()).unwrap();
    // The config's place is taken by a non-empty directory: the weights are written, the
    // config's rename fails, and the weights' rename must be undone.
    let config = f.dir().join(ADAPTER_CONFIG_FILE);
    std::fs::remove_file(&config).unwrap();
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("keep"), b"occupied").unwrap();
    let before = dir_contents(&config);

    let err = save_adapter(&f.model, "existing", f.dir(), &PathMap::identity()).unwrap_err();
    assert!(
        matches!(&err, LoraError::Io { path, .. } if path.ends_with(ADAPTER_CONFIG_FILE)),
        "{err:?}"
    );
    assert!(
        std::fs::read(f.weights_path()).unwrap() == weights,
        "the weights of the existing adapter were replaced"
    );
    assert_eq!(dir_contents(&config), before);
    let names: BTreeSet<String> = std::fs::read_dir(f.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected = BTreeSet::from([ADAPTER_CONFIG_FILE.into(), ADAPTER_WEIGHTS_FILE.into()]);
    assert_eq!(names, expected, "temporary or backup files were left");
}

#[test]
fn saving_under_a_regular_file_is_an_io_error() {
    let f = fixture();
    let blocker = f.dir().join("blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    for target in [blocker.join("adapter"), blocker.clone()] {
        let err = save_adapter(&f.source, "default", &target, &PathMap::identity()).unwrap_err();
        assert!(
            matches!(err, LoraError::Io { .. }),
            "{}: {err:?}",
            target.display()
        );
    }
    assert_eq!(std::fs::read(&blocker).unwrap(), b"not a directory");
}
