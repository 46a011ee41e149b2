//! `FusedAdam` against Burn's own Adam and AdamW, its state, its settings, and the in-place
//! update's safety: clones of a model and the frozen base are never touched.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, Optimizer};
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use burn_fused_adam::FusedAdamConfig;
use burn_fused_adam::InvalidSetting;
use burn_lora::{LoraConfig, LoraMlp, LoraMlpConfig, LoraModel};
use burn_lora::{LoraLayer, Targets, DEFAULT_ADAPTER};
use burn_lora_support::backend::Train as AB;
use burn_lora_support::testing::{assert_bit_identical, max_abs_diff, randn, values};

/// A small MLP with a fixed initialisation. Burn initialises parameters lazily, on first use,
/// so every parameter is read here: clones then share the same values instead of each drawing
/// their own.
fn model(seed: u64) -> LoraMlp<AB> {
    let device = Default::default();
    AB::seed(&device, seed);
    let model = LoraMlpConfig::new(24, vec![40, 32], 6)
        .init::<AB>(&device)
        .unwrap();
    for layer in model.layers() {
        let _ = (layer.weight(), layer.bias());
    }
    model
}

/// Trains `model` for `steps` steps of lr 1e-2 on one fixed batch, with `optim`.
fn train<O: Optimizer<LoraMlp<AB>, AB>>(
    mut model: LoraMlp<AB>,
    optim: &mut O,
    steps: usize,
) -> LoraMlp<AB> {
    let device = Default::default();
    let x = randn::<AB, 2>([12, 24], 11);
    let y = Tensor::<AB, 1, Int>::from_ints([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5], &device);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    for _ in 0..steps {
        let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    model
}

/// Largest difference over every weight and bias of two models of the same shape.
fn max_param_diff(a: &LoraMlp<AB>, b: &LoraMlp<AB>) -> f32 {
    a.layers()
        .iter()
        .zip(b.layers())
        .map(|(la, lb)| {
            let w = max_abs_diff(la.weight(), lb.weight());
            let bias = max_abs_diff(la.bias().unwrap(), lb.bias().unwrap());
            w.max(bias)
        })
        .fold(0.0, f32::max)
}

/// Trains copies of model `seed` with `ours` and `burns` for `steps` steps and checks they end
/// up within 1e-5 of each other, after moving measurably. Returns the model `ours` trained.
fn assert_same_training<O1, O2>(seed: u64, steps: usize, mut ours: O1, mut burns: O2) -> LoraMlp<AB>
where
    O1: Optimizer<LoraMlp<AB>, AB>,
    O2: Optimizer<LoraMlp<AB>, AB>,
{
    let start = model(seed);
    let trained = train(start.clone(), &mut ours, steps);
    let reference = train(start.clone(), &mut burns, steps);
    assert!(
        max_param_diff(&start, &trained) > 1e-3,
        "training did not move the parameters"
    );
    let diff = max_param_diff(&trained, &reference);
    assert!(
        diff < 1e-5,
        "FusedAdam and Burn's optimizer differ by {diff}"
    );
    trained
}

#[test]
fn matches_burn_adam_step_for_step() {
    let ours = FusedAdamConfig::new().init().unwrap();
    assert_same_training(1, 20, ours, AdamConfig::new().with_epsilon(1e-8).init());
}

#[test]
fn l2_weight_decay_matches_burn_adam_with_weight_decay() {
    let ours = FusedAdamConfig::new()
        .with_weight_decay(0.1)
        .init()
        .unwrap();
    let burns = AdamConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(Some(WeightDecayConfig::new(0.1)))
        .init();
    let decayed = assert_same_training(2, 15, ours, burns);
    let plain = train(model(2), &mut FusedAdamConfig::new().init().unwrap(), 15);
    assert!(
        max_param_diff(&decayed, &plain) > 1e-4,
        "weight decay changed nothing"
    );
}

#[test]
fn decoupled_weight_decay_matches_burn_adamw() {
    let ours = FusedAdamConfig::adamw(0.5).init().unwrap();
    let burns = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.5)
        .init();
    assert_same_training(3, 15, ours, burns);
}

#[test]
fn gradient_clipping_matches_burn_adam_with_the_same_clipping() {
    let clip = GradientClippingConfig::Norm(0.05);
    let ours = FusedAdamConfig::new()
        .with_grad_clipping(Some(clip.clone()))
        .init()
        .unwrap();
    let burns = AdamConfig::new()
        .with_epsilon(1e-8)
        .with_grad_clipping(Some(clip))
        .init();
    assert_same_training(4, 10, ours, burns);
}

#[test]
fn saved_state_resumes_exactly() {
    let mut optim = FusedAdamConfig::new().init().unwrap();
    let halfway = train(model(5), &mut optim, 6);
    // Through a file, as a checkpoint would go.
    let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimizer");
    recorder
        .record(optim.to_record(), path.clone())
        .expect("optimizer state saves");
    let record = recorder
        .load(path, &Default::default())
        .expect("optimizer state loads");
    let straight = train(halfway.clone(), &mut optim, 6);

    // A fresh optimizer that loads the record continues as if never interrupted...
    let mut resumed = FusedAdamConfig::new().init().unwrap().load_record(record);
    let continued = train(halfway.clone(), &mut resumed, 6);
    assert_eq!(max_param_diff(&straight, &continued), 0.0);

    // ...while one that starts from scratch does not.
    let restarted = train(halfway, &mut FusedAdamConfig::new().init().unwrap(), 6);
    assert!(max_param_diff(&straight, &restarted) > 1e-5);
}

#[test]
fn clones_of_the_model_are_not_updated_in_place() {
    let start = model(6);
    let keep = start.clone();
    let snapshot: Vec<Vec<f32>> = keep.layers().iter().map(|l| values(l.weight())).collect();
    let trained = train(start, &mut FusedAdamConfig::new().init().unwrap(), 5);
    assert!(
        max_param_diff(&keep, &trained) > 1e-3,
        "training did not move the parameters"
    );
    for (layer, before) in keep.layers().iter().zip(snapshot) {
        assert_eq!(
            values(layer.weight()),
            before,
            "a clone changed under training"
        );
    }
}

#[test]
fn frozen_base_is_bit_identical_after_lora_training() {
    let mut model = model(7);
    model
        .attach(DEFAULT_ADAPTER, &LoraConfig::new(2, 2.0), &Targets::all())
        .unwrap();
    let base: Vec<_> = model
        .layers()
        .iter()
        .map(|l| (l.weight(), l.bias().unwrap()))
        .collect();
    let adapter_b = model.layers()[0].adapters()[0].lora_b();
    let trained = train(model, &mut FusedAdamConfig::new().init().unwrap(), 10);
    for (layer, (weight, bias)) in trained.layers().iter().zip(base) {
        assert_bit_identical(layer.weight(), weight);
        assert_bit_identical(layer.bias().unwrap(), bias);
    }
    let moved = max_abs_diff(trained.layers()[0].adapters()[0].lora_b(), adapter_b);
    assert!(moved > 1e-3, "the adapter did not train");
}

#[test]
fn training_converges_with_the_fused_update() {
    let device = Default::default();
    let start = model(8);
    let x = randn::<AB, 2>([12, 24], 11);
    let y = Tensor::<AB, 1, Int>::from_ints([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5], &device);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let loss_of = |m: &LoraMlp<AB>| {
        loss_fn
            .forward(m.forward(x.clone()), y.clone())
            .into_scalar()
    };
    let before = loss_of(&start);
    let trained = train(start, &mut FusedAdamConfig::new().init().unwrap(), 60);
    let after = loss_of(&trained);
    assert!(after < 0.1 * before, "loss went from {before} to {after}");
}

#[test]
fn every_bad_setting_is_an_error_naming_it() {
    let cases = [
        ("beta_1", FusedAdamConfig::new().with_beta_1(1.0)),
        ("beta_1", FusedAdamConfig::new().with_beta_1(-0.1)),
        ("beta_2", FusedAdamConfig::new().with_beta_2(f32::NAN)),
        ("epsilon", FusedAdamConfig::new().with_epsilon(0.0)),
        (
            "epsilon",
            FusedAdamConfig::new().with_epsilon(f32::INFINITY),
        ),
        (
            "weight_decay",
            FusedAdamConfig::new().with_weight_decay(-1e-3),
        ),
        ("weight_decay", FusedAdamConfig::adamw(f32::NAN)),
    ];
    for (name, config) in cases {
        match config.init::<AB, LoraMlp<AB>>() {
            Err(InvalidSetting { name: found, .. }) => assert_eq!(found, name),
            Ok(_) => panic!("{name}: accepted {config:?}"),
        }
    }
    assert!(FusedAdamConfig::new().validate().is_ok());
    assert!(FusedAdamConfig::adamw(0.01).build().is_ok());
}

#[test]
fn only_parameters_with_gradients_get_state() {
    // LoRA freezes the base: only the two factors of each layer's adapter have state.
    let mut model = model(9);
    model
        .attach(DEFAULT_ADAPTER, &LoraConfig::new(1, 1.0), &Targets::all())
        .unwrap();
    let mut optim = FusedAdamConfig::new().init().unwrap();
    let trained = train(model, &mut optim, 2);
    assert_eq!(optim.to_record().len(), 2 * trained.layers().len());
}
