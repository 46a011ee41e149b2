//! QLoRA's quantized frozen base (`LoraLinear::quantize_base`, `LoraModel::quantize_base`): a
//! quantized layer computes, trains, saves and loads as the same layer whose float base holds
//! the dequantized values (`dequantize_base`), bit for bit on the CPU; the memory it reports;
//! and every refusal leaves the model as it was.

use crate::common::safetensors_io::assert_same_adapter_tensors;
use crate::common::{
    assert_bit_identical, assert_same_up_to_reduction_order, base_model, insert_trained, on_all,
    probe, randn, values, AB, B,
};
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::quantization::{QuantLevel, QuantParam, QuantScheme, QuantValue};
use burn::tensor::Tensor;
use burn_lora::{
    save_adapter, LoraConfig, LoraError, LoraInit, LoraLayer, LoraMlp, LoraModel, PathMap, Targets,
};
use burn_lora_kernels::with_fast_paths;

/// Widths `[64, 64, 32]`: two layers whose outputs (64 and 32) blocks of 32 divide.
const WIDTHS: [usize; 3] = [64, 64, 32];

fn scheme(value: QuantValue, level: QuantLevel) -> QuantScheme {
    QuantScheme::default().with_value(value).with_level(level)
}

fn q4_blocks() -> QuantScheme {
    scheme(QuantValue::Q4S, QuantLevel::block([32]))
}

fn config() -> LoraConfig {
    LoraConfig::new(4, 8.0)
}

/// A model with a trained adapter on both layers.
fn adapted() -> LoraMlp<B> {
    let mut model = base_model(&WIDTHS);
    let layers = on_all(&model, &config());
    insert_trained(&mut model, "task", &layers, 7);
    model
}

/// `model` quantized with `scheme`, and its twin whose float base holds the dequantized values.
fn quantized_and_twin<Bk: Backend>(
    model: &LoraMlp<Bk>,
    scheme: QuantScheme,
) -> (LoraMlp<Bk>, LoraMlp<Bk>) {
    let mut quantized = model.clone();
    quantized.quantize_base(scheme).unwrap();
    let mut twin = quantized.clone();
    twin.dequantize_base();
    (quantized, twin)
}

fn schemes() -> [QuantScheme; 4] {
    [
        scheme(QuantValue::Q8S, QuantLevel::Tensor),
        scheme(QuantValue::Q8F, QuantLevel::block([32])),
        scheme(QuantValue::Q4S, QuantLevel::Tensor),
        q4_blocks(),
    ]
}

#[test]
fn a_quantized_base_computes_lora_on_the_dequantized_weight() {
    let model = adapted();
    let x = probe(WIDTHS[0]);
    for scheme in schemes() {
        let (quantized, twin) = quantized_and_twin(&model, scheme);
        for layer in quantized.layers() {
            assert_eq!(layer.base_quantization(), Some(scheme));
        }
        assert!(twin
            .layers()
            .iter()
            .all(|l| l.base_quantization().is_none()));
        // Inside the fast paths (one fused node) and outside (the dequantized weight as a tensor).
        let fused = |m: &LoraMlp<B>| with_fast_paths::<B, _>(|| m.forward(x.clone()));
        assert_same_up_to_reduction_order(fused(&quantized), fused(&twin));
        assert_same_up_to_reduction_order(quantized.forward(x.clone()), twin.forward(x.clone()));
        // Quantizing changed the output, by the error it introduced only.
        let error = values(model.forward(x.clone()) - quantized.forward(x.clone()));
        assert!(error.iter().any(|e| *e != 0.0), "{scheme:?}");
        // Disabled: the base alone.
        let (mut quantized, mut twin) = (quantized, twin);
        quantized.set_enabled(false);
        twin.set_enabled(false);
        assert_same_up_to_reduction_order(quantized.forward(x.clone()), twin.forward(x.clone()));
    }
}

#[test]
fn several_active_adapters_add_up_on_a_quantized_base() {
    let mut model = adapted();
    let layers = on_all(&model, &config());
    insert_trained(&mut model, "other", &layers, 21);
    for layer in 0..2 {
        let layer = model.layer_mut(layer).unwrap();
        layer.set_active_adapters(&["task", "other"]).unwrap();
    }
    let (quantized, twin) = quantized_and_twin(&model, q4_blocks());
    let x = probe(WIDTHS[0]);
    let run = |m: &LoraMlp<B>| with_fast_paths::<B, _>(|| m.forward(x.clone()));
    assert_same_up_to_reduction_order(run(&quantized), run(&twin));
}

/// Three Adam steps on the quantized model and on its dequantized twin leave the same adapters,
/// bit for bit on the CPU: the quantized node's gradients are those of the float weight it
/// dequantizes. The base stays quantized and frozen through the optimizer.
#[test]
fn training_on_a_quantized_base_matches_the_dequantized_float_base() {
    let device = Default::default();
    let mut model = LoraMlp::<AB>::from_inner(base_model(&WIDTHS));
    model.attach("task", &config(), &Targets::all()).unwrap();
    let (mut quantized, mut twin) = quantized_and_twin(&model, q4_blocks());
    let x = randn::<AB, 2>([16, WIDTHS[0]], 3);
    let target = randn::<AB, 2>([16, WIDTHS[2]], 4);
    let mut optims = [
        AdamConfig::new().init::<AB, LoraMlp<AB>>(),
        AdamConfig::new().init::<AB, LoraMlp<AB>>(),
    ];
    for _ in 0..3 {
        let [q, t] = &mut optims;
        quantized = adam_step(quantized, q, &x, &target);
        twin = adam_step(twin, t, &x, &target);
    }
    for (q, t) in quantized.layers().iter().zip(twin.layers()) {
        assert_eq!(q.base_quantization(), Some(q4_blocks()));
        assert!(!q.weight_param().is_require_grad());
        let (qa, ta) = (q.adapter("task").unwrap(), t.adapter("task").unwrap());
        assert_same_up_to_reduction_order(qa.lora_a().inner(), ta.lora_a().inner());
        assert_same_up_to_reduction_order(qa.lora_b().inner(), ta.lora_b().inner());
        assert!(
            values(qa.lora_b().inner()).iter().any(|v| *v != 0.0),
            "B trained"
        );
    }
    // `valid()` keeps the quantized base.
    let inference = quantized.valid();
    assert!(inference
        .layers()
        .iter()
        .all(|l| l.base_quantization().is_some()));
    let x = Tensor::<B, 2>::ones([2, WIDTHS[0]], &device);
    assert_same_up_to_reduction_order(inference.forward(x.clone()), twin.valid().forward(x));
}

fn adam_step(
    model: LoraMlp<AB>,
    optim: &mut impl Optimizer<LoraMlp<AB>, AB>,
    x: &Tensor<AB, 2>,
    target: &Tensor<AB, 2>,
) -> LoraMlp<AB> {
    let output = with_fast_paths::<AB, _>(|| model.forward(x.clone()));
    let loss = (output - target.clone()).powi_scalar(2).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    optim.step(1e-2, model, grads)
}

#[test]
fn the_report_gives_the_bytes_and_the_error_quantizing_introduced() {
    let model = adapted();
    let weights = WIDTHS[0] * WIDTHS[1] + WIDTHS[1] * WIDTHS[2];
    for (scheme, bytes) in [
        // 8 bits per value and one f32 scale per layer.
        (schemes()[0], weights + 2 * 4),
        // 4 bits per value and one f32 scale per 32 values.
        (q4_blocks(), weights / 2 + weights / 32 * 4),
    ] {
        let mut quantized = model.clone();
        let report = quantized.quantize_base(scheme).unwrap();
        assert_eq!(report.layers, 2);
        assert_eq!(report.float_bytes, 4 * weights);
        assert_eq!(report.quantized_bytes, bytes);
        let largest = model
            .layers()
            .iter()
            .zip(quantized.layers())
            .map(|(f, q)| {
                let (f, q) = (values(f.weight()), values(q.weight()));
                f.iter()
                    .zip(&q)
                    .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
            })
            .fold(0.0f32, f32::max);
        assert_eq!(report.max_abs_error, largest);
        assert!(largest > 0.0);
        assert!(report.to_string().starts_with("2 base weights quantized"));
    }
}

fn assert_unchanged(model: &LoraMlp<B>, before: &LoraMlp<B>) {
    let x = probe(WIDTHS[0]);
    // Bit for bit on the CPU; a GPU may pick another kernel for the same product.
    assert_same_up_to_reduction_order(model.forward(x.clone()), before.forward(x));
    for (now, then) in model.layers().iter().zip(before.layers()) {
        assert_eq!(now.base_quantization(), then.base_quantization());
        assert_eq!(now.adapter_names(), then.adapter_names());
        assert_eq!(now.is_merged(), then.is_merged());
    }
}

#[test]
fn what_needs_the_float_weight_is_refused_while_quantized() {
    let (mut quantized, _) = quantized_and_twin(&adapted(), q4_blocks());
    let before = quantized.clone();
    let unsupported = |result: Result<(), LoraError>, what: &str| match result {
        Err(LoraError::Unsupported(message)) => {
            assert!(message.contains("dequantize_base"), "{what}: {message}")
        }
        other => panic!("{what}: {other:?}"),
    };
    unsupported(quantized.merge(), "merge");
    assert_unchanged(&quantized, &before);
    unsupported(quantized.merge_and_unload().map(|_| ()), "merge_and_unload");
    let layer = quantized.layer_mut(0).unwrap();
    unsupported(layer.merge_and_unload(), "layer merge_and_unload");
    let dora = config().with_use_dora(true);
    unsupported(layer.add_adapter("dora", &dora), "DoRA");
    let pissa = config().with_init(LoraInit::Pissa {
        power_iterations: None,
    });
    layer.remove_adapter("task").unwrap();
    unsupported(layer.add_adapter("pissa", &pissa), "PiSSA");
    // Already quantized.
    let mut again = before.clone();
    assert!(matches!(
        again.quantize_base(q4_blocks()),
        Err(LoraError::Quantize(_))
    ));
    assert_unchanged(&again, &before);
    // A float copy merges: dequantize_base, then merge, as the refusals say.
    let mut float = before.clone();
    float.dequantize_base();
    let x = probe(WIDTHS[0]);
    let expected = float.forward(x.clone());
    float.merge().unwrap();
    let merged = float.forward(x);
    assert!(crate::common::max_abs_diff(merged, expected) < 1e-5);
}

#[test]
fn quantizing_is_all_or_nothing() {
    let model = adapted();
    let refused = |model: &LoraMlp<B>, scheme: QuantScheme| {
        let mut copy = model.clone();
        let result = copy.quantize_base(scheme);
        assert!(
            matches!(result, Err(LoraError::Quantize(_))),
            "{scheme:?}: {result:?}"
        );
        assert_unchanged(&copy, model);
    };
    // Blocks of 64 divide the first layer's outputs (64), not the second's (32).
    refused(&model, scheme(QuantValue::Q8S, QuantLevel::block([64])));
    // Schemes burn-lora does not hold.
    refused(&model, scheme(QuantValue::Q2S, QuantLevel::Tensor));
    refused(&model, q4_blocks().with_param(QuantParam::F16));
    refused(&model, scheme(QuantValue::E4M3, QuantLevel::Tensor));
    // Layers that need their float weight: merged, DoRA.
    let mut merged = model.clone();
    merged.merge().unwrap();
    refused(&merged, q4_blocks());
    let mut dora = base_model(&WIDTHS);
    dora.attach("dora", &config().with_use_dora(true), &Targets::all())
        .unwrap();
    refused(&dora, q4_blocks());
    // A weight that is not finite.
    let mut broken = model.clone();
    let layer = broken.layer_mut(1).unwrap();
    let weight = layer.weight().slice_fill([0..1, 0..1], f32::NAN);
    *layer = burn_lora::LoraLinear::from_linear(burn::nn::Linear {
        weight: burn::module::Param::from_tensor(weight),
        bias: layer.bias().map(burn::module::Param::from_tensor),
    });
    let mut copy = broken.clone();
    assert!(matches!(
        copy.quantize_base(q4_blocks()),
        Err(LoraError::Quantize(_))
    ));
    assert!(copy
        .layers()
        .iter()
        .all(|l| l.base_quantization().is_none()));
}

/// Adapter files are the same whether the base is quantized or not; a record of a quantized
/// model holds the dequantized base, and a record loaded into a quantized model is quantized.
#[test]
fn files_and_records_are_those_of_a_float_base() {
    let (quantized, twin) = quantized_and_twin(&adapted(), q4_blocks());
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    save_adapter(&quantized, "task", dirs.0.path(), &PathMap::identity()).unwrap();
    save_adapter(&twin, "task", dirs.1.path(), &PathMap::identity()).unwrap();
    assert_same_adapter_tensors(dirs.0.path(), dirs.1.path());

    // The quantized model's record loads into a float model as the dequantized base.
    let float = base_model(&WIDTHS).load_record(quantized.clone().into_record());
    for (f, t) in float.layers().iter().zip(twin.layers()) {
        assert!(f.base_quantization().is_none());
        assert_bit_identical(f.weight(), t.weight());
    }
    // A float record loaded into a quantized model: quantized with the same scheme.
    let other = adapted();
    let loaded = quantized.clone().load_record(other.clone().into_record());
    let (expected, _) = quantized_and_twin(&other, q4_blocks());
    for (l, e) in loaded.layers().iter().zip(expected.layers()) {
        assert_eq!(l.base_quantization(), Some(q4_blocks()));
        assert_bit_identical(l.weight(), e.weight());
    }
    // Visitors see the base's parameter: counts and ids as for the float model.
    assert_eq!(quantized.num_params(), twin.num_params());
    for (q, t) in quantized.layers().iter().zip(twin.layers()) {
        assert_eq!(q.weight_param().id, t.weight_param().id);
        assert_bit_identical(q.weight_param().val(), t.weight());
    }
}

/// A checkpoint loaded through Burn's mappers cannot reach a quantized base: the load is refused
/// and the model left as it was, instead of keeping the old weights silently.
#[test]
fn a_checkpoint_load_into_a_quantized_base_is_refused() {
    use crate::common::load_pytorch_base;
    use crate::common::safetensors_io::{state_dict, write_raw};

    let source = base_model(&WIDTHS);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base.safetensors");
    write_raw(&path, &state_dict(&source));
    let (mut quantized, mut twin) = quantized_and_twin(&adapted(), q4_blocks());
    let before = quantized.clone();
    match load_pytorch_base(&mut quantized, &path, &PathMap::identity()) {
        Err(LoraError::Unsupported(message)) => {
            assert!(message.contains("quantize_base"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_unchanged(&quantized, &before);
    // The float twin loads, as the message says.
    load_pytorch_base(&mut twin, &path, &PathMap::identity()).unwrap();
    for (s, t) in source.layers().iter().zip(twin.layers()) {
        assert_bit_identical(s.weight(), t.weight());
    }
}
