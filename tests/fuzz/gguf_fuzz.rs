//! Fuzzing the GGUF reader: whatever is done to a GGUF file, `GgufFile::open`, reading every
//! tensor and building its tokenizer never panic, a tokenizer that builds encodes, and `CausalLm::from_gguf` either refuses the file with an error or gives
//! a model whose forward runs and whose logits are finite.
//!
//! The seeds are the tiny Llama as llama.cpp writes it (`tests/fixtures/gguf/llama_tiny.gguf`,
//! with a byte-level tokenizer), the file of every tensor type and metadata type
//! (`quant_types.gguf`) and a SentencePiece tokenizer (`sentencepiece_tokenizer.gguf`).

use burn_lora::nn::llama::{CausalLm, CausalLmInput};
use burn_lora::GgufFile;
use burn_lora_support::fixtures::repository_root;
use burn_lora_support::fuzz::{variant_name, Format, Fuzz};

use crate::common::B;

#[test]
fn mutated_gguf_files_never_panic_and_models_that_load_run() {
    let fixtures = repository_root().join("tests/fixtures/gguf");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.gguf");
    let report = Fuzz::new("gguf", Format::Bytes)
        .seed_file(&fixtures.join("llama_tiny.gguf"))
        .seed_file(&fixtures.join("quant_types.gguf"))
        .seed_file(&fixtures.join("sentencepiece_tokenizer.gguf"))
        .words(&[
            "GGUF",
            "general.architecture",
            "general.alignment",
            "llama",
            "qwen2",
            "llama.block_count",
            "llama.embedding_length",
            "llama.attention.head_count",
            "llama.attention.head_count_kv",
            "llama.context_length",
            "token_embd.weight",
            "output.weight",
            "blk.0.attn_q.weight",
            "rope_freqs.weight",
            "tokenizer.ggml.model",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.pre",
            "gpt2",
            "tokenizer.ggml.scores",
            "tokenizer.ggml.add_bos_token",
            "llama-bpe",
            "qwen2",
        ])
        .cases(150)
        .run(|bytes| {
            std::fs::write(&file, bytes).map_err(|e| e.to_string())?;
            let gguf = match GgufFile::open(&file) {
                Ok(gguf) => gguf,
                Err(error) => return Ok(variant_name(&error)),
            };
            for name in gguf.tensors().keys() {
                let _ = gguf.tensor_data(name);
            }
            if let Ok(tokenizer) = gguf.tokenizer() {
                let encoding = tokenizer
                    .encode("the theme ✓ <s>", true)
                    .map_err(|e| format!("a built tokenizer failed to encode: {e}"))?;
                let _ = tokenizer.decode(encoding.get_ids(), false);
            }
            match CausalLm::<B>::from_gguf(&file, &Default::default()) {
                Err(error) => Ok(variant_name(&error)),
                Ok(lm) => {
                    let config = lm.config();
                    let ids = burn::tensor::Tensor::<B, 2, burn::tensor::Int>::zeros(
                        [1, 2.min(config.max_position_embeddings)],
                        &Default::default(),
                    );
                    let logits = lm
                        .forward(CausalLmInput::new(ids))
                        .map_err(|e| format!("a loaded model's forward failed: {e}"))?;
                    let values: Vec<f32> = logits.into_data().to_vec().unwrap();
                    if values.iter().any(|v| !v.is_finite()) {
                        return Err("a loaded model gave non-finite logits".into());
                    }
                    Ok("Ok".into())
                }
            }
        });
    assert!(report.cases > 0);
}
