//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, built as a Hugging
//! Face `tokenizers` tokenizer the way transformers' GGUF loader builds it.

use std::str::FromStr;

use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

use super::file::GgufFile;
use super::value::GgufValue;
use crate::error::{LoraError, Result};

/// llama.cpp's `tokenizer.ggml.token_type` of a control token (`<|endoftext|>`).
const CONTROL: i64 = 3;
/// llama.cpp's `tokenizer.ggml.token_type` of a user-defined token (`<think>`).
const USER_DEFINED: i64 = 4;

/// Llama 3's split of text into words before byte-level BPE (llama.cpp's `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split (llama.cpp's `qwen2`): Llama 3's with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split of each `tokenizer.ggml.pre` whose vocabulary was learned on words split otherwise
/// than GPT-2's (the byte-level pre-tokenizer's own split serves the others, `smollm` included).
fn pre_tokenizer_split(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "falcon3" | "dbrx" => {
            Some(LLAMA3_SPLIT)
        }
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2_SPLIT),
        _ => None,
    }
}

/// GPT-2's printable spelling of each byte, as byte-level BPE vocabularies spell tokens.
fn byte_alphabet() -> [char; 256] {
    let mut spelling = ['\0'; 256];
    let mut next = 256u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        spelling[usize::from(byte)] = if printable {
            char::from(byte)
        } else {
            let spelled = char::from_u32(next).unwrap_or('\0');
            next += 1;
            spelled
        };
    }
    spelling
}

impl GgufFile {
    /// The tokenizer this file describes (`tokenizer.ggml.*`), built as transformers builds it
    /// from a GGUF file: for `tokenizer.ggml.model = "gpt2"` (byte-level BPE: SmolLM2, Llama 3,
    /// Qwen2, ...) a BPE over `tokens` and `merges`, GPT-2's byte-level pre-tokenizer (or the
    /// split `tokenizer.ggml.pre` names, as Llama 3's and Qwen2's), the byte-level decoder,
    /// control tokens as special tokens and user-defined ones as added tokens, and the BOS
    /// token prepended when `tokenizer.ggml.add_bos_token` says so.
    ///
    /// # Errors
    /// [`LoraError::Unsupported`] for another tokenizer model (SentencePiece `llama`, `t5`,
    /// ...), [`LoraError::InvalidFile`] when the tokenizer metadata is missing, mistyped or does
    /// not make a tokenizer (a merge of unknown tokens, a token id out of the vocabulary).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let invalid = |reason: String| LoraError::InvalidFile {
            path: self.path().display().to_string(),
            format: "GGUF tokenizer".into(),
            reason,
        };
        let string = |key: &str| -> Result<Option<&str>> {
            match self.get(key) {
                None => Ok(None),
                Some(value) => value
                    .as_str()
                    .map(Some)
                    .ok_or_else(|| invalid(format!("{key} is a {}", value.type_name()))),
            }
        };
        let strings = |key: &str| -> Result<Vec<&str>> {
            let value = self
                .get(key)
                .ok_or_else(|| invalid(format!("no metadata key \"{key}\"")))?;
            let items = value.as_array().ok_or_else(|| {
                invalid(format!("{key} is a {}, not an ARRAY", value.type_name()))
            })?;
            items
                .iter()
                .map(|item| {
                    item.as_str()
                        .ok_or_else(|| invalid(format!("{key} holds a {}", item.type_name())))
                })
                .collect()
        };
        let model = string("tokenizer.ggml.model")?
            .ok_or_else(|| invalid("no metadata key \"tokenizer.ggml.model\"".into()))?;
        if model != "gpt2" {
            return Err(LoraError::Unsupported(format!(
                "GGUF tokenizer model \"{model}\" (burn-lora builds \"gpt2\", byte-level BPE; \
                 use the model's tokenizer.json)"
            )));
        }
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let token_types: Vec<i64> = match self.get("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(value) => value
                .as_array()
                .and_then(|items| items.iter().map(GgufValue::as_i64).collect())
                .ok_or_else(|| {
                    invalid("tokenizer.ggml.token_type is not an array of integers".into())
                })?,
        };

        // Tokens spelled outside the byte alphabet are respelled in it, as transformers does.
        let alphabet = byte_alphabet();
        let spelled = |token: &str| -> String {
            if token.chars().all(|c| alphabet.contains(&c)) {
                token.to_string()
            } else {
                token.bytes().map(|b| alphabet[usize::from(b)]).collect()
            }
        };
        let mut vocab = Map::new();
        for (id, token) in tokens.iter().enumerate() {
            vocab.insert(spelled(token), json!(id));
        }
        let mut merge_pairs = Vec::with_capacity(merges.len());
        for merge in &merges {
            let (left, right) = merge
                .split_once(' ')
                .ok_or_else(|| invalid(format!("merge \"{merge}\" is not two tokens")))?;
            merge_pairs.push(json!([left, right]));
        }
        let added: Vec<Value> = tokens
            .iter()
            .zip(&token_types)
            .enumerate()
            // A control token spelled outside the byte alphabet is a llama.cpp mislabel that
            // transformers leaves out too (adding it would grow the vocabulary).
            .filter(|(_, (token, kind))| {
                matches!(**kind, CONTROL | USER_DEFINED)
                    && token.chars().all(|c| alphabet.contains(&c))
            })
            .map(|(id, (token, kind))| {
                json!({
                    "id": id, "content": token, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": *kind == CONTROL,
                })
            })
            .collect();
        let byte_level = |use_regex: bool| {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                   "use_regex": use_regex})
        };
        let pre_tokenizer = match string("tokenizer.ggml.pre")?.and_then(pre_tokenizer_split) {
            Some(split) => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated",
                 "invert": false},
                byte_level(false),
            ]}),
            None => byte_level(true),
        };
        let add_bos = self
            .get("tokenizer.ggml.add_bos_token")
            .and_then(GgufValue::as_bool)
            .unwrap_or(false);
        let post_processor = match self.get("tokenizer.ggml.bos_token_id") {
            Some(id) if add_bos => {
                let id = id
                    .as_u64()
                    .and_then(|id| usize::try_from(id).ok())
                    .filter(|&id| id < tokens.len())
                    .ok_or_else(|| invalid(format!("bos_token_id {id:?} is not a token")))?;
                let bos = tokens[id];
                json!({"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                               {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                             {"Sequence": {"id": "A", "type_id": 0}},
                             {"SpecialToken": {"id": bos, "type_id": 1}},
                             {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {bos: {"id": bos, "ids": [id], "tokens": [bos]}}})
            }
            _ => Value::Null,
        };
        let document = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                        "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": "", "end_of_word_suffix": "",
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merge_pairs},
        });
        Tokenizer::from_str(&document.to_string()).map_err(|e| invalid(e.to_string()))
    }
}
