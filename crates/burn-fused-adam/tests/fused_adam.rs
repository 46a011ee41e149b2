//! `FusedAdam` against Burn's own Adam and AdamW, its state, its settings, and the in-place
//! update's safety: clones of a model and the frozen base are never touched. Every training
//! here checks, through `UpdateCounts`, that its updates took the fused path (on Flex and
//! NdArray), and the tensor-operation fallback is checked against it on the same steps.

use std::any::TypeId;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::SimpleOptimizer;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, Optimizer};
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_fused_adam::{FusedAdamConfig, InvalidSetting, UpdateCounts};
use burn_lora::{LoraConfig, LoraMlp, LoraMlpConfig, LoraModel};
use burn_lora::{LoraLayer, Targets, DEFAULT_ADAPTER};
use burn_lora_support::backend::{Inference, Train as AB};
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

/// Whether the backend under test has the fused path compiled in: Flex or NdArray, with this
/// crate's feature for it (`cargo test --workspace` turns on the one for Flex, the default
/// backend, and `--features ndarray` the one for NdArray).
fn fused_path_compiled() -> bool {
    let backend = TypeId::of::<Inference>();
    #[cfg(feature = "flex")]
    if backend == TypeId::of::<burn::backend::Flex>() {
        return true;
    }
    #[cfg(feature = "ndarray")]
    if backend == TypeId::of::<burn::backend::NdArray>() {
        return true;
    }
    let _ = backend;
    false
}

/// Checks that `made` is `updates` updates, all by the fused path where the backend has it.
fn assert_fused(made: UpdateCounts, updates: u64) {
    let expected = if fused_path_compiled() {
        UpdateCounts {
            fused: updates,
            tensor_ops: 0,
        }
    } else {
        UpdateCounts {
            fused: 0,
            tensor_ops: updates,
        }
    };
    assert_eq!(made, expected, "updates by path");
}

/// [`train`] with a `FusedAdam`, checking that each step updated every trainable tensor of the
/// model (two per layer: weight and bias, or with LoRA attached the adapter's two factors), by
/// the fused path where the backend has it.
fn train_fused<O: Optimizer<LoraMlp<AB>, AB>>(
    model: LoraMlp<AB>,
    optim: &mut O,
    steps: usize,
) -> LoraMlp<AB> {
    let tensors = 2 * model.layers().len();
    let before = UpdateCounts::on_this_thread();
    let trained = train(model, optim, steps);
    assert_fused(
        UpdateCounts::on_this_thread().since(before),
        (steps * tensors) as u64,
    );
    trained
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
    let trained = train_fused(start.clone(), &mut ours, steps);
    let before = UpdateCounts::on_this_thread();
    let reference = train(start.clone(), &mut burns, steps);
    assert_eq!(
        UpdateCounts::on_this_thread().since(before),
        UpdateCounts::default(),
        "Burn's optimizer counted as FusedAdam"
    );
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
    let plain = train_fused(model(2), &mut FusedAdamConfig::new().init().unwrap(), 15);
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
    let halfway = train_fused(model(5), &mut optim, 6);
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
    let straight = train_fused(halfway.clone(), &mut optim, 6);

    // A fresh optimizer that loads the record continues as if never interrupted...
    let mut resumed = FusedAdamConfig::new().init().unwrap().load_record(record);
    let continued = train_fused(halfway.clone(), &mut resumed, 6);
    assert_eq!(max_param_diff(&straight, &continued), 0.0);

    // ...while one that starts from scratch does not.
    let restarted = train_fused(halfway, &mut FusedAdamConfig::new().init().unwrap(), 6);
    assert!(max_param_diff(&straight, &restarted) > 1e-5);
}

#[test]
fn clones_of_the_model_are_not_updated_in_place() {
    let start = model(6);
    let keep = start.clone();
    let snapshot: Vec<Vec<f32>> = keep.layers().iter().map(|l| values(l.weight())).collect();
    let trained = train_fused(start, &mut FusedAdamConfig::new().init().unwrap(), 5);
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
    let trained = train_fused(model, &mut FusedAdamConfig::new().init().unwrap(), 10);
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
    let trained = train_fused(start, &mut FusedAdamConfig::new().init().unwrap(), 60);
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
    let trained = train_fused(model, &mut optim, 2);
    assert_eq!(optim.to_record().len(), 2 * trained.layers().len());
}

/// A `[rows, cols]` tensor of `values` (row-major), laid out in memory column by column, so that
/// the fused path does not take it.
fn column_major(values: &[f32], [rows, cols]: [usize; 2]) -> Tensor<Inference, 2> {
    let transposed: Vec<f32> = (0..cols)
        .flat_map(|c| (0..rows).map(move |r| values[r * cols + c]))
        .collect();
    Tensor::<Inference, 2>::from_data(
        TensorData::new(transposed, [cols, rows]),
        &Default::default(),
    )
    .transpose()
}

/// Whether `a` and `b` agree to rounding, relative to their size and nothing else: a value
/// flushed to zero on one side only is a difference, however small.
fn agree(a: f32, b: f32) -> bool {
    a == b || (a - b).abs() <= 1e-6 * a.abs().max(b.abs())
}

#[test]
fn the_fallback_gives_the_fused_update_and_flushes_the_same_tiny_values() {
    let shape = [6, 8];
    let count = 6 * 8;
    // Ordinary gradients, and in the first row values below the flush limit of 1e-16 (one of
    // them subnormal) or just above it.
    let tiny = [1e-20, -5e-17, 1e-40, 0.0, 2e-16, -3e-16, 9e-17, 1e-30];
    let gradient = |step: usize| -> Vec<f32> {
        let mut g = burn_lora_support::testing::randn_values(count, 100 + step as u64);
        g[..8].copy_from_slice(&tiny);
        g
    };
    let start = burn_lora_support::testing::randn_values(count, 99);
    for (weight_decay, decoupled) in [(0.0, false), (0.1, false), (0.1, true)] {
        let optim = FusedAdamConfig::new()
            .with_weight_decay(weight_decay)
            .with_decoupled_weight_decay(decoupled)
            .build()
            .unwrap();
        let device = Default::default();
        let param =
            || Tensor::<Inference, 2>::from_data(TensorData::new(start.clone(), shape), &device);
        let (mut fast, mut fallback) = ((param(), None), (param(), None));
        for step in 1..=5 {
            let g = gradient(step);
            let before = UpdateCounts::on_this_thread();
            let grad =
                Tensor::<Inference, 2>::from_data(TensorData::new(g.clone(), shape), &device);
            fast = optim.step(1e-2, fast.0, grad, fast.1);
            assert_fused(UpdateCounts::on_this_thread().since(before), 1);

            let before = UpdateCounts::on_this_thread();
            fallback = optim.step(1e-2, fallback.0, column_major(&g, shape), fallback.1);
            assert_eq!(
                UpdateCounts::on_this_thread().since(before),
                UpdateCounts {
                    fused: 0,
                    tensor_ops: 1
                },
                "a column-major gradient goes to the tensor operations"
            );
        }
        let (fast_state, fallback_state) = (fast.1.unwrap(), fallback.1.unwrap());
        for (name, a, b) in [
            ("param", values(fast.0.clone()), values(fallback.0.clone())),
            (
                "m",
                values(fast_state.moment_1),
                values(fallback_state.moment_1.clone()),
            ),
            (
                "v",
                values(fast_state.moment_2),
                values(fallback_state.moment_2.clone()),
            ),
        ] {
            for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                assert!(
                    agree(*a, *b),
                    "{weight_decay} {decoupled}: {name}[{i}]: {a:e} vs {b:e}"
                );
            }
        }
        // Without coupled decay, which adds λθ to them, the gradients far below the limit were
        // flushed: their moments are exactly zero, on either path (the agreement above says
        // the paths flushed the same values). The ordinary ones were not.
        if weight_decay == 0.0 || decoupled {
            let (m, v) = (
                values(fallback_state.moment_1),
                values(fallback_state.moment_2),
            );
            for (i, g) in tiny.iter().enumerate() {
                if g.abs() <= 1e-20 {
                    assert_eq!((m[i], v[i]), (0.0, 0.0), "g = {g:e}");
                }
            }
            assert!(m[8..].iter().chain(&v[8..]).all(|x| *x != 0.0));
        }
    }
}

#[test]
fn a_tiny_epsilon_with_tiny_gradients_matches_burn_adam() {
    // Gradients around 1e-15, with ε = 1e-20 below them: Adam then takes full-size steps, and
    // flushing second moments below 1e-32 would leave the first moment over ε alone, a step
    // some 1e5 times too large. The flush limits come down with ε instead.
    let device = Default::default();
    let x = randn::<AB, 2>([12, 24], 11);
    let y = Tensor::<AB, 1, Int>::from_ints([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5], &device);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    // One start, cloned: the backend's generator is shared with the tests running beside this
    // one, so initialising twice need not give the same model.
    let start = model(10);
    let run = |mut optim: Box<dyn FnMut(LoraMlp<AB>, GradientsParams) -> LoraMlp<AB>>| {
        let mut model = start.clone();
        for _ in 0..5 {
            let loss = loss_fn
                .forward(model.forward(x.clone()), y.clone())
                .mul_scalar(1e-14);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim(model, grads);
        }
        model
    };
    let mut ours = FusedAdamConfig::new().with_epsilon(1e-20).init().unwrap();
    let mut burns = AdamConfig::new().with_epsilon(1e-20).init();
    let before = UpdateCounts::on_this_thread();
    let trained = run(Box::new(move |m, g| ours.step(1e-2, m, g)));
    assert_fused(UpdateCounts::on_this_thread().since(before), 5 * 6);
    let reference = run(Box::new(move |m, g| burns.step(1e-2, m, g)));
    assert!(
        max_param_diff(&start, &reference) > 1e-3,
        "Burn's Adam did not move the parameters"
    );
    let diff = max_param_diff(&trained, &reference);
    assert!(diff < 1e-5, "FusedAdam and Burn's Adam differ by {diff}");
}
