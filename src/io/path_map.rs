//! [`PathMap`]: renaming Burn module paths to the PyTorch module paths an adapter file uses.

/// Maps Burn module paths (`layers.0`, `encoder.fc`) to PyTorch ones (`linear1`, `model.fc`).
///
/// A rule renames a path equal to its `burn` side, or starting with it followed by `.`; the
/// longest matching rule wins. Paths no rule matches are used unchanged.
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathMap {
    rules: Vec<(String, String)>,
}

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

    /// The PyTorch path for a Burn path.
    pub fn to_torch(&self, burn_path: &str) -> String {
        self.rules
            .iter()
            .filter_map(|(burn, torch)| {
                let rest = burn_path.strip_prefix(burn.as_str())?;
                (rest.is_empty() || rest.starts_with('.'))
                    .then(|| (burn.len(), format!("{torch}{rest}")))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, path)| path)
            .unwrap_or_else(|| burn_path.to_string())
    }
}
