//! `LoraMlp`: attaching, toggling, merging, the parameter report and checkpoint compatibility.

use crate::common::{assert_bit_identical, max_abs_diff, randn, B};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_lora::{LoraConfig, LoraError, LoraInit, LoraMlp, LoraMlpConfig, LoraModel};
use burn_lora::{LoraLayer, Targets, DEFAULT_ADAPTER};

fn notebook_model() -> LoraMlp<B> {
    LoraMlpConfig::notebook()
        .init::<B>(&Default::default())
        .unwrap()
}

/// Adds an adapter "trained" with random non-zero factors to every layer, standing in for a
/// trained one (a fresh adapter has B = 0 and would not change the output).
fn with_trained_adapter(mut model: LoraMlp<B>, config: &LoraConfig, seed: u64) -> LoraMlp<B> {
    for index in 0..model.layers().len() {
        let layer = model.layer_mut(index).unwrap();
        let (d_in, d_out) = (layer.d_input(), layer.d_output());
        let adapter = burn_lora::LoraAdapter::from_factors(
            "trained",
            config,
            randn([d_in, config.rank], seed + index as u64),
            randn::<B, 2>([config.rank, d_out], seed + 100 + index as u64).mul_scalar(0.1),
        )
        .unwrap();
        layer.insert_adapter(adapter).unwrap();
    }
    model.freeze_base();
    model
}

#[test]
fn parameter_report_matches_the_notebook() {
    let mut model = notebook_model();
    model
        .attach(
            DEFAULT_ADAPTER,
            &LoraConfig::new(1, 1.0).with_init(LoraInit::Gaussian { std: 1.0 }),
            &Targets::all(),
        )
        .unwrap();
    let report = model.parameter_report().unwrap();
    assert_eq!(report.base_params(), 2_807_010);
    assert_eq!(report.lora_params(), 6_794);
    assert_eq!(report.total_params(), 2_813_804);
    assert_eq!(format!("{:.3}", report.percent_added()), "0.242");
    let shapes: Vec<_> = report
        .layers
        .iter()
        .map(|l| {
            (
                l.weight.clone(),
                l.bias,
                l.adapters[0].lora_a,
                l.adapters[0].lora_b,
            )
        })
        .collect();
    assert_eq!(
        shapes,
        vec![
            (vec![784, 1000], Some(1000), [784, 1], [1, 1000]),
            (vec![1000, 2000], Some(2000), [1000, 1], [1, 2000]),
            (vec![2000, 10], Some(10), [2000, 1], [1, 10]),
        ]
    );
    let text = report.to_string();
    for needle in [
        "2,807,010",
        "2,813,804",
        "6,794",
        "0.242%",
        "Layer 3 (layers.2)",
    ] {
        assert!(text.contains(needle), "report lacks {needle}:\n{text}");
    }
    assert_eq!(model.num_params(), 2_813_804);
}

#[test]
fn attach_output_equals_base_and_disable_restores_it_exactly() {
    let mut model = LoraMlpConfig::new(20, vec![16, 12], 4)
        .init::<B>(&Default::default())
        .unwrap();
    let x = randn::<B, 2>([5, 20], 3);
    let base = model.forward(x.clone());
    model
        .attach(DEFAULT_ADAPTER, &LoraConfig::new(2, 2.0), &Targets::all())
        .unwrap();
    assert_bit_identical(model.forward(x.clone()), base.clone());

    let mut model = with_trained_adapter(model, &LoraConfig::new(2, 2.0), 10);
    assert_eq!(model.adapter_names(), vec!["default", "trained"]);
    model.set_active_adapter("trained").unwrap();
    assert!(max_abs_diff(model.forward(x.clone()), base.clone()) > 1e-3);
    model.set_enabled(false);
    assert_bit_identical(model.forward(x.clone()), base);
}

#[test]
fn attach_to_chosen_layers_freezes_the_whole_base() {
    let mut model = LoraMlpConfig::new(10, vec![8], 3)
        .init::<crate::common::AB>(&Default::default())
        .unwrap();
    model
        .attach(
            "last",
            &LoraConfig::new(1, 1.0),
            &Targets::names(["layers.1"]),
        )
        .unwrap();
    assert!(model.layers()[0].adapters().is_empty());
    assert_eq!(model.layers()[1].adapter_names(), vec!["last"]);
    for layer in model.layers() {
        assert!(!layer.weight_param().is_require_grad());
        assert!(!layer.bias_param().unwrap().is_require_grad());
    }
}

#[test]
fn failed_attach_changes_nothing() {
    let mut model = LoraMlpConfig::new(10, vec![8], 3)
        .init::<B>(&Default::default())
        .unwrap();
    // Rank 4 fits layer 0 (10x8) but not layer 1 (8x3): nothing may be attached.
    let err = model
        .attach(DEFAULT_ADAPTER, &LoraConfig::new(4, 1.0), &Targets::all())
        .unwrap_err();
    assert!(matches!(err, LoraError::RankTooLarge { .. }), "{err}");
    assert!(model.adapter_names().is_empty());
    let err = model
        .attach("x", &LoraConfig::new(1, 1.0), &Targets::names(["layers.5"]))
        .unwrap_err();
    assert!(matches!(err, LoraError::InvalidTargets(_)), "{err}");
    assert!(model.adapter_names().is_empty());
    model
        .attach(DEFAULT_ADAPTER, &LoraConfig::new(1, 1.0), &Targets::all())
        .unwrap();
    assert!(matches!(
        model.attach(DEFAULT_ADAPTER, &LoraConfig::new(1, 1.0), &Targets::all()),
        Err(LoraError::DuplicateAdapter(_))
    ));
    assert!(matches!(
        model.set_active_adapter("missing"),
        Err(LoraError::UnknownAdapter(_))
    ));
}

#[test]
fn merge_and_unload_matches_the_adapted_model() {
    let model = LoraMlpConfig::new(20, vec![16, 12], 4)
        .init::<B>(&Default::default())
        .unwrap();
    let model = with_trained_adapter(model, &LoraConfig::new(2, 4.0), 20);
    let x = randn::<B, 2>([6, 20], 4);
    let lora = model.forward(x.clone());
    let plain = model.merge_and_unload().unwrap();
    assert!(plain.adapter_names().is_empty());
    // Same tolerance argument as in `tests/layers/linear_forward.rs`: only the f32 summation order differs.
    let diff = max_abs_diff(plain.forward(x.clone()), lora.clone());
    assert!(diff < crate::common::matmul_tol(1e-4), "{diff}");

    let mut merged = model.clone();
    merged.merge().unwrap();
    let diff = max_abs_diff(merged.forward(x.clone()), lora);
    assert!(diff < crate::common::matmul_tol(1e-4), "{diff}");
    assert!(matches!(
        merged.set_active_adapter("trained"),
        Err(LoraError::Merged(_))
    ));
    merged.unmerge().unwrap();
    for (a, b) in merged.layers().iter().zip(model.layers()) {
        assert!(max_abs_diff(a.weight(), b.weight()) < 1e-5);
    }
}

#[test]
fn remove_adapter_returns_to_the_base() {
    let model = LoraMlpConfig::new(6, vec![5], 2)
        .init::<B>(&Default::default())
        .unwrap();
    let x = randn::<B, 2>([2, 6], 5);
    let base = model.forward(x.clone());
    let mut model = with_trained_adapter(model, &LoraConfig::new(1, 1.0), 30);
    assert_eq!(model.adapter_names(), vec!["trained"]);
    model.remove_adapter("trained").unwrap();
    assert!(model.adapter_names().is_empty());
    assert_bit_identical(model.forward(x), base);
    assert!(matches!(
        model.remove_adapter("trained"),
        Err(LoraError::UnknownAdapter(_))
    ));
}

/// The same network written with Burn's plain `Linear`.
#[derive(Module, Debug)]
struct PlainMlp<B: Backend> {
    layers: Vec<Linear<B>>,
    activation: Relu,
}

/// A 12-9-4 network built from Burn's plain `Linear`.
fn plain_mlp(device: &burn::tensor::Device<B>) -> PlainMlp<B> {
    PlainMlp {
        layers: vec![
            LinearConfig::new(12, 9).init(device),
            LinearConfig::new(9, 4).init(device),
        ],
        activation: Relu::new(),
    }
}

#[test]
fn checkpoint_of_a_plain_linear_model_loads_into_lora_mlp() {
    let device = Default::default();
    let plain = plain_mlp(&device);
    let x = randn::<B, 2>([3, 12], 6);
    let expected = plain
        .layers
        .iter()
        .enumerate()
        .fold(x.clone(), |h, (i, l)| {
            let y = l.forward(h);
            if i == 0 {
                burn::tensor::activation::relu(y)
            } else {
                y
            }
        });

    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(plain.into_record(), ()).unwrap();
    let record = recorder.load(bytes, &device).unwrap();
    let model = LoraMlpConfig::new(12, vec![9], 4)
        .init::<B>(&device)
        .unwrap()
        .load_record(record);
    assert_bit_identical(model.forward(x.clone()), expected.clone());

    // And the loaded model takes an adapter like any other.
    let mut model = model;
    model
        .attach(DEFAULT_ADAPTER, &LoraConfig::new(2, 2.0), &Targets::all())
        .unwrap();
    assert_bit_identical(model.forward(x), expected);
}

#[test]
fn safetensors_of_a_plain_linear_model_loads_into_lora_mlp() {
    use burn_store::{ModuleSnapshot, SafetensorsStore};

    let device = Default::default();
    let plain = plain_mlp(&device);
    let mut store = SafetensorsStore::from_bytes(None);
    plain.save_into(&mut store).unwrap();
    let bytes = store.get_bytes().unwrap();

    let mut model = LoraMlpConfig::new(12, vec![9], 4)
        .init::<B>(&device)
        .unwrap();
    let result = model
        .load_from(&mut SafetensorsStore::from_bytes(Some(bytes)))
        .unwrap();
    assert_eq!(result.applied.len(), 4, "{result:?}");
    assert!(
        result.missing.is_empty() && result.unused.is_empty(),
        "{result:?}"
    );
    for (loaded, original) in model.layers().iter().zip(&plain.layers) {
        assert_bit_identical(loaded.weight(), original.weight.val());
        assert_bit_identical(
            loaded.bias().unwrap(),
            original.bias.as_ref().unwrap().val(),
        );
    }
}

#[test]
fn from_linears_checks_that_layers_chain() {
    let device = Default::default();
    let err = LoraMlp::<B>::from_linears(vec![
        LinearConfig::new(4, 3).init(&device),
        LinearConfig::new(5, 2).init(&device),
    ])
    .unwrap_err();
    assert!(matches!(err, LoraError::ShapeMismatch { .. }), "{err}");
    assert!(LoraMlp::<B>::from_linears(vec![]).is_err());
    let ok = LoraMlp::<B>::from_linears(vec![
        LinearConfig::new(4, 3).init(&device),
        LinearConfig::new(3, 2).init(&device),
    ])
    .unwrap();
    let y: Tensor<B, 2> = ok.forward(randn([1, 4], 1));
    assert_eq!(y.dims(), [1, 2]);
}

#[test]
fn wrong_input_width_is_a_shape_error_not_a_panic() {
    let model = LoraMlpConfig::new(6, vec![5], 2)
        .init::<B>(&Default::default())
        .unwrap();
    let err = model.try_forward(randn([3, 7], 1)).unwrap_err();
    assert_eq!(
        err,
        LoraError::ShapeMismatch {
            what: "model input".into(),
            expected: vec![3, 6],
            found: vec![3, 7],
        }
    );
    let err = model.layers()[1]
        .try_forward(randn::<B, 3>([2, 3, 4], 2))
        .unwrap_err();
    assert!(matches!(err, LoraError::ShapeMismatch { .. }), "{err}");
    let ok = model.try_forward(randn([3, 6], 3)).unwrap();
    assert_eq!(ok.dims(), [3, 2]);
}

#[test]
fn clones_of_a_model_with_a_fresh_adapter_share_its_factors() {
    let mut model = LoraMlpConfig::new(6, vec![5], 2)
        .init::<B>(&Default::default())
        .unwrap();
    model
        .attach(DEFAULT_ADAPTER, &LoraConfig::new(1, 1.0), &Targets::all())
        .unwrap();
    let copy = model.clone();
    for (a, b) in model.layers().iter().zip(copy.layers()) {
        assert_bit_identical(a.adapters()[0].lora_a(), b.adapters()[0].lora_a());
    }
}
