//! `burn_lora::nn`: Burn's transformer blocks with `LoraLinear` layers, checked against Burn's
//! own blocks (configs, module paths, checkpoints and records, outputs, masks, caches) and with
//! adapters.
//!
//! Equality with Burn is bit for bit: without an adapter `LoraLinear::forward` is the same
//! `linear` op on the same tensors as Burn's `Linear::forward`, and every other op is the same,
//! in the same order, on the same backend. Merged against unmerged adapters differ by f32
//! reassociation only (see linear_forward.rs), carried through the layer norms.

use crate::common::{
    assert_bit_identical, assert_same_up_to_reduction_order, insert_trained_layer, matmul_tol,
    max_abs_diff, randn, B,
};
use burn::config::Config;
use burn::module::Module;
use burn::nn::attention as burn_attention;
use burn::nn::transformer as burn_transformer;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::{Bool, Tensor, TensorData};
use burn_lora::nn::attention::{
    generate_autoregressive_mask, MhaCache, MhaInput, MultiHeadAttention, MultiHeadAttentionConfig,
};
use burn_lora::nn::transformer::{
    PositionWiseFeedForward, PositionWiseFeedForwardConfig, TransformerEncoder,
    TransformerEncoderConfig, TransformerEncoderInput,
};
use burn_lora::{LoraConfig, LoraLayer};
use burn_store::{ModuleSnapshot, SafetensorsStore};

const D_MODEL: usize = 16;
const SEQ: usize = 6;
const BATCH: usize = 3;

/// Burn's encoder config (2 layers, 4 heads, Burn's default dropout, inactive without autodiff).
fn burn_config(
    norm_first: bool,
    quiet_softmax: bool,
) -> burn_transformer::TransformerEncoderConfig {
    burn_transformer::TransformerEncoderConfig::new(D_MODEL, 32, 4, 2)
        .with_norm_first(norm_first)
        .with_quiet_softmax(quiet_softmax)
}

/// The same config for burn-lora, read from Burn's JSON.
fn lora_config<C: Config + std::fmt::Display, L: Config>(burn: &C) -> L {
    L::load_binary(burn.to_string().as_bytes()).expect("Burn's config JSON")
}

/// Sorted module paths of every tensor of `module`.
fn paths<M: ModuleSnapshot<B>>(module: &M) -> Vec<String> {
    let mut paths: Vec<_> = module
        .collect(None, None, false)
        .iter()
        .map(|s| s.full_path())
        .collect();
    paths.sort();
    paths
}

/// Saves `source` with burn-store and loads the file into `target`, which must take every
/// tensor and lack none.
fn load_saved<S: ModuleSnapshot<B>, T: ModuleSnapshot<B>>(source: &S, mut target: T) -> T {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    source
        .save_into(&mut SafetensorsStore::from_file(&path))
        .unwrap();
    let result = target
        .load_from(&mut SafetensorsStore::from_file(&path))
        .unwrap();
    assert!(
        result.errors.is_empty() && result.missing.is_empty() && result.unused.is_empty(),
        "{result:?}"
    );
    target
}

/// Padding at the end of the second and third sequences (`true` = padding).
fn mask_pad() -> Tensor<B, 2, Bool> {
    let pad = |n: usize| (0..SEQ).map(move |i| i >= SEQ - n);
    let values: Vec<bool> = pad(0).chain(pad(2)).chain(pad(3)).collect();
    Tensor::from_data(TensorData::new(values, [BATCH, SEQ]), &Default::default())
}

/// Burn's encoder and burn-lora's holding the same (Burn's) parameters.
fn encoder_pair(
    norm_first: bool,
    quiet_softmax: bool,
) -> (
    burn_transformer::TransformerEncoder<B>,
    TransformerEncoder<B>,
) {
    let device = Default::default();
    let config = burn_config(norm_first, quiet_softmax);
    let burn = config.init::<B>(&device);
    let ours = lora_config::<_, TransformerEncoderConfig>(&config)
        .init::<B>(&device)
        .unwrap();
    let ours = load_saved(&burn, ours);
    (burn, ours)
}

#[test]
fn configs_are_burns_with_the_same_defaults_and_json() {
    let json = |c: &dyn std::fmt::Display| c.to_string();
    assert_eq!(
        json(&MultiHeadAttentionConfig::new(8, 2)),
        json(&burn_attention::MultiHeadAttentionConfig::new(8, 2))
    );
    assert_eq!(
        json(&PositionWiseFeedForwardConfig::new(8, 32)),
        json(&burn_transformer::PositionWiseFeedForwardConfig::new(8, 32))
    );
    assert_eq!(
        json(&TransformerEncoderConfig::new(8, 32, 2, 3)),
        json(&burn_transformer::TransformerEncoderConfig::new(
            8, 32, 2, 3
        ))
    );
}

#[test]
fn modules_display_as_burns() {
    let device = Default::default();
    let config = burn_config(false, false);
    let ours = lora_config::<_, TransformerEncoderConfig>(&config)
        .init::<B>(&device)
        .unwrap();
    assert_eq!(ours.to_string(), config.init::<B>(&device).to_string());
    let burn_mha = burn_attention::MultiHeadAttentionConfig::new(D_MODEL, 4);
    let mha = lora_config::<_, MultiHeadAttentionConfig>(&burn_mha)
        .init::<B>(&device)
        .unwrap();
    assert_eq!(mha.to_string(), burn_mha.init::<B>(&device).to_string());
    let burn_pwff = burn_transformer::PositionWiseFeedForwardConfig::new(D_MODEL, 32);
    let pwff = lora_config::<_, PositionWiseFeedForwardConfig>(&burn_pwff)
        .init::<B>(&device)
        .unwrap();
    assert_eq!(pwff.to_string(), burn_pwff.init::<B>(&device).to_string());
}

#[test]
fn encoder_has_burns_module_paths_and_adapters_only_add_theirs() {
    let (burn, mut ours) = encoder_pair(false, false);
    let burn_paths = paths(&burn);
    assert_eq!(paths(&ours), burn_paths);
    assert!(burn_paths.contains(&"layers.1.mha.query.weight".to_string()));

    ours.layers[1]
        .mha
        .value
        .add_adapter("default", &LoraConfig::new(2, 4.0))
        .unwrap();
    let extra: Vec<_> = paths(&ours)
        .into_iter()
        .filter(|p| !burn_paths.contains(p))
        .collect();
    assert_eq!(
        extra,
        vec![
            "layers.1.mha.value.adapters.0.lora_a",
            "layers.1.mha.value.adapters.0.lora_b",
        ]
    );
}

#[test]
fn encoder_loaded_from_burns_checkpoint_computes_burns_output() {
    let x = randn::<B, 3>([BATCH, SEQ, D_MODEL], 1);
    for norm_first in [false, true] {
        for quiet_softmax in [false, true] {
            let (burn, ours) = encoder_pair(norm_first, quiet_softmax);
            let expected = burn.forward(
                burn_transformer::TransformerEncoderInput::new(x.clone()).mask_pad(mask_pad()),
            );
            let output = ours.forward(TransformerEncoderInput::new(x.clone()).mask_pad(mask_pad()));
            // Bit for bit on the CPU; on a GPU the two models' products run different kernels.
            assert_same_up_to_reduction_order(output, expected);
        }
    }
}

#[test]
fn encoder_loads_a_record_of_burns_through_burns_recorder() {
    let device = Default::default();
    let config = burn_config(true, false);
    let burn = config.init::<B>(&device);
    let x = randn::<B, 3>([BATCH, SEQ, D_MODEL], 12);
    let expected = burn.forward(burn_transformer::TransformerEncoderInput::new(x.clone()));
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(burn.into_record(), ()).unwrap();
    let ours = lora_config::<_, TransformerEncoderConfig>(&config)
        .init::<B>(&device)
        .unwrap()
        .load_record(recorder.load(bytes, &device).unwrap());
    assert_same_up_to_reduction_order(ours.forward(TransformerEncoderInput::new(x)), expected);
}

#[test]
fn attention_and_feed_forward_load_burns_checkpoints_and_compute_burns_outputs() {
    let device = Default::default();
    let config = burn_attention::MultiHeadAttentionConfig::new(D_MODEL, 4).with_quiet_softmax(true);
    let burn = config.init::<B>(&device);
    let ours: MultiHeadAttention<B> = load_saved(
        &burn,
        lora_config::<_, MultiHeadAttentionConfig>(&config)
            .init(&device)
            .unwrap(),
    );
    assert_eq!(paths(&ours), paths(&burn));
    // Cross-attention of 4 queries over the 6 padded keys, with an attention mask as well.
    let (q, kv) = (
        randn::<B, 3>([BATCH, 4, D_MODEL], 2),
        randn::<B, 3>([BATCH, SEQ, D_MODEL], 3),
    );
    let mask_attn = randn::<B, 3>([BATCH, 4, SEQ], 4).greater_elem(1.0);
    let expected = burn.forward(
        burn_attention::MhaInput::new(q.clone(), kv.clone(), kv.clone())
            .mask_pad(mask_pad())
            .mask_attn(mask_attn.clone()),
    );
    let output = ours.forward(
        MhaInput::new(q, kv.clone(), kv)
            .mask_pad(mask_pad())
            .mask_attn(mask_attn),
    );
    assert_bit_identical(output.weights, expected.weights);
    assert_bit_identical(output.context, expected.context);

    let config = burn_transformer::PositionWiseFeedForwardConfig::new(D_MODEL, 32);
    let burn = config.init::<B>(&device);
    let ours: PositionWiseFeedForward<B> = load_saved(
        &burn,
        lora_config::<_, PositionWiseFeedForwardConfig>(&config)
            .init(&device)
            .unwrap(),
    );
    assert_eq!(paths(&ours), paths(&burn));
    let x = randn::<B, 3>([BATCH, SEQ, D_MODEL], 5);
    assert_bit_identical(ours.forward(x.clone()), burn.forward(x));
}

#[test]
fn padded_positions_do_not_reach_the_others() {
    let (_, ours) = encoder_pair(true, false);
    let x = randn::<B, 3>([BATCH, SEQ, D_MODEL], 6);
    // Different values at the padded positions (the last 3 of every sequence).
    let tail = randn::<B, 3>([BATCH, 3, D_MODEL], 7);
    let other = x
        .clone()
        .slice_assign([0..BATCH, SEQ - 3..SEQ, 0..D_MODEL], tail);
    let pad = Tensor::<B, 2, Bool>::from_data(
        TensorData::new(
            (0..BATCH * SEQ)
                .map(|i| i % SEQ >= SEQ - 3)
                .collect::<Vec<_>>(),
            [BATCH, SEQ],
        ),
        &Default::default(),
    );
    let kept = |x: Tensor<B, 3>| {
        ours.forward(TransformerEncoderInput::new(x).mask_pad(pad.clone()))
            .slice([0..BATCH, 0..SEQ - 3, 0..D_MODEL])
    };
    assert!(max_abs_diff(kept(x.clone()), kept(other.clone())) < 1e-6);
    // Without the mask they do.
    let unmasked = |x: Tensor<B, 3>| {
        ours.forward(TransformerEncoderInput::new(x))
            .slice([0..BATCH, 0..SEQ - 3, 0..D_MODEL])
    };
    assert!(max_abs_diff(unmasked(x), unmasked(other)) > 1e-3);
}

#[test]
fn attention_mask_is_burns_and_causal_steps_match_the_cache() {
    let (burn, ours) = encoder_pair(false, true);
    let device = Default::default();
    let x = randn::<B, 3>([BATCH, SEQ, D_MODEL], 8);
    let causal = generate_autoregressive_mask::<B>(BATCH, SEQ, &device);
    let full = ours.forward(TransformerEncoderInput::new(x.clone()).mask_attn(causal.clone()));
    let expected =
        burn.forward(burn_transformer::TransformerEncoderInput::new(x.clone()).mask_attn(causal));
    assert_bit_identical(full.clone(), expected);

    // Decoding one position at a time through the cache gives the causal output, as in Burn.
    let mut cache = ours.new_autoregressive_cache();
    let mut burn_cache = burn.new_autoregressive_cache();
    for i in 1..=SEQ {
        let prefix = x.clone().slice([0..BATCH, 0..i, 0..D_MODEL]);
        let step = ours.forward_autoregressive_inference(
            TransformerEncoderInput::new(prefix.clone()),
            &mut cache,
        );
        let burn_step = burn.forward_autoregressive_inference(
            burn_transformer::TransformerEncoderInput::new(prefix),
            &mut burn_cache,
        );
        assert_bit_identical(step.clone(), burn_step);
        let last = step.slice([0..BATCH, i - 1..i, 0..D_MODEL]);
        let diff = max_abs_diff(last, full.clone().slice([0..BATCH, i - 1..i, 0..D_MODEL]));
        assert!(diff < 1e-4, "position {i}: {diff}");
    }
}

#[test]
fn cross_attention_cache_keeps_the_memory() {
    let device = Default::default();
    let mha = MultiHeadAttentionConfig::new(D_MODEL, 4)
        .init::<B>(&device)
        .unwrap();
    let memory = randn::<B, 3>([BATCH, SEQ, D_MODEL], 9);
    let queries = randn::<B, 3>([BATCH, 3, D_MODEL], 10);
    let full = mha.forward(MhaInput::new(
        queries.clone(),
        memory.clone(),
        memory.clone(),
    ));
    let mut cache = MhaCache::autoregressive_cross_attention();
    for i in 1..=3 {
        let prefix = queries.clone().slice([0..BATCH, 0..i, 0..D_MODEL]);
        // After the first step the memory comes from the cache, whatever is passed.
        let kv = if i == 1 {
            memory.clone()
        } else {
            memory.clone().mul_scalar(0.0)
        };
        let step = mha.forward_cache(MhaInput::new(prefix, kv.clone(), kv), &mut cache);
        let diff = max_abs_diff(
            step.context.slice([0..BATCH, i - 1..i, 0..D_MODEL]),
            full.context.clone().slice([0..BATCH, i - 1..i, 0..D_MODEL]),
        );
        assert!(diff < 1e-5, "step {i}: {diff}");
    }
}

#[test]
fn adapters_on_query_and_value_change_the_output_toggle_off_exactly_and_merge() {
    let (_, mut ours) = encoder_pair(false, false);
    let x = randn::<B, 3>([BATCH, SEQ, D_MODEL], 11);
    let forward = |encoder: &TransformerEncoder<B>| {
        encoder.forward(TransformerEncoderInput::new(x.clone()).mask_pad(mask_pad()))
    };
    let base = forward(&ours);

    let config = LoraConfig::new(4, 8.0);
    for (i, layer) in ours.layers.iter_mut().enumerate() {
        for (j, linear) in [&mut layer.mha.query, &mut layer.mha.value]
            .into_iter()
            .enumerate()
        {
            linear.add_adapter("default", &config).unwrap();
            insert_trained_layer(
                linear,
                "trained",
                &config,
                100 + 10 * i as u64 + 2 * j as u64,
            );
        }
    }
    let adapted = forward(&ours);
    assert!(max_abs_diff(adapted.clone(), base.clone()) > 1e-3);

    let set_enabled = |encoder: &mut TransformerEncoder<B>, enabled: bool| {
        for layer in &mut encoder.layers {
            layer.mha.query.set_enabled(enabled);
            layer.mha.value.set_enabled(enabled);
        }
    };
    set_enabled(&mut ours, false);
    assert_bit_identical(forward(&ours), base);
    set_enabled(&mut ours, true);

    for layer in &mut ours.layers {
        layer.mha.query.merge().unwrap();
        layer.mha.value.merge().unwrap();
    }
    let diff = max_abs_diff(forward(&ours), adapted);
    assert!(diff < matmul_tol(1e-4), "{diff}");
}
