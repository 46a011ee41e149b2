//! `#[derive(LoraModel)]` on a user's model: layers found in nested structs, `Vec`, `Option` and
//! arrays, in field order; other fields and `#[lora(skip)]` fields ignored; the whole model-wide
//! API working on the result.

use std::marker::PhantomData;

use burn::module::{Module, Param};
use burn::nn::attention::{MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Embedding, EmbeddingConfig, Gelu,
    GroupNorm, GroupNormConfig, Gru, GruConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig,
    Lstm, LstmConfig, PositionalEncoding, PositionalEncodingConfig, Relu, RmsNorm, RmsNormConfig,
};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};
use burn_lora::{
    load_adapter, save_adapter, LoraAdapter, LoraConfig, LoraError, LoraLayer, LoraLinear,
    LoraLinearConfig, LoraModel, PathMap, Targets,
};
use burn_lora_support::backend::Inference as B;
use burn_lora_support::testing::{assert_bit_identical, max_abs_diff, randn};

const WIDTH: usize = 8;
const CLASSES: usize = 4;

#[derive(Module, Debug, LoraModel)]
struct Block<B: Backend> {
    query: LoraLinear<B>,
    value: LoraLinear<B>,
    gate: Option<LoraLinear<B>>,
    heads: [LoraLinear<B>; 2],
    norm: LayerNorm<B>,
    projection: Linear<B>,
    experts: Vec<Linear<B>>,
    dropout: Dropout,
    width: usize,
    #[lora(skip)]
    frozen: LoraLinear<B>,
}

#[derive(Module, Debug, LoraModel)]
struct Net<B: Backend> {
    embed: LoraLinear<B>,
    blocks: Vec<Block<B>>,
    head: LoraLinear<B>,
}

impl<B: Backend> Block<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let mut h = self.query.forward(x.clone()) + self.value.forward(x.clone());
        if let Some(gate) = &self.gate {
            h = h + gate.forward(x.clone());
        }
        let h = self.heads[0].forward(h.clone()) + self.heads[1].forward(h);
        let h = self.projection.forward(self.norm.forward(h));
        self.dropout.forward(self.frozen.forward(h)) + x
    }
}

impl<B: Backend> Net<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = self.embed.forward(x);
        let x = self.blocks.iter().fold(x, |x, block| block.forward(x));
        self.head.forward(x)
    }
}

fn lora_linear<B: Backend>(d_output: usize, device: &B::Device) -> LoraLinear<B> {
    let layer = LoraLinearConfig::new(WIDTH, d_output).init(device).unwrap();
    let _ = (layer.weight(), layer.bias()); // materialise, so clones share the base
    layer
}

fn block<B: Backend>(gate: bool, device: &B::Device) -> Block<B> {
    let projection = LinearConfig::new(WIDTH, WIDTH).init(device);
    let _ = (
        projection.weight.val(),
        projection.bias.as_ref().map(|b| b.val()),
    );
    Block {
        query: lora_linear(WIDTH, device),
        value: lora_linear(WIDTH, device),
        gate: gate.then(|| lora_linear(WIDTH, device)),
        heads: [lora_linear(WIDTH, device), lora_linear(WIDTH, device)],
        norm: LayerNormConfig::new(WIDTH).init(device),
        projection: projection.clone(),
        experts: vec![projection],
        dropout: DropoutConfig::new(0.0).init(),
        width: WIDTH,
        frozen: lora_linear(WIDTH, device),
    }
}

/// Built generically over the backend, as a user's model is.
fn net<B: Backend>(device: &B::Device) -> Net<B> {
    Net {
        embed: lora_linear(WIDTH, device),
        blocks: vec![block(true, device), block(false, device)],
        head: lora_linear(CLASSES, device),
    }
}

/// The model's LoRA layer paths, from code generic over the backend.
fn paths_of<B: Backend, M: LoraModel<B>>(model: &M) -> Vec<String> {
    model.lora_layer_paths().unwrap()
}

const PATHS: [&str; 11] = [
    "embed",
    "blocks.0.query",
    "blocks.0.value",
    "blocks.0.gate",
    "blocks.0.heads.0",
    "blocks.0.heads.1",
    "blocks.1.query",
    "blocks.1.value",
    "blocks.1.heads.0",
    "blocks.1.heads.1",
    "head",
];

const ALL_NAMES: [&str; 6] = ["embed", "query", "value", "gate", "heads.0", "heads.1"];

fn all_targets() -> Targets {
    Targets::names(ALL_NAMES.into_iter().chain(["head"]))
}

/// Inserts adapter `name` with random non-zero factors of rank `rank` on every layer.
fn insert_trained<M: LoraModel<B>>(model: &mut M, name: &str, rank: usize, seed: u64) {
    let config = LoraConfig::new(rank, 2.0 * rank as f64);
    for (index, layer) in model.lora_layers_mut().into_iter().enumerate() {
        let [d_input, d_output] = layer.adapter_dims();
        let seed = seed + 10 * index as u64;
        let a = randn([d_input, rank], seed);
        let b = randn::<B, 2>([rank, d_output], seed + 1).mul_scalar(0.1);
        let adapter = LoraAdapter::from_factors(name, &config, a, b).unwrap();
        layer.insert_adapter(adapter).unwrap();
    }
}

/// A deterministic input batch of 3 rows.
fn probe(d_input: usize) -> Tensor<B, 2> {
    let values: Vec<f32> = (0..3 * d_input).map(|i| (i as f32 * 0.37).sin()).collect();
    Tensor::<B, 1>::from_floats(values.as_slice(), &Default::default()).reshape([3, d_input])
}

fn layer_ids(layers: &[&dyn LoraLayer<B>]) -> Vec<burn::module::ParamId> {
    layers.iter().map(|l| l.base_weight_id()).collect()
}

#[test]
fn finds_layers_in_field_order_through_containers_and_nesting() {
    let mut model = net::<B>(&Default::default());
    assert_eq!(paths_of(&model), PATHS);
    assert_eq!(model.lora_layers().len(), PATHS.len());

    let ids = layer_ids(&model.lora_layers());
    let ids_mut: Vec<_> = model
        .lora_layers_mut()
        .iter()
        .map(|l| l.base_weight_id())
        .collect();
    assert_eq!(ids, ids_mut, "lora_layers and lora_layers_mut disagree");

    // The skipped layer is a module of the tree but no LoRA layer of the model.
    let frozen = model.blocks[0].frozen.weight_param().id;
    assert!(!ids.contains(&frozen));
}

#[test]
fn attach_forward_merge_and_report() {
    let device = Default::default();
    let mut model = net::<B>(&device);
    let base_params = model.num_params();
    let x = probe(WIDTH);
    let before = model.forward(x.clone());

    model
        .attach("default", &LoraConfig::new(4, 8.0), &all_targets())
        .unwrap();
    assert_eq!(model.adapter_names(), ["default"]);
    assert!(model
        .lora_layers()
        .iter()
        .all(|l| l.adapter("default").is_some()));
    assert!(model.blocks[0].frozen.adapters().is_empty());
    // B starts at zero: attaching changes nothing.
    assert_bit_identical(model.forward(x.clone()), before.clone());

    let report = model.parameter_report().unwrap();
    let report_paths: Vec<_> = report.layers.iter().map(|l| l.path.as_str()).collect();
    assert_eq!(report_paths, PATHS);
    assert_eq!(report.base_params(), base_params);
    assert_eq!(
        report.lora_params(),
        10 * 4 * (WIDTH + WIDTH) + 4 * (WIDTH + CLASSES)
    );

    insert_trained(&mut model, "trained", 2, 7);
    model.set_active_adapter("trained").unwrap();
    let adapted = model.forward(x.clone());
    assert!(max_abs_diff(adapted.clone(), before.clone()) > 1e-3);

    model.set_enabled(false);
    assert_bit_identical(model.forward(x.clone()), before.clone());
    model.set_enabled(true);

    model.merge().unwrap();
    assert!(model.is_merged());
    assert!(max_abs_diff(model.forward(x.clone()), adapted.clone()) < 1e-4);
    model.unmerge().unwrap();
    assert_bit_identical(model.forward(x.clone()), adapted.clone());

    let plain = model.merge_and_unload().unwrap();
    assert!(plain.adapter_names().is_empty());
    assert!(max_abs_diff(plain.forward(x.clone()), adapted) < 1e-4);

    model.set_active_adapter("default").unwrap();
    assert_bit_identical(model.forward(x), before);
}

#[test]
fn combine_remove_save_and_load() {
    let device = Default::default();
    let base = net::<B>(&device);
    let mut model = base.clone();
    model
        .attach("default", &LoraConfig::new(4, 8.0), &all_targets())
        .unwrap();
    insert_trained(&mut model, "trained", 2, 11);

    model
        .combine_adapters("mix", &[("trained", 0.5), ("default", 1.0)])
        .unwrap();
    assert_eq!(model.adapter_names(), ["default", "trained", "mix"]);
    assert!(model
        .lora_layers()
        .iter()
        .all(|l| l.active_adapters() == ["mix"]));
    model.remove_adapter("mix").unwrap();
    assert_eq!(model.adapter_names(), ["default", "trained"]);

    model.set_active_adapter("trained").unwrap();
    let x = probe(WIDTH);
    let expected = model.forward(x.clone());
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, "trained", dir.path(), &PathMap::identity()).unwrap();

    let mut loaded = base;
    load_adapter(&mut loaded, "trained", dir.path(), &PathMap::identity()).unwrap();
    assert_eq!(loaded.adapter_names(), ["trained"]);
    assert!(max_abs_diff(loaded.forward(x), expected) < 1e-5);
}

#[test]
fn regex_exclude_and_rank_pattern_select_by_path() {
    let mut model = net::<B>(&Default::default());
    let targets = Targets::regex(r"blocks\.\d+\.(query|value)")
        .unwrap()
        .exclude(Targets::names(["blocks.1.value"]))
        .rank_pattern("query", 2);
    model
        .attach("default", &LoraConfig::new(4, 8.0), &targets)
        .unwrap();
    let ranks: Vec<(String, usize)> = model
        .lora_layer_paths()
        .unwrap()
        .into_iter()
        .zip(model.lora_layers())
        .filter_map(|(path, layer)| Some((path, layer.adapter("default")?.rank())))
        .collect();
    let expected = [
        ("blocks.0.query", 2),
        ("blocks.0.value", 4),
        ("blocks.1.query", 2),
    ];
    assert_eq!(ranks, expected.map(|(p, r)| (p.to_string(), r)));
}

#[test]
fn targets_that_name_no_lora_layer_are_errors_and_change_nothing() {
    let mut model = net::<B>(&Default::default());
    let x = probe(WIDTH);
    let before = model.forward(x.clone());
    let config = LoraConfig::new(4, 8.0);
    // "norm" and "projection" are modules but not LoRA layers; "frozen" is a LoRA layer the
    // model skips; "missing" matches nothing.
    for target in ["norm", "projection", "frozen", "missing"] {
        let err = model
            .attach("default", &config, &Targets::names([target]))
            .unwrap_err();
        assert!(
            matches!(err, LoraError::InvalidTargets(_)),
            "{target}: {err:?}"
        );
    }
    assert!(model.adapter_names().is_empty());
    assert!(model.blocks[0].frozen.adapters().is_empty());
    assert_bit_identical(model.forward(x), before);
}

/// A generic field: its layers are listed, and the impl requires `M: LoraModel<B>`.
#[derive(Module, Debug, LoraModel)]
struct Wrapper<B: Backend, M: Module<B>> {
    inner: M,
    head: LoraLinear<B>,
}

/// A generic field that may hold no LoRA layer: skipped, so any `M` works.
#[derive(Module, Debug, LoraModel)]
struct Plain<B: Backend, M: Module<B>> {
    #[lora(skip)]
    inner: M,
    head: LoraLinear<B>,
}

#[test]
fn generic_fields() {
    let device = Default::default();

    let wrapper = Wrapper {
        inner: block::<B>(false, &device),
        head: lora_linear(WIDTH, &device),
    };
    assert_eq!(
        paths_of(&wrapper),
        [
            "inner.query",
            "inner.value",
            "inner.heads.0",
            "inner.heads.1",
            "head"
        ]
    );

    let mut plain = Plain {
        inner: LayerNormConfig::new(WIDTH).init::<B>(&device),
        head: lora_linear(WIDTH, &device),
    };
    assert_eq!(paths_of(&plain), ["head"]);
    plain
        .attach("default", &LoraConfig::new(2, 2.0), &Targets::all())
        .unwrap();
    assert_eq!(plain.lora_layers_mut().len(), 1);
}

/// Burn's modules that cannot hold a LoRA layer, tensors, parameters and plain data need no
/// attribute; a nested struct that does not derive `LoraModel` needs `#[lora(skip)]`.
#[derive(Module, Debug, LoraModel)]
struct Leaves<B: Backend> {
    head: LoraLinear<B>,
    #[lora(skip)]
    plain: Unadapted<B>,
    #[lora(skip)]
    plains: Vec<Unadapted<B>>,
    linear: Linear<B>,
    embedding: Embedding<B>,
    conv: Conv2d<B>,
    layer_norm: LayerNorm<B>,
    rms_norm: RmsNorm<B>,
    batch_norm: BatchNorm<B>,
    group_norm: GroupNorm<B>,
    positions: PositionalEncoding<B>,
    attention: MultiHeadAttention<B>,
    encoder: Option<TransformerEncoder<B>>,
    lstm: Lstm<B>,
    grus: Vec<Gru<B>>,
    weight: Param<Tensor<B, 2>>,
    mask: Tensor<B, 2, Bool>,
    norms: [LayerNorm<B>; 2],
    dropout: Dropout,
    gelu: Gelu,
    relu: Relu,
    pool: MaxPool2d,
    width: usize,
    scale: f64,
    causal: bool,
    name: String,
    _marker: PhantomData<B>,
}

/// A user's module that does not derive `LoraModel`.
#[derive(Module, Debug)]
struct Unadapted<B: Backend> {
    linear: Linear<B>,
}

/// Every kind of field in one model, and const-generic arrays of optional blocks.
#[derive(Module, Debug, LoraModel)]
struct Stacked<B: Backend, M: Module<B>, const N: usize> {
    blocks: Vec<Block<B>>,
    stack: [Option<Block<B>>; N],
    inner: M,
    _marker: PhantomData<B>,
}

#[test]
fn burn_leaves_need_no_attribute_and_skipped_structs_are_not_searched() {
    let device = Default::default();
    let d = WIDTH;
    let unadapted = || Unadapted {
        linear: LinearConfig::new(d, d).init::<B>(&device),
    };
    let mut leaves = Leaves::<B> {
        head: lora_linear(d, &device),
        plain: unadapted(),
        plains: vec![unadapted(), unadapted()],
        linear: LinearConfig::new(d, d).init(&device),
        embedding: EmbeddingConfig::new(10, d).init(&device),
        conv: Conv2dConfig::new([2, 2], [1, 1]).init(&device),
        layer_norm: LayerNormConfig::new(d).init(&device),
        rms_norm: RmsNormConfig::new(d).init(&device),
        batch_norm: BatchNormConfig::new(d).init(&device),
        group_norm: GroupNormConfig::new(2, d).init(&device),
        positions: PositionalEncodingConfig::new(d).init(&device),
        attention: MultiHeadAttentionConfig::new(d, 2).init(&device),
        encoder: Some(TransformerEncoderConfig::new(d, 2 * d, 2, 1).init(&device)),
        lstm: LstmConfig::new(d, d, true).init(&device),
        grus: vec![GruConfig::new(d, d, true).init(&device)],
        weight: Param::from_tensor(Tensor::zeros([d, d], &device)),
        mask: Tensor::<B, 2>::zeros([2, 2], &device).equal_elem(0.0),
        norms: [
            LayerNormConfig::new(d).init(&device),
            LayerNormConfig::new(d).init(&device),
        ],
        dropout: DropoutConfig::new(0.0).init(),
        gelu: Gelu::new(),
        relu: Relu::new(),
        pool: MaxPool2dConfig::new([2, 2]).init(),
        width: d,
        scale: 1.0,
        causal: true,
        name: "leaves".into(),
        _marker: PhantomData,
    };
    assert_eq!(paths_of(&leaves), ["head"]);
    assert_eq!(leaves.lora_layers_mut().len(), 1);
    leaves
        .attach("default", &LoraConfig::new(2, 2.0), &Targets::all())
        .unwrap();
    assert_eq!(leaves.adapter_names(), ["default"]);

    let stacked = Stacked::<B, Block<B>, 3> {
        blocks: vec![block(true, &device)],
        stack: [
            Some(block(false, &device)),
            None,
            Some(block(true, &device)),
        ],
        inner: block(false, &device),
        _marker: PhantomData,
    };
    let paths = paths_of(&stacked);
    assert_eq!(paths.len(), 5 + 4 + 5 + 4);
    for expected in [
        "blocks.0.gate",
        "stack.0.query",
        "stack.2.gate",
        "inner.heads.1",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "{expected} in {paths:?}"
        );
    }
    assert!(!paths.iter().any(|p| p.starts_with("stack.1")), "{paths:?}");
}
