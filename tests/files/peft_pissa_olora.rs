//! PiSSA and OLoRA against PEFT (`tests/fixtures/peft/mlp_pissa_olora`, written by
//! `make_pissa_olora.py`: an 8-12-6 MLP, r = 4, alpha = 8 on both layers).
//!
//! The singular vectors (and `Q`'s columns) have arbitrary signs, so the factors themselves may
//! differ from PEFT's by the sign of a rank-one pair; what is compared is what does not depend
//! on them: the initial update `s·A₀ B₀` and the residual base `W − s·A₀ B₀`. Then the adapter
//! PEFT converted after training applies to the original base, and burn-lora's own conversion of
//! a trained adapter reproduces the trained model on the original base.

use std::path::PathBuf;

use burn::module::Module;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_lora::{
    load_adapter, save_adapter, save_adapter_converted, LoraConfig, LoraConv2d, LoraEmbedding,
    LoraError, LoraInit, LoraLayer, LoraMlp, LoraMlpConfig, LoraModel, PathMap, Targets,
    ADAPTER_WEIGHTS_FILE,
};
use serde_json::json;

use crate::common::safetensors_io::{key, read_config, read_tensor};
use crate::common::{load_pytorch_base, max_abs_diff, randn, values, AB, B};

/// PiSSA's SVD runs in `f64` here and in `f32` in PyTorch; the weights and updates are of order
/// 0.1-1, so a few ulps of `f32` apart. A wrong scale, transpose or rank shows as 1e-2 or more.
const TOLERANCE: f32 = 1e-5;

const RANK: usize = 4;
const ALPHA: f64 = 8.0;

/// The two inits with PEFT's names for them.
fn inits() -> [(&'static str, LoraInit); 2] {
    [
        (
            "pissa",
            LoraInit::Pissa {
                power_iterations: None,
            },
        ),
        ("olora", LoraInit::Olora),
    ]
}

fn fixture() -> PathBuf {
    crate::common::existing_peft_fixture("mlp_pissa_olora")
}

/// The fixture's original base on backend `Bk`, no adapter.
fn original<Bk: Backend>() -> LoraMlp<Bk> {
    let mut model = LoraMlpConfig::new(8, vec![12], 6)
        .init::<Bk>(&Default::default())
        .unwrap();
    load_pytorch_base(
        &mut model,
        &fixture().join("base_model.safetensors"),
        &PathMap::identity(),
    )
    .unwrap();
    model
}

fn io(init: &str, name: &str) -> Tensor<B, 2> {
    read_tensor(&fixture().join(init).join("io.safetensors"), name)
}

fn assert_close<Bk: Backend>(what: &str, ours: Tensor<Bk, 2>, theirs: Tensor<Bk, 2>) {
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shapes");
    let diff = max_abs_diff(ours, theirs);
    assert!(diff <= TOLERANCE, "{what}: max |diff| = {diff}");
}

fn config(init: LoraInit) -> LoraConfig {
    LoraConfig::new(RANK, ALPHA).with_init(init)
}

#[test]
fn the_first_update_and_the_residual_base_are_peft_s() {
    let x = io("pissa", "x");
    for (name, init) in inits() {
        let mut model = original::<B>();
        model.attach("p", &config(init), &Targets::all()).unwrap();
        let dir = fixture().join(name);
        let initial = dir.join("initial").join(ADAPTER_WEIGHTS_FILE);
        for (i, layer) in model.layers().iter().enumerate() {
            let module = format!("layers.{i}");
            let a: Tensor<B, 2> = read_tensor(&initial, &key(&module, "lora_A"));
            let b: Tensor<B, 2> = read_tensor(&initial, &key(&module, "lora_B"));
            // PEFT's s·B₀A₀ is [out, in]: burn-lora's update is its transpose.
            let scale = ALPHA / RANK as f64;
            let peft_update = b.matmul(a).mul_scalar(scale).transpose();
            let adapter = layer.adapter("p").unwrap();
            assert!(adapter.rewrote_base());
            assert_close(
                &format!("{name} {module}: s·A₀B₀"),
                adapter.delta_weight(),
                peft_update,
            );
            let residual: Tensor<B, 2> = read_tensor(
                &dir.join("residual.safetensors"),
                &format!("{module}.weight"),
            );
            assert_close(
                &format!("{name} {module}: residual base"),
                layer.weight(),
                residual.transpose(),
            );
        }
        // Residual plus update: the original model's outputs.
        assert_close(
            &format!("{name}: outputs at init"),
            model.forward(x.clone()),
            io(name, "y_base"),
        );
    }
}

#[test]
fn peft_s_converted_adapter_on_the_original_base_gives_peft_s_trained_outputs() {
    for (name, _) in inits() {
        let dir = fixture().join(name).join("converted");
        let config = read_config(&dir);
        assert_eq!(
            config["r"],
            json!(2 * RANK),
            "{name}: PEFT doubled the rank"
        );
        let mut model = original::<B>();
        load_adapter(&mut model, "converted", &dir, &PathMap::identity()).unwrap();
        assert_eq!(model.layers()[0].adapter("converted").unwrap().rank(), 8);
        let (x, trained) = (io(name, "x"), io(name, "y_trained"));
        assert!(max_abs_diff(trained.clone(), io(name, "y_base")) > 0.1);
        assert_close(
            &format!("{name}: converted on the original base"),
            model.forward(x),
            trained,
        );
    }
}

/// Three SGD steps of the adapter towards a random target: the factors move away from the
/// initial ones.
fn trained(mut model: LoraMlp<AB>) -> LoraMlp<AB> {
    let x = randn::<AB, 2>([6, 8], 5);
    let target = randn::<AB, 2>([6, 6], 6);
    let mut optim = SgdConfig::new().init();
    for _ in 0..3 {
        let loss = (model.forward(x.clone()) - target.clone())
            .powi_scalar(2)
            .mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.5, model, grads);
    }
    model
}

#[test]
fn a_trained_adapter_saved_converted_reproduces_the_model_on_the_original_base() {
    let x = randn::<AB, 2>([7, 8], 9);
    for (name, init) in inits() {
        let mut model = original::<AB>();
        model.attach("p", &config(init), &Targets::all()).unwrap();
        let model = trained(model);
        let layer = &model.layers()[0];
        let adapter = layer.adapter("p").unwrap();
        let (initial_a, _) = adapter.initial_factors().unwrap();
        assert!(max_abs_diff(adapter.lora_a(), initial_a.clone()) > 1e-3);
        // The base stayed frozen: still the residual.
        assert!(!layer.weight_param().is_require_grad());

        let dir = tempfile::tempdir().unwrap();
        save_adapter_converted(&model, "p", dir.path(), &PathMap::identity()).unwrap();
        // PEFT's converted config: twice the rank and alpha, a plain init.
        let written = read_config(dir.path());
        let peft = read_config(&fixture().join(name).join("converted"));
        for field in ["r", "lora_alpha", "init_lora_weights", "use_rslora"] {
            assert_eq!(written[field], peft[field], "{name}: {field}");
        }
        // A' = [A | A₀]: PEFT's lora_A rows r..2r are A₀ᵀ.
        let file_a: Tensor<B, 2> = read_tensor(
            &dir.path().join(ADAPTER_WEIGHTS_FILE),
            &key("layers.0", "lora_A"),
        );
        let file_a = Tensor::<AB, 2>::from_data(file_a.into_data(), &Default::default());
        assert_close(
            &format!("{name}: A₀ in the converted A"),
            file_a.slice([RANK..2 * RANK, 0..8]).transpose(),
            initial_a,
        );

        let mut plain = original::<AB>();
        load_adapter(&mut plain, "c", dir.path(), &PathMap::identity()).unwrap();
        assert_close(
            &format!("{name}: converted adapter on the original base"),
            plain.forward(x.clone()),
            model.forward(x.clone()),
        );
        // Saved without conversion, the file says PEFT's init, and loading it on the original
        // base rebuilds the residual, as PEFT does.
        let residual_dir = tempfile::tempdir().unwrap();
        save_adapter(&model, "p", residual_dir.path(), &PathMap::identity()).unwrap();
        assert_eq!(
            read_config(residual_dir.path())["init_lora_weights"],
            json!(name)
        );
        let mut reloaded = original::<AB>();
        load_adapter(
            &mut reloaded,
            "p",
            residual_dir.path(),
            &PathMap::identity(),
        )
        .unwrap();
        assert_close(
            &format!("{name}: reloaded on the original base"),
            reloaded.forward(x.clone()),
            model.forward(x.clone()),
        );
    }
}

/// PEFT's own save of a trained PiSSA or OLoRA adapter (for the residual base, its config naming
/// the init) loads on the original checkpoint: the residual is rebuilt from it, as PEFT does,
/// and the model gives PEFT's trained outputs; converted, it gives them again on the original
/// base.
#[test]
fn peft_s_trained_adapter_loads_on_the_original_base() {
    for (name, _) in inits() {
        let (x, trained) = (io(name, "x"), io(name, "y_trained"));
        let mut model = original::<B>();
        load_adapter(
            &mut model,
            "p",
            &fixture().join(name).join("trained"),
            &PathMap::identity(),
        )
        .unwrap();
        assert!(model.layers()[0].adapter("p").unwrap().rewrote_base());
        assert_close(
            &format!("{name}: PEFT's trained adapter"),
            model.forward(x.clone()),
            trained.clone(),
        );
        let dir = tempfile::tempdir().unwrap();
        save_adapter_converted(&model, "p", dir.path(), &PathMap::identity()).unwrap();
        let mut plain = original::<B>();
        load_adapter(&mut plain, "c", dir.path(), &PathMap::identity()).unwrap();
        assert_close(
            &format!("{name}: converted again"),
            plain.forward(x),
            trained,
        );
    }
}

/// A randomised SVD's residual (`pissa_niter_k`) cannot be rebuilt from the checkpoint: loading
/// such a file is refused with an error that names the conversion, and changes nothing.
#[test]
fn a_randomised_pissa_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture().join("pissa").join("trained");
    for file in [ADAPTER_WEIGHTS_FILE, burn_lora::ADAPTER_CONFIG_FILE] {
        std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
    }
    crate::common::safetensors_io::edit_config(dir.path(), |config| {
        config.insert("init_lora_weights".into(), json!("pissa_niter_4"));
    });
    let mut model = original::<B>();
    let before = values(model.layers()[0].weight());
    let err = load_adapter(&mut model, "p", dir.path(), &PathMap::identity()).unwrap_err();
    assert!(
        matches!(err, LoraError::Unsupported(ref why) if why.contains("save_adapter_converted")),
        "{err:?}"
    );
    assert_eq!(values(model.layers()[0].weight()), before);
    assert!(model.adapter_names().is_empty());
}

#[test]
fn removing_the_adapter_gives_the_original_base_back() {
    for (name, init) in inits() {
        let reference = original::<B>();
        let mut model = original::<B>();
        model.attach("p", &config(init), &Targets::all()).unwrap();
        assert!(max_abs_diff(model.layers()[1].weight(), reference.layers()[1].weight()) > 1e-2);
        model.remove_adapter("p").unwrap();
        for (ours, theirs) in model.layers().iter().zip(reference.layers()) {
            assert!(ours.adapters().is_empty());
            let diff = max_abs_diff(ours.weight(), theirs.weight());
            assert!(diff <= 1e-6, "{name}: the base came back within {diff}");
        }
    }
}

#[test]
fn a_record_keeps_the_first_factors() {
    let (name, init) = inits()[0].clone();
    let mut model = original::<B>();
    model.attach("p", &config(init), &Targets::all()).unwrap();
    let restored = original::<B>().load_record(model.clone().into_record());
    for (ours, theirs) in restored.layers().iter().zip(model.layers()) {
        let (a, b) = ours.adapter("p").unwrap().initial_factors().unwrap();
        let (a0, b0) = theirs.adapter("p").unwrap().initial_factors().unwrap();
        assert_eq!(values(a), values(a0), "{name}");
        assert_eq!(values(b), values(b0), "{name}");
        assert_eq!(values(ours.weight()), values(theirs.weight()), "{name}");
    }
}

/// Refusals leave the model as it was: its base bit for bit and its adapters.
#[test]
fn inits_that_cannot_apply_are_refused_and_change_nothing() {
    let pissa = || config(inits()[0].1.clone());
    let unchanged = |model: &LoraMlp<B>, before: &LoraMlp<B>, what: &str| {
        for (ours, theirs) in model.layers().iter().zip(before.layers()) {
            assert_eq!(values(ours.weight()), values(theirs.weight()), "{what}");
            assert_eq!(ours.adapter_names(), theirs.adapter_names(), "{what}");
        }
    };

    // A rank above the second layer's min(12, 6): refused before the first layer changes.
    let mut model = original::<B>();
    let before = model.clone();
    let err = model
        .attach(
            "p",
            &LoraConfig::new(7, ALPHA).with_init(LoraInit::Olora),
            &Targets::all(),
        )
        .unwrap_err();
    assert!(matches!(err, LoraError::RankTooLarge { .. }), "{err:?}");
    unchanged(&model, &before, "rank 7");

    // Over another adapter, which was made for the base PiSSA would rewrite.
    model
        .attach("plain", &LoraConfig::new(2, 2.0), &Targets::all())
        .unwrap();
    let before = model.clone();
    let err = model.attach("p", &pissa(), &Targets::all()).unwrap_err();
    assert!(
        matches!(err, LoraError::Unsupported(ref why) if why.contains("attach it first")),
        "{err:?}"
    );
    unchanged(&model, &before, "over an adapter");

    // With DoRA, and with a zero scale.
    let mut model = original::<B>();
    let before = model.clone();
    let err = model
        .attach("p", &pissa().with_use_dora(true), &Targets::all())
        .unwrap_err();
    assert!(matches!(err, LoraError::Unsupported(_)), "{err:?}");
    let err = model
        .attach(
            "p",
            &LoraConfig::new(RANK, 0.0).with_init(LoraInit::Olora),
            &Targets::all(),
        )
        .unwrap_err();
    assert!(matches!(err, LoraError::Unsupported(_)), "{err:?}");
    unchanged(&model, &before, "DoRA, alpha 0");

    // Embeddings and convolutions: PiSSA and OLoRA factor a linear layer's weight.
    let device = Default::default();
    let mut embedding =
        LoraEmbedding::<B>::from_embedding(burn::nn::EmbeddingConfig::new(20, 8).init(&device));
    for (_, init) in inits() {
        let err = embedding.add_adapter("p", &config(init)).unwrap_err();
        assert!(matches!(err, LoraError::Unsupported(_)), "{err:?}");
    }
    let mut conv = LoraConv2d::<B>::from_conv2d(
        burn::nn::conv::Conv2dConfig::new([4, 6], [3, 3]).init(&device),
    );
    let weight = values(conv.weight());
    for (_, init) in inits() {
        let err = conv.add_adapter("p", &config(init)).unwrap_err();
        assert!(matches!(err, LoraError::Unsupported(_)), "{err:?}");
    }
    assert!(embedding.adapters().is_empty() && conv.adapters().is_empty());
    assert_eq!(values(conv.weight()), weight);
}

/// The randomised SVD (PEFT's `pissa_niter_k`) keeps `W_res + s·A B = W` exactly as the exact
/// one does, and names itself in the saved config.
#[test]
fn the_randomised_svd_keeps_the_outputs_and_is_saved_as_peft_names_it() {
    let x = io("pissa", "x");
    let mut model = original::<B>();
    let init = LoraInit::Pissa {
        power_iterations: Some(4),
    };
    model.attach("p", &config(init), &Targets::all()).unwrap();
    assert_close(
        "pissa_niter_4: outputs",
        model.forward(x),
        io("pissa", "y_base"),
    );
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, "p", dir.path(), &PathMap::identity()).unwrap();
    assert_eq!(
        read_config(dir.path())["init_lora_weights"],
        json!("pissa_niter_4")
    );
}
