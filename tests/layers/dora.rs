//! DoRA (`LoraConfig::use_dora`) on the three layer kinds: the forward against a dense
//! reference computed on the host, a fresh adapter leaving the output unchanged, merging,
//! training of the magnitude, the cache of norms, mixed batches, the errors, and PEFT's own DoRA
//! files for an embedding (`tests/fixtures/peft/embedding_dora`; the convolution's are in
//! `peft_cnn.rs`, a Llama's in `peft_causal_lm.rs`).
//!
//! Tolerance: the reference computes `k ⊙ (x (W + s·A B)) + b` in f64 on the host, the layer
//! `x W + b + (k − 1) ⊙ x W + k ⊙ s·x A B` in f32 in another order. With inputs, weights and
//! scales of order one and ≤ 72-term sums, the outputs stay below ~30 and the rounding apart is
//! a few ulps of those (≲ 2e-5); we allow 1e-4 (`crate::common::matmul_tol` widens it on CUDA). A wrong
//! norm axis, a missing `k − 1` or a norm that is not detached moves outputs by 0.1 or more.

use crate::common::safetensors_io::{assert_same_adapter_tensors, raw, read_raw};
use crate::common::{
    assert_bit_identical, assert_same_up_to_reduction_order, max_abs_diff, randn, values, AB, B,
};
use burn::module::{Module, Param};
use burn::nn::loss::MseLoss;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use burn_lora::{
    load_adapter, save_adapter, AdapterBatch, LoraAdapter, LoraConfig, LoraConv2d,
    LoraConv2dConfig, LoraEmbedding, LoraEmbeddingConfig, LoraError, LoraLayer, LoraLinear,
    LoraLinearConfig, LoraModel, PathMap,
};

const RANK: usize = 4;
const ALPHA: f64 = 8.0;

fn tol() -> f32 {
    crate::common::matmul_tol(1e-4)
}

fn dora() -> LoraConfig {
    LoraConfig::new(RANK, ALPHA).with_use_dora(true)
}

/// A DoRA adapter as training would leave it: random factors and a magnitude that is not the
/// initial one (each `‖W + s·A B‖` column norm times a factor in 0.5..1.5).
fn trained_dora<Bk: Backend>(layer: &dyn LoraLayer<Bk>, name: &str, seed: u64) -> LoraAdapter<Bk> {
    let [d_input, d_output] = layer.adapter_dims();
    let a = randn::<Bk, 2>([d_input, RANK], seed);
    let b = randn::<Bk, 2>([RANK, d_output], seed + 1).mul_scalar(0.3);
    let weight = host_matrix(layer.base_matrix());
    let update = host_delta(&a, &b, dora().scale());
    let norms = column_norms(&sum(&weight, &update), d_output);
    let magnitude: Vec<f32> = norms
        .iter()
        .enumerate()
        .map(|(j, n)| (n * (0.5 + (j as f64 * 0.37).sin().abs())) as f32)
        .collect();
    let magnitude = Tensor::<Bk, 1>::from_floats(magnitude.as_slice(), &layer.device());
    LoraAdapter::from_dora_factors(name, &dora(), a, b, magnitude).unwrap()
}

fn host_matrix<Bk: Backend>(matrix: Tensor<Bk, 2>) -> Vec<f64> {
    values(matrix).into_iter().map(f64::from).collect()
}

/// `s · A B` on the host, row-major `[d_input, d_output]`.
fn host_delta<Bk: Backend>(a: &Tensor<Bk, 2>, b: &Tensor<Bk, 2>, scale: f64) -> Vec<f64> {
    let [d_input, rank] = a.dims();
    let d_output = b.dims()[1];
    let (a, b) = (host_matrix(a.clone()), host_matrix(b.clone()));
    let mut delta = vec![0.0; d_input * d_output];
    for i in 0..d_input {
        for j in 0..d_output {
            let dot: f64 = (0..rank)
                .map(|k| a[i * rank + k] * b[k * d_output + j])
                .sum();
            delta[i * d_output + j] = scale * dot;
        }
    }
    delta
}

fn sum(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// `‖matrix[:, j]‖` of a row-major `[_, d_output]` matrix.
fn column_norms(matrix: &[f64], d_output: usize) -> Vec<f64> {
    (0..d_output)
        .map(|j| {
            matrix
                .iter()
                .skip(j)
                .step_by(d_output)
                .map(|v| v * v)
                .sum::<f64>()
                .sqrt()
        })
        .collect()
}

/// The layer's DoRA weight `k ⊙ (W + s·A B)` (matrix view) for its only adapter, on the host.
fn dora_weight<Bk: Backend>(layer: &dyn LoraLayer<Bk>) -> Vec<f64> {
    let adapter = &layer.adapters()[0];
    let d_output = layer.adapter_dims()[1];
    let weight = sum(
        &host_matrix(layer.base_matrix()),
        &host_delta(&adapter.lora_a(), &adapter.lora_b(), adapter.scale()),
    );
    let norms = column_norms(&weight, d_output);
    let magnitude = host_matrix(adapter.magnitude().unwrap().unsqueeze::<2>());
    weight
        .iter()
        .enumerate()
        .map(|(index, w)| w * magnitude[index % d_output] / norms[index % d_output])
        .collect()
}

fn linear<Bk: Backend>() -> LoraLinear<Bk> {
    let layer = LoraLinearConfig::new(24, 16)
        .init::<Bk>(&Default::default())
        .unwrap();
    let _ = (layer.weight(), layer.bias());
    layer
}

fn dora_linear<Bk: Backend>(seed: u64) -> LoraLinear<Bk> {
    let mut layer = linear::<Bk>();
    let adapter = trained_dora(&layer, "dora", seed);
    layer.insert_adapter(adapter).unwrap();
    layer
}

#[test]
fn fresh_dora_adapter_leaves_the_output_unchanged_with_m_the_column_norms_of_w() {
    let mut layer = linear::<B>();
    let x = randn::<B, 2>([5, 24], 1);
    let before = layer.forward(x.clone());
    layer.add_adapter("fresh", &dora()).unwrap();
    assert_same_up_to_reduction_order(layer.forward(x), before);
    let adapter = layer.adapter("fresh").unwrap();
    assert!(adapter.is_dora());
    let expected = column_norms(&host_matrix(layer.weight()), 16);
    let got = host_matrix(adapter.magnitude().unwrap().unsqueeze::<2>());
    for (g, e) in got.iter().zip(&expected) {
        assert!((g - e).abs() < 1e-5, "m = {g}, ‖W‖ = {e}");
    }
    // A DoRA adapter has d_output more parameters than a plain one.
    assert_eq!(adapter.num_params(), 24 * RANK + RANK * 16 + 16);
}

#[test]
fn linear_dora_forward_equals_the_dense_reference() {
    let layer = dora_linear::<B>(3);
    let x = randn::<B, 2>([7, 24], 2);
    let weight = dora_weight(&layer);
    let (inputs, bias) = (
        host_matrix(x.clone()),
        host_matrix(layer.bias().unwrap().unsqueeze()),
    );
    let expected: Vec<f32> = (0..7 * 16)
        .map(|index| {
            let (row, j) = (index / 16, index % 16);
            let dot: f64 = (0..24)
                .map(|i| inputs[row * 24 + i] * weight[i * 16 + j])
                .sum();
            (dot + bias[j]) as f32
        })
        .collect();
    let expected = Tensor::<B, 1>::from_floats(expected.as_slice(), &Default::default());
    let out = layer.forward(x.clone());
    let diff = max_abs_diff(out.clone(), expected.reshape([7, 16]));
    assert!(diff < tol(), "max |dora - reference| = {diff}");
    assert!(
        max_abs_diff(out, layer.forward_base(x)) > 0.1,
        "the adapter does something"
    );
}

#[test]
fn merging_dora_gives_the_unmerged_output_and_unmerging_restores_it_exactly() {
    let mut layer = dora_linear::<B>(5);
    let x = randn::<B, 3>([2, 3, 24], 4);
    let unmerged = layer.forward(x.clone());
    layer.merge().unwrap();
    let diff = max_abs_diff(layer.forward(x.clone()), unmerged.clone());
    assert!(diff < tol(), "max |merged - unmerged| = {diff}");
    layer.unmerge().unwrap();
    assert_bit_identical(layer.forward(x.clone()), unmerged);
    layer.set_enabled(false);
    assert_bit_identical(layer.forward(x.clone()), layer.forward_base(x));
}

#[test]
fn a_dora_adapter_runs_alone_and_cannot_be_combined() {
    let mut layer = dora_linear::<B>(7);
    layer
        .add_adapter("plain", &LoraConfig::new(2, 4.0))
        .unwrap();
    let err = layer.set_active_adapters(&["dora", "plain"]).unwrap_err();
    assert!(
        matches!(err, LoraError::Unsupported(ref what) if what.contains("dora")),
        "{err:?}"
    );
    // Nothing changed: the adapter added last is still the one active.
    assert_eq!(layer.active_adapters(), vec!["plain"]);
    let err = layer
        .combined_adapter("both", &[("dora", 1.0), ("plain", 1.0)])
        .unwrap_err();
    assert!(matches!(err, LoraError::Unsupported(_)), "{err:?}");
}

#[test]
fn dora_factors_are_checked() {
    let device = Default::default();
    let (a, b) = (randn::<B, 2>([24, RANK], 1), randn::<B, 2>([RANK, 16], 2));
    let short = Tensor::<B, 1>::ones([15], &device);
    let err =
        LoraAdapter::from_dora_factors("d", &dora(), a.clone(), b.clone(), short).unwrap_err();
    assert!(
        matches!(err, LoraError::ShapeMismatch { ref expected, ref found, .. }
            if *expected == vec![16] && *found == vec![15]),
        "{err:?}"
    );
    let nan = Tensor::<B, 1>::ones([16], &device).mul_scalar(f32::NAN);
    assert!(LoraAdapter::from_dora_factors("d", &dora(), a.clone(), b.clone(), nan).is_err());
    let ones = Tensor::<B, 1>::ones([16], &device);
    let plain = LoraConfig::new(RANK, ALPHA);
    let err = LoraAdapter::from_dora_factors("d", &plain, a.clone(), b.clone(), ones).unwrap_err();
    assert!(
        matches!(err, LoraError::Unsupported(ref w) if w.contains("use_dora")),
        "{err:?}"
    );
    let err = LoraAdapter::from_factors("d", &dora(), a, b).unwrap_err();
    assert!(matches!(err, LoraError::Unsupported(_)), "{err:?}");
}

#[test]
fn a_zero_column_of_the_weight_gives_no_nan() {
    let device = Default::default();
    let mask = Tensor::<B, 1>::from_floats(
        (0..16)
            .map(|j| if j == 3 { 0.0 } else { 1.0 })
            .collect::<Vec<f32>>()
            .as_slice(),
        &device,
    );
    let mut plain = LinearConfig::new(24, 16).init::<B>(&device);
    plain.weight = Param::from_tensor(plain.weight.val() * mask.unsqueeze::<2>());
    let mut layer = LoraLinear::from_linear(plain);
    layer.add_adapter("fresh", &dora()).unwrap();
    let x = randn::<B, 2>([4, 24], 6);
    let out = values(layer.forward(x.clone()));
    assert!(
        out.iter().all(|v| v.is_finite()),
        "DoRA output has NaN or inf"
    );
    assert_same_up_to_reduction_order(layer.forward(x.clone()), layer.forward_base(x));
}

#[test]
fn training_updates_the_magnitude_and_the_factors_and_never_the_base() {
    let mut layer = linear::<AB>();
    layer.add_adapter("dora", &dora()).unwrap();
    layer.freeze_base();
    let base = values(layer.weight());
    let magnitude_id = layer.adapters()[0].magnitude_param().unwrap().id;
    let x = randn::<AB, 2>([16, 24], 8);
    let target = randn::<AB, 2>([16, 16], 9);
    let mut optim = AdamConfig::new().init::<AB, LoraLinear<AB>>();
    let initial_magnitude = values(layer.adapters()[0].magnitude().unwrap());
    let mut losses = Vec::new();
    for _ in 0..20 {
        let loss = MseLoss::new().forward(
            layer.forward(x.clone()),
            target.clone(),
            burn::nn::loss::Reduction::Mean,
        );
        losses.push(loss.clone().into_scalar());
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        assert!(
            grads.get::<crate::common::B, 1>(magnitude_id).is_some(),
            "m gets a gradient"
        );
        assert!(grads
            .get::<crate::common::B, 2>(layer.weight_param().id)
            .is_none());
        assert_eq!(grads.len(), 3, "A, B and m only");
        layer = optim.step(1e-2, layer, grads);
        assert!(
            layer.dora_norms().is_empty(),
            "no norms are kept while training"
        );
    }
    assert!(losses.last() < losses.first(), "losses {losses:?}");
    assert_eq!(values(layer.weight()), base);
    assert_ne!(
        values(layer.adapters()[0].magnitude().unwrap()),
        initial_magnitude
    );
}

#[test]
fn inference_keeps_the_norms_until_the_adapters_or_the_weights_change() {
    let mut layer = dora_linear::<B>(11);
    let x = randn::<B, 2>([3, 24], 10);
    assert!(layer.dora_norms().is_empty());
    let first = layer.forward(x.clone());
    assert_eq!(layer.dora_norms().len(), 1);
    assert_bit_identical(layer.forward(x.clone()), first.clone());

    // A new adapter (and so any change to one) drops them.
    layer.add_adapter("other", &dora()).unwrap();
    assert!(layer.dora_norms().is_empty());
    layer.set_active_adapters(&["dora"]).unwrap();
    assert_bit_identical(layer.forward(x.clone()), first.clone());
    assert_eq!(layer.dora_norms().len(), 1);

    // Loading a record (other weights) drops them, and the output follows the new weights.
    let fresh = linear::<B>();
    let mut other = fresh.clone();
    other
        .insert_adapter(trained_dora(&fresh, "dora", 21))
        .unwrap();
    let reloaded = layer.clone().load_record(other.clone().into_record());
    assert!(reloaded.dora_norms().is_empty());
    assert_bit_identical(reloaded.forward(x.clone()), other.forward(x.clone()));
    assert!(max_abs_diff(reloaded.forward(x.clone()), first.clone()) > 1e-3);

    // A clone or a mapped module (here `no_grad`) starts without them.
    assert!(layer.clone().dora_norms().is_empty());
    let _ = layer.forward(x.clone());
    assert!(layer.no_grad().dora_norms().is_empty());
}

#[test]
fn a_mixed_batch_with_a_dora_adapter_gives_each_row_its_own_adapter() {
    let mut layer = dora_linear::<B>(13);
    layer
        .add_adapter("plain", &LoraConfig::new(2, 4.0))
        .unwrap();
    let x = randn::<B, 3>([3, 2, 24], 12);
    let batch = AdapterBatch::new(&["dora", "plain", "__base__"]).unwrap();
    let mixed = layer.forward_adapters(x.clone(), &batch).unwrap();
    for (row, name) in ["dora", "plain"].into_iter().enumerate() {
        layer.set_active_adapters(&[name]).unwrap();
        let alone = layer.forward(x.clone()).narrow(0, row, 1);
        let diff = max_abs_diff(mixed.clone().narrow(0, row, 1), alone);
        assert!(diff < tol(), "row {row} ({name}): {diff}");
    }
    let base = layer.forward_base(x).narrow(0, 2, 1);
    assert_bit_identical(mixed.narrow(0, 2, 1), base);
}

fn conv<Bk: Backend>() -> LoraConv2d<Bk> {
    let layer = LoraConv2dConfig::new([3, 8], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init::<Bk>(&Default::default())
        .unwrap();
    let _ = (layer.weight(), layer.bias());
    layer
}

fn embedding<Bk: Backend>() -> LoraEmbedding<Bk> {
    let layer = LoraEmbeddingConfig::new(30, 12)
        .init::<Bk>(&Default::default())
        .unwrap();
    let _ = layer.weight();
    layer
}

fn ids() -> Tensor<B, 2, Int> {
    Tensor::from_ints([[0, 5, 29, 7], [3, 3, 12, 1]], &Default::default())
}

#[test]
fn conv_dora_fresh_is_the_base_and_trained_matches_its_merge() {
    let x = randn::<B, 4>([2, 3, 6, 6], 14);
    let mut layer = conv::<B>();
    let base = layer.forward(x.clone());
    layer.add_adapter("fresh", &dora()).unwrap();
    assert_bit_identical(layer.forward(x.clone()), base.clone());

    let mut layer = conv::<B>();
    let adapter = trained_dora(&layer, "dora", 15);
    layer.insert_adapter(adapter).unwrap();
    let unmerged = layer.forward(x.clone());
    assert!(max_abs_diff(unmerged.clone(), base) > 0.1);
    layer.merge().unwrap();
    let diff = max_abs_diff(layer.forward(x), unmerged);
    assert!(diff < tol(), "max |merged - unmerged| = {diff}");
}

#[test]
fn embedding_dora_fresh_is_the_base_and_trained_matches_its_merge() {
    let mut layer = embedding::<B>();
    let base = layer.forward(ids());
    layer.add_adapter("fresh", &dora()).unwrap();
    assert_bit_identical(layer.forward(ids()), base.clone());

    let mut layer = embedding::<B>();
    let adapter = trained_dora(&layer, "dora", 16);
    layer.insert_adapter(adapter).unwrap();
    let unmerged = layer.forward(ids());
    assert!(max_abs_diff(unmerged.clone(), base) > 0.1);
    layer.merge().unwrap();
    let diff = max_abs_diff(layer.forward(ids()), unmerged);
    assert!(diff < tol(), "max |merged - unmerged| = {diff}");
}

/// PyTorch's `EmbeddingHead` of `tests/fixtures/peft/embedding_dora`: `emb` Embedding(30, 12),
/// then `head` Linear(12, 5).
#[derive(Module, Debug, LoraModel)]
struct EmbeddingHead<B: Backend> {
    emb: LoraEmbedding<B>,
    head: LoraLinear<B>,
}

/// PEFT's DoRA on an embedding (the norm over the vocabulary, no dropout) and on a linear head:
/// burn-lora reproduces PyTorch's outputs off, on and merged within 1e-5, and saves PEFT's file
/// back. The outputs are of order one, sums of 12 terms; PyTorch saw |merged − unmerged| ≈ 2e-7.
#[test]
fn peft_dora_embedding_reproduces_pytorch_and_saves_peft_file() {
    let dir = crate::common::existing_peft_fixture("embedding_dora");
    let device = Default::default();
    let mut model = EmbeddingHead::<B> {
        emb: embedding(),
        head: LoraLinearConfig::new(12, 5).init(&device).unwrap(),
    };
    crate::common::load_pytorch_base::<B, _>(
        &mut model,
        &dir.join("base_model.safetensors"),
        &PathMap::identity(),
    )
    .unwrap();
    load_adapter(
        &mut model,
        "peft",
        &dir.join("adapter"),
        &PathMap::identity(),
    )
    .unwrap();
    let io = read_raw(&dir.join("io.safetensors"));
    let forward = |model: &EmbeddingHead<B>| {
        let ids = raw(&io, "x").to_int_tensor::<2>();
        model.head.forward(model.emb.forward(ids))
    };
    let check = |what: &str, ours: Tensor<B, 3>, key: &str| {
        let diff = max_abs_diff(ours, raw(&io, key).to_tensor::<3>());
        println!("embedding_dora {what}: max |burn - pytorch| = {diff:e}");
        assert!(diff <= 1e-5, "{what}: max |burn - pytorch| = {diff:e}");
    };
    assert!(model
        .lora_layers()
        .iter()
        .all(|l| l.adapter("peft").unwrap().is_dora()));
    model.set_enabled(false);
    check("base", forward(&model), "y_base");
    model.set_enabled(true);
    check("dora", forward(&model), "y_lora");
    assert!(max_abs_diff(forward(&model), raw(&io, "y_base").to_tensor::<3>()) > 0.1);
    check(
        "merge_and_unload",
        forward(&model.merge_and_unload().unwrap()),
        "y_merged",
    );

    let out = tempfile::tempdir().unwrap();
    save_adapter(&model, "peft", out.path(), &PathMap::identity()).unwrap();
    assert_same_adapter_tensors(&dir.join("adapter"), out.path());
    model.merge().unwrap();
    check("merged", forward(&model), "y_merged");
}

/// Every layer kind displays (as the Learner's model summary does) with and without a DoRA
/// adapter: the norm cache each layer holds is a leaf with content (once, displaying any LoRA
/// layer panicked).
#[test]
fn layers_with_and_without_dora_display() {
    let (mut linear, mut conv, mut embedding) = (linear::<B>(), conv::<B>(), embedding::<B>());
    for shown in [linear.to_string(), conv.to_string(), embedding.to_string()] {
        assert!(shown.contains("DoraNorms"), "{shown}");
    }
    linear.add_adapter("d", &dora()).unwrap();
    conv.add_adapter("d", &dora()).unwrap();
    embedding.add_adapter("d", &dora()).unwrap();
    for shown in [linear.to_string(), conv.to_string(), embedding.to_string()] {
        assert!(shown.contains("DoraNorms"), "{shown}");
    }
}
