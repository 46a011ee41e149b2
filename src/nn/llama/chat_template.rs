//! [`ChatTemplate`]: a model's Jinja chat template, rendered as transformers'
//! `apply_chat_template` renders it.

use std::path::Path;

use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

use crate::error::{LoraError, Result};
use crate::io::gguf::file::GgufFile;
use crate::io::tensor_file::read_bytes;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or any role the template knows).
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message of `role` saying `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// A chat template: the Jinja text that turns a conversation into a model's prompt, as Hugging
/// Face ships it (`chat_template.jinja`, the `chat_template` of `tokenizer_config.json`, a GGUF
/// file's `tokenizer.chat_template`). Rendered as transformers renders it: blocks trimmed
/// (`trim_blocks`, `lstrip_blocks`), `break`/`continue`, `raise_exception`, Python's string
/// methods, `tojson`; the variables `messages`, `add_generation_prompt` and the special tokens
/// given.
///
/// ```
/// use burn_lora::nn::llama::{ChatMessage, ChatTemplate};
///
/// let template = ChatTemplate::new(
///     "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}\
///      {% if add_generation_prompt %}<|assistant|>{% endif %}",
/// )?;
/// let prompt = template.render(&[ChatMessage::new("user", "Hi")], true)?;
/// assert_eq!(prompt, "<|user|>Hi\n<|assistant|>");
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
#[derive(Debug)]
pub struct ChatTemplate {
    environment: Environment<'static>,
    special_tokens: Vec<(String, String)>,
}

/// The template's name in its environment.
const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`.
    ///
    /// # Errors
    /// [`LoraError::InvalidInput`] when it is not a valid template (the message names the line).
    pub fn new(source: &str) -> Result<Self> {
        let mut environment = Environment::new();
        environment.set_trim_blocks(true);
        environment.set_lstrip_blocks(true);
        environment
            .set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        environment.add_filter("tojson", to_json);
        environment
            .add_template_owned(NAME, source.to_string())
            .map_err(|e| LoraError::InvalidInput(format!("chat template: {e:#}")))?;
        Ok(Self {
            environment,
            special_tokens: Vec::new(),
        })
    }

    /// The template of a Hugging Face folder: `chat_template.jinja`, else the `chat_template` of
    /// `tokenizer_config.json` (a string, or the one named `default` of a list), with the
    /// special tokens `tokenizer_config.json` names (`bos_token`, `eos_token`, ...) as
    /// variables; `None` when the folder has no template.
    ///
    /// # Errors
    /// [`LoraError::Io`] or [`LoraError::InvalidFile`] for a file that cannot be read or parsed,
    /// as [`new`](Self::new) for the template.
    pub fn from_hf_dir(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = if config_path.is_file() {
            serde_json::from_slice(&read_bytes(&config_path)?).map_err(|e| {
                LoraError::InvalidFile {
                    path: config_path.display().to_string(),
                    format: "tokenizer_config.json".into(),
                    reason: e.to_string(),
                }
            })?
        } else {
            serde_json::Value::Null
        };
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.is_file() {
            let bytes = read_bytes(&jinja)?;
            Some(
                String::from_utf8(bytes).map_err(|e| LoraError::InvalidFile {
                    path: jinja.display().to_string(),
                    format: "chat_template.jinja".into(),
                    reason: e.to_string(),
                })?,
            )
        } else {
            match &config["chat_template"] {
                serde_json::Value::String(text) => Some(text.clone()),
                serde_json::Value::Array(named) => named
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(str::to_string),
                _ => None,
            }
        };
        let Some(source) = source else {
            return Ok(None);
        };
        let mut template = Self::new(&source)?;
        for name in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            let token = match &config[name] {
                serde_json::Value::String(text) => Some(text.clone()),
                serde_json::Value::Object(added) => added["content"].as_str().map(str::to_string),
                _ => None,
            };
            if let Some(token) = token {
                template = template.with_special_token(name, &token);
            }
        }
        Ok(Some(template))
    }

    /// The template a GGUF file carries (`tokenizer.chat_template`), with its `bos_token` and
    /// `eos_token` from `tokenizer.ggml.*`; `None` when it has none.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Option<Self>> {
        let Some(source) = gguf.get("tokenizer.chat_template").and_then(|v| v.as_str()) else {
            return Ok(None);
        };
        let mut template = Self::new(source)?;
        let tokens = gguf.get("tokenizer.ggml.tokens").and_then(|v| v.as_array());
        for (name, key) in [("bos_token", "bos_token_id"), ("eos_token", "eos_token_id")] {
            let id = gguf
                .get(&format!("tokenizer.ggml.{key}"))
                .and_then(|v| v.as_u64())
                .and_then(|id| usize::try_from(id).ok());
            let token = id.and_then(|id| tokens?.get(id)?.as_str());
            if let Some(token) = token {
                template = template.with_special_token(name, token);
            }
        }
        Ok(Some(template))
    }

    /// Makes `name` (`bos_token`) a variable of value `token` in every rendering.
    pub fn with_special_token(mut self, name: &str, token: &str) -> Self {
        self.special_tokens.retain(|(known, _)| known != name);
        self.special_tokens
            .push((name.to_string(), token.to_string()));
        self
    }

    /// The prompt for `messages`, ending with the assistant's turn opened when
    /// `add_generation_prompt` is set.
    ///
    /// # Errors
    /// [`LoraError::InvalidInput`] when the template fails to render (it raised an exception,
    /// used an unknown filter or an undefined value in a way Jinja refuses).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .environment
            .get_template(NAME)
            .map_err(|e| LoraError::InvalidInput(format!("chat template: {e:#}")))?;
        let mut context: Vec<(String, Value)> = vec![
            ("messages".into(), Value::from_serialize(messages)),
            (
                "add_generation_prompt".into(),
                Value::from(add_generation_prompt),
            ),
        ];
        for (name, token) in &self.special_tokens {
            context.push((name.clone(), Value::from(token.as_str())));
        }
        let context: std::collections::BTreeMap<String, Value> = context.into_iter().collect();
        template
            .render(context)
            .map_err(|e| LoraError::InvalidInput(format!("chat template: {e:#}")))
    }
}

/// transformers' `tojson`: Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, keys
/// in their order, `", "` and `": "` between items (`","` at line ends with an indent), and no
/// HTML escaping (minijinja's own `tojson` escapes `<`, `>` and `&` for HTML).
fn to_json(value: Value, kwargs: minijinja::value::Kwargs) -> std::result::Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&value, indent, 0, &mut out)?;
    Ok(out)
}

fn write_json(
    value: &Value,
    indent: Option<usize>,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), Error> {
    use minijinja::value::ValueKind;
    let invalid = |e: serde_json::Error| Error::new(ErrorKind::InvalidOperation, e.to_string());
    let newline = |out: &mut String, level: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * level));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&value.to_string()),
        ValueKind::String => out
            .push_str(&serde_json::to_string(value.as_str().unwrap_or_default()).map_err(invalid)?),
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, level + 1);
                let name = key
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| key.to_string());
                out.push_str(&serde_json::to_string(&name).map_err(invalid)?);
                out.push_str(": ");
                write_json(&value.get_item(&key)?, indent, level + 1, out)?;
            }
            if value.len().unwrap_or(0) > 0 {
                newline(out, level);
            }
            out.push('}');
        }
        _ => {
            out.push('[');
            let mut any = false;
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, level + 1);
                write_json(&item, indent, level + 1, out)?;
                any = true;
            }
            if any {
                newline(out, level);
            }
            out.push(']');
        }
    }
    Ok(())
}
