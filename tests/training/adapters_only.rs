//! Training only the adapters: the frozen base never changes and never reaches the optimizer.

use std::collections::HashSet;

use crate::common::{assert_bit_identical, backend_rng_guard, max_abs_diff, AB};
use burn::module::ParamId;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use burn_lora::{LoraConfig, LoraInit, LoraMlp, LoraMlpConfig, LoraModel};
use burn_lora::{LoraLayer, Targets, DEFAULT_ADAPTER};

fn base_ids(model: &LoraMlp<AB>) -> Vec<ParamId> {
    model
        .layers()
        .iter()
        .flat_map(|l| {
            let mut ids = vec![l.weight_param().id];
            ids.extend(l.bias_param().map(|b| b.id));
            ids
        })
        .collect()
}

fn adapter_ids(model: &LoraMlp<AB>) -> Vec<ParamId> {
    model
        .layers()
        .iter()
        .flat_map(|l| l.adapters())
        .flat_map(|a| a.param_ids())
        .collect()
}

#[test]
fn base_is_bit_identical_after_training_and_never_gets_gradients_or_optimizer_state() {
    let _rng = backend_rng_guard();
    let device = Default::default();
    AB::seed(&device, 7);
    let mut model = LoraMlpConfig::new(32, vec![48, 40], 5)
        .init::<AB>(&device)
        .unwrap();
    model
        .attach(
            DEFAULT_ADAPTER,
            &LoraConfig::new(2, 4.0).with_init(LoraInit::Gaussian { std: 1.0 }),
            &Targets::all(),
        )
        .unwrap();

    let base_before: Vec<_> = model
        .layers()
        .iter()
        .map(|l| (l.weight(), l.bias().unwrap()))
        .collect();
    let adapters_before: Vec<_> = model
        .layers()
        .iter()
        .map(|l| (l.adapters()[0].lora_a(), l.adapters()[0].lora_b()))
        .collect();
    let base = base_ids(&model);
    let trainable = adapter_ids(&model);
    assert_eq!(trainable.len(), 6);

    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = AdamConfig::new().init::<AB, LoraMlp<AB>>();
    let x = Tensor::<AB, 2>::random([16, 32], Distribution::Normal(0.0, 1.0), &device);
    let y =
        Tensor::<AB, 1, Int>::from_ints([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0], &device);
    let mut first_loss = None;
    let mut last_loss = 0.0;
    for _ in 0..25 {
        let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
        last_loss = loss.clone().into_scalar();
        first_loss.get_or_insert(last_loss);
        let grads = loss.backward();
        for layer in model.layers() {
            assert!(
                layer.weight().grad(&grads).is_none(),
                "base weight got a gradient"
            );
            assert!(
                layer.bias().unwrap().grad(&grads).is_none(),
                "base bias got a gradient"
            );
        }
        let grads = GradientsParams::from_grads(grads, &model);
        assert_eq!(grads.len(), trainable.len(), "only A and B have gradients");
        for id in &base {
            assert!(grads.get::<crate::common::B, 2>(*id).is_none());
        }
        model = optim.step(1e-2, model, grads);
    }
    assert!(
        last_loss < first_loss.unwrap(),
        "adapter training did not lower the loss"
    );

    let state: HashSet<ParamId> = optim.to_record().keys().copied().collect();
    assert_eq!(
        state,
        trainable.iter().copied().collect(),
        "optimizer state only for A and B"
    );
    for id in &base {
        assert!(
            !state.contains(id),
            "optimizer holds state for a base tensor"
        );
    }

    for (layer, (weight, bias)) in model.layers().iter().zip(base_before) {
        assert_bit_identical(layer.weight(), weight);
        assert_bit_identical(layer.bias().unwrap(), bias);
        assert!(!layer.weight_param().is_require_grad());
    }
    for (layer, (a, b)) in model.layers().iter().zip(adapters_before) {
        assert!(
            max_abs_diff(layer.adapters()[0].lora_a(), a) > 0.0,
            "A did not change"
        );
        assert!(
            max_abs_diff(layer.adapters()[0].lora_b(), b) > 0.0,
            "B did not change"
        );
    }
    assert_eq!(base_ids(&model), base);

    // Merging works on the training (autodiff) model too, and keeps the base frozen.
    let lora_out = model.forward(x.clone());
    let plain = model.merge_and_unload().unwrap();
    assert!(
        max_abs_diff(plain.forward(x.clone()), lora_out.clone()) < crate::common::matmul_tol(1e-4)
    );
    let mut merged = model.clone();
    merged.merge().unwrap();
    assert!(max_abs_diff(merged.forward(x.clone()), lora_out) < crate::common::matmul_tol(1e-4));
    merged.unmerge().unwrap();
    for (a, b) in merged.layers().iter().zip(model.layers()) {
        assert!(!a.weight_param().is_require_grad());
        assert!(max_abs_diff(a.weight(), b.weight()) < 1e-5);
    }
}

#[test]
fn plain_model_trains_every_parameter_before_attach() {
    let _rng = backend_rng_guard();
    let device = Default::default();
    let model = LoraMlpConfig::new(8, vec![6], 3)
        .init::<AB>(&device)
        .unwrap();
    let x = Tensor::<AB, 2>::random([4, 8], Distribution::Default, &device);
    let y = Tensor::<AB, 1, Int>::from_ints([0, 1, 2, 0], &device);
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(model.forward(x), y);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    assert_eq!(grads.len(), 4, "both weights and both biases are trainable");
}

/// A LoRA body and a plain head, on the autodiff backend.
#[derive(burn::module::Module, Debug, LoraModel)]
struct WithHead<B: Backend> {
    body: burn_lora::LoraLinear<B>,
    head: burn::nn::Linear<B>,
}

/// Whether every parameter of `module` requires a gradient (`Some(true)`), none does
/// (`Some(false)`), or they differ (`None`).
fn all_trainable<M: burn::module::Module<AB>>(module: &M) -> Option<bool> {
    let flags: HashSet<bool> = crate::common::snapshot::ParamSnapshot::of(module)
        .params
        .iter()
        .map(|p| p.require_grad)
        .collect();
    (flags.len() == 1).then(|| flags.contains(&true))
}

#[test]
fn a_head_marked_trainable_stays_trainable_when_more_adapters_are_attached_or_loaded() {
    let _rng = backend_rng_guard();
    let device = Default::default();
    let mut model = WithHead {
        body: burn_lora::LoraLinearConfig::new(6, 5)
            .init::<AB>(&device)
            .unwrap(),
        head: burn::nn::LinearConfig::new(5, 3).init(&device),
    };
    // The first adapter freezes everything but itself, as PEFT does.
    model
        .attach("first", &LoraConfig::new(2, 2.0), &Targets::all())
        .unwrap();
    assert_eq!(all_trainable(&model.head), Some(false));
    model.mark_trainable(&["head"]).unwrap();
    assert_eq!(all_trainable(&model.head), Some(true));

    model
        .attach("second", &LoraConfig::new(1, 1.0), &Targets::all())
        .unwrap();
    assert_eq!(all_trainable(&model.head), Some(true));

    let dir = tempfile::tempdir().unwrap();
    let paths = burn_lora::PathMap::identity();
    burn_lora::save_adapter(&model, "first", dir.path(), &paths).unwrap();
    burn_lora::load_adapter(&mut model, "third", dir.path(), &paths).unwrap();
    assert_eq!(all_trainable(&model.head), Some(true));
    // The LoRA layer's base stays frozen throughout.
    assert!(!model.body.weight_param().is_require_grad());
}
