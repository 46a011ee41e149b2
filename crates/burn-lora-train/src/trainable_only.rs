//! [`TrainableOnly`]: a model whose records hold only its trainable parameters, so that Burn's
//! `Learner` checkpoints a LoRA run as its adapters (and any head marked trainable), never the
//! frozen base.

use core::fmt;
use std::collections::HashSet;
use std::sync::Arc;

use burn::module::{
    AutodiffModule, Devices, HasAutodiffModule, Module, ModuleMapper, ModuleVisitor, Param,
};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use burn_lora::LoraModel;

use crate::error::{Result, TrainError};
use crate::record::{LayerAdapters, TrainableParamRecord, TrainableRecord};

/// Wraps a model so that its [`Module::Record`] is a [`TrainableRecord`]: the parameters that
/// require a gradient, by module path, and the identities (name, configuration, active flag)
/// of each LoRA layer's adapters, which loading checks: an adapter's parameters are keyed by
/// its position, so a record of other adapters would otherwise load with the wrong scales.
///
/// Everything else passes through: parameters, devices, `forward` (through [`inner`](Self::inner)),
/// and burn-train's [`TrainStep`] and [`InferenceStep`] when the model implements them. Give it
/// to `Learner::new` in place of the model: the Learner's checkpoints
/// (`SupervisedTraining::with_file_checkpointer`) then hold the adapters and their optimizer
/// state only, a few kilobytes where the base takes megabytes, and resuming from one
/// (`SupervisedTraining::checkpoint(epoch)`) loads them back into a model whose base was
/// loaded as usual.
///
/// Which parameters are trainable is read from the model when it is wrapped: after
/// `LoraModel::freeze_base` (and `mark_trainable` for a head) that is the adapters and the head.
/// The set travels with the model to the inference backend (the Learner's result), so its
/// records hold the same parameters.
///
/// ```
/// use burn::backend::{Autodiff, Flex};
/// use burn::module::Module;
/// use burn_lora::{LoraConfig, LoraMlp, LoraMlpConfig, LoraModel, Targets};
/// use burn_lora_train::TrainableOnly;
///
/// type B = Autodiff<Flex>;
/// let device = Default::default();
/// let mut model: LoraMlp<B> = LoraMlpConfig::new(4, vec![8], 2).init(&device)?;
/// model.attach("default", &LoraConfig::new(2, 4.0), &Targets::all())?;
/// model.freeze_base();
///
/// let mut model = TrainableOnly::new(model);
/// let record = model.clone().into_record();
/// // Two layers, each with its A and B: the base weights and biases are not in the record.
/// assert_eq!(record.params.len(), 4);
/// model.load_trainable(record)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct TrainableOnly<M> {
    inner: M,
    /// Paths of the parameters that required a gradient when the model was wrapped.
    trainable: Arc<HashSet<String>>,
}

impl<M> TrainableOnly<M> {
    /// Wraps `model`; its trainable parameters are those that require a gradient now (on an
    /// autodiff backend: a model on an inference backend has none).
    pub fn new<B: Backend>(model: M) -> Self
    where
        M: Module<B>,
    {
        let mut finder = TrainablePaths {
            stack: Vec::new(),
            paths: HashSet::new(),
        };
        model.visit(&mut finder);
        Self {
            inner: model,
            trainable: Arc::new(finder.paths),
        }
    }

    /// The wrapped model.
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// Unwraps the model.
    pub fn into_inner(self) -> M {
        self.inner
    }

    /// The module paths of the trainable parameters, sorted.
    pub fn trainable_paths(&self) -> Vec<&str> {
        let mut paths: Vec<&str> = self.trainable.iter().map(String::as_str).collect();
        paths.sort_unstable();
        paths
    }
}

impl<M> TrainableOnly<M> {
    /// The trainable parameters with their paths, shapes, ids and values, in the model's
    /// visiting order, and the identities of every LoRA layer's adapters.
    pub fn trainable_record<B: Backend>(&self) -> TrainableRecord<B>
    where
        M: LoraModel<B>,
    {
        let mut collector = Collector {
            stack: Vec::new(),
            trainable: &self.trainable,
            params: Vec::new(),
        };
        self.inner.visit(&mut collector);
        TrainableRecord {
            params: collector.params,
            adapters: layer_adapters(&self.inner),
        }
    }

    /// Loads a [`TrainableRecord`]: every trainable parameter of the model takes the value and
    /// id of the record's entry at its path (the id keeps the optimizer's state attached).
    ///
    /// # Errors
    /// [`TrainError::RecordMismatch`] when the model's LoRA layers hold other adapters than the
    /// record's (names, configurations, active flags, order), a trainable parameter has no
    /// entry, an entry has no trainable parameter at its path, or the shapes differ; the model
    /// is then unchanged.
    pub fn load_trainable<B: Backend>(&mut self, record: TrainableRecord<B>) -> Result<()>
    where
        M: LoraModel<B>,
    {
        check_adapters(&record.adapters, &layer_adapters(&self.inner))?;
        let mut loader = Loader {
            stack: Vec::new(),
            trainable: &self.trainable,
            entries: record
                .params
                .into_iter()
                .map(|entry| (entry.path.clone(), Some(entry)))
                .collect(),
            problems: Vec::new(),
        };
        let loaded = self.inner.clone().map(&mut loader);
        let mut unused: Vec<&String> = loader
            .entries
            .iter()
            .filter(|(_, entry)| entry.is_some())
            .map(|(path, _)| path)
            .collect();
        unused.sort();
        if !unused.is_empty() {
            let unused: Vec<&str> = unused.into_iter().map(String::as_str).collect();
            loader.problems.push(format!(
                "the record holds {} that the model does not train: {}",
                plural(unused.len(), "parameter"),
                unused.join(", ")
            ));
        }
        if !loader.problems.is_empty() {
            return Err(TrainError::RecordMismatch(loader.problems.join("; ")));
        }
        self.inner = loaded;
        Ok(())
    }
}

/// The adapters of every LoRA layer of `model`, labelled by the layer's path.
fn layer_adapters<B: Backend, M: LoraModel<B>>(model: &M) -> Vec<LayerAdapters> {
    // The paths only label the layers (they are compared in order): a model whose layers have
    // no single path each (a shared layer) labels them by index.
    let paths = model.lora_layer_paths().unwrap_or_default();
    model
        .lora_layers()
        .iter()
        .enumerate()
        .map(|(index, layer)| LayerAdapters {
            layer: paths
                .get(index)
                .cloned()
                .unwrap_or_else(|| format!("LoRA layer {index}")),
            adapters: layer
                .adapters()
                .iter()
                .map(|a| a.identity().clone())
                .collect(),
        })
        .collect()
}

/// `Ok` when the record's adapters are the model's, layer by layer; the first difference
/// otherwise.
fn check_adapters(record: &[LayerAdapters], model: &[LayerAdapters]) -> Result<()> {
    if record.len() != model.len() {
        return Err(TrainError::RecordMismatch(format!(
            "the record is of a model with {}, this model has {}",
            plural(record.len(), "LoRA layer"),
            model.len()
        )));
    }
    let describe = |layer: &LayerAdapters| {
        let adapters: Vec<String> = layer
            .adapters
            .iter()
            .map(|a| {
                let c = a.config();
                format!(
                    "{} (rank {}, alpha {}{}{})",
                    a.name(),
                    c.rank,
                    c.alpha,
                    if c.use_rslora { ", rsLoRA" } else { "" },
                    if a.is_active() { ", active" } else { "" }
                )
            })
            .collect();
        format!("[{}]", adapters.join(", "))
    };
    match record
        .iter()
        .zip(model)
        .find(|(r, m)| r.adapters != m.adapters)
    {
        None => Ok(()),
        Some((r, m)) => Err(TrainError::RecordMismatch(format!(
            "{}: the record's adapters are {}, the model's are {} (attach the same adapters, \
             with the same configurations, in the same order)",
            m.layer,
            describe(r),
            describe(m)
        ))),
    }
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

impl<B: Backend, M: LoraModel<B>> Module<B> for TrainableOnly<M> {
    type Record = TrainableRecord<B>;

    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        self.inner.collect_devices(devices)
    }

    fn fork(self, device: &B::Device) -> Self {
        let Self { inner, trainable } = self;
        Self {
            inner: inner.fork(device),
            trainable,
        }
    }

    fn to_device(self, device: &B::Device) -> Self {
        let Self { inner, trainable } = self;
        Self {
            inner: inner.to_device(device),
            trainable,
        }
    }

    fn visit<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        self.inner.visit(visitor)
    }

    fn map<Mp: ModuleMapper<B>>(self, mapper: &mut Mp) -> Self {
        let Self { inner, trainable } = self;
        Self {
            inner: inner.map(mapper),
            trainable,
        }
    }

    /// [`load_trainable`](Self::load_trainable), which `Module`'s signature cannot let fail.
    ///
    /// # Panics
    /// When the record does not fit the model (another model's checkpoint): burn-train's
    /// Learner calls this on resume, and panics on an unreadable checkpoint file as well.
    /// Call `load_trainable` to get the error instead.
    fn load_record(mut self, record: Self::Record) -> Self {
        if let Err(error) = self.load_trainable(record) {
            panic!("{error}");
        }
        self
    }

    fn into_record(self) -> Self::Record {
        self.trainable_record()
    }
}

impl<B: AutodiffBackend, M> AutodiffModule<B> for TrainableOnly<M>
where
    M: AutodiffModule<B> + LoraModel<B>,
    M::InnerModule: LoraModel<B::InnerBackend>,
{
    type InnerModule = TrainableOnly<M::InnerModule>;

    fn valid(&self) -> Self::InnerModule {
        TrainableOnly {
            inner: self.inner.valid(),
            trainable: self.trainable.clone(),
        }
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        let TrainableOnly { inner, trainable } = module;
        Self {
            inner: M::from_inner(inner),
            trainable,
        }
    }
}

impl<B: AutodiffBackend, M> HasAutodiffModule<B> for TrainableOnly<M>
where
    M: HasAutodiffModule<B> + LoraModel<B::InnerBackend>,
    M::TrainModule: LoraModel<B>,
{
    type TrainModule = TrainableOnly<M::TrainModule>;
}

impl<M: fmt::Display> fmt::Display for TrainableOnly<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<M: TrainStep> TrainStep for TrainableOnly<M> {
    type Input = M::Input;
    type Output = M::Output;

    fn step(&self, item: Self::Input) -> TrainOutput<Self::Output> {
        self.inner.step(item)
    }
}

impl<M: InferenceStep> InferenceStep for TrainableOnly<M> {
    type Input = M::Input;
    type Output = M::Output;

    fn step(&self, item: Self::Input) -> Self::Output {
        self.inner.step(item)
    }
}

/// Finds the paths of the float parameters that require a gradient.
struct TrainablePaths {
    stack: Vec<String>,
    paths: HashSet<String>,
}

impl<B: Backend> ModuleVisitor<B> for TrainablePaths {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if param.is_require_grad() {
            self.paths.insert(self.stack.join("."));
        }
    }
}

/// Collects the trainable parameters, flattened, with their paths.
struct Collector<'a, B: Backend> {
    stack: Vec<String>,
    trainable: &'a HashSet<String>,
    params: Vec<TrainableParamRecord<B>>,
}

impl<B: Backend> ModuleVisitor<B> for Collector<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let path = self.stack.join(".");
        if !self.trainable.contains(&path) {
            return;
        }
        let value = param.val();
        let shape = value.dims().to_vec();
        let len: usize = shape.iter().product();
        self.params.push(TrainableParamRecord {
            path,
            shape,
            value: Param::initialized(param.id, value.detach().reshape([len])),
        });
    }
}

/// Replaces every trainable parameter by the record's entry at its path, noting what does
/// not fit.
struct Loader<'a, B: Backend> {
    stack: Vec<String>,
    trainable: &'a HashSet<String>,
    entries: std::collections::HashMap<String, Option<TrainableParamRecord<B>>>,
    problems: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for Loader<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = self.stack.join(".");
        if !self.trainable.contains(&path) {
            return param;
        }
        let Some(entry) = self.entries.get_mut(&path).and_then(Option::take) else {
            self.problems.push(format!(
                "the trainable parameter {path} is not in the record"
            ));
            return param;
        };
        let dims: [usize; D] = param.shape().dims();
        let stored = entry.value.shape().num_elements();
        if entry.shape != dims || stored != dims.iter().product::<usize>() {
            self.problems.push(format!(
                "{path} has shape {dims:?} in the model but {:?} in the record",
                entry.shape
            ));
            return param;
        }
        let device = param.device();
        let id = entry.value.id;
        let value = entry.value.val().reshape(dims).to_device(&device).detach();
        let require_grad = param.is_require_grad();
        Param::initialized(id, value.set_require_grad(require_grad))
    }
}
