//! Whole PyTorch / Hugging Face state dicts (safetensors) loaded into any Burn module.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use regex::Regex;

use crate::error::{LoraError, Result};
use crate::io::path_map::{compile, PathMap};
use crate::io::tensor_file::{float_tensor, parse_safetensors, read_bytes};
use crate::io::torch_param::{torch_param, TorchParam};
use crate::layers::linear::replace_value;

/// How strict [`load_pytorch_checkpoint`] is about keys. The default is strict: every parameter
/// must find its key and every key must be used.
///
/// ```
/// use burn_lora::LoadOptions;
///
/// // Hugging Face files hold buffers a Burn model has no parameter for.
/// let options = LoadOptions::new().with_unused_pattern(r"^embeddings\.position_ids$")?;
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    allow_missing: bool,
    allow_unused: bool,
    missing_patterns: Vec<Regex>,
    unused_patterns: Vec<Regex>,
}

impl LoadOptions {
    /// Strict options: no missing key, no unused key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether parameters whose key is not in the file may keep their values (listed in
    /// [`LoadReport::missing`]) instead of failing with [`LoraError::MissingKey`].
    pub fn with_allow_missing(mut self, allow: bool) -> Self {
        self.allow_missing = allow;
        self
    }

    /// Whether file keys no parameter uses may be left (listed in [`LoadReport::unused`])
    /// instead of failing with [`LoraError::UnexpectedKey`].
    pub fn with_allow_unused(mut self, allow: bool) -> Self {
        self.allow_unused = allow;
        self
    }

    /// Allows the missing keys that the regular expression `pattern` matches (anywhere in the
    /// key; anchor it with `^…$` for whole keys).
    ///
    /// # Errors
    /// [`LoraError::InvalidPattern`] when `pattern` does not compile.
    pub fn with_missing_pattern(mut self, pattern: &str) -> Result<Self> {
        self.missing_patterns.push(compile(pattern)?);
        Ok(self)
    }

    /// Allows the unused file keys that the regular expression `pattern` matches (anywhere in
    /// the key; anchor it with `^…$` for whole keys), e.g. `position_ids$`. Such keys are never
    /// read, so their dtype does not matter.
    ///
    /// # Errors
    /// [`LoraError::InvalidPattern`] when `pattern` does not compile.
    pub fn with_unused_pattern(mut self, pattern: &str) -> Result<Self> {
        self.unused_patterns.push(compile(pattern)?);
        Ok(self)
    }

    fn allows_missing(&self, key: &str) -> bool {
        self.allow_missing || self.missing_patterns.iter().any(|p| p.is_match(key))
    }

    fn allows_unused(&self, key: &str) -> bool {
        self.allow_unused || self.unused_patterns.iter().any(|p| p.is_match(key))
    }
}

/// What [`load_pytorch_checkpoint`] did, by PyTorch key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Keys loaded into the model, in the model's parameter order.
    pub loaded: Vec<String>,
    /// Keys the model looked for and the file lacks, in the model's parameter order; their
    /// parameters kept their values.
    pub missing: Vec<String>,
    /// File keys no parameter uses, sorted (allowed ones only: any other is an error).
    pub unused: Vec<String>,
}

/// Loads a PyTorch state dict saved as safetensors (a `model.safetensors` of Hugging Face, a
/// `save_file(model.state_dict())`) into any Burn module.
///
/// Every float parameter of `model` is looked for under its PyTorch key: its module path
/// renamed by `paths` ([`PathMap::to_torch`], the direction adapter files use too), then its
/// field name as PyTorch calls it. `gamma` / `beta` of `LayerNorm`, `BatchNorm`, `GroupNorm`,
/// `InstanceNorm` and `RmsNorm` are `weight` / `bias`, `PRelu`'s `alpha` is `weight`, and the
/// `weight` of `Linear` and [`LoraLinear`](crate::LoraLinear) is transposed (PyTorch stores
/// `[out, in]`); `Embedding`, `Conv*` and every other tensor have the same layout in both.
/// LoRA adapters are not part of a base checkpoint: they are left as they are. Int and bool
/// parameters are not loaded. A BatchNorm's `num_batches_tracked` has no Burn counterpart and
/// may stay unused.
///
/// Keys are read lazily: only the used ones are converted (F32, F16, BF16 or F64, to f32), so
/// an unused int buffer such as `embeddings.position_ids` is only a key to account for (see
/// [`LoadOptions::with_unused_pattern`]).
///
/// Every check is made before anything changes, and on any error the model is exactly as it
/// was. Loaded parameters keep their id, gradient setting and load/save mappers (the values are
/// the parameters' own, in-memory ones: load mappers do not run).
///
/// ```
/// use burn::backend::Flex as Inference;
/// use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
/// use burn::prelude::*;
/// use burn_lora::{load_pytorch_checkpoint, LoadOptions, PathMap};
///
/// #[derive(Module, Debug)]
/// struct Net<B: Backend> {
///     fc: Linear<B>,
///     norm: LayerNorm<B>,
/// }
///
/// let device = Default::default();
/// let mut net = Net::<Inference> {
///     fc: LinearConfig::new(4, 3).init(&device),
///     norm: LayerNormConfig::new(3).init(&device),
/// };
/// # let dir = tempfile::tempdir().unwrap();
/// # let file = dir.path().join("model.safetensors");
/// # let tensor = |name: &str, shape: Vec<usize>| {
/// #     let n: usize = shape.iter().product();
/// #     (name.to_string(), shape, vec![0u8; 4 * n])
/// # };
/// # let tensors = [
/// #     tensor("linear.weight", vec![3, 4]), tensor("linear.bias", vec![3]),
/// #     tensor("norm.weight", vec![3]), tensor("norm.bias", vec![3]),
/// # ];
/// # let views = tensors.iter().map(|(name, shape, data)| {
/// #     (name.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data).unwrap())
/// # });
/// # std::fs::write(&file, safetensors::serialize(views, None).unwrap()).unwrap();
/// // PyTorch's keys: linear.weight [3, 4], linear.bias, norm.weight, norm.bias.
/// let paths = PathMap::identity().rename("fc", "linear");
/// let report = load_pytorch_checkpoint(&mut net, &file, &paths, &LoadOptions::new())?;
/// assert_eq!(report.loaded, ["linear.weight", "linear.bias", "norm.weight", "norm.bias"]);
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
///
/// # Errors
/// Each naming the file and key:
/// - [`LoraError::MissingKey`] for a parameter whose key is not in the file, and
///   [`LoraError::UnexpectedKey`] for a file key no parameter uses, unless `options` allow them;
/// - [`LoraError::ShapeMismatch`] when a tensor's shape (in PyTorch's layout) does not fit its
///   parameter, [`LoraError::UnsupportedDtype`] when a used tensor is not a float,
///   [`LoraError::NonFinite`] when it holds NaN or infinite values;
/// - [`LoraError::Io`] or [`LoraError::InvalidFile`] when the file cannot be read or is not
///   safetensors (truncated, garbage);
/// - [`LoraError::Unsupported`] while a LoRA layer has adapters merged into its weight (the
///   merged weight would keep the old base: unmerge first).
pub fn load_pytorch_checkpoint<B: Backend, M: Module<B>>(
    model: &mut M,
    file: &Path,
    paths: &PathMap,
    options: &LoadOptions,
) -> Result<LoadReport> {
    load_pytorch_shards(model, &[file], paths, options)
}

/// [`load_pytorch_checkpoint`] from a state dict split over several safetensors files (the
/// shards a `model.safetensors.index.json` lists): every key is looked for in every shard, each
/// key must live in one shard only, and "every key accounted for" covers all of them.
///
/// # Errors
/// As [`load_pytorch_checkpoint`], and [`LoraError::InvalidFile`] when no file is given or a key
/// stands in two shards.
pub fn load_pytorch_shards<B: Backend, M: Module<B>>(
    model: &mut M,
    files: &[&Path],
    paths: &PathMap,
    options: &LoadOptions,
) -> Result<LoadReport> {
    let Some(first) = files.first() else {
        return Err(LoraError::InvalidFile {
            path: String::new(),
            format: "safetensors".into(),
            reason: "no checkpoint file given".into(),
        });
    };
    let mut lister = ParamLister::default();
    model.visit(&mut lister);
    let mut targets = Vec::with_capacity(lister.params.len());
    for param in lister.params {
        match torch_param(&param.stack, param.shape.len(), paths) {
            TorchParam::Load {
                key,
                transpose,
                pytorch_only,
            } => targets.push((param, key, transpose, pytorch_only)),
            TorchParam::Adapter => {}
            TorchParam::Merged(layer) => {
                return Err(LoraError::Unsupported(format!(
                    "loading base weights into the LoRA layer at \"{layer}\" while adapters are \
                     merged into it: unmerge first"
                )))
            }
        }
    }

    let bytes = files
        .iter()
        .map(|file| read_bytes(file))
        .collect::<Result<Vec<_>>>()?;
    let shards = files
        .iter()
        .zip(&bytes)
        .map(|(file, bytes)| parse_safetensors(file, bytes))
        .collect::<Result<Vec<_>>>()?;
    // Which shard holds each key.
    let mut shard_of: HashMap<String, usize> = HashMap::new();
    for (index, shard) in shards.iter().enumerate() {
        for key in shard.names() {
            if let Some(other) = shard_of.insert(key.to_string(), index) {
                return Err(LoraError::InvalidFile {
                    path: files[index].display().to_string(),
                    format: "safetensors".into(),
                    reason: format!("tensor \"{key}\" is also in {}", files[other].display()),
                });
            }
        }
    }
    let name = if files.len() == 1 {
        first.display().to_string()
    } else {
        format!("{} (and {} more shards)", first.display(), files.len() - 1)
    };
    let mut report = LoadReport::default();
    let mut used: HashSet<String> = HashSet::new();
    let mut missing: HashSet<String> = HashSet::new();
    let mut pytorch_only_keys: HashSet<String> = HashSet::new();
    let mut values: HashMap<String, TensorData> = HashMap::new();
    for (param, key, transpose, pytorch_only) in targets {
        pytorch_only_keys.extend(pytorch_only);
        let found = shard_of
            .get(&key)
            .and_then(|&index| Some((files[index], shards[index].tensor(&key).ok()?)));
        let Some((file, view)) = found else {
            if !options.allows_missing(&key) {
                return Err(LoraError::MissingKey { path: name, key });
            }
            if missing.insert(key.clone()) {
                report.missing.push(key);
            }
            continue;
        };
        let mut expected = param.shape;
        if transpose {
            expected.reverse();
        }
        if view.shape() != expected.as_slice() {
            return Err(LoraError::ShapeMismatch {
                what: format!("{}: tensor \"{key}\"", file.display()),
                expected,
                found: view.shape().to_vec(),
            });
        }
        let tensor = float_tensor(file, &key, &view)?;
        let tensor = if transpose {
            tensor.transposed()
        } else {
            tensor
        };
        values.insert(param.path, tensor.into_data());
        if used.insert(key.clone()) {
            report.loaded.push(key);
        }
    }

    let mut unused: Vec<String> = shard_of
        .keys()
        .filter(|key| !used.contains(*key))
        .cloned()
        .collect();
    unused.sort();
    if let Some(key) = unused
        .iter()
        .find(|key| !options.allows_unused(key) && !pytorch_only_keys.contains(*key))
    {
        return Err(LoraError::UnexpectedKey {
            path: name,
            key: key.clone(),
            reason: "no parameter of the model maps to this key".into(),
        });
    }
    report.unused = unused;

    let mut setter = ValueSetter {
        stack: Vec::new(),
        values,
    };
    *model = model.clone().map(&mut setter);
    Ok(report)
}

/// One float parameter met by a [`ParamLister`].
struct ListedParam {
    /// The `(name, container_type)` of every module entered to reach it, its own field last.
    stack: Vec<(String, String)>,
    /// Its dotted Burn path (`encoder.layers.0.mha.query.weight`).
    path: String,
    /// Its shape, read without initialising a lazy parameter.
    shape: Vec<usize>,
}

/// Lists every float parameter of a module with the containers around it.
#[derive(Default)]
struct ParamLister {
    stack: Vec<(String, String)>,
    params: Vec<ListedParam>,
}

impl<B: Backend> ModuleVisitor<B> for ParamLister {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.params.push(ListedParam {
            stack: self.stack.clone(),
            path: dotted(&self.stack),
            shape: param.lazy_shape().to_vec(),
        });
    }
}

/// Puts checked values into the float parameters at their Burn paths.
struct ValueSetter {
    stack: Vec<(String, String)>,
    values: HashMap<String, TensorData>,
}

impl<B: Backend> ModuleMapper<B> for ValueSetter {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        match self.values.remove(&dotted(&self.stack)) {
            Some(data) => {
                let value = Tensor::from_data(data, &param.lazy_device());
                replace_value(param, value)
            }
            None => param,
        }
    }
}

fn dotted(stack: &[(String, String)]) -> String {
    stack
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(".")
}
