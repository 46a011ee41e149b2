//! `load_pytorch_base` (mirrors `src/io/pytorch_base.rs`): a PyTorch state dict loads transposed
//! and bit-identical, keeping the adapters; every bad file is an error naming the key and file,
//! and the model is left exactly as it was.

use crate::common::assert_error::assert_shape_mismatch;
use crate::common::safetensors_io::{raw_mut, state_dict, write_raw, Raw};
use crate::common::snapshot::Snapshot;
use crate::common::{assert_bit_identical, base_model, insert_trained, load_pytorch_base, on_all};
use burn_lora::{LoraConfig, LoraError, LoraModel, PathMap};
use safetensors::Dtype;

#[test]
fn pytorch_base_loads_transposed_and_bit_identical_keeping_adapters() {
    let source = base_model(&[20, 12, 6]);
    let file = tempfile::tempdir().unwrap();
    let path = file.path().join("base.safetensors");
    write_raw(&path, &state_dict(&source));

    let mut model = base_model(&[20, 12, 6]);
    let layers = on_all(&model, &LoraConfig::new(2, 2.0));
    insert_trained(&mut model, "existing", &layers, 11);
    load_pytorch_base(&mut model, &path, &PathMap::identity()).unwrap();
    for (a, b) in source.layers().iter().zip(model.layers()) {
        assert_bit_identical(a.weight(), b.weight());
        assert_bit_identical(a.bias().unwrap(), b.bias().unwrap());
    }
    assert_eq!(model.adapter_names(), vec!["existing"]);
}

/// Writes `source`'s state dict edited by `edit`, loads it into a model with different weights
/// and an adapter, expects an error and checks the model did not change.
fn base_load_fails(edit: impl FnOnce(&mut Vec<Raw>)) -> LoraError {
    let source = base_model(&[20, 12, 6]);
    let mut tensors = state_dict(&source);
    edit(&mut tensors);
    let file = tempfile::tempdir().unwrap();
    let path = file.path().join("base.safetensors");
    write_raw(&path, &tensors);

    let mut model = base_model(&[20, 12, 6]);
    let layers = on_all(&model, &LoraConfig::new(2, 2.0));
    insert_trained(&mut model, "existing", &layers, 12);
    let before = Snapshot::of(&model);
    let err = load_pytorch_base(&mut model, &path, &PathMap::identity()).unwrap_err();
    before.assert_same(&Snapshot::of(&model), &format!("failed with: {err}"));
    assert!(err.to_string().contains("base.safetensors"), "{err}");
    err
}

#[test]
fn pytorch_base_missing_weight_or_bias_is_missing_key_and_changes_nothing() {
    for missing in ["layers.1.weight", "layers.0.bias"] {
        let err = base_load_fails(|t| t.retain(|t| t.key != missing));
        assert!(
            matches!(&err, LoraError::MissingKey { key, .. } if key == missing),
            "{err:?}"
        );
    }
}

#[test]
fn pytorch_base_wrong_shape_is_shape_mismatch_and_changes_nothing() {
    // Burn's orientation [in, out] instead of PyTorch's [out, in].
    let err = base_load_fails(|tensors| {
        let t = raw_mut(tensors, "layers.0.weight");
        t.shape = vec![20, 12];
    });
    assert_shape_mismatch(&err, "layers.0.weight", &[12, 20], &[20, 12]);
}

#[test]
fn pytorch_base_unexpected_key_is_unexpected_key_and_changes_nothing() {
    let err = base_load_fails(|t| t.push(Raw::f32("layers.2.weight", vec![3, 6], &[0.0; 18])));
    assert!(
        matches!(&err, LoraError::UnexpectedKey { key, .. } if key == "layers.2.weight"),
        "{err:?}"
    );
}

#[test]
fn pytorch_base_non_float_or_non_finite_tensor_is_an_error_and_changes_nothing() {
    let err = base_load_fails(|tensors| {
        let t = raw_mut(tensors, "layers.1.bias");
        t.dtype = Dtype::I32;
    });
    assert!(
        matches!(&err, LoraError::UnsupportedDtype { key, .. } if key == "layers.1.bias"),
        "{err:?}"
    );
    let err = base_load_fails(|tensors| {
        let t = raw_mut(tensors, "layers.1.bias");
        t.data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert!(
        matches!(&err, LoraError::NonFinite(what) if what.contains("layers.1.bias")),
        "{err:?}"
    );
}

#[test]
fn pytorch_base_keeps_each_parameters_id_gradient_setting_and_save_mapper() {
    use burn::module::Module;
    use burn::nn::LinearConfig;
    use burn_lora::LoraMlp;

    let device = Default::default();
    // A layer whose weight doubles on save (a Burn parameter mapper the user installed).
    let mut linear = LinearConfig::new(5, 3).init::<crate::common::B>(&device);
    linear.weight = linear.weight.save_mapper(|w| w.mul_scalar(2.0));
    let mut model = LoraMlp::from_linears(vec![linear]).unwrap();
    let id = model.layers()[0].weight_param().id;

    let source = base_model(&[5, 3]);
    let file = tempfile::tempdir().unwrap();
    let path = file.path().join("base.safetensors");
    write_raw(&path, &state_dict(&source));
    load_pytorch_base(&mut model, &path, &PathMap::identity()).unwrap();

    let layer = &model.layers()[0];
    assert_eq!(layer.weight_param().id, id);
    assert_bit_identical(layer.weight(), source.layers()[0].weight());
    // The mapper still applies when the model is saved.
    let record = model.clone().into_record();
    let saved = record.layers[0].weight.val();
    assert_bit_identical(saved, source.layers()[0].weight().mul_scalar(2.0));
}
