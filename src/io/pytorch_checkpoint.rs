//! Whole PyTorch / Hugging Face state dicts (safetensors) loaded into any Burn module.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use regex::Regex;
use safetensors::Dtype;

use crate::error::{LoraError, Result};
use crate::io::path_map::{compile, PathMap};
use crate::io::safetensors_reader::{float_dtype, SafetensorsReader};
use crate::io::torch_param::{torch_param, Layout, TorchParam};

/// How strict [`load_pytorch_checkpoint`] is about keys, and the layout of 2-D weights it
/// cannot know. The default is strict: every parameter must find its key, every key must be
/// used, and the 2-D `weight` of a module of your own is an error until its layout is stated.
///
/// ```
/// use burn_lora::LoadOptions;
///
/// // Hugging Face files hold buffers a Burn model has no parameter for.
/// let options = LoadOptions::new().with_unused_pattern(r"^embeddings\.position_ids$")?;
/// // A module of your own whose `weight` is PyTorch's `nn.Linear` weight ([out, in]).
/// let options = options.with_transposed_pattern(r"\.proj\.weight$")?;
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    allow_missing: bool,
    allow_unused: bool,
    missing_patterns: Vec<Regex>,
    unused_patterns: Vec<Regex>,
    transposed_patterns: Vec<Regex>,
    untransposed_patterns: Vec<Regex>,
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

    /// States that the 2-D tensors whose PyTorch keys the regular expression `pattern` matches
    /// (anywhere in the key; anchor it with `^…$` for whole keys) are stored transposed, as
    /// PyTorch's `nn.Linear` stores its weight (`[out, in]` for Burn's `[in, out]`): they are
    /// transposed as they load. For the `weight` of a module of your own, whose layout
    /// burn-lora cannot know; it also overrides the built-in rule for `Linear` / `Embedding`.
    ///
    /// # Errors
    /// [`LoraError::InvalidPattern`] when `pattern` does not compile. Loading fails with
    /// [`LoraError::UnknownLayout`] when it matches a tensor that is not 2-D, or a key an
    /// untransposed pattern matches too.
    pub fn with_transposed_pattern(mut self, pattern: &str) -> Result<Self> {
        self.transposed_patterns.push(compile(pattern)?);
        Ok(self)
    }

    /// States that the tensors whose PyTorch keys the regular expression `pattern` matches are
    /// stored in Burn's own layout (a module of your own whose PyTorch counterpart keeps the
    /// same `[in, out]` or `[rows, cols]` order): they load as they are. Overrides the
    /// built-in rule too (a module of your own that happens to be named `Linear`).
    ///
    /// # Errors
    /// [`LoraError::InvalidPattern`] when `pattern` does not compile.
    pub fn with_untransposed_pattern(mut self, pattern: &str) -> Result<Self> {
        self.untransposed_patterns.push(compile(pattern)?);
        Ok(self)
    }

    /// Whether the tensor `key` of `file`, of `rank` dimensions and the built-in `layout`, is
    /// to be transposed: what the options state, or else the built-in layout when it is known.
    fn transposes(&self, file: &Path, key: &str, rank: usize, layout: Layout) -> Result<bool> {
        let stated = |patterns: &[Regex]| patterns.iter().any(|p| p.is_match(key));
        let error = |reason: String| LoraError::UnknownLayout {
            path: file.display().to_string(),
            key: key.to_string(),
            reason,
        };
        match (
            stated(&self.transposed_patterns),
            stated(&self.untransposed_patterns),
        ) {
            (true, true) => Err(error(
                "both a transposed and an untransposed pattern of the LoadOptions match it".into(),
            )),
            (true, false) if rank != 2 => Err(error(format!(
                "a transposed pattern of the LoadOptions matches it, but it is {rank}-D: only \
                 2-D tensors can be transposed"
            ))),
            (true, false) => Ok(true),
            (false, true) => Ok(false),
            (false, false) => match layout {
                Layout::Same => Ok(false),
                Layout::Transposed => Ok(true),
                Layout::Unknown(reason) => Err(error(format!(
                    "{reason}: PyTorch may store it as nn.Linear does ([out, in]) or as Burn \
                     does; state which with LoadOptions::with_transposed_pattern or \
                     with_untransposed_pattern"
                ))),
            },
        }
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
/// `[out, in]`); the `weight` of `Embedding` and [`LoraEmbedding`](crate::LoraEmbedding)
/// (`[n, d]` in both), `Conv*` and every tensor that is not a 2-D `weight` have the same layout
/// in both. LoRA adapters are not part of a base checkpoint: they are left as they are. Int and
/// bool parameters are not loaded. A BatchNorm's `num_batches_tracked` has no Burn counterpart
/// and may stay unused.
///
/// Burn tells a module's type only by its bare name, so `Linear`, `LoraLinear`, `Embedding` and
/// `LoraEmbedding` are recognised by their name and their parameters (a `Linear` holds exactly
/// `weight [in, out]` and maybe `bias [out]`; a `LoraLinear` also maybe `merged_weight`; an
/// `Embedding` only `weight`; a `LoraEmbedding` also maybe `merged_weight`). The 2-D `weight` of
/// any other module, a module of your own, could be stored either way: it is an error
/// ([`LoraError::UnknownLayout`]) until [`LoadOptions::with_transposed_pattern`] or
/// [`LoadOptions::with_untransposed_pattern`] states its layout. A module of your own that has a
/// known name and the same parameters (a square `weight` in a struct named `Linear`) cannot be
/// told apart: state its layout the same way.
///
/// The file is read in place, one tensor at a time: its header is checked when it opens, then
/// each used tensor is read from the file in bounded chunks and converted straight into the
/// backend's float type (a BF16 checkpoint stays BF16 on a BF16 backend, and becomes f32 on an
/// f32 one without a second copy), then it becomes its parameter. A parameter not yet
/// initialised (Burn's layers initialise lazily) is built from the file's values and never
/// initialised at random first, so loading holds the model and one chunk of the file, not the
/// file and a converted copy beside the model. Unused keys are never read, so an int buffer
/// such as `embeddings.position_ids` is only a key to account for (see
/// [`LoadOptions::with_unused_pattern`]).
///
/// Every key, shape and dtype check is made before any tensor is read; a value found non-finite
/// while reading stops the load. On any error the model is exactly as it was. Loaded parameters
/// keep their id, gradient setting and load/save mappers; a load mapper runs on the file's
/// values, as in Burn's own loading ([`Param::transform_for_load`]).
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
/// - [`LoraError::UnknownLayout`] for the 2-D `weight` of a module of unknown layout found in
///   the file, and for options that state a key's layout twice or transpose a tensor that is not
///   2-D;
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
    if files.is_empty() {
        return Err(LoraError::InvalidFile {
            path: String::new(),
            format: "safetensors".into(),
            reason: "no checkpoint file given".into(),
        });
    }
    let shards = SafetensorsReader::open_all(files)?;
    load_tensor_files(model, &tensor_files(&shards), paths, options)
}

/// Open safetensors files as [`TensorFile`]s.
pub(crate) fn tensor_files(readers: &[SafetensorsReader]) -> Vec<&dyn TensorFile> {
    readers.iter().map(|r| r as &dyn TensorFile).collect()
}

/// A file of named float tensors that a checkpoint loads from: a safetensors file, or a GGUF
/// file under Hugging Face's names.
pub(crate) trait TensorFile {
    /// The file, for messages.
    fn path(&self) -> &Path;
    /// Every tensor's key.
    fn keys(&self) -> Vec<String>;
    /// The shape of tensor `key` in PyTorch's order, if the file holds it.
    fn shape(&self, key: &str) -> Option<Vec<usize>>;
    /// Why tensor `key` cannot be read as floats, as far as the file's header tells
    /// ([`LoraError::UnsupportedDtype`]), or `None`.
    fn unreadable(&self, key: &str) -> Option<LoraError>;
    /// Tensor `key` in the float type `dtype`, transposed when asked (2-D only).
    fn read(&self, key: &str, transpose: bool, dtype: DType) -> Result<TensorData>;
}

impl TensorFile for SafetensorsReader {
    fn path(&self) -> &Path {
        SafetensorsReader::path(self)
    }

    fn keys(&self) -> Vec<String> {
        SafetensorsReader::keys(self)
    }

    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.info(key).map(|info| info.shape.clone())
    }

    fn unreadable(&self, key: &str) -> Option<LoraError> {
        let dtype = self.info(key)?.dtype;
        (!matches!(dtype, Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16)).then(|| {
            LoraError::UnsupportedDtype {
                path: self.path().display().to_string(),
                key: key.to_string(),
                dtype: format!("{dtype:?}"),
            }
        })
    }

    fn read(&self, key: &str, transpose: bool, dtype: DType) -> Result<TensorData> {
        self.read_float(key, transpose, dtype)
    }
}

/// [`load_pytorch_shards`] from files already open, of any [`TensorFile`] kind.
pub(crate) fn load_tensor_files<B: Backend, M: Module<B>>(
    model: &mut M,
    files: &[&dyn TensorFile],
    paths: &PathMap,
    options: &LoadOptions,
) -> Result<LoadReport> {
    let Some(first) = files.first().map(|file| file.path()) else {
        return Err(LoraError::InvalidFile {
            path: String::new(),
            format: "checkpoint".into(),
            reason: "no checkpoint file given".into(),
        });
    };
    let mut lister = ParamLister::default();
    model.visit(&mut lister);
    // The float parameters each module holds directly, by module path: what tells a known
    // module (Burn's `Linear`, ...) from one of the same name.
    let mut fields: HashMap<String, Vec<(String, Vec<usize>)>> = HashMap::new();
    for param in &lister.params {
        if let Some(((name, _), modules)) = param.stack.split_last() {
            fields
                .entry(dotted(modules))
                .or_default()
                .push((name.clone(), param.shape.clone()));
        }
    }
    let mut targets = Vec::with_capacity(lister.params.len());
    for param in lister.params {
        let holding = param
            .stack
            .split_last()
            .and_then(|(_, modules)| fields.get(&dotted(modules)))
            .map(Vec::as_slice)
            .unwrap_or_default();
        match torch_param(&param.stack, param.shape.len(), holding, paths) {
            TorchParam::Load {
                key,
                layout,
                pytorch_only,
            } => targets.push((param, key, layout, pytorch_only)),
            TorchParam::Adapter => {}
            TorchParam::Merged(layer) => {
                return Err(LoraError::Unsupported(format!(
                    "loading base weights into the LoRA layer at \"{layer}\" while adapters are \
                     merged into it: unmerge first"
                )))
            }
        }
    }

    // Which file holds each key. Every index below enumerates `files`.
    let mut shard_of: HashMap<String, usize> = HashMap::new();
    for (index, shard) in files.iter().enumerate() {
        for key in shard.keys() {
            if let Some(other) = shard_of.insert(key.clone(), index) {
                return Err(LoraError::InvalidFile {
                    path: shard.path().display().to_string(),
                    format: "checkpoint".into(),
                    reason: format!(
                        "tensor \"{key}\" is also in {}",
                        files[other].path().display()
                    ),
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
    // What each parameter reads, by Burn path: the shard, the key, whether to transpose.
    let mut plan: HashMap<String, (usize, String, bool)> = HashMap::new();
    for (param, key, layout, pytorch_only) in targets {
        pytorch_only_keys.extend(pytorch_only);
        let found = shard_of
            .get(&key)
            .and_then(|&index| Some((index, files[index].shape(&key)?)));
        let Some((index, shape)) = found else {
            if !options.allows_missing(&key) {
                return Err(LoraError::MissingKey { path: name, key });
            }
            if missing.insert(key.clone()) {
                report.missing.push(key);
            }
            continue;
        };
        let file = files[index].path();
        let transpose = options.transposes(file, &key, param.shape.len(), layout)?;
        let mut expected = param.shape;
        if transpose {
            expected.reverse();
        }
        if shape != expected {
            return Err(LoraError::ShapeMismatch {
                what: format!("{}: tensor \"{key}\"", file.display()),
                expected,
                found: shape,
            });
        }
        if let Some(error) = files[index].unreadable(&key) {
            return Err(error);
        }
        plan.insert(param.path, (index, key.clone(), transpose));
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

    // Each tensor is read and converted as its parameter is built, one at a time, into a copy
    // of the model (a cheap clone: values are shared, lazy parameters stay lazy). The model is
    // replaced only when every tensor has loaded.
    let mut setter = ValueSetter {
        stack: Vec::new(),
        shards: files,
        plan,
        error: None,
    };
    let loaded = model.clone().map(&mut setter);
    if let Some(error) = setter.error {
        return Err(error);
    }
    // A parameter listed but never mapped: a LoRA layer's quantized base, which Burn's mappers
    // pass by (see `BaseWeight`). Refused rather than left with its old values.
    let mut skipped: Vec<&String> = setter.plan.keys().collect();
    skipped.sort();
    if let Some(path) = skipped.first() {
        return Err(LoraError::Unsupported(format!(
            "loading base weights into \"{path}\"{}: the parameter takes no values through \
             Burn's mappers (a quantized base: load before quantize_base, or dequantize_base \
             first)",
            match skipped.len() {
                1 => String::new(),
                n => format!(" and {} more", n - 1),
            }
        )));
    }
    *model = loaded;
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

/// Builds the planned float parameters from their tensors, read at their Burn paths. A
/// parameter is made straight from the file's values: a lazy one is never initialised first.
/// After the first error, nothing more is read and the error is kept.
struct ValueSetter<'a> {
    stack: Vec<(String, String)>,
    shards: &'a [&'a dyn TensorFile],
    plan: HashMap<String, (usize, String, bool)>,
    error: Option<LoraError>,
}

impl<B: Backend> ModuleMapper<B> for ValueSetter<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.error.is_some() {
            return param;
        }
        let Some((shard, key, transpose)) = self.plan.remove(&dotted(&self.stack)) else {
            return param;
        };
        let device = param.lazy_device();
        // Every planned shard index enumerates `shards`.
        match self.shards[shard].read(&key, transpose, float_dtype::<B>(&device)) {
            Ok(data) => {
                let id = param.id;
                param.transform_for_load(Tensor::from_data(data, &device), id)
            }
            Err(error) => {
                self.error = Some(error);
                param
            }
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
