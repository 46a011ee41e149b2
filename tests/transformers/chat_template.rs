//! `ChatTemplate` (mirrors `src/nn/llama/chat_template.rs`): SmolLM2's chat template renders
//! conversations as transformers' `apply_chat_template` does
//! (`tests/fixtures/gguf/make_smollm2_chat_template.py`); the template in the real GGUF file is
//! that one (`SMOLLM2_GGUF_DIR`); templates that fail are errors.

use crate::common::large_data;
use burn_lora::nn::llama::{ChatMessage, ChatTemplate};
use burn_lora::{GgufFile, LoraError};
use burn_lora_support::fixtures::repository_root;

fn reference() -> serde_json::Value {
    let path = repository_root().join("tests/fixtures/gguf/smollm2_chat_template.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn messages(value: &serde_json::Value) -> Vec<ChatMessage> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

#[test]
fn smollm2_s_template_renders_as_transformers_renders_it() {
    let reference = reference();
    let template = ChatTemplate::new(reference["template"].as_str().unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let rendered = template
            .render(
                &messages(&case["messages"]),
                case["add_generation_prompt"].as_bool().unwrap(),
            )
            .unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap());
    }
}

#[test]
fn the_smollm2_gguf_carries_that_template() {
    let Some(dir) = large_data("SMOLLM2_GGUF_DIR", "the_smollm2_gguf_carries_that_template") else {
        return;
    };
    let gguf = GgufFile::open(&dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let template = ChatTemplate::from_gguf(&gguf).unwrap().unwrap();
    let reference = reference();
    let case = &reference["cases"][1];
    let rendered = template
        .render(&messages(&case["messages"]), false)
        .unwrap();
    assert_eq!(rendered, case["rendered"].as_str().unwrap());
}

#[test]
fn hugging_face_s_template_features_and_failures() {
    // Python's string methods, loop controls, special tokens and tojson, as templates use them.
    let template = ChatTemplate::new(
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}\
         {{ m.role.upper() }}: {{ m.content.strip() }}{% if m.content.strip().startswith('x') %}!{% endif %}\n\
         {% endfor %}{{ messages[0] | tojson }}",
    )
    .unwrap()
    .with_special_token("bos_token", "<s>");
    let rendered = template
        .render(
            &[
                ChatMessage::new("user", "  xyz "),
                ChatMessage::new("skip", "gone"),
            ],
            false,
        )
        .unwrap();
    assert_eq!(
        rendered,
        // The newline after a block tag goes (trim_blocks); tojson as Python's json.dumps.
        "<s>USER: xyz!{\"role\": \"user\", \"content\": \"  xyz \"}"
    );

    let indented = ChatTemplate::new("{{ messages | tojson(indent=2) }}").unwrap();
    assert_eq!(
        indented
            .render(&[ChatMessage::new("user", "é<b>")], false)
            .unwrap(),
        "[\n  {\n    \"role\": \"user\",\n    \"content\": \"é<b>\"\n  }\n]"
    );

    // A template that raises, as Hugging Face's do on a bad conversation, fails with its message.
    let strict = ChatTemplate::new(
        "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations start with user') }}{% endif %}ok",
    )
    .unwrap();
    assert_eq!(
        strict
            .render(&[ChatMessage::new("user", "hi")], false)
            .unwrap(),
        "ok"
    );
    let err = strict
        .render(&[ChatMessage::new("assistant", "hi")], false)
        .unwrap_err();
    assert!(
        matches!(&err, LoraError::InvalidInput(what) if what.contains("Conversations start with user")),
        "{err:?}"
    );
    // Syntax errors are refused when the template is made.
    assert!(matches!(
        ChatTemplate::new("{% for m in messages %}").unwrap_err(),
        LoraError::InvalidInput(_)
    ));
}

#[test]
fn a_hugging_face_folder_s_template_comes_from_its_files() {
    let dir = tempfile::tempdir().unwrap();
    assert!(ChatTemplate::from_hf_dir(dir.path()).unwrap().is_none());
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}",
            "bos_token": "<s>", "eos_token": {"content": "</s>", "special": true}}"#,
    )
    .unwrap();
    let template = ChatTemplate::from_hf_dir(dir.path()).unwrap().unwrap();
    assert_eq!(
        template
            .render(&[ChatMessage::new("user", "hi")], false)
            .unwrap(),
        "<s>hi</s>"
    );
    // chat_template.jinja wins over tokenizer_config.json's, as in transformers 5.
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "[{{ messages[0].content }}]",
    )
    .unwrap();
    let template = ChatTemplate::from_hf_dir(dir.path()).unwrap().unwrap();
    assert_eq!(
        template
            .render(&[ChatMessage::new("user", "hi")], false)
            .unwrap(),
        "[hi]"
    );
}
