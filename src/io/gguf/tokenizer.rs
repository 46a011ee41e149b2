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

/// `tokenizer.ggml.*` of a GGUF file, read and checked.
struct Metadata<'a> {
    file: &'a GgufFile,
    model: &'a str,
    tokens: Vec<&'a str>,
    token_types: Vec<i64>,
    merges: Option<Vec<&'a str>>,
    scores: Option<Vec<f64>>,
}

impl<'a> Metadata<'a> {
    fn invalid(&self, reason: String) -> LoraError {
        invalid(self.file, reason)
    }

    fn read(file: &'a GgufFile) -> Result<Self> {
        let string = |key: &str| -> Result<Option<&'a str>> {
            match file.get(key) {
                None => Ok(None),
                Some(value) => value
                    .as_str()
                    .map(Some)
                    .ok_or_else(|| invalid(file, format!("{key} is a {}", value.type_name()))),
            }
        };
        let array = |key: &str| -> Result<Option<&'a [GgufValue]>> {
            match file.get(key) {
                None => Ok(None),
                Some(value) => value.as_array().map(Some).ok_or_else(|| {
                    invalid(
                        file,
                        format!("{key} is a {}, not an ARRAY", value.type_name()),
                    )
                }),
            }
        };
        let strings = |key: &str| -> Result<Option<Vec<&'a str>>> {
            array(key)?
                .map(|items| {
                    items
                        .iter()
                        .map(|item| {
                            item.as_str().ok_or_else(|| {
                                invalid(file, format!("{key} holds a {}", item.type_name()))
                            })
                        })
                        .collect()
                })
                .transpose()
        };
        let model = string("tokenizer.ggml.model")?
            .ok_or_else(|| invalid(file, "no metadata key \"tokenizer.ggml.model\"".into()))?;
        if !matches!(model, "gpt2" | "llama") {
            return Err(LoraError::Unsupported(format!(
                "GGUF tokenizer model \"{model}\" (burn-lora builds \"gpt2\", byte-level BPE, and \
                 \"llama\", SentencePiece BPE; use the model's tokenizer.json)"
            )));
        }
        let tokens = strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| invalid(file, "no metadata key \"tokenizer.ggml.tokens\"".into()))?;
        let token_types = match array("tokenizer.ggml.token_type")? {
            None => Vec::new(),
            Some(items) => items
                .iter()
                .map(GgufValue::as_i64)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    invalid(file, "tokenizer.ggml.token_type holds a non-integer".into())
                })?,
        };
        let scores = array("tokenizer.ggml.scores")?
            .map(|items| {
                items
                    .iter()
                    .map(GgufValue::as_f64)
                    .collect::<Option<Vec<_>>>()
            })
            .map(|scores| {
                scores
                    .ok_or_else(|| invalid(file, "tokenizer.ggml.scores holds a non-number".into()))
            })
            .transpose()?;
        Ok(Self {
            file,
            model,
            tokens,
            token_types,
            merges: strings("tokenizer.ggml.merges")?,
            scores,
        })
    }

    /// The token of id key `key` (`bos_token_id`), if the file names one in the vocabulary.
    fn token_of(&self, key: &str) -> Result<Option<(usize, &'a str)>> {
        let Some(value) = self.file.get(&format!("tokenizer.ggml.{key}")) else {
            return Ok(None);
        };
        let id = value
            .as_u64()
            .and_then(|id| usize::try_from(id).ok())
            .filter(|&id| id < self.tokens.len())
            .ok_or_else(|| self.invalid(format!("{key} {value:?} is not a token")))?;
        Ok(Some((id, self.tokens[id])))
    }

    fn flag(&self, key: &str) -> Option<bool> {
        self.file
            .get(&format!("tokenizer.ggml.{key}"))
            .and_then(GgufValue::as_bool)
    }

    /// The merges the file lists, as pairs, or else the ones its vocabulary and scores imply,
    /// as transformers derives them (`generate_merges`): every split of a token into two tokens,
    /// by the token's score, then by longer left and right pieces.
    fn merge_pairs(&self, vocab: &Map<String, Value>) -> Result<Vec<Value>> {
        if let Some(merges) = &self.merges {
            return merges
                .iter()
                .map(|merge| {
                    merge
                        .split_once(' ')
                        .map(|(left, right)| json!([left, right]))
                        .ok_or_else(|| self.invalid(format!("merge \"{merge}\" is not two tokens")))
                })
                .collect();
        }
        let scores = self.scores.as_ref().ok_or_else(|| {
            self.invalid("neither tokenizer.ggml.merges nor tokenizer.ggml.scores".into())
        })?;
        if scores.len() != self.tokens.len() {
            return Err(self.invalid(format!(
                "{} scores for {} tokens",
                scores.len(),
                self.tokens.len()
            )));
        }
        let id = |token: &str| vocab.get(token).and_then(Value::as_u64);
        // A token named twice takes its last score, as a Python dict does, in its first place.
        let mut by_token: Vec<(&str, f64)> = Vec::new();
        let mut place: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (token, score) in self.tokens.iter().zip(scores) {
            match place.get(token) {
                Some(&at) => by_token[at].1 = *score,
                None => {
                    place.insert(token, by_token.len());
                    by_token.push((token, *score));
                }
            }
        }
        let mut merges: Vec<(&str, &str, f64)> = Vec::new();
        for (token, score) in by_token {
            let mut local: Vec<(&str, &str, f64)> = token
                .char_indices()
                .skip(1)
                .map(|(at, _)| token.split_at(at))
                .filter(|(left, right)| id(left).is_some() && id(right).is_some())
                .map(|(left, right)| (left, right, score))
                .collect();
            local.sort_by_key(|(left, right, _)| (id(left), id(right)));
            merges.extend(local);
        }
        // Descending, stable for equal keys, as Python's `sorted(..., reverse=True)`.
        merges.sort_by(|a, b| {
            let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
            let (ka, kb) = (key(a), key(b));
            kb.0.total_cmp(&ka.0)
                .then(kb.1.cmp(&ka.1))
                .then(kb.2.cmp(&ka.2))
        });
        Ok(merges
            .into_iter()
            .map(|(left, right, _)| json!([left, right]))
            .collect())
    }
}

fn invalid(file: &GgufFile, reason: String) -> LoraError {
    LoraError::InvalidFile {
        path: file.path().display().to_string(),
        format: "GGUF tokenizer".into(),
        reason,
    }
}

impl GgufFile {
    /// The tokenizer this file describes (`tokenizer.ggml.*`), built as transformers builds it
    /// from a GGUF file:
    /// - `tokenizer.ggml.model = "gpt2"` (byte-level BPE: SmolLM2, Llama 3, Qwen2, ...): a BPE
    ///   over the tokens (respelled in the byte alphabet where they are not) and merges, GPT-2's
    ///   byte-level pre-tokenizer (or the split `tokenizer.ggml.pre` names, as Llama 3's and
    ///   Qwen2's), the byte-level decoder;
    /// - `"llama"` (SentencePiece BPE: Llama 2, Mistral, TinyLlama, ...): a BPE with byte
    ///   fallback over the tokens and the merges the file lists or its scores imply, `▁` for
    ///   spaces with one prepended to the text, the SentencePiece decoder;
    /// - control tokens and the tokens the `bos`/`eos`/`unknown`/`padding` ids name as special
    ///   tokens, user-defined ones as added tokens; the BOS token prepended and the EOS token
    ///   appended as `add_bos_token` / `add_eos_token` say (BOS by default for `"llama"`).
    ///
    /// # Errors
    /// [`LoraError::Unsupported`] for another tokenizer model (`t5`, ...),
    /// [`LoraError::InvalidFile`] when the tokenizer metadata is missing, mistyped or does not
    /// make a tokenizer (a merge of unknown tokens, a token id out of the vocabulary).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let meta = Metadata::read(self)?;
        let byte_level = meta.model == "gpt2";
        // Tokens spelled outside the byte alphabet are respelled in it, as transformers does.
        let alphabet = byte_alphabet();
        let in_alphabet = |token: &str| token.chars().all(|c| alphabet.contains(&c));
        let spelled = |token: &str| -> String {
            if !byte_level || in_alphabet(token) {
                token.to_string()
            } else {
                token.bytes().map(|b| alphabet[usize::from(b)]).collect()
            }
        };
        let mut vocab = Map::new();
        for (id, token) in meta.tokens.iter().enumerate() {
            vocab.insert(spelled(token), json!(id));
        }
        let merges = meta.merge_pairs(&vocab)?;

        let mut special: Vec<usize> = Vec::new();
        for key in [
            "unknown_token_id",
            "bos_token_id",
            "eos_token_id",
            "padding_token_id",
        ] {
            if let Some((id, _)) = meta.token_of(key)? {
                special.push(id);
            }
        }
        // A control token spelled outside the byte alphabet of a byte-level vocabulary is a
        // llama.cpp mislabel that transformers leaves out too (it would grow the vocabulary).
        let added: Vec<Value> = meta
            .tokens
            .iter()
            .enumerate()
            .filter_map(|(id, token)| {
                let kind = meta.token_types.get(id).copied().unwrap_or(0);
                let spellable = !byte_level || in_alphabet(token);
                let is_special = (kind == CONTROL && spellable) || special.contains(&id);
                let is_added = is_special || (kind == USER_DEFINED && spellable);
                is_added.then(|| {
                    json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": is_special})
                })
            })
            .collect();

        let (pre_tokenizer, decoder, model_options) = if byte_level {
            let byte_level = |use_regex: bool| {
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                       "use_regex": use_regex})
            };
            let pre = self
                .get("tokenizer.ggml.pre")
                .and_then(GgufValue::as_str)
                .and_then(pre_tokenizer_split);
            let pre_tokenizer = match pre {
                Some(split) => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated",
                     "invert": false},
                    byte_level(false),
                ]}),
                None => byte_level(true),
            };
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true,
                                 "trim_offsets": true, "use_regex": true});
            (
                pre_tokenizer,
                decoder,
                json!({"continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false}),
            )
        } else {
            let pre_tokenizer = json!({"type": "Metaspace", "replacement": "▁",
                                       "prepend_scheme": "first", "split": false});
            let decoder = json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]});
            (
                pre_tokenizer,
                decoder,
                json!({"continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true}),
            )
        };

        let add_bos = meta.flag("add_bos_token").unwrap_or(!byte_level);
        let add_eos = meta.flag("add_eos_token").unwrap_or(false);
        let bos = if add_bos {
            meta.token_of("bos_token_id")?
        } else {
            None
        };
        let eos = if add_eos {
            meta.token_of("eos_token_id")?
        } else {
            None
        };
        let post_processor = if bos.is_none() && eos.is_none() {
            Value::Null
        } else {
            let piece = |token: &str, type_id: u32| json!({"SpecialToken": {"id": token, "type_id": type_id}});
            let sequence =
                |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
            let mut single = Vec::new();
            let mut pair = Vec::new();
            for (name, type_id) in [("A", 0), ("B", 1)] {
                let part = if type_id == 0 { &mut single } else { &mut pair };
                if let Some((_, token)) = bos {
                    part.push(piece(token, type_id));
                }
                part.push(sequence(name, type_id));
                if let Some((_, token)) = eos {
                    part.push(piece(token, type_id));
                }
            }
            let pair: Vec<Value> = single.iter().cloned().chain(pair).collect();
            let mut tokens = Map::new();
            for (id, token) in bos.into_iter().chain(eos) {
                tokens.insert(
                    token.to_string(),
                    json!({"id": token, "ids": [id], "tokens": [token]}),
                );
            }
            json!({"type": "TemplateProcessing", "single": single, "pair": pair,
                   "special_tokens": tokens})
        };
        let mut model = json!({"type": "BPE", "dropout": null, "unk_token": null,
                               "ignore_merges": false, "vocab": vocab, "merges": merges});
        if let (Some(model), Some(options)) = (model.as_object_mut(), model_options.as_object()) {
            model.extend(options.clone());
        }
        let document = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": post_processor,
            "decoder": decoder, "model": model,
        });
        Tokenizer::from_str(&document.to_string()).map_err(|e| invalid(self, e.to_string()))
    }
}
