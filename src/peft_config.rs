//! [`PeftConfig`]: the `adapter_config.json` that Hugging Face PEFT reads and writes.

use std::collections::BTreeMap;
use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::{LoraConfig, LoraInit};
use crate::error::{LoraError, Result};

/// PEFT's `target_modules`: a list of module names (matched as a suffix of the module path) or
/// one regular expression (matched against the whole path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Names, each matching a path equal to it or ending in `.name`.
    List(Vec<String>),
    /// A regular expression that must match the whole module path.
    Pattern(String),
}

/// The fields of PEFT's `adapter_config.json` that burn-lora reads; every other field is kept in
/// [`other`](Self::other) as written, and unknown fields are never an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    /// Must be `"LORA"`.
    pub peft_type: String,
    /// Default rank.
    pub r: usize,
    /// Default alpha (written as an integer when it is one, as PEFT does).
    #[serde(serialize_with = "integral_as_int")]
    pub lora_alpha: f64,
    /// Dropout on the adapter input.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Scale by `alpha / √r` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Which biases are trained; only `"none"` is supported.
    #[serde(default = "bias_none")]
    pub bias: String,
    /// The adapted modules.
    pub target_modules: TargetModules,
    /// Per-module ranks overriding `r` (keys are module-name patterns).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alphas overriding `lora_alpha`.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Weights stored as `[in, out]` (GPT-2 style `Conv1D`); not supported.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Weight-decomposed LoRA; not supported.
    #[serde(default)]
    pub use_dora: bool,
    /// A trained bias on `lora_B`; not supported.
    #[serde(default)]
    pub lora_bias: bool,
    /// Every other field, preserved.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Writes `8.0` as `8`, like Python's `int` in PEFT's files; other values as floats.
fn integral_as_int<S: serde::Serializer>(
    value: &f64,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        serializer.serialize_i64(*value as i64)
    } else {
        serializer.serialize_f64(*value)
    }
}

fn bias_none() -> String {
    "none".to_string()
}

impl PeftConfig {
    /// A config as PEFT would write it for adapters created from `config` on `targets` (PyTorch
    /// module paths), with per-module `rank_pattern` / `alpha_pattern` entries where a layer's
    /// rank or alpha differs from the first.
    pub fn from_layers(targets: &[(String, LoraConfig)]) -> Result<Self> {
        let (_, first) = targets.first().ok_or_else(|| {
            LoraError::InvalidModel("an adapter file needs at least one layer".into())
        })?;
        let mut rank_pattern = BTreeMap::new();
        let mut alpha_pattern = BTreeMap::new();
        for (path, config) in targets {
            if config.use_rslora != first.use_rslora || config.dropout != first.dropout {
                return Err(LoraError::Unsupported(format!(
                    "layer {path} differs from {} in use_rslora or dropout, which PEFT cannot express per layer",
                    targets[0].0
                )));
            }
            if config.rank != first.rank {
                rank_pattern.insert(path.clone(), config.rank);
            }
            if config.alpha != first.alpha {
                alpha_pattern.insert(path.clone(), config.alpha);
            }
        }
        let init = match first.init {
            LoraInit::Gaussian { .. } => json!("gaussian"),
            LoraInit::KaimingUniform => json!(true),
        };
        let defaults = [
            ("alora_invocation_tokens", Value::Null),
            ("arrow_config", Value::Null),
            ("auto_mapping", Value::Null),
            ("corda_config", Value::Null),
            ("ensure_weight_tying", json!(false)),
            ("eva_config", Value::Null),
            ("kasa_config", Value::Null),
            ("lora_ga_config", Value::Null),
            ("monteclora_config", Value::Null),
            ("qalora_group_size", json!(16)),
            ("use_bdlora", Value::Null),
            ("use_qalora", json!(false)),
            ("velora_config", Value::Null),
            ("base_model_name_or_path", Value::Null),
            ("exclude_modules", Value::Null),
            ("inference_mode", json!(true)),
            ("init_lora_weights", init),
            ("layer_replication", Value::Null),
            ("layers_pattern", Value::Null),
            ("layers_to_transform", Value::Null),
            ("loftq_config", json!({})),
            ("megatron_config", Value::Null),
            ("megatron_core", json!("megatron.core")),
            ("modules_to_save", Value::Null),
            ("revision", Value::Null),
            ("target_parameters", Value::Null),
            ("task_type", Value::Null),
            ("trainable_token_indices", Value::Null),
        ];
        let other = defaults
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect();
        Ok(Self {
            peft_type: "LORA".into(),
            r: first.rank,
            lora_alpha: first.alpha,
            lora_dropout: first.dropout,
            use_rslora: first.use_rslora,
            bias: bias_none(),
            target_modules: TargetModules::List(targets.iter().map(|(p, _)| p.clone()).collect()),
            rank_pattern,
            alpha_pattern,
            fan_in_fan_out: false,
            use_dora: false,
            lora_bias: false,
            other,
        })
    }

    /// Parses `adapter_config.json` bytes and rejects what burn-lora cannot honour.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let config: Self = serde_json::from_slice(bytes).map_err(|e| LoraError::InvalidFile {
            path: path.display().to_string(),
            format: "adapter_config.json".into(),
            reason: e.to_string(),
        })?;
        let unsupported = |what: &str| {
            Err(LoraError::Unsupported(format!(
                "{}: {what}",
                path.display()
            )))
        };
        if config.peft_type != "LORA" {
            return unsupported(&format!("peft_type {:?} (only \"LORA\")", config.peft_type));
        }
        if config.use_dora {
            return unsupported("use_dora = true (DoRA)");
        }
        if config.fan_in_fan_out {
            return unsupported("fan_in_fan_out = true");
        }
        if config.bias != "none" || config.lora_bias {
            return unsupported(&format!(
                "bias {:?} / lora_bias (only \"none\")",
                config.bias
            ));
        }
        if let TargetModules::Pattern(pattern) = &config.target_modules {
            Regex::new(&format!("^(?:{pattern})$")).map_err(|e| LoraError::InvalidFile {
                path: path.display().to_string(),
                format: "adapter_config.json".into(),
                reason: format!("target_modules pattern: {e}"),
            })?;
        }
        Ok(config)
    }

    /// Whether `module_path` is one of the targets.
    pub fn targets(&self, module_path: &str) -> bool {
        match &self.target_modules {
            TargetModules::List(names) => names.iter().any(|name| suffix_match(module_path, name)),
            TargetModules::Pattern(pattern) => Regex::new(&format!("^(?:{pattern})$"))
                .map(|re| re.is_match(module_path))
                .unwrap_or(false),
        }
    }

    /// The [`LoraConfig`] of the module at `module_path`, honouring `rank_pattern` and
    /// `alpha_pattern` (first matching key, as PEFT does), validated.
    pub fn lora_config_for(&self, module_path: &str) -> Result<LoraConfig> {
        let rank = pattern_value(&self.rank_pattern, module_path).unwrap_or(self.r);
        let alpha = pattern_value(&self.alpha_pattern, module_path).unwrap_or(self.lora_alpha);
        let config = LoraConfig::new(rank, alpha)
            .with_dropout(self.lora_dropout)
            .with_use_rslora(self.use_rslora);
        config.validate()?;
        Ok(config)
    }
}

/// `path == name` or `path` ends with `.name`.
fn suffix_match(path: &str, name: &str) -> bool {
    path == name
        || path
            .strip_suffix(name)
            .is_some_and(|head| head.ends_with('.'))
}

/// PEFT's lookup: the first key `k` with `path` matching `(.*\.)?k$`.
fn pattern_value<T: Copy>(patterns: &BTreeMap<String, T>, path: &str) -> Option<T> {
    patterns.iter().find_map(|(key, value)| {
        let matches = Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
            .map(|re| re.is_match(path))
            .unwrap_or_else(|_| suffix_match(path, key));
        matches.then_some(*value)
    })
}
