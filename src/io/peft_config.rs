//! [`PeftConfig`]: the `adapter_config.json` that Hugging Face PEFT reads and writes.

use indexmap::IndexMap;
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
    /// The adapted modules (`"all-linear"`: every module the file holds factors for).
    pub target_modules: TargetModules,
    /// Modules left out even when `target_modules` matches them (same matching rules).
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    /// Per-module ranks overriding `r` (keys are module-name patterns; the first key in the
    /// file's order that matches wins, as in PEFT).
    #[serde(default)]
    pub rank_pattern: IndexMap<String, usize>,
    /// Per-module alphas overriding `lora_alpha`.
    #[serde(default)]
    pub alpha_pattern: IndexMap<String, f64>,
    /// Weights stored as `[in, out]` (GPT-2 style `Conv1D`); not supported.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Weight-decomposed LoRA (DoRA): each layer also has a trained magnitude vector.
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
        let mut rank_pattern = IndexMap::new();
        let mut alpha_pattern = IndexMap::new();
        for (path, config) in targets {
            if config.use_rslora != first.use_rslora
                || config.dropout != first.dropout
                || config.use_dora != first.use_dora
            {
                return Err(LoraError::Unsupported(format!(
                    "layer {path} differs from {} in use_rslora, use_dora or dropout, which PEFT cannot express per layer",
                    targets[0].0 // not empty: `first` exists
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
            LoraInit::Pissa {
                power_iterations: None,
            } => json!("pissa"),
            LoraInit::Pissa {
                power_iterations: Some(k),
            } => json!(format!("pissa_niter_{k}")),
            LoraInit::Olora => json!("olora"),
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
            exclude_modules: None,
            rank_pattern,
            alpha_pattern,
            fan_in_fan_out: false,
            use_dora: first.use_dora,
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
        if config.fan_in_fan_out {
            return unsupported("fan_in_fan_out = true");
        }
        if config.bias != "none" {
            return unsupported(&format!("bias = {:?} (only \"none\")", config.bias));
        }
        if config.lora_bias {
            return unsupported("lora_bias = true (a trained bias on lora_B)");
        }
        if let Some(Value::String(init)) = config.other.get("init_lora_weights") {
            let rebuilt = config.principal_init().is_some();
            if !rebuilt
                && BASE_REWRITING_INITS
                    .iter()
                    .any(|p| init.to_lowercase().starts_with(p))
            {
                return unsupported(&format!(
                    "init_lora_weights = {init:?} (the adapter applies to a residual base that \
                     this initialisation wrote, which burn-lora cannot rebuild from the \
                     checkpoint: convert it to plain LoRA, in PEFT with \
                     `path_initial_model_for_weight_conversion`, in burn-lora with \
                     `save_adapter_converted`)"
                ));
            }
        }
        for (field, value) in &config.other {
            if let Some(why) = unsupported_field(field, value) {
                return unsupported(&format!("{field} = {value} ({why})"));
            }
        }
        for modules in [
            Some(&config.target_modules),
            config.exclude_modules.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if let TargetModules::Pattern(pattern) = modules {
                Regex::new(&format!("^(?:{pattern})$")).map_err(|e| LoraError::InvalidFile {
                    path: path.display().to_string(),
                    format: "adapter_config.json".into(),
                    reason: format!("module pattern {pattern:?}: {e}"),
                })?;
            }
        }
        Ok(config)
    }

    /// Whether `module_path` is one of the targets: matched by `target_modules` (always, for
    /// `"all-linear"`) and not by `exclude_modules`.
    pub fn targets(&self, module_path: &str) -> bool {
        let excluded = self
            .exclude_modules
            .as_ref()
            .is_some_and(|modules| modules.matches(module_path));
        !excluded && (self.is_all_linear() || self.target_modules.matches(module_path))
    }

    /// Whether `target_modules` is PEFT's `"all-linear"`, whose layers the file itself lists.
    pub fn is_all_linear(&self) -> bool {
        matches!(&self.target_modules, TargetModules::Pattern(p) if p == "all-linear")
    }

    /// The [`LoraConfig`] of the module at `module_path`, honouring `rank_pattern` and
    /// `alpha_pattern` (first matching key, as PEFT does), validated. Its init is PiSSA or OLoRA
    /// where the file's is ([`principal_init`](Self::principal_init)), else the default.
    pub fn lora_config_for(&self, module_path: &str) -> Result<LoraConfig> {
        let rank = pattern_value(&self.rank_pattern, module_path).unwrap_or(self.r);
        let alpha = pattern_value(&self.alpha_pattern, module_path).unwrap_or(self.lora_alpha);
        let config = LoraConfig::new(rank, alpha)
            .with_dropout(self.lora_dropout)
            .with_use_rslora(self.use_rslora)
            .with_use_dora(self.use_dora)
            .with_init(self.principal_init().unwrap_or(LoraInit::KaimingUniform));
        config.validate()?;
        Ok(config)
    }

    /// PiSSA with the exact SVD or OLoRA, when `init_lora_weights` names one: inits whose
    /// residual base burn-lora rebuilds from the checkpoint when it loads the adapter, as PEFT
    /// does (the residual is the same whatever the signs of the singular vectors). A randomised
    /// SVD (`pissa_niter_k`) draws a residual that cannot be rebuilt.
    pub fn principal_init(&self) -> Option<LoraInit> {
        match self.other.get("init_lora_weights") {
            Some(Value::String(init)) if init == "pissa" => Some(LoraInit::Pissa {
                power_iterations: None,
            }),
            Some(Value::String(init)) if init == "olora" => Some(LoraInit::Olora),
            _ => None,
        }
    }
}

impl TargetModules {
    /// PEFT's matching: a list entry matches a path equal to it or ending in `.entry`; a
    /// pattern must match the whole path.
    pub fn matches(&self, module_path: &str) -> bool {
        match self {
            TargetModules::List(names) => names.iter().any(|name| suffix_match(module_path, name)),
            TargetModules::Pattern(pattern) => Regex::new(&format!("^(?:{pattern})$"))
                .map(|re| re.is_match(module_path))
                .unwrap_or(false),
        }
    }
}

/// `init_lora_weights` values with which PEFT changes the base weights when it creates (or
/// loads) the adapter, so that the adapter means something only on top of that changed base.
const BASE_REWRITING_INITS: [&str; 5] = ["pissa", "corda", "olora", "loftq", "lora_ga"];

/// Why a field of PEFT's config that burn-lora does not implement cannot be ignored with this
/// value, or `None` when the value is the one that changes nothing (null, false, empty).
fn unsupported_field(field: &str, value: &Value) -> Option<&'static str> {
    let inert = match value {
        Value::Null | Value::Bool(false) => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(entries) => entries.is_empty(),
        Value::String(text) => text.is_empty(),
        Value::Number(_) | Value::Bool(true) => false,
    };
    if inert {
        return None;
    }
    Some(match field {
        "modules_to_save" => "whole modules trained beside the adapter are not loaded",
        "layers_to_transform" | "layers_pattern" => "only some layers' indices are targeted",
        "layer_replication" => "layers are replicated",
        "trainable_token_indices" => "trained token embeddings are not loaded",
        "target_parameters" => "LoRA on bare parameters",
        "use_qalora" => "quantization-aware LoRA",
        "alora_invocation_tokens" => "activated LoRA",
        "arrow_config" => "Arrow routing",
        "use_bdlora" => "block-diagonal LoRA",
        "megatron_config" => "Megatron parallel layers",
        "kasa_config" => "KaSA",
        "monteclora_config" => "MonteCLoRA",
        "velora_config" => "VeLoRA",
        _ => return None,
    })
}

/// `path == name` or `path` ends with `.name`.
pub(crate) fn suffix_match(path: &str, name: &str) -> bool {
    path == name
        || path
            .strip_suffix(name)
            .is_some_and(|head| head.ends_with('.'))
}

/// PEFT's lookup: the first key `k` with `path` matching `(.*\.)?k$`.
pub(crate) fn pattern_value<T: Copy>(patterns: &IndexMap<String, T>, path: &str) -> Option<T> {
    patterns.iter().find_map(|(key, value)| {
        let matches = Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
            .map(|re| re.is_match(path))
            .unwrap_or_else(|_| suffix_match(path, key));
        matches.then_some(*value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `adapter_config.json` as Hugging Face PEFT 0.21 wrote it for the `mlp_r4` fixture.
    const PEFT_WRITTEN: &[u8] =
        include_bytes!("../../tests/fixtures/peft/mlp_r4/adapter/adapter_config.json");

    /// The PEFT fields burn-lora does not implement, each with a value that would change the
    /// adapter (so ignoring it would load a different model than PEFT does).
    fn unimplemented_fields() -> Vec<(&'static str, Value)> {
        vec![
            ("modules_to_save", json!(["classifier"])),
            ("layers_to_transform", json!([0])),
            ("layers_pattern", json!("layers")),
            ("layer_replication", json!([[0, 1]])),
            ("trainable_token_indices", json!([1])),
            ("target_parameters", json!(["w"])),
            ("use_qalora", json!(true)),
            ("alora_invocation_tokens", json!([1])),
            ("arrow_config", json!({"x": 1})),
            ("use_bdlora", json!(true)),
            ("megatron_config", json!({"x": 1})),
            ("kasa_config", json!({"x": 1})),
            ("monteclora_config", json!({"x": 1})),
            ("velora_config", json!({"x": 1})),
        ]
    }

    fn path() -> &'static Path {
        Path::new("adapters/mine/adapter_config.json")
    }

    /// The smallest config burn-lora accepts, with `edits` applied.
    fn config_with(edits: &[(&str, Value)]) -> Value {
        let mut config = json!({
            "peft_type": "LORA",
            "r": 4,
            "lora_alpha": 8,
            "target_modules": ["layers.0", "layers.1"],
        });
        for (field, value) in edits {
            config[*field] = value.clone();
        }
        config
    }

    fn parse(config: &Value) -> Result<PeftConfig> {
        PeftConfig::parse(path(), &serde_json::to_vec(config).unwrap())
    }

    /// Asserts `result` is `Unsupported` with a message naming the file and containing `names`.
    fn assert_unsupported(result: Result<PeftConfig>, names: &str, case: &str) {
        match result {
            Err(LoraError::Unsupported(message)) => {
                assert!(
                    message.contains(names),
                    "{case}: {message:?} must name {names}"
                );
                assert!(
                    message.contains(&path().display().to_string()),
                    "{case}: {message:?} must name the file"
                );
            }
            other => panic!("{case}: expected Unsupported naming {names}, got {other:?}"),
        }
    }

    #[test]
    fn peft_written_config_parses_with_every_field_read_or_kept() {
        let config = PeftConfig::parse(path(), PEFT_WRITTEN).unwrap();
        assert_eq!(config.peft_type, "LORA");
        assert_eq!(config.r, 4);
        assert_eq!(config.lora_alpha, 8.0);
        assert_eq!(config.lora_dropout, 0.0);
        assert!(!config.use_rslora);
        assert_eq!(config.bias, "none");
        assert_eq!(
            config.target_modules,
            TargetModules::List(vec![
                "layers.2".into(),
                "layers.1".into(),
                "layers.0".into()
            ])
        );
        assert_eq!(config.exclude_modules, None);
        assert!(config.rank_pattern.is_empty() && config.alpha_pattern.is_empty());
        assert!(!config.fan_in_fan_out && !config.use_dora && !config.lora_bias);
        assert_eq!(config.other["peft_version"], json!("0.21.2"));
        assert_eq!(config.other["init_lora_weights"], json!("gaussian"));
        assert_eq!(config.other["qalora_group_size"], json!(16));
        // Every field of the file is either read or kept.
        let file: Map<String, Value> = serde_json::from_slice(PEFT_WRITTEN).unwrap();
        let written = serde_json::to_value(&config).unwrap();
        for field in file.keys() {
            assert!(written.get(field).is_some(), "field {field} was dropped");
        }
        assert!(!config.is_all_linear());
        assert!(config.targets("layers.1"));
        assert!(!config.targets("layers.3"));
        assert_eq!(
            config.lora_config_for("layers.2").unwrap(),
            LoraConfig::new(4, 8.0)
        );
    }

    #[test]
    fn unknown_fields_are_kept_in_other_as_written() {
        let future = json!({"nested": [1, 2.5, null], "flag": true});
        let config = parse(&config_with(&[
            ("some_future_field", future.clone()),
            ("task_type", json!("CAUSAL_LM")),
        ]))
        .unwrap();
        assert_eq!(config.other.get("some_future_field"), Some(&future));
        assert_eq!(config.other.get("task_type"), Some(&json!("CAUSAL_LM")));
        let written = serde_json::to_value(&config).unwrap();
        assert_eq!(written["some_future_field"], future);
    }

    #[test]
    fn invalid_json_is_invalid_file_naming_the_path() {
        for text in [
            "{ \"r\": 4, ",
            "",
            "[1, 2, 3]",
            "{\"peft_type\": \"LORA\"}",
            "{\"peft_type\": \"LORA\", \"r\": \"four\", \"lora_alpha\": 8, \"target_modules\": []}",
        ] {
            let err = PeftConfig::parse(path(), text.as_bytes()).unwrap_err();
            assert!(
                matches!(&err, LoraError::InvalidFile { path: p, format, .. }
                    if *p == path().display().to_string() && format == "adapter_config.json"),
                "{text:?}: {err:?}"
            );
        }
    }

    #[test]
    fn invalid_module_regex_is_invalid_file_naming_the_pattern() {
        for field in ["target_modules", "exclude_modules"] {
            let err = parse(&config_with(&[(field, json!("layers\\.(("))])).unwrap_err();
            assert!(
                matches!(&err, LoraError::InvalidFile { format, reason, .. }
                    if format == "adapter_config.json" && reason.contains("layers\\.((")),
                "{field}: {err:?}"
            );
        }
    }

    #[test]
    fn peft_type_other_than_lora_is_unsupported_naming_it() {
        for peft_type in ["IA3", "LOHA", "lora"] {
            let result = parse(&config_with(&[("peft_type", json!(peft_type))]));
            assert_unsupported(result, &format!("{peft_type:?}"), peft_type);
        }
    }

    #[test]
    fn fan_in_fan_out_and_trained_biases_are_unsupported_naming_the_field() {
        let cases = [
            ("fan_in_fan_out", json!(true), "fan_in_fan_out"),
            ("bias", json!("all"), "bias = \"all\""),
            ("bias", json!("lora_only"), "bias = \"lora_only\""),
            ("lora_bias", json!(true), "lora_bias"),
        ];
        for (field, value, names) in cases {
            let result = parse(&config_with(&[(field, value.clone())]));
            assert_unsupported(result, names, &format!("{field} = {value}"));
        }
    }

    #[test]
    fn unimplemented_peft_fields_with_a_non_default_value_are_unsupported_naming_the_field() {
        for (field, value) in unimplemented_fields() {
            let result = parse(&config_with(&[(field, value.clone())]));
            assert_unsupported(
                result,
                &format!("{field} = "),
                &format!("{field} = {value}"),
            );
        }
    }

    #[test]
    fn unimplemented_peft_fields_at_their_peft_defaults_parse() {
        for (field, _) in unimplemented_fields() {
            for inert in [Value::Null, json!(false), json!([]), json!({})] {
                let config = parse(&config_with(&[(field, inert.clone())]))
                    .unwrap_or_else(|e| panic!("{field} = {inert}: {e}"));
                assert_eq!(config.other.get(field), Some(&inert), "{field} kept");
            }
        }
    }

    #[test]
    fn exclude_modules_list_or_regex_removes_those_paths_from_the_targets() {
        let query0 = "encoder.layer.0.attention.self.query";
        let query1 = "encoder.layer.1.attention.self.query";
        let value1 = "encoder.layer.1.attention.self.value";
        for exclude in [
            json!(["layer.1.attention.self.query"]),
            json!(r"encoder\.layer\.1\..*\.query"),
        ] {
            let config = parse(&config_with(&[
                ("target_modules", json!(["query", "value"])),
                ("exclude_modules", exclude.clone()),
            ]))
            .unwrap();
            assert!(config.targets(query0), "{exclude}: {query0}");
            assert!(!config.targets(query1), "{exclude}: {query1} is excluded");
            assert!(config.targets(value1), "{exclude}: {value1}");
            assert!(!config.targets("encoder.layer.0.output.dense"), "{exclude}");
        }
    }

    #[test]
    fn all_linear_targets_every_module_but_the_excluded() {
        let config = parse(&config_with(&[
            ("target_modules", json!("all-linear")),
            ("exclude_modules", json!(["classifier"])),
        ]))
        .unwrap();
        assert!(config.is_all_linear());
        assert!(config.targets("layers.0"));
        assert!(config.targets("encoder.layer.3.output.dense"));
        assert!(!config.targets("classifier"));
        assert!(!parse(&config_with(&[])).unwrap().is_all_linear());
        let pattern = parse(&config_with(&[("target_modules", json!(r"layers\.\d"))])).unwrap();
        assert!(!pattern.is_all_linear());
    }

    #[test]
    fn module_names_match_as_a_suffix_of_whole_path_components() {
        let names = TargetModules::List(vec!["query".into(), "layers.1".into()]);
        assert!(names.matches("encoder.layer.0.attention.self.query"));
        assert!(names.matches("query"));
        assert!(names.matches("layers.1"));
        assert!(names.matches("model.layers.1"));
        assert!(!names.matches("xquery"));
        assert!(!names.matches("encoder.layer.0.attention.self.xquery"));
        assert!(!names.matches("encoder.layer.0.attention.self.query.dense"));
        assert!(!names.matches("layers.11"));
        assert!(!names.matches("model.xlayers.1"));
        assert!(!TargetModules::List(vec![]).matches("query"));
    }

    #[test]
    fn module_pattern_must_match_the_whole_path() {
        let pattern = TargetModules::Pattern(r"layers\.[01]".into());
        assert!(pattern.matches("layers.0"));
        assert!(pattern.matches("layers.1"));
        assert!(!pattern.matches("layers.2"));
        assert!(!pattern.matches("model.layers.0"));
        assert!(!pattern.matches("layers.01"));
    }

    #[test]
    fn rank_and_alpha_patterns_override_r_and_lora_alpha_for_matching_modules() {
        let config = parse(&config_with(&[
            ("r", json!(8)),
            ("lora_alpha", json!(16)),
            ("lora_dropout", json!(0.1)),
            ("use_rslora", json!(true)),
            ("rank_pattern", json!({"layers.1": 2, "value": 4})),
            ("alpha_pattern", json!({"layers.1": 3.5})),
        ]))
        .unwrap();
        let expected = |rank, alpha| {
            LoraConfig::new(rank, alpha)
                .with_dropout(0.1)
                .with_use_rslora(true)
        };
        for (path, want) in [
            ("layers.0", expected(8, 16.0)),
            ("layers.1", expected(2, 3.5)),
            ("model.layers.1", expected(2, 3.5)),
            ("layers.11", expected(8, 16.0)),
            ("xlayers.1", expected(8, 16.0)),
            ("encoder.layer.0.attention.self.value", expected(4, 16.0)),
            ("encoder.layer.0.attention.self.xvalue", expected(8, 16.0)),
        ] {
            assert_eq!(config.lora_config_for(path).unwrap(), want, "{path}");
        }
    }

    #[test]
    fn rank_pattern_keys_are_regular_expressions() {
        let config = parse(&config_with(&[(
            "rank_pattern",
            json!({r"layer\.[0-3]\.attention\.self\.query": 2}),
        )]))
        .unwrap();
        let rank = |path: &str| config.lora_config_for(path).unwrap().rank;
        assert_eq!(rank("encoder.layer.2.attention.self.query"), 2);
        assert_eq!(rank("encoder.layer.7.attention.self.query"), 4);
    }

    #[test]
    fn invalid_per_module_rank_or_alpha_is_an_error_for_that_module_only() {
        let config = parse(&config_with(&[
            ("rank_pattern", json!({"layers.1": 0})),
            ("alpha_pattern", json!({"layers.2": -1.0})),
        ]))
        .unwrap();
        assert_eq!(config.lora_config_for("layers.1"), Err(LoraError::ZeroRank));
        assert_eq!(
            config.lora_config_for("layers.2"),
            Err(LoraError::InvalidAlpha(-1.0))
        );
        assert_eq!(
            config.lora_config_for("layers.0").unwrap(),
            LoraConfig::new(4, 8.0)
        );
    }

    #[test]
    fn the_first_matching_pattern_key_in_file_order_wins_as_in_peft() {
        // PEFT walks the dict in the file's order: the first key that matches gives the rank.
        let with_patterns = |patterns: &str| {
            let json = format!(
                r#"{{"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                    "target_modules": ["query"], "rank_pattern": {patterns}}}"#
            );
            PeftConfig::parse(path(), json.as_bytes()).unwrap()
        };
        let path = "encoder.layer.0.attention.self.query";
        let config = with_patterns(r#"{"self.query": 2, "query": 8}"#);
        assert_eq!(config.lora_config_for(path).unwrap().rank, 2);
        let config = with_patterns(r#"{"query": 8, "self.query": 2}"#);
        assert_eq!(config.lora_config_for(path).unwrap().rank, 8);
    }

    /// Inits that rewrite the base parse where burn-lora rebuilds the residual from the
    /// checkpoint (the exact PiSSA, OLoRA), and are unsupported where it cannot.
    #[test]
    fn inits_that_rewrite_the_base_are_unsupported_and_plain_inits_parse() {
        for (init, expected) in [
            (
                "pissa",
                LoraInit::Pissa {
                    power_iterations: None,
                },
            ),
            ("olora", LoraInit::Olora),
        ] {
            let config = parse(&config_with(&[("init_lora_weights", json!(init))])).unwrap();
            assert_eq!(config.lora_config_for("layers.0").unwrap().init, expected);
        }
        for init in ["pissa_niter_16", "corda", "loftq", "lora_ga"] {
            assert_unsupported(
                parse(&config_with(&[("init_lora_weights", json!(init))])),
                "init_lora_weights",
                init,
            );
        }
        for init in [
            json!(true),
            json!(false),
            json!("gaussian"),
            json!("eva"),
            json!("mica"),
        ] {
            parse(&config_with(&[("init_lora_weights", init.clone())]))
                .unwrap_or_else(|e| panic!("{init}: {e}"));
        }
    }
}
