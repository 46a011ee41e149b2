//! `LoraEmbedding`: record compatibility with Burn's `Embedding`, forward against a one-hot
//! matmul reference, toggling, merging, PEFT adapter files and bad inputs.
//!
//! Tolerance: the layer computes `W[ids] + (s · A[ids]) B` in f32 while the reference gathers
//! rows of the table `W + s · A B` computed on the host in f64 (then rounded to f32) with a
//! one-hot matmul (which picks rows exactly: every other product is an exact zero). The two
//! differ by the f32 rounding of the rank-4 sums `Σ_k (s a_k) b_k`, whose terms are products of
//! standard normals times s = 2: a few ulps of values below ~100, i.e. ≲ 3e-5. We allow 1e-4
//! (`crate::common::matmul_tol` widens it on CUDA's TF32 matmuls), far below the adapter's own
//! contribution, asserted to exceed 0.1.

use crate::common::safetensors_io::{edit_tensors, raw_mut, read_config, read_raw, PEFT_PREFIX};
use crate::common::snapshot::ParamSnapshot;
use crate::common::{assert_bit_identical, max_abs_diff, randn, values, AB, B};
use burn::module::{AutodiffModule, Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Linear};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_lora::{
    load_adapter, save_adapter, save_checkpoint, LayerKind, LoraAdapter, LoraConfig, LoraEmbedding,
    LoraEmbeddingConfig, LoraError, LoraInit, LoraLayer, LoraLinear, LoraModel, PathMap, Targets,
    VisitLoraLayers, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
};
use burn_store::{ModuleSnapshot, SafetensorsStore};

const N: usize = 50;
const D: usize = 12;
const RANK: usize = 4;

fn tol() -> f32 {
    crate::common::matmul_tol(1e-4)
}

/// A `[N, D]` table drawn on the host (no backend RNG, so clones share it).
fn plain_table<Bk: Backend>(seed: u64) -> Embedding<Bk> {
    Embedding {
        weight: Param::from_tensor(randn([N, D], seed)),
    }
}

/// The same table as a LoRA layer holding adapter "trained" with non-zero factors (scale 2).
fn adapted<Bk: Backend>(config: &LoraConfig, seed: u64) -> LoraEmbedding<Bk> {
    let mut layer = LoraEmbedding::from_embedding(plain_table(seed));
    let adapter = LoraAdapter::from_factors(
        "trained",
        config,
        randn([N, config.rank], seed + 1),
        randn([config.rank, D], seed + 2),
    )
    .unwrap();
    layer.insert_adapter(adapter).unwrap();
    layer
}

/// Ids `[2, 7]` covering the first and last rows and repeats.
fn ids<Bk: Backend>() -> Tensor<Bk, 2, Int> {
    Tensor::from_ints(
        [[0, 3, 49, 3, 17, 8, 0], [49, 21, 5, 5, 33, 1, 48]],
        &Default::default(),
    )
}

fn int_values<Bk: Backend>(ids: Tensor<Bk, 2, Int>) -> Vec<usize> {
    ids.into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap()
        .into_iter()
        .map(|id| id as usize)
        .collect()
}

/// `onehot(ids) (W + s·Σ A B)` with the table computed on the host in f64, the adapters' sum
/// over every active one.
fn one_hot_reference<Bk: Backend>(
    layer: &LoraEmbedding<Bk>,
    ids: Tensor<Bk, 2, Int>,
) -> Tensor<Bk, 3> {
    let [batch, seq] = ids.dims();
    let weight = values(layer.weight());
    let mut table: Vec<f64> = weight.iter().map(|&v| v as f64).collect();
    for adapter in layer.adapters().iter().filter(|a| a.is_active()) {
        let (a, b) = (values(adapter.lora_a()), values(adapter.lora_b()));
        let rank = adapter.rank();
        for i in 0..N {
            for j in 0..D {
                let sum: f64 = (0..rank)
                    .map(|k| a[i * rank + k] as f64 * b[k * D + j] as f64)
                    .sum();
                table[i * D + j] += adapter.scale() * sum;
            }
        }
    }
    let table: Vec<f32> = table.into_iter().map(|v| v as f32).collect();
    let mut one_hot = vec![0.0f32; batch * seq * N];
    for (row, id) in int_values(ids).into_iter().enumerate() {
        one_hot[row * N + id] = 1.0;
    }
    let device = Default::default();
    let one_hot = Tensor::<Bk, 2>::from_data(TensorData::new(one_hot, [batch * seq, N]), &device);
    let table = Tensor::<Bk, 2>::from_data(TensorData::new(table, [N, D]), &device);
    one_hot.matmul(table).reshape([batch, seq, D])
}

#[test]
fn burn_embedding_checkpoint_loads_into_the_lora_layer_and_back() {
    let plain = plain_table::<B>(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("embedding.safetensors");
    save_checkpoint(&plain, &path).unwrap();
    assert_eq!(
        read_raw(&path)
            .iter()
            .map(|t| t.key.as_str())
            .collect::<Vec<_>>(),
        ["weight"]
    );

    // Through burn-store into a LoRA layer with another random table.
    let mut lora = LoraEmbeddingConfig::new(N, D)
        .init::<B>(&Default::default())
        .unwrap();
    let result = lora
        .load_from(&mut SafetensorsStore::from_file(&path))
        .unwrap();
    assert!(
        result.errors.is_empty() && result.missing.is_empty(),
        "{result:?}"
    );
    assert_bit_identical(lora.forward(ids()), plain.forward(ids()));

    // Through Burn's recorder: Embedding's record is a LoraEmbedding record without adapters.
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(plain.clone().into_record(), ()).unwrap();
    let fresh = LoraEmbeddingConfig::new(N, D)
        .init::<B>(&Default::default())
        .unwrap();
    let loaded = fresh.load_record(recorder.load(bytes, &Default::default()).unwrap());
    assert_bit_identical(loaded.forward(ids()), plain.forward(ids()));

    // And back: a merged-and-unloaded LoRA layer is a plain Embedding record.
    let mut adapted = adapted::<B>(&LoraConfig::new(RANK, 8.0), 2);
    let expected = adapted.forward(ids());
    LoraLayer::merge_and_unload(&mut adapted).unwrap();
    let bytes = recorder.record(adapted.into_record(), ()).unwrap();
    let back = EmbeddingConfig::new(N, D)
        .init::<B>(&Default::default())
        .load_record(recorder.load(bytes, &Default::default()).unwrap());
    let diff = max_abs_diff(back.forward(ids()), expected);
    assert!(diff < tol(), "{diff}");
}

#[test]
fn without_adapter_the_output_is_bit_identical_to_burn_embedding() {
    let plain = plain_table::<B>(3);
    let mut layer = LoraEmbedding::from_embedding(plain.clone());
    assert_eq!(layer.forward(ids()).dims(), [2, 7, D]);
    assert_bit_identical(layer.forward(ids()), plain.forward(ids()));
    // A fresh adapter is initialised as PEFT does for embeddings, A = 0 and B ~ N(0, 1): the
    // update is still exactly zero.
    layer
        .add_adapter("fresh", &LoraConfig::new(RANK, 8.0))
        .unwrap();
    assert_bit_identical(layer.forward(ids()), plain.forward(ids()));
    let adapter = layer.adapter("fresh").unwrap();
    assert_eq!(adapter.shapes(), ([N, RANK], [RANK, D]));
    assert!(values(adapter.lora_a()).iter().all(|v| *v == 0.0));
    assert!(values(adapter.lora_b()).iter().all(|v| *v != 0.0));
}

#[test]
fn adapter_forward_equals_the_one_hot_reference() {
    let layer = adapted::<B>(&LoraConfig::new(RANK, 8.0), 4);
    let out = layer.forward(ids());
    let diff = max_abs_diff(out.clone(), one_hot_reference(&layer, ids()));
    assert!(diff < tol(), "max |lora - one-hot reference| = {diff}");
    let contribution = max_abs_diff(out, layer.forward_base(ids()));
    assert!(
        contribution > 0.1,
        "adapter contribution too small: {contribution}"
    );

    // rsLoRA and two active adapters (inserted directly, both active).
    let mut layer = adapted::<B>(&LoraConfig::new(RANK, 8.0).with_use_rslora(true), 5);
    let second = LoraAdapter::from_factors(
        "second",
        &LoraConfig::new(2, 1.0),
        randn([N, 2], 51),
        randn([2, D], 52),
    )
    .unwrap();
    layer.insert_adapter(second).unwrap();
    layer.set_active_adapters(&["trained", "second"]).unwrap();
    let diff = max_abs_diff(layer.forward(ids()), one_hot_reference(&layer, ids()));
    assert!(diff < tol(), "two adapters: {diff}");
}

#[test]
fn disabled_is_bit_identical_to_the_base_merged_or_not() {
    let mut layer = adapted::<B>(&LoraConfig::new(RANK, 8.0), 6);
    let base = plain_table::<B>(6).forward(ids());
    layer.set_enabled(false);
    assert_bit_identical(layer.forward(ids()), base.clone());
    layer.set_enabled(true);
    assert!(max_abs_diff(layer.forward(ids()), base.clone()) > 0.1);
    layer.merge().unwrap();
    layer.set_enabled(false);
    assert_bit_identical(layer.forward(ids()), base.clone());
    layer.set_enabled(true);
    assert!(max_abs_diff(layer.forward(ids()), base) > 0.1);
}

#[test]
fn merge_matches_unmerged_and_unmerge_is_exact() {
    let mut layer = adapted::<B>(&LoraConfig::new(RANK, 8.0), 7);
    let weight = layer.weight();
    let unmerged = layer.forward(ids());
    layer.merge().unwrap();
    assert_eq!(layer.merged_adapters(), ["trained"]);
    let merged = layer.forward(ids());
    let diff = max_abs_diff(merged.clone(), unmerged.clone());
    assert!(diff < tol(), "merged vs unmerged: {diff}");
    let diff = max_abs_diff(merged, one_hot_reference(&layer, ids()));
    assert!(diff < tol(), "merged vs reference: {diff}");
    assert_bit_identical(layer.weight(), weight.clone());
    assert_eq!(
        layer.merge(),
        Err(LoraError::Merged(vec!["trained".into()]))
    );
    assert!(matches!(
        layer.add_adapter("other", &LoraConfig::new(2, 2.0)),
        Err(LoraError::Merged(_))
    ));

    layer.unmerge().unwrap();
    assert!(!layer.is_merged());
    assert_bit_identical(layer.weight(), weight);
    assert_bit_identical(layer.forward(ids()), unmerged);
    assert_eq!(layer.unmerge(), Err(LoraError::NotMerged));
}

#[test]
fn merge_and_unload_leaves_a_plain_table_with_the_same_output() {
    let layer = adapted::<B>(&LoraConfig::new(RANK, 8.0), 8);
    let expected = layer.forward(ids());

    let plain = layer.merge_to_embedding().unwrap();
    let diff = max_abs_diff(plain.forward(ids()), expected.clone());
    assert!(diff < tol(), "merge_to_embedding: {diff}");

    let mut unloaded = layer.clone();
    LoraLayer::merge_and_unload(&mut unloaded).unwrap();
    assert!(unloaded.adapters().is_empty() && !unloaded.is_merged());
    assert_bit_identical(unloaded.forward(ids()), plain.forward(ids()));
    // A plain layer again: a new adapter can be attached.
    unloaded
        .add_adapter("next", &LoraConfig::new(2, 2.0))
        .unwrap();
    assert_bit_identical(unloaded.forward(ids()), plain.forward(ids()));

    // Disabled: merge_and_unload keeps the base.
    let mut disabled = layer.clone();
    disabled.set_enabled(false);
    LoraLayer::merge_and_unload(&mut disabled).unwrap();
    assert_bit_identical(disabled.weight(), layer.weight());
}

#[test]
fn training_gives_gradients_to_the_factors_only_and_applies_no_dropout() {
    let config = LoraConfig::new(RANK, 8.0).with_dropout(0.5);
    let mut layer = adapted::<AB>(&config, 9);
    layer.freeze_base();
    let first = layer.forward(ids());
    // PEFT applies no dropout to embeddings: two training passes agree exactly.
    assert_bit_identical(first.clone(), layer.forward(ids()));
    let grads = first.powi_scalar(2).sum().backward();
    let adapter = layer.adapter("trained").unwrap();
    assert!(
        layer.weight_param().grad(&grads).is_none(),
        "the base is frozen"
    );
    let grad_a = adapter
        .lora_a_param()
        .grad(&grads)
        .expect("A has a gradient");
    let grad_b = adapter
        .lora_b_param()
        .grad(&grads)
        .expect("B has a gradient");
    assert!(values(grad_b).iter().any(|g| *g != 0.0));
    // Only the rows of A that the ids gather receive gradient.
    let grad_a = values(grad_a);
    let used = int_values(ids::<B>());
    for row in 0..N {
        let nonzero = grad_a[row * RANK..(row + 1) * RANK]
            .iter()
            .any(|g| *g != 0.0);
        assert_eq!(nonzero, used.contains(&row), "row {row} of A's gradient");
    }
    // Inference (`valid()`) computes the same output.
    let valid = layer.valid();
    let diff = max_abs_diff(valid.forward(ids()), one_hot_reference(&valid, ids()));
    assert!(diff < tol(), "{diff}");
}

/// A token table and a head: the smallest model with an embedding LoRA layer.
#[derive(Module, Debug)]
struct TextNet<B: Backend> {
    tok: LoraEmbedding<B>,
    head: LoraLinear<B>,
}

impl<B: Backend> VisitLoraLayers<B> for TextNet<B> {
    fn visit_lora_layers<'a>(&'a self, layers: &mut Vec<&'a dyn LoraLayer<B>>) {
        self.tok.visit_lora_layers(layers);
        self.head.visit_lora_layers(layers);
    }

    fn visit_lora_layers_mut<'a>(&'a mut self, layers: &mut Vec<&'a mut dyn LoraLayer<B>>) {
        self.tok.visit_lora_layers_mut(layers);
        self.head.visit_lora_layers_mut(layers);
    }
}

impl<B: Backend> LoraModel<B> for TextNet<B> {}

impl<B: Backend> TextNet<B> {
    fn new(seed: u64) -> Self {
        Self {
            tok: LoraEmbedding::from_embedding(plain_table(seed)),
            head: LoraLinear::from_linear(Linear {
                weight: Param::from_tensor(randn([D, 3], seed + 1)),
                bias: Some(Param::from_tensor(randn([3], seed + 2))),
            }),
        }
    }

    fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.head.forward(self.tok.forward(ids))
    }
}

/// A [`TextNet`] with adapter "default" (rank 4, alpha 8) on both layers, trained-looking.
fn trained_net(seed: u64) -> TextNet<B> {
    let mut net = TextNet::new(seed);
    let config = LoraConfig::new(RANK, 8.0);
    let tok = LoraAdapter::from_factors(
        "default",
        &config,
        randn([N, RANK], 90),
        randn([RANK, D], 91),
    )
    .unwrap();
    net.tok.insert_adapter(tok).unwrap();
    let head = LoraAdapter::from_factors(
        "default",
        &config,
        randn([D, RANK], 92),
        randn([RANK, 3], 93),
    )
    .unwrap();
    net.head.insert_adapter(head).unwrap();
    net
}

#[test]
fn peft_adapter_file_round_trip_uses_peft_embedding_keys_and_shapes() {
    let net = trained_net(10);
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&net, "default", dir.path(), &PathMap::identity()).unwrap();

    let tensors = read_raw(&dir.path().join(ADAPTER_WEIGHTS_FILE));
    let found: Vec<(&str, &[usize])> = tensors
        .iter()
        .map(|t| (t.key.as_str(), t.shape.as_slice()))
        .collect();
    assert_eq!(
        found,
        [
            ("base_model.model.head.lora_A.weight", &[RANK, D][..]),
            ("base_model.model.head.lora_B.weight", &[3, RANK][..]),
            ("base_model.model.tok.lora_embedding_A", &[RANK, N][..]),
            ("base_model.model.tok.lora_embedding_B", &[D, RANK][..]),
        ]
    );
    // PEFT's lora_embedding_A is Aᵀ: element [k, i] is A[i, k].
    let a = values(net.tok.adapter("default").unwrap().lora_a());
    let file_a = tensors[2].f32_values();
    assert_eq!(file_a[N + 7], a[7 * RANK + 1]);
    let config = read_config(dir.path());
    let mut targets: Vec<&str> = config["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    targets.sort();
    assert_eq!(targets, ["head", "tok"]);

    let mut fresh = TextNet::<B>::new(10);
    load_adapter(&mut fresh, "default", dir.path(), &PathMap::identity()).unwrap();
    assert_eq!(fresh.tok.active_adapters(), ["default"]);
    assert_bit_identical(fresh.forward(ids()), net.forward(ids()));
}

#[test]
fn attach_selects_embeddings_by_name_but_not_as_linear() {
    let mut net = TextNet::<B>::new(11);
    net.attach("lin", &LoraConfig::new(2, 2.0), &Targets::all_linear())
        .unwrap();
    assert!(net.tok.adapters().is_empty());
    assert_eq!(net.head.adapter_names(), ["lin"]);
    net.attach("emb", &LoraConfig::new(2, 2.0), &Targets::names(["tok"]))
        .unwrap();
    assert_eq!(net.tok.adapter_names(), ["emb"]);
    assert_eq!(net.tok.kind(), LayerKind::Embedding);
    let report = net.parameter_report().unwrap();
    assert_eq!(report.layers[0].weight, [N, D]);
    assert_eq!(report.layers[0].bias, None);
}

/// Every init but the default, which an embedding cannot apply (PEFT draws `B`, not `A`).
fn inits_an_embedding_refuses() -> Vec<LoraConfig> {
    vec![LoraConfig::new(2, 2.0).with_init(LoraInit::Gaussian { std: 1.0 })]
}

fn is_refused_init(err: &LoraError) -> bool {
    matches!(err, LoraError::Unsupported(what) if what.contains("embedding") && what.contains("init"))
}

#[test]
fn an_init_other_than_peft_s_default_is_an_error_on_an_embedding_layer() {
    let mut layer = adapted::<B>(&LoraConfig::new(RANK, 8.0), 14);
    let before = ParamSnapshot::of(&layer);
    for config in inits_an_embedding_refuses() {
        let err = layer.add_adapter("fresh", &config).unwrap_err();
        assert!(is_refused_init(&err), "{:?}: {err:?}", config.init);
        assert!(is_refused_init(
            &layer.fresh_adapter("fresh", &config).unwrap_err()
        ));
        ParamSnapshot::of(&layer).assert_same(&before, "refused init");
        assert_eq!(layer.adapter_names(), ["trained"]);
    }
    // The default is PEFT's: A = 0, B ~ N(0, 1).
    layer
        .add_adapter("fresh", &LoraConfig::new(2, 2.0))
        .unwrap();
    let fresh = layer.adapter("fresh").unwrap();
    assert!(values(fresh.lora_a()).iter().all(|v| *v == 0.0));
    assert!(values(fresh.lora_b()).iter().any(|v| *v != 0.0));
}

#[test]
fn attach_with_an_init_an_embedding_cannot_apply_is_an_error_changing_nothing() {
    for config in inits_an_embedding_refuses() {
        let mut net = TextNet::<B>::new(15);
        let before = ParamSnapshot::of::<B, _>(&net);
        for targets in [Targets::all(), Targets::names(["tok"])] {
            let err = net.attach("default", &config, &targets).unwrap_err();
            assert!(is_refused_init(&err), "{targets:?}: {err:?}");
            ParamSnapshot::of::<B, _>(&net).assert_same(&before, "refused attach");
            assert!(net.adapter_names().is_empty());
        }
        // The linear layers alone take it.
        net.attach("default", &config, &Targets::all_linear())
            .unwrap();
        assert_eq!(net.adapter_names(), ["default"]);
        assert!(net.tok.adapters().is_empty());
    }
}

#[test]
fn rank_above_the_table_size_is_an_error_leaving_the_layer_unchanged() {
    let mut layer = adapted::<B>(&LoraConfig::new(RANK, 8.0), 12);
    let before = ParamSnapshot::of(&layer);
    let err = layer
        .add_adapter("big", &LoraConfig::new(D + 1, 1.0))
        .unwrap_err();
    assert_eq!(
        err,
        LoraError::RankTooLarge {
            rank: D + 1,
            d_input: N,
            d_output: D,
            max: D
        }
    );
    ParamSnapshot::of(&layer).assert_same(&before, "rank too large");
    assert_eq!(layer.adapter_names(), ["trained"]);

    // A factor of the wrong shape is refused too.
    let bad = LoraAdapter::from_factors(
        "bad",
        &LoraConfig::new(2, 2.0),
        randn([N - 1, 2], 1),
        randn([2, D], 2),
    )
    .unwrap();
    assert!(matches!(
        layer.insert_adapter(bad),
        Err(LoraError::ShapeMismatch { .. })
    ));
    ParamSnapshot::of(&layer).assert_same(&before, "wrong factor shape");
}

#[test]
fn adapter_file_with_a_wrong_factor_shape_or_linear_keys_is_an_error_leaving_the_model_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    save_adapter(
        &trained_net(13),
        "default",
        dir.path(),
        &PathMap::identity(),
    )
    .unwrap();
    let mut net = TextNet::<B>::new(13);
    let before = ParamSnapshot::of::<B, _>(&net);

    let shape_dir = tempfile::tempdir().unwrap();
    for file in [ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE] {
        std::fs::copy(dir.path().join(file), shape_dir.path().join(file)).unwrap();
    }
    let key = format!("{PEFT_PREFIX}tok.lora_embedding_A");
    edit_tensors(shape_dir.path(), |tensors| {
        let a = raw_mut(tensors, &key);
        a.shape = vec![RANK, N - 1];
        a.data.truncate(RANK * (N - 1) * 4);
    });
    let err =
        load_adapter(&mut net, "default", shape_dir.path(), &PathMap::identity()).unwrap_err();
    crate::common::assert_error::assert_shape_mismatch(&err, &key, &[RANK, N], &[RANK, N - 1]);
    ParamSnapshot::of(&net).assert_same(&before, "wrong shape");
    assert!(net.adapter_names().is_empty());

    // The linear layers' key names on an embedding: PEFT would not load them either.
    edit_tensors(dir.path(), |tensors| {
        for t in tensors.iter_mut() {
            t.key = t
                .key
                .replace("tok.lora_embedding_A", "tok.lora_A.weight")
                .replace("tok.lora_embedding_B", "tok.lora_B.weight");
        }
    });
    let err = load_adapter(&mut net, "default", dir.path(), &PathMap::identity()).unwrap_err();
    assert!(
        matches!(&err, LoraError::UnexpectedKey { key, reason, .. }
            if key.ends_with("tok.lora_A.weight") && reason.contains("lora_embedding_A")),
        "{err:?}"
    );
    ParamSnapshot::of(&net).assert_same(&before, "linear keys");
    assert!(net.adapter_names().is_empty());
}

#[test]
fn zero_sizes_are_an_error() {
    let device = Default::default();
    for (n, d) in [(0, 4), (4, 0)] {
        assert!(matches!(
            LoraEmbeddingConfig::new(n, d).init::<B>(&device),
            Err(LoraError::InvalidModel(_))
        ));
    }
}
