//! Property tests: whatever is done to a valid adapter directory (truncation, flipped bytes,
//! edited safetensors header fields, garbage in the header, a broken `adapter_config.json`),
//! `load_adapter` never panics, and when it fails the model is exactly as it was.
//!
//! safetensors layout: an 8-byte little-endian header length `n`, `n` bytes of JSON
//! (`{"key": {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}`), then the data.

mod common;

use std::path::Path;

use burn_lora::LoraLayer;
use burn_lora::{
    load_adapter, save_adapter, LoraConfig, LoraMlp, LoraModel, PathMap, ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
};
use common::snapshot::Snapshot;
use common::{base_model, insert_trained, on_all, B};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

/// One change to a valid adapter directory.
#[derive(Debug, Clone)]
enum Mutation {
    /// Keep only the first `len % file length` bytes of the weights file.
    Truncate(usize),
    /// XOR these bytes (position modulo the file length) with non-zero masks.
    FlipBytes(Vec<(usize, u8)>),
    /// XOR bytes of the data section only (the header stays valid).
    FlipDataBytes(Vec<(usize, u8)>),
    /// Set dimension `dim` of tensor `tensor`'s shape to `value`.
    Shape {
        tensor: usize,
        dim: usize,
        value: u64,
    },
    /// Replace tensor `tensor`'s dtype string.
    Dtype { tensor: usize, dtype: String },
    /// Set `data_offsets[which]` of tensor `tensor` to `value`.
    Offsets {
        tensor: usize,
        which: usize,
        value: u64,
    },
    /// Insert bytes into the header JSON; with `fix_length` the length prefix is updated.
    HeaderGarbage {
        at: usize,
        bytes: Vec<u8>,
        fix_length: bool,
    },
    /// Overwrite the 8-byte header length.
    HeaderLength(u64),
    /// Keep only the first `len % file length` bytes of the config.
    ConfigTruncate(usize),
    /// XOR bytes of the config.
    ConfigFlip(Vec<(usize, u8)>),
    /// Set a config field to an arbitrary JSON value.
    ConfigField { field: &'static str, value: Value },
}

fn flips() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((any::<usize>(), 1u8..=255), 1..8)
}

/// Numbers near the real ones, at the edges, and anywhere.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..20,
        0u64..2_000,
        Just(u64::MAX),
        Just(u64::MAX / 4),
        Just(1 << 32),
        any::<u64>(),
    ]
}

fn weight_mutation() -> impl Strategy<Value = Mutation> {
    let dtypes = [
        "F32", "F16", "BF16", "F64", "I32", "U8", "I8", "BOOL", "F8_E4M3", "F4", "C64", "U64", "",
        "f32", "XYZ",
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        flips().prop_map(Mutation::FlipBytes),
        flips().prop_map(Mutation::FlipDataBytes),
        (0usize..4, 0usize..3, number()).prop_map(|(tensor, dim, value)| Mutation::Shape {
            tensor,
            dim,
            value
        }),
        (0usize..4, prop::sample::select(dtypes.to_vec())).prop_map(|(tensor, dtype)| {
            Mutation::Dtype {
                tensor,
                dtype: dtype.to_string(),
            }
        }),
        (0usize..4, 0usize..2, number()).prop_map(|(tensor, which, value)| Mutation::Offsets {
            tensor,
            which,
            value
        }),
        (
            any::<usize>(),
            prop::collection::vec(any::<u8>(), 1..16),
            any::<bool>()
        )
            .prop_map(|(at, bytes, fix_length)| Mutation::HeaderGarbage {
                at,
                bytes,
                fix_length
            }),
        number().prop_map(Mutation::HeaderLength),
    ]
}

/// Any JSON value, mostly of the wrong type for the field it lands in.
fn any_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(|v| json!(v)),
        any::<f64>().prop_map(|v| json!(v)),
        any::<bool>().prop_map(|v| json!(v)),
        Just(Value::Null),
        Just(json!("((")),
        Just(json!([])),
        Just(json!({})),
    ]
}

/// A config field and a value of the type PEFT uses for it (often an invalid one).
fn config_field() -> impl Strategy<Value = (&'static str, Value)> {
    let module = prop::sample::select(vec!["layers.0", "layers.1", "1", "nowhere", "(", ".*"]);
    prop_oneof![
        prop_oneof![
            (0u64..40).prop_map(|v| json!(v)),
            any::<i64>().prop_map(|v| json!(v))
        ]
        .prop_map(|v| ("r", v)),
        prop_oneof![
            (-2.0f64..20.0).prop_map(|v| json!(v)),
            any::<f64>().prop_map(|v| json!(v))
        ]
        .prop_map(|v| ("lora_alpha", v)),
        (-0.5f64..1.5).prop_map(|v| ("lora_dropout", json!(v))),
        (
            prop::sample::select(vec![
                "use_rslora",
                "use_dora",
                "fan_in_fan_out",
                "lora_bias"
            ]),
            any::<bool>()
        )
            .prop_map(|(field, v)| (field, json!(v))),
        prop::sample::select(vec!["LORA", "IA3", "lora", ""]).prop_map(|v| ("peft_type", json!(v))),
        prop::sample::select(vec!["none", "all", "lora_only"]).prop_map(|v| ("bias", json!(v))),
        prop_oneof![
            prop::collection::vec(module.clone(), 0..3).prop_map(|v| json!(v)),
            prop::sample::select(vec!["layers\\.[0-9]+", "layers\\.1", "((", ".*", ""])
                .prop_map(|v| json!(v)),
        ]
        .prop_map(|v| ("target_modules", v)),
        (module.clone(), 0u64..40).prop_map(|(k, v)| ("rank_pattern", json!({ k: v }))),
        (module, -2.0f64..20.0).prop_map(|(k, v)| ("alpha_pattern", json!({ k: v }))),
        (
            prop::sample::select(vec!["r", "lora_alpha", "target_modules", "rank_pattern"]),
            any_json()
        ),
    ]
}

fn config_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<usize>().prop_map(Mutation::ConfigTruncate),
        1 => flips().prop_map(Mutation::ConfigFlip),
        3 => config_field().prop_map(|(field, value)| Mutation::ConfigField { field, value }),
    ]
}

/// `bytes` split into (parsed header JSON, data after the header).
fn split(bytes: &[u8]) -> (Value, &[u8]) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, &bytes[8 + n..])
}

fn join(header: &[u8], length: u64, data: &[u8]) -> Vec<u8> {
    let mut out = length.to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// The header entry of the `index`-th tensor (sorted by key, metadata excluded).
fn entry(header: &mut Value, index: usize) -> &mut Value {
    let map = header.as_object_mut().unwrap();
    let keys: Vec<String> = map
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let key = &keys[index % keys.len()];
    map.get_mut(key).unwrap()
}

fn flip(bytes: &mut [u8], flips: &[(usize, u8)]) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len();
    for &(at, mask) in flips {
        bytes[at % len] ^= mask;
    }
}

/// Applies `mutation` to valid `weights` and `config` bytes.
fn mutate(mutation: &Mutation, weights: &[u8], config: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut w, mut c) = (weights.to_vec(), config.to_vec());
    let (mut header, data) = split(weights);
    let rebuild = |header: &Value| {
        let text = serde_json::to_vec(header).unwrap();
        join(&text, text.len() as u64, data)
    };
    match mutation {
        Mutation::Truncate(len) => w.truncate(len % w.len()),
        Mutation::FlipBytes(flips) => flip(&mut w, flips),
        Mutation::FlipDataBytes(flips) => {
            let start = weights.len() - data.len();
            flip(&mut w[start..], flips);
        }
        Mutation::Shape { tensor, dim, value } => {
            let shape = entry(&mut header, *tensor)["shape"].as_array_mut().unwrap();
            if *dim < shape.len() {
                shape[*dim] = json!(value);
            } else {
                shape.push(json!(value));
            }
            w = rebuild(&header);
        }
        Mutation::Dtype { tensor, dtype } => {
            entry(&mut header, *tensor)["dtype"] = json!(dtype);
            w = rebuild(&header);
        }
        Mutation::Offsets {
            tensor,
            which,
            value,
        } => {
            entry(&mut header, *tensor)["data_offsets"][*which] = json!(value);
            w = rebuild(&header);
        }
        Mutation::HeaderGarbage {
            at,
            bytes,
            fix_length,
        } => {
            let mut text = serde_json::to_vec(&header).unwrap();
            let original = text.len() as u64;
            let at = at % (text.len() + 1);
            text.splice(at..at, bytes.iter().copied());
            let length = if *fix_length {
                text.len() as u64
            } else {
                original
            };
            w = join(&text, length, data);
        }
        Mutation::HeaderLength(length) => w[..8].copy_from_slice(&length.to_le_bytes()),
        Mutation::ConfigTruncate(len) => c.truncate(len % c.len()),
        Mutation::ConfigFlip(flips) => flip(&mut c, flips),
        Mutation::ConfigField { field, value } => {
            let mut json: Value = serde_json::from_slice(config).unwrap();
            json[*field] = value.clone();
            c = serde_json::to_vec_pretty(&json).unwrap();
        }
    }
    (w, c)
}

/// A valid adapter directory's bytes (rank 2 on both layers of a 12-8-4 MLP) and a model with the
/// same base that holds adapter "existing" on its last layer.
fn setup() -> (Vec<u8>, Vec<u8>, LoraMlp<B>) {
    let base = base_model(&[12, 8, 4]);
    let mut source = base.clone();
    insert_trained(
        &mut source,
        "default",
        &on_all(&base, &LoraConfig::new(2, 4.0)),
        40,
    );
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&source, "default", dir.path(), &PathMap::identity()).unwrap();
    let weights = std::fs::read(dir.path().join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let config_bytes = std::fs::read(dir.path().join(ADAPTER_CONFIG_FILE)).unwrap();

    let mut target = base;
    insert_trained(&mut target, "existing", &[(1, LoraConfig::new(1, 1.0))], 60);
    (weights, config_bytes, target)
}

/// Runs `cases` mutations drawn from `strategy` through `load_adapter`.
/// `ADAPTER_FUZZ_CASES=<n>` runs `n` cases instead (for a longer local search).
fn check_mutations(cases: u32, strategy: impl Strategy<Value = Mutation>) {
    let cases = std::env::var("ADAPTER_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    let (weights, config, target) = setup();
    let before = Snapshot::of(&target);
    let dir = tempfile::tempdir().unwrap();

    // The unmutated files load, so every failure below comes from the mutation.
    {
        let mut model = target.clone();
        write(dir.path(), &weights, &config);
        load_adapter(&mut model, "fuzzed", dir.path(), &PathMap::identity()).unwrap();
        assert_eq!(sorted_names(&model), vec!["existing", "fuzzed"]);
    }

    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let outcomes = std::cell::RefCell::new(std::collections::BTreeMap::<String, u32>::new());
    let tally = |outcome: String| *outcomes.borrow_mut().entry(outcome).or_default() += 1;
    runner
        .run(&strategy, |mutation| {
            let (w, c) = mutate(&mutation, &weights, &config);
            write(dir.path(), &w, &c);
            let mut model = target.clone();
            match load_adapter(&mut model, "fuzzed", dir.path(), &PathMap::identity()) {
                Ok(()) => {
                    tally("Ok".into());
                    prop_assert_eq!(sorted_names(&model), vec!["existing", "fuzzed"]);
                    for layer in model.layers() {
                        if let Some(adapter) = layer.adapter("fuzzed") {
                            prop_assert!(adapter.ensure_finite().is_ok());
                        }
                    }
                }
                Err(e) => {
                    let variant = format!("{e:?}");
                    let end = variant.find([' ', '(', '{']).unwrap_or(variant.len());
                    tally(variant[..end].to_string());
                    let message = e.to_string();
                    prop_assert!(!message.is_empty());
                    prop_assert!(
                        Snapshot::of(&model) == before,
                        "the model changed although loading failed with: {}",
                        message
                    );
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{cases} mutated adapters: {:?}", outcomes.borrow());
}

fn sorted_names(model: &LoraMlp<B>) -> Vec<String> {
    let mut names = model.adapter_names();
    names.sort();
    names
}

fn write(dir: &Path, weights: &[u8], config: &[u8]) {
    std::fs::write(dir.join(ADAPTER_WEIGHTS_FILE), weights).unwrap();
    std::fs::write(dir.join(ADAPTER_CONFIG_FILE), config).unwrap();
}

#[test]
fn mutated_safetensors_never_panics_and_failed_loads_change_nothing() {
    check_mutations(150, weight_mutation());
}

#[test]
fn mutated_adapter_config_never_panics_and_failed_loads_change_nothing() {
    check_mutations(50, config_mutation());
}
