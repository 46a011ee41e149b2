//! Fuzzing the readers of Hugging Face's `config.json` (BERT, and the Llama, Qwen2 and Mistral
//! causal LMs): whatever is done to a config, reading it never panics, and a config that reads
//! builds a model (when its sizes are small enough to build here) that runs a checked forward
//! on two tokens without a panic and with the shape the config says.
//!
//! The seeds are the configs of the repository's fixtures and the corpus under
//! `tests/fixtures/fuzz/hf_config/` (Mistral, MiniLM, RoPE scalings, sliding windows).

use std::path::Path;

use crate::common::{existing_peft_fixture, B};
use burn::tensor::{Int, Tensor};
use burn_lora::nn::bert::BertConfig;
use burn_lora::nn::llama::{CausalLmConfig, CausalLmInput};
use burn_lora_support::fuzz::{variant_name, Format, Fuzz};

/// Models of more parameters than this are read but not built.
const BUILD_LIMIT: usize = 1 << 20;

/// `a * b + c`, `None` on overflow.
fn mul_add(a: usize, b: usize, c: usize) -> Option<usize> {
    a.checked_mul(b)?.checked_add(c)
}

fn two_tokens(vocab: usize) -> Tensor<B, 2, Int> {
    let last = vocab.saturating_sub(1) as i64;
    Tensor::from_ints([[0, last]], &Default::default())
}

fn check_bert(file: &Path) -> Result<String, String> {
    let config = match BertConfig::from_hf_json(file) {
        Ok(config) => config,
        Err(e) => return Ok(format!("bert:{}", variant_name(&e))),
    };
    let h = config.hidden_size;
    let size = (|| {
        let embeddings = config
            .vocab_size
            .checked_add(config.max_position_embeddings)?
            .checked_add(config.type_vocab_size)?
            .checked_mul(h)?;
        let layer = mul_add(
            h,
            mul_add(4, h, mul_add(2, config.intermediate_size, 0)?)?,
            0,
        )?;
        mul_add(layer, config.num_hidden_layers, embeddings)
    })();
    if size.is_none_or(|n| n > BUILD_LIMIT) {
        return Ok("bert:Ok (too large to build)".into());
    }
    let model = match config.init::<B>(&Default::default()) {
        Ok(model) => model,
        Err(e) => return Ok(format!("bert:init {}", variant_name(&e))),
    };
    let ids = two_tokens(config.vocab_size);
    let mask = Tensor::ones([1, 2], &Default::default());
    match model.try_forward(ids, mask, None) {
        Ok(hidden) if hidden.dims() == [1, 2, h] => Ok("bert:Ok".into()),
        Ok(hidden) => Err(format!(
            "hidden state of shape {:?}, hidden_size {h}",
            hidden.dims()
        )),
        Err(e) => Ok(format!("bert:forward {}", variant_name(&e))),
    }
}

fn check_causal_lm(file: &Path) -> Result<String, String> {
    let config = match CausalLmConfig::from_hf_json(file) {
        Ok(config) => config,
        Err(e) => return Ok(format!("causal:{}", variant_name(&e))),
    };
    let h = config.hidden_size;
    let size = (|| {
        let heads = config
            .num_attention_heads
            .checked_add(config.num_key_value_heads)?;
        let attention = mul_add(2, mul_add(heads, config.head_dim, 0)?, 0)?.checked_mul(h)?;
        let mlp = mul_add(3, mul_add(h, config.intermediate_size, 0)?, 0)?;
        let layers = mul_add(attention.checked_add(mlp)?, config.num_hidden_layers, 0)?;
        mul_add(2, mul_add(config.vocab_size, h, 0)?, layers)
    })();
    if size.is_none_or(|n| n > BUILD_LIMIT) {
        return Ok("causal:Ok (too large to build)".into());
    }
    let model = match config.init::<B>(&Default::default()) {
        Ok(model) => model,
        Err(e) => return Ok(format!("causal:init {}", variant_name(&e))),
    };
    let input = CausalLmInput::new(two_tokens(config.vocab_size));
    match model.forward(input) {
        Ok(logits) if logits.dims() == [1, 2, config.vocab_size] => Ok("causal:Ok".into()),
        Ok(logits) => Err(format!(
            "logits of shape {:?}, vocab_size {}",
            logits.dims(),
            config.vocab_size
        )),
        Err(e) => Ok(format!("causal:forward {}", variant_name(&e))),
    }
}

#[test]
fn mutated_hf_configs_never_panic_and_configs_that_read_build_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    let mut fuzz = Fuzz::new("hf_config", Format::Json);
    for fixture in ["bert_tiny_qv", "bert_tiny_emb", "llama_tiny", "qwen2_tiny"] {
        fuzz = fuzz.seed_file(&existing_peft_fixture(fixture).join("config.json"));
    }
    let report = fuzz
        .words(&[
            "model_type",
            "llama",
            "qwen2",
            "mistral",
            "bert",
            "gemma",
            "hidden_act",
            "silu",
            "gelu",
            "gelu_new",
            "relu",
            "rope_scaling",
            "rope_type",
            "rope_parameters",
            "rope_theta",
            "linear",
            "dynamic",
            "llama3",
            "yarn",
            "factor",
            "partial_rotary_factor",
            "sliding_window",
            "use_sliding_window",
            "max_window_layers",
            "layer_types",
            "quantization_config",
            "num_key_value_heads",
            "head_dim",
            "tie_word_embeddings",
            "attention_bias",
            "mlp_bias",
            "eos_token_id",
            "position_embedding_type",
            "relative_key",
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "attention_dropout",
            "layer_norm_eps",
            "rms_norm_eps",
            "type_vocab_size",
        ])
        .cases(150)
        .run(|bytes| {
            std::fs::write(&file, bytes).map_err(|e| e.to_string())?;
            Ok(format!(
                "{} {}",
                check_bert(&file)?,
                check_causal_lm(&file)?
            ))
        });
    assert!(
        report.outcomes.keys().any(|o| o.contains(":InvalidFile")),
        "no mutated config was refused: {report:?}"
    );
}
