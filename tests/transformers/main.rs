//! Transformers and causal LMs: burn-lora's blocks against Burn's, BERT and the Llama / Qwen2 /
//! Mistral decoders, and the PEFT fixtures written for them reproduced.
//!
//! One test binary for the area, one module per file (a binary links all of Burn).

#[path = "../common/mod.rs"]
mod common;

mod bert_model;
mod causal_lm;
mod chat_template;
mod gguf_adapter;
mod gguf_causal_lm;
mod peft_bert;
mod peft_causal_lm;
mod text_stream;
mod transformer_blocks;
