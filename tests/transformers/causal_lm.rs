//! The causal LM's contract beyond the PEFT fixtures: bad configs, checkpoints, adapters and
//! requests are errors that change nothing; sharded checkpoints, older config layouts, Mistral's
//! sliding window, stop tokens, seeded sampling and the training loss behave as documented.

use std::path::{Path, PathBuf};

use crate::common::safetensors_io::{read_raw, write_raw};
use crate::common::{assert_bit_identical, existing_peft_fixture, B};
use burn::tensor::{Int, Tensor};
use burn_lora::nn::llama::{
    causal_lm_loss, CausalLm, CausalLmConfig, CausalLmInput, Family, GenerationConfig, Sampling,
    IGNORE_INDEX,
};
use burn_lora::{load_adapter, AdapterBatch, LoraError, LoraModel, PathMap};
use serde_json::{json, Value};

/// A writable copy of a fixture folder.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let source = existing_peft_fixture(name);
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    (temp, dir)
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

fn llama() -> CausalLm<B> {
    CausalLm::from_pretrained(&existing_peft_fixture("llama_tiny"), &Default::default()).unwrap()
}

fn ids(rows: &[&[i64]]) -> Tensor<B, 2, Int> {
    let width = rows[0].len();
    let values: Vec<i64> = rows.concat();
    Tensor::from_data(
        burn::tensor::TensorData::new(values, [rows.len(), width]),
        &Default::default(),
    )
}

fn logits(lm: &CausalLm<B>) -> Tensor<B, 3> {
    lm.forward(CausalLmInput::new(ids(&[&[5, 17, 42, 99, 3]])))
        .unwrap()
}

#[test]
fn options_that_are_not_implemented_are_errors_naming_them() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("model_type", json!("gpt2"), "model_type"),
        ("hidden_act", json!("gelu"), "hidden_act"),
        (
            "rope_parameters",
            json!({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}),
            "yarn",
        ),
        ("partial_rotary_factor", json!(0.5), "partial_rotary_factor"),
        (
            "quantization_config",
            json!({"quant_method": "bitsandbytes"}),
            "quantization_config",
        ),
        (
            "layer_types",
            json!(["full_attention", "sliding_attention"]),
            "layer_types",
        ),
    ];
    for (field, value, named) in cases {
        let (_temp, dir) = copy_fixture("llama_tiny");
        edit_config(&dir, |c| {
            c.insert(field.to_string(), value.clone());
        });
        match CausalLmConfig::from_hf_json(&dir.join("config.json")) {
            Err(LoraError::Unsupported(message)) => {
                assert!(message.contains(named), "{field}: {message}")
            }
            other => panic!("{field} = {value}: expected Unsupported, got {other:?}"),
        }
    }
    let (_temp, dir) = copy_fixture("qwen2_tiny");
    edit_config(&dir, |c| {
        c.insert("use_sliding_window".into(), json!(true));
    });
    assert!(matches!(
        CausalLmConfig::from_hf_json(&dir.join("config.json")),
        Err(LoraError::Unsupported(m)) if m.contains("use_sliding_window")
    ));
}

#[test]
fn configs_that_cannot_build_a_model_are_errors() {
    let cases: Vec<(&str, Value)> = vec![
        ("num_key_value_heads", json!(3)),
        ("rms_norm_eps", json!(0.0)),
        ("attention_dropout", json!(1.5)),
        ("head_dim", json!(15)),
        ("vocab_size", json!(0)),
        // Sizes whose parameter count overflows, refused before anything of their size is
        // allocated (a head_dim of 2^62 aborted the process building its rotary table).
        ("head_dim", json!(1u64 << 62)),
        ("vocab_size", json!(u64::MAX)),
        ("num_hidden_layers", json!(1u64 << 62)),
        ("intermediate_size", json!(1u64 << 61)),
    ];
    for (field, value) in cases {
        let (_temp, dir) = copy_fixture("llama_tiny");
        edit_config(&dir, |c| {
            c.insert(field.to_string(), value.clone());
        });
        let result = CausalLmConfig::from_hf_json(&dir.join("config.json"));
        assert!(
            matches!(result, Err(LoraError::InvalidModel(_))),
            "{field} = {value}: {result:?}"
        );
    }
    let (_temp, dir) = copy_fixture("llama_tiny");
    edit_config(&dir, |c| {
        c.remove("hidden_size");
    });
    assert!(matches!(
        CausalLmConfig::from_hf_json(&dir.join("config.json")),
        Err(LoraError::InvalidFile { .. })
    ));
}

#[test]
fn an_older_config_with_rope_theta_at_the_top_reads_the_same() {
    let (_temp, dir) = copy_fixture("llama_tiny");
    edit_config(&dir, |c| {
        c.remove("rope_parameters");
        c.insert("rope_theta".into(), json!(10000.0));
        c.insert("rope_scaling".into(), Value::Null);
    });
    let lm = CausalLm::<B>::from_pretrained(&dir, &Default::default()).unwrap();
    assert_bit_identical(logits(&lm), logits(&llama()));
}

#[test]
fn a_missing_or_extra_checkpoint_key_is_an_error_and_changes_nothing() {
    let (_temp, dir) = copy_fixture("llama_tiny");
    let weights = dir.join("model.safetensors");
    let tensors = read_raw(&weights);
    let mut lm = llama();
    let before = logits(&lm);

    let fewer: Vec<_> = tensors
        .iter()
        .filter(|t| t.key != "model.layers.1.mlp.up_proj.weight")
        .cloned()
        .collect();
    write_raw(&weights, &fewer);
    match lm.load_hf_weights(&dir) {
        Err(LoraError::MissingKey { key, .. }) => {
            assert_eq!(key, "model.layers.1.mlp.up_proj.weight")
        }
        other => panic!("expected MissingKey, got {other:?}"),
    }
    assert_bit_identical(logits(&lm), before.clone());

    let mut more = tensors.clone();
    let mut extra = tensors[0].clone();
    extra.key = "model.layers.2.self_attn.q_proj.weight".into();
    more.push(extra);
    write_raw(&weights, &more);
    assert!(matches!(
        lm.load_hf_weights(&dir),
        Err(LoraError::UnexpectedKey { key, .. }) if key == "model.layers.2.self_attn.q_proj.weight"
    ));
    assert_bit_identical(logits(&lm), before);
}

#[test]
fn a_sharded_checkpoint_loads_as_the_single_file_does() {
    let (_temp, dir) = copy_fixture("llama_tiny");
    let tensors = read_raw(&dir.join("model.safetensors"));
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut weight_map = serde_json::Map::new();
    for (shard, name) in [first, second].into_iter().zip(names) {
        write_raw(&dir.join(name), shard);
        for tensor in shard {
            weight_map.insert(tensor.key.clone(), json!(name));
        }
    }
    let index = dir.join("model.safetensors.index.json");
    let write_index = |map: &serde_json::Map<String, Value>| {
        let body = json!({"metadata": {"total_size": 0}, "weight_map": map});
        std::fs::write(&index, serde_json::to_vec(&body).unwrap()).unwrap();
    };
    write_index(&weight_map);
    let lm = CausalLm::<B>::from_pretrained(&dir, &Default::default()).unwrap();
    assert_bit_identical(logits(&lm), logits(&llama()));

    let mut outside = weight_map.clone();
    outside.insert("lm_head.weight".into(), json!("../elsewhere.safetensors"));
    write_index(&outside);
    assert!(matches!(
        CausalLm::<B>::from_pretrained(&dir, &Default::default()),
        Err(LoraError::InvalidFile { .. })
    ));
    std::fs::remove_file(&index).unwrap();
    assert!(matches!(
        CausalLm::<B>::from_pretrained(&dir, &Default::default()),
        Err(LoraError::InvalidFile { .. })
    ));
}

#[test]
fn an_adapter_for_another_architecture_is_refused() {
    let mut lm = llama();
    let bert_adapter = existing_peft_fixture("bert_tiny_qv").join("adapter");
    let result = load_adapter(&mut lm, "bert", &bert_adapter, &PathMap::identity());
    assert!(
        matches!(result, Err(LoraError::UnexpectedKey { .. })),
        "{result:?}"
    );
    assert!(lm.adapter_names().is_empty());
    let qwen_adapter = existing_peft_fixture("qwen2_tiny").join("adapter_a");
    // Same module paths and shapes: a Qwen2 adapter fits this Llama's layers as PEFT's would.
    load_adapter(&mut lm, "qwen", &qwen_adapter, &PathMap::identity()).unwrap();
}

#[test]
fn bad_requests_are_errors_before_anything_runs() {
    let mut lm = llama();
    let device = Default::default();
    let forward = |lm: &CausalLm<B>, input| lm.forward(input);
    let invalid = |result: burn_lora::Result<Tensor<B, 3>>, what: &str| {
        assert!(
            matches!(result, Err(LoraError::InvalidInput(_))),
            "{what}: {result:?}"
        );
    };
    invalid(
        forward(&lm, CausalLmInput::new(Tensor::zeros([0, 4], &device))),
        "empty batch",
    );
    invalid(
        forward(&lm, CausalLmInput::new(ids(&[&[5, 256, 7]]))),
        "id outside the vocabulary",
    );
    invalid(
        forward(&lm, CausalLmInput::new(ids(&[&[5, -1, 7]]))),
        "negative id",
    );
    invalid(
        forward(&lm, CausalLmInput::new(Tensor::ones([1, 129], &device))),
        "longer than max_position_embeddings",
    );
    invalid(
        forward(
            &lm,
            CausalLmInput::new(ids(&[&[5, 6]])).attention_mask(ids(&[&[1, 2]])),
        ),
        "mask value 2",
    );
    invalid(
        forward(
            &lm,
            CausalLmInput::new(ids(&[&[5, 6]])).attention_mask(ids(&[&[1, 1, 1]])),
        ),
        "mask of another shape",
    );

    load_adapter(
        &mut lm,
        "task_a",
        &existing_peft_fixture("llama_tiny").join("adapter_a"),
        &PathMap::identity(),
    )
    .unwrap();
    assert!(matches!(
        lm.adapter_batch(&["task_a", "nope"]),
        Err(LoraError::UnknownAdapter(name)) if name == "nope"
    ));
    let unknown = AdapterBatch::new(&["nope"]).unwrap();
    assert!(matches!(
        forward(&lm, CausalLmInput::new(ids(&[&[5, 6]])).adapters(unknown)),
        Err(LoraError::UnknownAdapter(_))
    ));
    let two_rows = lm.adapter_batch(&["task_a", "__base__"]).unwrap();
    invalid(
        forward(
            &lm,
            CausalLmInput::new(ids(&[&[5, 6]])).adapters(two_rows.clone()),
        ),
        "adapter rows",
    );
    lm.merge().unwrap();
    assert!(matches!(
        forward(
            &lm,
            CausalLmInput::new(ids(&[&[5, 6], &[7, 8]])).adapters(two_rows)
        ),
        Err(LoraError::Merged(_))
    ));
    lm.unmerge().unwrap();

    let config = GenerationConfig::new(12);
    let generate = |prompts: &[Vec<u32>], config: &GenerationConfig| {
        lm.generate(prompts, None, config, |_| {})
    };
    for (prompts, what) in [
        (vec![], "no prompt"),
        (vec![vec![5, 6], vec![]], "an empty prompt"),
        (
            vec![vec![5; 120]],
            "prompt + new tokens beyond the positions",
        ),
        (vec![vec![300]], "a token outside the vocabulary"),
    ] {
        let result = generate(&prompts, &config);
        assert!(
            matches!(result, Err(LoraError::InvalidInput(_))),
            "{what}: {result:?}"
        );
    }
    let hot = config.clone().with_sampling(Sampling::Sample {
        temperature: 0.0,
        top_k: None,
        top_p: None,
    });
    assert!(generate(&[vec![5, 6]], &hot).is_err());
}

#[test]
fn a_cache_continues_the_sequence_as_one_forward_does() {
    let lm = llama();
    let whole = lm
        .forward(
            CausalLmInput::new(ids(&[&[5, 17, 42, 99, 3], &[0, 0, 8, 9, 10]]))
                .attention_mask(ids(&[&[1, 1, 1, 1, 1], &[0, 0, 1, 1, 1]])),
        )
        .unwrap();
    let mut cache = lm.new_cache();
    let first = lm
        .forward_cache(
            CausalLmInput::new(ids(&[&[5, 17, 42], &[0, 0, 8]]))
                .attention_mask(ids(&[&[1, 1, 1], &[0, 0, 1]])),
            &mut cache,
        )
        .unwrap();
    let rest = lm
        .forward_cache(CausalLmInput::new(ids(&[&[99, 3], &[9, 10]])), &mut cache)
        .unwrap();
    assert_eq!(cache.len(), 5);
    let stepwise = Tensor::cat(vec![first, rest], 1);
    // Row 1's first two positions are padding: their logits are whatever a fully masked row
    // computes, and take no part in anything else.
    let vocab = whole.dims()[2];
    let real = |t: Tensor<B, 3>| {
        Tensor::cat(
            vec![
                t.clone().slice([0..1, 0..5, 0..vocab]),
                t.slice([1..2, 2..5, 0..vocab]),
            ],
            1,
        )
    };
    let diff = crate::common::max_abs_diff(real(whole), real(stepwise));
    assert!(diff < 1e-5, "cached and whole forwards differ by {diff}");
    assert!(lm
        .forward_cache(CausalLmInput::new(ids(&[&[1]])), &mut cache)
        .is_err());
    assert_eq!(cache.len(), 5, "a refused step leaves the cache as it was");
}

/// Steps of one token per row continue from the cache's positions and padding (no mask while
/// no row is padded, the padded keys masked on the device otherwise), within and past a
/// sliding window, and after rows leave the batch: the logits of one whole forward.
#[test]
fn one_token_steps_continue_as_one_forward_does() {
    let (_temp, dir) = copy_fixture("llama_tiny");
    edit_config(&dir, |c| {
        c.insert("model_type".into(), json!("mistral"));
        c.insert("sliding_window".into(), json!(3));
    });
    let windowed = CausalLm::<B>::from_pretrained(&dir, &Default::default()).unwrap();
    let rows: [&[i64]; 3] = [
        &[5, 17, 42, 99, 3, 7],
        &[0, 0, 8, 9, 10, 11],
        &[4, 6, 8, 9, 2, 1],
    ];
    let masks: [&[i64]; 3] = [&[1; 6], &[0, 0, 1, 1, 1, 1], &[1; 6]];
    for lm in [llama(), windowed] {
        for (batch, prompt) in [(vec![0], 2), (vec![0, 1], 3), (vec![0, 1, 2], 3)] {
            let pick = |of: &[&[i64]; 3], range: std::ops::Range<usize>| -> Vec<Vec<i64>> {
                batch
                    .iter()
                    .map(|&r| of[r][range.clone()].to_vec())
                    .collect()
            };
            let tensor = |values: Vec<Vec<i64>>| {
                let refs: Vec<&[i64]> = values.iter().map(Vec::as_slice).collect();
                ids(&refs)
            };
            let whole = lm
                .forward(
                    CausalLmInput::new(tensor(pick(&rows, 0..6)))
                        .attention_mask(tensor(pick(&masks, 0..6))),
                )
                .unwrap();
            let mut cache = lm.new_cache();
            let mut steps = vec![lm
                .forward_cache(
                    CausalLmInput::new(tensor(pick(&rows, 0..prompt)))
                        .attention_mask(tensor(pick(&masks, 0..prompt))),
                    &mut cache,
                )
                .unwrap()];
            for position in prompt..6 {
                let step = CausalLmInput::new(tensor(pick(&rows, position..position + 1)));
                steps.push(lm.forward_cache(step, &mut cache).unwrap());
            }
            let stepwise = Tensor::cat(steps, 1);
            let vocab = whole.dims()[2];
            for (index, &row) in batch.iter().enumerate() {
                // A padded row's padding positions are whatever a fully masked row computes.
                let first = masks[row].iter().position(|&m| m == 1).unwrap();
                let real = |t: Tensor<B, 3>| t.slice([index..index + 1, first..6, 0..vocab]);
                let diff = crate::common::max_abs_diff(real(whole.clone()), real(stepwise.clone()));
                assert!(diff < 1e-5, "rows {batch:?}, row {row}: off by {diff}");
            }
        }
        // Rows leave the batch (the padded one first): the others go on as before.
        let mut cache = lm.new_cache();
        lm.forward_cache(
            CausalLmInput::new(ids(&[rows[0], rows[1]]).slice([0..2, 0..3]))
                .attention_mask(ids(&[masks[0], masks[1]]).slice([0..2, 0..3])),
            &mut cache,
        )
        .unwrap();
        cache.select_rows(&[0]).unwrap();
        let mut steps = Vec::new();
        for position in 3..6 {
            let step = CausalLmInput::new(ids(&[&rows[0][position..position + 1]]));
            steps.push(lm.forward_cache(step, &mut cache).unwrap());
        }
        let alone = lm.forward(CausalLmInput::new(ids(&[rows[0]]))).unwrap();
        let vocab = alone.dims()[2];
        let diff =
            crate::common::max_abs_diff(alone.slice([0..1, 3..6, 0..vocab]), Tensor::cat(steps, 1));
        assert!(diff < 1e-5, "after select_rows: off by {diff}");
    }
}

#[test]
fn generation_stops_at_a_stop_token_and_sampling_follows_the_seed() {
    let lm = llama();
    let prompts = vec![vec![5, 17, 42], vec![99, 3]];
    let greedy = lm
        .generate(
            &prompts,
            None,
            &GenerationConfig::new(6).with_stop_tokens(Some(vec![])),
            |_| {},
        )
        .unwrap();
    assert!(greedy.tokens.iter().all(|t| t.len() == 6));
    assert_eq!(greedy.stopped, vec![false, false]);
    // Stop row 0 at its third token: it ends there, row 1 goes on.
    let stop = greedy.tokens[0][2];
    let stopped = lm
        .generate(
            &prompts,
            None,
            &GenerationConfig::new(6).with_stop_tokens(Some(vec![stop])),
            |_| {},
        )
        .unwrap();
    let end = greedy.tokens[0].iter().position(|&t| t == stop).unwrap();
    assert_eq!(stopped.tokens[0], greedy.tokens[0][..=end].to_vec());
    assert!(stopped.stopped[0]);
    if !greedy.tokens[1].contains(&stop) {
        assert_eq!(stopped.tokens[1], greedy.tokens[1]);
    }

    let sampled = |seed| {
        let config = GenerationConfig::new(8)
            .with_stop_tokens(Some(vec![]))
            .with_seed(seed)
            .with_sampling(Sampling::Sample {
                temperature: 1.5,
                top_k: Some(50),
                top_p: Some(0.95),
            });
        lm.generate(&prompts, None, &config, |_| {}).unwrap().tokens
    };
    assert_eq!(sampled(7), sampled(7));
    assert_ne!(sampled(7), sampled(8));
}

#[test]
fn mistral_attends_within_its_sliding_window() {
    let (_temp, dir) = copy_fixture("llama_tiny");
    edit_config(&dir, |c| {
        c.insert("model_type".into(), json!("mistral"));
        c.insert("sliding_window".into(), json!(128));
    });
    let wide = CausalLm::<B>::from_pretrained(&dir, &Default::default()).unwrap();
    assert_eq!(wide.config().family, Family::Mistral);
    assert_bit_identical(logits(&wide), logits(&llama()));
    edit_config(&dir, |c| {
        c.insert("sliding_window".into(), json!(2));
    });
    let narrow = CausalLm::<B>::from_pretrained(&dir, &Default::default()).unwrap();
    let (narrow, full) = (logits(&narrow), logits(&llama()));
    let [_, seq, vocab] = full.dims();
    let slice = |t: Tensor<B, 3>, range: std::ops::Range<usize>| t.slice([0..1, range, 0..vocab]);
    // The first two positions see everything either way; later ones lose their oldest keys.
    assert_bit_identical(slice(narrow.clone(), 0..2), slice(full.clone(), 0..2));
    assert!(crate::common::max_abs_diff(slice(narrow, 2..seq), slice(full, 2..seq)) > 1e-4);
}

#[test]
fn the_loss_counts_only_labelled_next_tokens() {
    let device = Default::default();
    // Uniform logits: every counted token costs ln(vocab).
    let logits = Tensor::<B, 3>::zeros([2, 4, 8], &device);
    let labels = ids(&[
        &[1, 2, 3, 4],
        &[IGNORE_INDEX, 5, IGNORE_INDEX, IGNORE_INDEX],
    ]);
    let loss: f32 = causal_lm_loss(logits.clone(), labels).into_scalar();
    assert!((loss - 8f32.ln()).abs() < 1e-6, "{loss}");
    // A confident, right prediction of the only counted label costs nearly nothing.
    let mut values = vec![0.0f32; 2 * 4 * 8];
    values[5] = 30.0; // row 0, position 0 predicts label 5 at position 1.
    let sharp = Tensor::<B, 1>::from_floats(values.as_slice(), &device).reshape([2, 4, 8]);
    let labels = ids(&[&[0, 5, IGNORE_INDEX, IGNORE_INDEX], &[IGNORE_INDEX; 4]]);
    let loss: f32 = causal_lm_loss(sharp, labels).into_scalar();
    assert!(loss < 1e-6, "{loss}");
    let none: f32 =
        causal_lm_loss(logits, ids(&[&[IGNORE_INDEX; 4], &[IGNORE_INDEX; 4]])).into_scalar();
    assert_eq!(none, 0.0);
}

/// With tied embeddings (Qwen2) and an adapter on `embed_tokens`, merging changes the head with
/// the embeddings, as PEFT's tied head shares the merged weight tensor: the merged model gives
/// the logits of the merged-and-unloaded one. Unmerged, the adapter changes the lookups only, and
/// unmerging gives back the unmerged logits.
#[test]
fn a_tied_head_follows_a_merged_embedding_adapter() {
    use burn_lora::LoraLayer;

    let mut lm =
        CausalLm::<B>::from_pretrained(&existing_peft_fixture("qwen2_tiny"), &Default::default())
            .unwrap();
    assert!(lm.lm_head.is_none(), "qwen2_tiny ties its embeddings");
    let embed = &mut lm.model.embed_tokens;
    let (n, d, rank) = (embed.n_embedding(), embed.d_model(), 4);
    let config = burn_lora::LoraConfig::new(rank, 8.0);
    let adapter = burn_lora::LoraAdapter::from_factors(
        "tok",
        &config,
        crate::common::randn([n, rank], 30),
        crate::common::randn::<B, 2>([rank, d], 31).mul_scalar(0.1),
    )
    .unwrap();
    embed.insert_adapter(adapter).unwrap();
    let base_table = embed.weight();

    let unmerged = logits(&lm);
    // Unmerged, the head reads the base table.
    assert_bit_identical(lm.model.embed_tokens.tied_weight(), base_table.clone());

    let unloaded = lm.merge_and_unload().unwrap();
    lm.merge().unwrap();
    let merged = logits(&lm);
    let diff = crate::common::max_abs_diff(merged.clone(), logits(&unloaded));
    assert!(diff < 1e-4, "merged against merged-and-unloaded: {diff}");
    // The head changed with the table: a head left on the base table differs by far more.
    assert!(crate::common::max_abs_diff(merged, unmerged.clone()) > 1e-2);

    lm.unmerge().unwrap();
    assert_bit_identical(lm.model.embed_tokens.tied_weight(), base_table);
    let diff = crate::common::max_abs_diff(logits(&lm), unmerged);
    assert!(diff < 1e-5, "unmerged again: {diff}");
}

/// `last_position_only` gives each row the logits of its own last token: the end of a
/// left-padded or unpadded row, the position before the padding of a right-padded one (once,
/// silently the padding's). A row of padding alone is an error.
#[test]
fn last_position_only_takes_each_rows_last_token() {
    let lm = llama();
    let input_ids = ids(&[&[5, 17, 42, 0, 0], &[5, 17, 42, 99, 3], &[0, 0, 7, 8, 9]]);
    let mask = ids(&[&[1, 1, 1, 0, 0], &[1, 1, 1, 1, 1], &[0, 0, 1, 1, 1]]);
    let full = lm
        .forward(CausalLmInput::new(input_ids.clone()).attention_mask(mask.clone()))
        .unwrap();
    let last = lm
        .forward(
            CausalLmInput::new(input_ids.clone())
                .attention_mask(mask)
                .last_position_only(),
        )
        .unwrap();
    let [_, _, vocab] = full.dims();
    assert_eq!(last.dims(), [3, 1, vocab]);
    for (row, position) in [(0, 2), (1, 4), (2, 4)] {
        let expected = full
            .clone()
            .slice([row..row + 1, position..position + 1, 0..vocab]);
        let found = last.clone().slice([row..row + 1, 0..1, 0..vocab]);
        // The head runs on one position here and on all of them there: the products may sum
        // in another order on some backends. A padding position's logits differ by far more.
        let diff = crate::common::max_abs_diff(found, expected);
        assert!(diff < 1e-4, "row {row}: {diff}");
    }

    let padding_only = lm.forward(
        CausalLmInput::new(input_ids)
            .attention_mask(ids(&[&[1, 1, 1, 0, 0], &[0, 0, 0, 0, 0], &[1, 1, 1, 1, 1]]))
            .last_position_only(),
    );
    match padding_only {
        Err(LoraError::InvalidInput(message)) => assert!(message.contains("row 1"), "{message}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

/// Counts the float parameters that hold values, and those still lazy.
#[derive(Default)]
struct Initialised {
    holding: usize,
    lazy: usize,
}

impl burn::module::ModuleVisitor<B> for Initialised {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
        if param.is_initialized() {
            self.holding += 1;
        } else {
            self.lazy += 1;
        }
    }
}

#[test]
fn a_model_holds_no_random_weights_before_its_checkpoint_loads() {
    use burn::module::Module;

    let dir = existing_peft_fixture("llama_tiny");
    let config = CausalLmConfig::from_hf_json(&dir.join("config.json")).unwrap();
    let mut lm = config.init::<B>(&Default::default()).unwrap();
    let mut before = Initialised::default();
    lm.visit(&mut before);
    assert_eq!(before.holding, 0, "every weight waits for the file");
    assert!(before.lazy > 0);

    lm.load_hf_weights(&dir).unwrap();
    let mut after = Initialised::default();
    lm.visit(&mut after);
    assert_eq!((after.holding, after.lazy), (before.lazy, 0));
}

#[test]
fn a_rows_samples_do_not_depend_on_the_other_rows() {
    let lm = llama();
    let sampled = |prompts: &[Vec<u32>], stop: Vec<u32>| {
        let config = GenerationConfig::new(10)
            .with_stop_tokens(Some(stop))
            .with_seed(11)
            .with_sampling(Sampling::Sample {
                temperature: 2.0,
                top_k: None,
                top_p: None,
            });
        lm.generate(prompts, None, &config, |_| {}).unwrap().tokens
    };
    let alone = sampled(&[vec![5, 17, 42], vec![99, 3]], vec![]);
    // Another neighbour: row 0 draws the same tokens.
    let other = sampled(&[vec![5, 17, 42], vec![7, 7, 7, 7]], vec![]);
    assert_eq!(alone[0], other[0]);
    assert_ne!(alone[1], other[1], "the neighbour's own tokens differ");
    // A neighbour that stops at once: row 0 still draws the same tokens.
    let first = alone[1][0];
    let stopped = sampled(&[vec![5, 17, 42], vec![99, 3]], vec![first]);
    assert_eq!(stopped[1], vec![first]);
    if !alone[0].contains(&first) {
        assert_eq!(stopped[0], alone[0]);
    }
}

#[test]
fn generation_config_json_gives_the_stop_tokens_and_sampling_defaults() {
    let (_temp, dir) = copy_fixture("llama_tiny");
    let path = dir.join("generation_config.json");
    std::fs::write(
        &path,
        r#"{"eos_token_id": [2, 9], "pad_token_id": 0, "do_sample": true, "temperature": 0.7,
            "top_p": 0.9, "max_new_tokens": 40, "repetition_penalty": 1.1}"#,
    )
    .unwrap();
    // An instruct model's extra end-of-sequence ids replace config.json's (2).
    let lm = CausalLm::<B>::from_pretrained(&dir, &Default::default()).unwrap();
    assert_eq!(lm.config().eos_token_ids, vec![2, 9]);
    let config = GenerationConfig::from_hf_json(&path).unwrap();
    assert_eq!(config.max_new_tokens, 40);
    assert_eq!(config.stop_tokens, Some(vec![2, 9]));
    assert_eq!(config.pad_token, Some(0));
    assert_eq!(
        config.sampling,
        Sampling::Sample {
            temperature: 0.7,
            top_k: Some(50),
            top_p: Some(0.9)
        }
    );
    // Greedy when do_sample is absent; one id as an integer.
    std::fs::write(&path, r#"{"eos_token_id": 2}"#).unwrap();
    let config = GenerationConfig::from_hf_json(&path).unwrap();
    assert_eq!(
        (config.sampling, config.stop_tokens, config.max_new_tokens),
        (Sampling::Greedy, Some(vec![2]), 20)
    );
    // Bad files are errors naming them, at load and when read.
    std::fs::write(&path, r#"{"eos_token_id": "two"}"#).unwrap();
    assert!(matches!(
        CausalLm::<B>::from_pretrained(&dir, &Default::default()).unwrap_err(),
        LoraError::InvalidFile { format, .. } if format == "generation_config.json"
    ));
    std::fs::write(&path, r#"{"do_sample": true, "temperature": 0}"#).unwrap();
    assert!(matches!(
        GenerationConfig::from_hf_json(&path).unwrap_err(),
        LoraError::InvalidInput(_)
    ));
}

#[test]
fn a_config_larger_than_its_checkpoint_is_refused_before_a_model_is_built() {
    let (_temp, dir) = copy_fixture("llama_tiny");
    // Ten million layers would take gigabytes even as lazy layers: the checkpoint has two.
    edit_config(&dir, |c| {
        c.insert("num_hidden_layers".into(), json!(10_000_000));
    });
    let err = CausalLm::<B>::from_pretrained(&dir, &Default::default()).unwrap_err();
    assert!(
        matches!(&err, LoraError::MissingKey { key, .. } if key == "model.layers.2.self_attn.q_proj.weight"),
        "{err:?}"
    );
    // A width the checkpoint does not have.
    let (_temp, dir) = copy_fixture("llama_tiny");
    edit_config(&dir, |c| {
        c.insert("intermediate_size".into(), json!(1 << 20));
    });
    assert!(matches!(
        CausalLm::<B>::from_pretrained(&dir, &Default::default()).unwrap_err(),
        LoraError::ShapeMismatch { .. }
    ));
}
