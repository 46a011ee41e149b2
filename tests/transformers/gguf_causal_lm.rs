//! `CausalLm::from_gguf` (mirrors `src/nn/llama/gguf.rs`): a Llama written as llama.cpp's
//! converter writes it (q/k rows permuted, tensors in eight ggml types;
//! `tests/fixtures/gguf/make_llama_tiny_gguf.py`) loads as transformers' own GGUF loader loads it,
//! and a real SmolLM2-135M-Instruct Q4_1 file (`SMOLLM2_GGUF_DIR`, the folder
//! `../shared/models/SmolLM2-135M-Instruct-Q4_1`) reproduces transformers: every tensor, the
//! tokenizer's ids, the logits and a greedy generation.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::common::safetensors_io::read_raw;
use crate::common::snapshot::ParamSnapshot;
use crate::common::{large_data, B};
use burn::tensor::{Int, Tensor, TensorData};
use burn_lora::nn::llama::{CausalLm, CausalLmConfig, CausalLmInput, GenerationConfig};
use burn_lora::{load_adapter, GgufFile, LoraError, PathMap};
use burn_lora_support::fixtures::repository_root;
use burn_lora_support::testing::max_abs_diff_values;

fn gguf_fixture(name: &str) -> PathBuf {
    let path = repository_root().join("tests/fixtures/gguf").join(name);
    assert!(path.exists(), "{} is missing", path.display());
    path
}

fn tensor_ids(rows: Vec<i64>, shape: [usize; 2]) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(rows, shape), &Default::default())
}

fn values(tensor: Tensor<B, 3>) -> Vec<f32> {
    tensor.into_data().to_vec().unwrap()
}

#[test]
fn a_llama_cpp_gguf_loads_as_transformers_loads_it() {
    let device = Default::default();
    let gguf = CausalLm::<B>::from_gguf(&gguf_fixture("llama_tiny.gguf"), &device).unwrap();
    // transformers' dequantized, un-permuted weights, saved as a Hugging Face folder.
    let dequantized = gguf_fixture("llama_tiny_dequantized");
    let folder = CausalLm::<B>::from_pretrained(&dequantized, &device).unwrap();
    let (ours, theirs) = (ParamSnapshot::of(&gguf), ParamSnapshot::of(&folder));
    assert_eq!(ours.params.len(), theirs.params.len());
    for (a, b) in ours.params.iter().zip(&theirs.params) {
        assert_eq!((&a.path, &a.shape), (&b.path, &b.shape));
        assert!(a.bits == b.bits, "{}: not transformers' values", a.path);
    }

    // The config from the GGUF metadata is the folder's.
    let from_gguf =
        CausalLmConfig::from_gguf(&GgufFile::open(&gguf_fixture("llama_tiny.gguf")).unwrap())
            .unwrap();
    let from_json = CausalLmConfig::from_hf_json(&dequantized.join("config.json")).unwrap();
    // GGUF stores the epsilon as an f32 (1e-6 is 9.99999997e-7 there, as transformers reads
    // it too); the norm adds it in f32 either way.
    assert_eq!(from_gguf.rms_norm_eps as f32, from_json.rms_norm_eps as f32);
    let from_gguf = from_gguf.with_rms_norm_eps(from_json.rms_norm_eps);
    assert_eq!(format!("{from_gguf:?}"), format!("{from_json:?}"));

    // transformers' logits on the prompts, from the GGUF file.
    let reference = read_raw(&dequantized.join("logits.safetensors"));
    let find = |key: &str| reference.iter().find(|t| t.key == key).unwrap();
    let prompts = find("prompts").to_int_tensor::<2>();
    let logits = values(gguf.forward(CausalLmInput::new(prompts)).unwrap());
    let expected = find("logits").f32_values();
    let worst = max_abs_diff_values(&logits, &expected);
    assert!(worst < 1e-5, "logits differ from transformers' by {worst}");
}

#[test]
fn bad_gguf_files_are_errors_and_a_failed_load_changes_nothing() {
    let device = Default::default();
    let bytes = std::fs::read(gguf_fixture("llama_tiny.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");

    // Another architecture.
    let arch = bytes.windows(5).position(|w| w == b"llama").unwrap();
    let mut other = bytes.clone();
    other[arch..arch + 5].copy_from_slice(b"gemma");
    std::fs::write(&path, &other).unwrap();
    let err = CausalLm::<B>::from_gguf(&path, &device).unwrap_err();
    assert!(
        matches!(&err, LoraError::Unsupported(what) if what.contains("gemma")),
        "{err:?}"
    );

    // Truncated in the data.
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    assert!(matches!(
        CausalLm::<B>::from_gguf(&path, &device).unwrap_err(),
        LoraError::InvalidFile { .. }
    ));

    // A value turned NaN in the last tensor read: loading into a model fails and leaves it as
    // it was.
    let mut lm = CausalLm::<B>::from_gguf(&gguf_fixture("llama_tiny.gguf"), &device).unwrap();
    let before = ParamSnapshot::of(&lm);
    let gguf = GgufFile::open(&gguf_fixture("llama_tiny.gguf")).unwrap();
    let last = gguf.tensors().values().last().unwrap();
    assert_eq!(last.type_name(), "Q4_1");
    let mut damaged = bytes.clone();
    // A Q4_1 block starts with its f16 scale: 0x7E00 is NaN.
    let end = bytes.len() - last.byte_len();
    damaged[end..end + 2].copy_from_slice(&0x7E00u16.to_le_bytes());
    std::fs::write(&path, &damaged).unwrap();
    let err = lm
        .load_gguf_weights(&GgufFile::open(&path).unwrap())
        .unwrap_err();
    assert!(matches!(&err, LoraError::NonFinite(_)), "{err:?}");
    assert_eq!(ParamSnapshot::of(&lm), before);
}

/// The values of an I64 tensor of a safetensors file.
fn int_values(raw: &crate::common::safetensors_io::Raw) -> Vec<i64> {
    assert_eq!(raw.dtype, safetensors::Dtype::I64, "{}", raw.key);
    raw.data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The digest `make_smollm2_reference.py` takes of a tensor: its f32 bits, each times
/// (2654435761 · index + 1), summed modulo 2^64.
fn digest(values: &[f32]) -> u64 {
    values.iter().enumerate().fold(0u64, |sum, (i, v)| {
        let weight = (i as u64).wrapping_mul(2_654_435_761).wrapping_add(1);
        sum.wrapping_add(u64::from(v.to_bits()).wrapping_mul(weight))
    })
}

#[test]
fn smollm2_q4_1_from_gguf_reproduces_transformers() {
    let Some(dir) = large_data(
        "SMOLLM2_GGUF_DIR",
        "smollm2_q4_1_from_gguf_reproduces_transformers",
    ) else {
        return;
    };
    let device = Default::default();
    let lm =
        CausalLm::<B>::from_gguf(&dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"), &device).unwrap();

    // Every tensor, as transformers holds it (Hugging Face's names and orientation).
    let reference: serde_json::Value = serde_json::from_slice(
        &std::fs::read(gguf_fixture("smollm2_q4_1_reference.json")).unwrap(),
    )
    .unwrap();
    // The tokenizer of the file, as transformers builds it from the same file.
    let tokenizer = GgufFile::open(&dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"))
        .unwrap()
        .tokenizer()
        .unwrap();
    assert_tokenizes_as_transformers(&tokenizer, &reference["token_ids"], None);

    let snapshot = ParamSnapshot::of(&lm);
    let ours: HashMap<String, u64> = snapshot
        .params
        .iter()
        .map(|param| {
            let mut values: Vec<f32> = param.bits.iter().map(|b| f32::from_bits(*b)).collect();
            let key = param.path.replace(".gamma", ".weight");
            // Burn's linear weights are [in, out]; PyTorch's [out, in].
            if let [rows, cols] = param.shape[..] {
                if !key.contains("embed_tokens") {
                    values = (0..rows * cols)
                        .map(|i| values[(i % rows) * cols + i / rows])
                        .collect();
                }
            }
            (key, digest(&values))
        })
        .collect();
    let digests = reference["digests"].as_object().unwrap();
    let mut compared = 0;
    for (key, expected) in digests {
        let expected: u64 = expected.as_str().unwrap().parse().unwrap();
        if key == "lm_head.weight" {
            // Tied: transformers' state dict lists the embedding again.
            assert_eq!(expected, ours["model.embed_tokens.weight"]);
            continue;
        }
        assert_eq!(ours.get(key), Some(&expected), "{key}");
        compared += 1;
    }
    assert_eq!(compared, ours.len(), "every parameter compared");

    // The logits of the prompt's first and last positions, and 24 greedy tokens.
    let raw = read_raw(&gguf_fixture("smollm2_q4_1_reference.safetensors"));
    let find = |key: &str| raw.iter().find(|t| t.key == key).unwrap();
    let prompt = int_values(find("prompt"));
    let logits = values(
        lm.forward(CausalLmInput::new(tensor_ids(
            prompt.clone(),
            [1, prompt.len()],
        )))
        .unwrap(),
    );
    let vocab = lm.config().vocab_size;
    let last = prompt.len() - 1;
    let ours: Vec<f32> = [&logits[..vocab], &logits[last * vocab..]].concat();
    let expected = find("logits").f32_values();
    let worst = max_abs_diff_values(&ours, &expected);
    assert!(worst < 2e-4, "logits differ from transformers' by {worst}");
    eprintln!("SmolLM2 Q4_1 from GGUF: logits within {worst:e} of transformers'");

    let greedy = int_values(find("greedy"));
    let prompt: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
    // transformers stops at the GGUF's end-of-sequence id, as the model's default does.
    let config = GenerationConfig::new(24);
    let out = lm.generate(&[prompt], None, &config, |_| {}).unwrap();
    let tokens: Vec<i64> = out.tokens[0].iter().map(|&t| t as i64).collect();
    assert_eq!(tokens, greedy);
}

/// Checks `tokenizer` against transformers' ids (and decodings, when given) of each text.
fn assert_tokenizes_as_transformers(
    tokenizer: &tokenizers::Tokenizer,
    encoded: &serde_json::Value,
    decoded: Option<&serde_json::Value>,
) {
    let encoded = encoded.as_object().unwrap();
    assert!(!encoded.is_empty());
    for (text, ids) in encoded {
        let expected: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_u64().unwrap() as u32)
            .collect();
        let ours = tokenizer.encode(text.as_str(), true).unwrap();
        assert_eq!(ours.get_ids(), expected.as_slice(), "{text:?}");
        if let Some(decoded) = decoded {
            let text_back = tokenizer.decode(&expected, false).unwrap();
            assert_eq!(Some(text_back.as_str()), decoded[text].as_str(), "{text:?}");
        }
    }
}

#[test]
fn gguf_tokenizers_encode_and_decode_as_transformers() {
    let gguf = GgufFile::open(&gguf_fixture("llama_tiny.gguf")).unwrap();
    let tokenizer = gguf.tokenizer().unwrap();
    let reference: serde_json::Value = serde_json::from_slice(
        &std::fs::read(gguf_fixture("llama_tiny_dequantized/token_ids.json")).unwrap(),
    )
    .unwrap();
    assert_tokenizes_as_transformers(
        &tokenizer,
        &reference["encoded"],
        Some(&reference["decoded"]),
    );

    // A SentencePiece vocabulary ("llama": Llama 2, Mistral), its merges derived from its scores.
    let gguf = GgufFile::open(&gguf_fixture("sentencepiece_tokenizer.gguf")).unwrap();
    let reference: serde_json::Value = serde_json::from_slice(
        &std::fs::read(gguf_fixture("sentencepiece_tokenizer.json")).unwrap(),
    )
    .unwrap();
    assert_tokenizes_as_transformers(
        &gguf.tokenizer().unwrap(),
        &reference["encoded"],
        Some(&reference["decoded"]),
    );

    // A file without a tokenizer, or with another tokenizer model, is an error naming it.
    let types = GgufFile::open(&gguf_fixture("quant_types.gguf")).unwrap();
    assert!(matches!(
        types.tokenizer().unwrap_err(),
        LoraError::InvalidFile { .. }
    ));
    let bytes = std::fs::read(gguf_fixture("llama_tiny.gguf")).unwrap();
    let at = bytes.windows(4).position(|w| w == b"gpt2").unwrap();
    let mut other = bytes.clone();
    other[at..at + 4].copy_from_slice(b"t5t5");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.gguf");
    std::fs::write(&path, other).unwrap();
    let err = GgufFile::open(&path).unwrap().tokenizer().unwrap_err();
    assert!(
        matches!(&err, LoraError::Unsupported(what) if what.contains("t5t5")),
        "{err:?}"
    );
}

#[test]
fn a_peft_adapter_made_on_transformers_gguf_model_gives_peft_s_logits_on_ours() {
    let Some(dir) = large_data(
        "SMOLLM2_GGUF_DIR",
        "a_peft_adapter_made_on_transformers_gguf_model_gives_peft_s_logits_on_ours",
    ) else {
        return;
    };
    let device = Default::default();
    let mut lm =
        CausalLm::<B>::from_gguf(&dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"), &device).unwrap();
    // PEFT's adapter on q_proj and k_proj, whose rows llama.cpp permutes in the file.
    let adapter = gguf_fixture("smollm2_adapter");
    load_adapter(&mut lm, "peft", &adapter, &PathMap::identity()).unwrap();
    let raw = read_raw(&adapter.join("logits.safetensors"));
    let find = |key: &str| raw.iter().find(|t| t.key == key).unwrap();
    let prompt = int_values(find("prompt"));
    let logits = values(
        lm.forward(
            CausalLmInput::new(tensor_ids(prompt.clone(), [1, prompt.len()])).last_position_only(),
        )
        .unwrap(),
    );
    let expected = find("logits").f32_values();
    assert_eq!(logits.len(), expected.len());
    let worst = max_abs_diff_values(&logits, &expected);
    assert!(worst < 2e-4, "logits differ from PEFT's by {worst}");
    eprintln!("SmolLM2 Q4_1 from GGUF with PEFT's adapter: logits within {worst:e} of PEFT's");
}
