//! `CausalLm::save_adapter_gguf` (mirrors `src/nn/llama/gguf_adapter.rs`): a PEFT adapter saved
//! for llama.cpp is, tensor for tensor and bit for bit, what llama.cpp's `convert_lora_to_gguf.py`
//! makes of it (`tests/fixtures/gguf/make_llama_tiny_adapter_gguf.py`), and an adapter whose
//! scale llama.cpp cannot state (rsLoRA, per-module alphas) still gives its own update there.

use std::path::PathBuf;

use crate::common::B;
use burn::tensor::Tensor;
use burn_lora::nn::llama::CausalLm;
use burn_lora::{load_adapter, GgufFile, LoraError, LoraModel, PathMap};
use burn_lora_support::fixtures::repository_root;
use burn_lora_support::testing::max_abs_diff_values;

fn fixture(path: &str) -> PathBuf {
    repository_root().join("tests/fixtures").join(path)
}

fn f32s(file: &GgufFile, name: &str) -> Vec<f32> {
    file.tensor_data(name).unwrap().to_vec().unwrap()
}

#[test]
fn a_peft_adapter_saved_for_llama_cpp_is_what_llama_cpp_s_converter_writes() {
    let device = Default::default();
    let mut lm = CausalLm::<B>::from_gguf(&fixture("gguf/llama_tiny.gguf"), &device).unwrap();
    load_adapter(
        &mut lm,
        "a",
        &fixture("peft/llama_tiny/adapter_a"),
        &PathMap::identity(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter.gguf");
    lm.save_adapter_gguf("a", &path).unwrap();

    let ours = GgufFile::open(&path).unwrap();
    let theirs = GgufFile::open(&fixture("gguf/llama_tiny_adapter_a.gguf")).unwrap();
    for key in [
        "general.architecture",
        "general.type",
        "adapter.type",
        "adapter.lora.alpha",
    ] {
        assert_eq!(ours.get(key), theirs.get(key), "{key}");
    }
    let mut names: Vec<&String> = ours.tensors().keys().collect();
    let mut expected: Vec<&String> = theirs.tensors().keys().collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected);
    for name in expected {
        let (a, b) = (&ours.tensors()[name], &theirs.tensors()[name]);
        assert_eq!(
            (a.shape(), a.type_name()),
            (b.shape(), b.type_name()),
            "{name}"
        );
        let same = f32s(&ours, name)
            .iter()
            .zip(f32s(&theirs, name))
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{name}: not the converter's values");
    }
}

/// `scale · B·A` of llama.cpp's adapter file for module `module` (`blk.0.attn_v`), as llama.cpp
/// applies it: `alpha / r` times `lora_b [out, r]` times `lora_a [r, in]`, `[out, in]`.
fn llama_cpp_update(file: &GgufFile, module: &str) -> Tensor<B, 2> {
    let alpha = file
        .get("adapter.lora.alpha")
        .and_then(|v| v.as_f64())
        .unwrap();
    let a = file
        .tensor_data(&format!("{module}.weight.lora_a"))
        .unwrap();
    let b = file
        .tensor_data(&format!("{module}.weight.lora_b"))
        .unwrap();
    let rank = a.shape[0];
    let device = Default::default();
    let a = Tensor::<B, 2>::from_data(a, &device);
    let b = Tensor::<B, 2>::from_data(b, &device);
    b.matmul(a).mul_scalar(alpha / rank as f64)
}

#[test]
fn scales_llama_cpp_cannot_state_are_folded_into_b() {
    let device = Default::default();
    let model = fixture("peft/qwen2_tiny");
    let mut lm = CausalLm::<B>::from_pretrained(&model, &device).unwrap();
    // PEFT's rsLoRA adapter: scale alpha / sqrt(r) = 4 where llama.cpp applies alpha / r = 2.
    load_adapter(
        &mut lm,
        "rs",
        &model.join("adapter_a"),
        &PathMap::identity(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rs.gguf");
    lm.save_adapter_gguf("rs", &path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(
        file.get("general.architecture").and_then(|v| v.as_str()),
        Some("qwen2")
    );

    let paths = burn_lora::lora_layer_paths(&lm).unwrap();
    let mut compared = 0;
    for (layer, path) in lm.lora_layers().into_iter().zip(&paths) {
        let Some(adapter) = layer.adapter("rs") else {
            continue;
        };
        assert!(adapter.config().use_rslora);
        // model.layers.N.<module> is blk.N.<llama.cpp module>.
        let rest = path.strip_prefix("model.layers.").unwrap();
        let (n, module) = rest.split_once('.').unwrap();
        let ours = match module {
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            other => panic!("unexpected module {other}"),
        };
        let expected = adapter.delta_weight(); // [in, out]
        let written = llama_cpp_update(&file, &format!("blk.{n}.{ours}")).transpose();
        let expected: Vec<f32> = expected.into_data().to_vec().unwrap();
        let written: Vec<f32> = written.into_data().to_vec().unwrap();
        let worst = max_abs_diff_values(&expected, &written);
        let largest = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(largest > 1e-3, "{path}: a zero update shows nothing");
        assert!(worst <= 1e-6 * largest.max(1.0), "{path}: off by {worst}");
        compared += 1;
    }
    assert!(compared >= 7, "{compared} modules compared");

    assert!(matches!(
        lm.save_adapter_gguf("absent", &path).unwrap_err(),
        LoraError::UnknownAdapter(name) if name == "absent"
    ));
}

#[test]
fn embedding_adapters_take_llama_cpp_s_layout_and_dora_is_refused() {
    let device = Default::default();
    let mut lm = CausalLm::<B>::from_gguf(&fixture("gguf/llama_tiny.gguf"), &device).unwrap();
    let config = burn_lora::LoraConfig::new(2, 4.0);
    lm.attach("emb", &config, &burn_lora::Targets::names(["embed_tokens"]))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("emb.gguf");
    lm.save_adapter_gguf("emb", &path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    // llama.cpp's embedding lookup takes A as [vocabulary, r] and B as [d, r] (PyTorch order).
    assert_eq!(file.tensors()["token_embd.weight.lora_a"].shape(), [256, 2]);
    assert_eq!(file.tensors()["token_embd.weight.lora_b"].shape(), [64, 2]);

    let dora = burn_lora::LoraConfig::new(2, 4.0).with_use_dora(true);
    lm.attach("dora", &dora, &burn_lora::Targets::names(["q_proj"]))
        .unwrap();
    let err = lm.save_adapter_gguf("dora", &path).unwrap_err();
    assert!(
        matches!(&err, LoraError::Unsupported(what) if what.contains("DoRA")),
        "{err:?}"
    );
}
