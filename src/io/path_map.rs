//! [`PathMap`]: renaming Burn module paths to the PyTorch module paths an adapter file or a
//! checkpoint uses.

use regex::Regex;

use crate::error::{LoraError, Result};

/// Maps Burn module paths (`layers.0`, `encoder.fc`) to PyTorch ones (`linear1`, `model.fc`).
///
/// Two kinds of rules, applied in this order:
///
/// 1. [`rename`](Self::rename) rules rename a path equal to their `burn` side, or starting with
///    it followed by `.`; the longest matching rule wins.
/// 2. [`regex`](Self::regex) rules then rewrite the result, each in turn in the order they were
///    added, replacing every match of the pattern (`$1`, `${name}` refer to captures).
///
/// Paths no rule matches are used unchanged. One map serves adapter files
/// ([`load_adapter`](crate::load_adapter), [`save_adapter`](crate::save_adapter)) and base
/// weights ([`load_pytorch_checkpoint`](crate::load_pytorch_checkpoint)): it always goes from
/// Burn to PyTorch.
///
/// ```
/// use burn_lora::PathMap;
///
/// // The notebook's PyTorch model named its layers linear1..3.
/// let map = PathMap::identity()
///     .rename("layers.0", "linear1")
///     .rename("layers.1", "linear2")
///     .rename("layers.2", "linear3");
/// assert_eq!(map.to_torch("layers.1"), "linear2");
/// assert_eq!(map.to_torch("head"), "head");
/// ```
///
/// Hugging Face's BERT names the query projection of layer `N`
/// `encoder.layer.N.attention.self.query`; a Burn model with `encoder.layers: Vec<Block>` and
/// `Block { mha: MultiHeadAttention, .. }` calls it `encoder.layers.N.mha.query`:
///
/// ```
/// use burn_lora::PathMap;
///
/// let map = PathMap::identity()
///     .regex(r"^encoder\.layers\.(\d+)\.mha\.(query|key|value)$", "encoder.layer.$1.attention.self.$2")?
///     .regex(r"^encoder\.layers\.(\d+)\.mha\.output$", "encoder.layer.$1.attention.output.dense")?;
/// assert_eq!(map.to_torch("encoder.layers.3.mha.query"), "encoder.layer.3.attention.self.query");
/// assert_eq!(map.to_torch("encoder.layers.0.mha.output"), "encoder.layer.0.attention.output.dense");
/// assert_eq!(map.to_torch("embeddings.word_embeddings"), "embeddings.word_embeddings");
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathMap {
    rules: Vec<(String, String)>,
    regexes: Vec<RegexRule>,
}

/// One [`PathMap::regex`] rule.
#[derive(Debug, Clone)]
struct RegexRule {
    pattern: Regex,
    replacement: String,
}

impl PartialEq for RegexRule {
    fn eq(&self, other: &Self) -> bool {
        self.pattern.as_str() == other.pattern.as_str() && self.replacement == other.replacement
    }
}

impl Eq for RegexRule {}

impl PathMap {
    /// No renaming: PyTorch paths equal Burn paths.
    pub fn identity() -> Self {
        Self::default()
    }

    /// Adds a rule renaming `burn` (and everything under it) to `torch`.
    pub fn rename(mut self, burn: impl Into<String>, torch: impl Into<String>) -> Self {
        self.rules.push((burn.into(), torch.into()));
        self
    }

    /// Adds a rule replacing every match of the regular expression `pattern` in the path by
    /// `replacement`, after the [`rename`](Self::rename) rules and the regex rules added before.
    /// In `replacement`, `$1` or `${1}` is the first capture, `${name}` a named one (write
    /// `${1}` when letters or digits follow it) and `$$` a `$`. Anchor the pattern (`^…$`) to
    /// match whole paths.
    ///
    /// # Errors
    /// [`LoraError::InvalidPattern`] when `pattern` is not a valid regular expression.
    pub fn regex(mut self, pattern: &str, replacement: impl Into<String>) -> Result<Self> {
        self.regexes.push(RegexRule {
            pattern: compile(pattern)?,
            replacement: replacement.into(),
        });
        Ok(self)
    }

    /// The PyTorch path for a Burn path.
    pub fn to_torch(&self, burn_path: &str) -> String {
        let renamed = self
            .rules
            .iter()
            .filter_map(|(burn, torch)| {
                let rest = burn_path.strip_prefix(burn.as_str())?;
                (rest.is_empty() || rest.starts_with('.'))
                    .then(|| (burn.len(), format!("{torch}{rest}")))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, path)| path)
            .unwrap_or_else(|| burn_path.to_string());
        self.regexes.iter().fold(renamed, |path, rule| {
            rule.pattern
                .replace_all(&path, rule.replacement.as_str())
                .into_owned()
        })
    }
}

/// Compiles `pattern`, or [`LoraError::InvalidPattern`].
pub(crate) fn compile(pattern: &str) -> Result<Regex> {
    Regex::new(pattern).map_err(|e| LoraError::InvalidPattern {
        pattern: pattern.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_rules_match_whole_components_and_the_longest_wins() {
        let map = PathMap::identity()
            .rename("enc", "encoder")
            .rename("enc.layers.0", "first");
        assert_eq!(map.to_torch("enc.fc"), "encoder.fc");
        assert_eq!(map.to_torch("enc.layers.0.fc"), "first.fc");
        assert_eq!(map.to_torch("enc.layers.1"), "encoder.layers.1");
        assert_eq!(
            map.to_torch("encoder2"),
            "encoder2",
            "not a whole component"
        );
    }

    #[test]
    fn regex_rules_apply_after_renames_in_the_order_added_with_captures() {
        let map = PathMap::identity()
            .rename("bert", "model")
            .regex(r"^model\.layers\.(\d+)\.", "model.layer.$1.")
            .unwrap()
            .regex(r"\.mha\.(?P<proj>query|value)$", ".attention.self.${proj}")
            .unwrap();
        assert_eq!(
            map.to_torch("bert.layers.11.mha.value"),
            "model.layer.11.attention.self.value"
        );
        assert_eq!(map.to_torch("bert.layers.2.ffn"), "model.layer.2.ffn");
        assert_eq!(map.to_torch("head"), "head");
        // Every match is replaced.
        let dots = PathMap::identity().regex(r"\.", "/").unwrap();
        assert_eq!(dots.to_torch("a.b.c"), "a/b/c");
    }

    #[test]
    fn invalid_regex_is_invalid_pattern_naming_it() {
        let err = PathMap::identity().regex(r"layers\.(\d+", "x").unwrap_err();
        assert!(
            matches!(&err, LoraError::InvalidPattern { pattern, reason }
                if pattern == r"layers\.(\d+" && !reason.is_empty()),
            "{err:?}"
        );
    }

    #[test]
    fn maps_with_the_same_rules_are_equal() {
        let map = || {
            PathMap::identity()
                .rename("a", "b")
                .regex("^c$", "d")
                .unwrap()
        };
        assert_eq!(map(), map());
        assert_ne!(map(), PathMap::identity().rename("a", "b"));
        assert_ne!(map(), map().regex("^c$", "e").unwrap());
    }
}
