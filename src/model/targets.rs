//! [`Targets`]: which layers of a model get an adapter, selected the way PEFT's
//! `target_modules` selects them.

use indexmap::IndexMap;
use regex::Regex;

use crate::config::LoraConfig;
use crate::error::{LoraError, Result};
use crate::io::peft_config::{pattern_value, suffix_match, PeftConfig, TargetModules};
use crate::layers::layer::LayerKind;

/// Which LoRA layers [`LoraModel::attach`](crate::LoraModel::attach) adapts, matched against
/// their Burn module paths (`encoder.layers.0.mha.query`) as PEFT matches `target_modules`:
///
/// - [`names`](Self::names): a path equal to a name or ending in `.name`;
/// - [`regex`](Self::regex): a regular expression matching the whole path;
/// - [`all_linear`](Self::all_linear): every linear LoRA layer (PEFT's `"all-linear"`);
/// - [`all`](Self::all): every LoRA layer, whatever its kind;
///
/// minus the paths [`exclude`](Self::exclude) matches, with PEFT's per-layer overrides of rank
/// ([`rank_pattern`](Self::rank_pattern)) and alpha ([`alpha_pattern`](Self::alpha_pattern)).
///
/// ```
/// use burn_lora::Targets;
///
/// let targets = Targets::names(["query", "value"])
///     .exclude(Targets::regex(r"layers\.0\..*")?)
///     .rank_pattern("value", 16);
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Targets {
    select: Selection,
    exclude: Vec<Selection>,
    rank_pattern: IndexMap<String, usize>,
    alpha_pattern: IndexMap<String, f64>,
}

#[derive(Debug, Clone)]
enum Selection {
    All,
    AllLinear,
    Names(Vec<String>),
    Regex(Regex),
}

impl Targets {
    /// Every LoRA layer of the model.
    pub fn all() -> Self {
        Self::from_selection(Selection::All)
    }

    /// Every linear LoRA layer (not embeddings or convolutions): PEFT's `"all-linear"`.
    pub fn all_linear() -> Self {
        Self::from_selection(Selection::AllLinear)
    }

    /// Layers whose path equals one of `names` or ends in `.name` (`"query"` matches
    /// `encoder.layers.3.mha.query`; `"mha.query"` too).
    pub fn names<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::from_selection(Selection::Names(
            names.into_iter().map(Into::into).collect(),
        ))
    }

    /// Layers whose whole path matches the regular expression `pattern`.
    ///
    /// # Errors
    /// [`LoraError::InvalidTargets`] if `pattern` is not a valid regular expression.
    pub fn regex(pattern: &str) -> Result<Self> {
        let regex = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
            LoraError::InvalidTargets(format!("invalid regular expression {pattern:?}: {e}"))
        })?;
        Ok(Self::from_selection(Selection::Regex(regex)))
    }

    /// The targets of a PEFT config: its `target_modules` (`"all-linear"` included),
    /// `exclude_modules`, `rank_pattern` and `alpha_pattern`.
    ///
    /// # Errors
    /// [`LoraError::InvalidTargets`] for an invalid regular expression.
    pub fn from_peft(config: &PeftConfig) -> Result<Self> {
        let convert = |modules: &TargetModules| match modules {
            TargetModules::List(names) => Ok(Self::names(names.clone())),
            TargetModules::Pattern(p) if p == "all-linear" => Ok(Self::all_linear()),
            TargetModules::Pattern(p) => Self::regex(p),
        };
        let mut targets = convert(&config.target_modules)?;
        if let Some(exclude) = &config.exclude_modules {
            targets = targets.exclude(convert(exclude)?);
        }
        targets.rank_pattern = config.rank_pattern.clone();
        targets.alpha_pattern = config.alpha_pattern.clone();
        Ok(targets)
    }

    fn from_selection(select: Selection) -> Self {
        Self {
            select,
            exclude: Vec::new(),
            rank_pattern: IndexMap::new(),
            alpha_pattern: IndexMap::new(),
        }
    }

    /// Leaves out the layers `other` selects (its own exclusions and patterns are ignored).
    pub fn exclude(mut self, other: Targets) -> Self {
        self.exclude.push(other.select);
        self
    }

    /// Rank `rank` instead of the config's for the layers whose path matches `key` (a name or a
    /// regular expression matched against the end of the path, PEFT's `rank_pattern`; the
    /// first matching key wins).
    pub fn rank_pattern(mut self, key: impl Into<String>, rank: usize) -> Self {
        self.rank_pattern.insert(key.into(), rank);
        self
    }

    /// Alpha `alpha` instead of the config's for the layers whose path matches `key` (PEFT's
    /// `alpha_pattern`).
    pub fn alpha_pattern(mut self, key: impl Into<String>, alpha: f64) -> Self {
        self.alpha_pattern.insert(key.into(), alpha);
        self
    }

    /// Whether the LoRA layer at `path`, of kind `kind`, is selected and not excluded.
    pub fn selects(&self, path: &str, kind: LayerKind) -> bool {
        self.select.matches(path, kind) && !self.exclude.iter().any(|e| e.matches(path, kind))
    }

    /// Whether the selection names `path` explicitly (by name or regex, not by `all`), so that
    /// a module there that is no LoRA layer is worth an error.
    pub(crate) fn names_module(&self, path: &str) -> bool {
        matches!(self.select, Selection::Names(_) | Selection::Regex(_))
            && self.select.matches(path, LayerKind::Linear)
            && !self
                .exclude
                .iter()
                .any(|e| e.matches(path, LayerKind::Linear))
    }

    /// `config` with the rank and alpha overrides that apply to `path`.
    pub fn config_for(&self, path: &str, config: &LoraConfig) -> LoraConfig {
        let mut config = config.clone();
        if let Some(rank) = pattern_value(&self.rank_pattern, path) {
            config.rank = rank;
        }
        if let Some(alpha) = pattern_value(&self.alpha_pattern, path) {
            config.alpha = alpha;
        }
        config
    }
}

impl Selection {
    fn matches(&self, path: &str, kind: LayerKind) -> bool {
        match self {
            Selection::All => true,
            Selection::AllLinear => kind == LayerKind::Linear,
            Selection::Names(names) => names.iter().any(|name| suffix_match(path, name)),
            Selection::Regex(regex) => regex.is_match(path),
        }
    }
}
