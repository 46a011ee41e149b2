//! What a Burn record of a LoRA layer holds besides tensors, and how loading one treats the
//! layer's adapters: [`AdapterIdentity`], [`AdapterList`] and [`MergedWeight`].
//!
//! A record of a LoRA layer (`Module::into_record`, a Learner checkpoint, `save_file`) keeps
//! each adapter's name, configuration (rank, alpha, rsLoRA, dropout, init) and active flag
//! beside its factors, and the names of the adapters merged into a merged weight. Loading it
//! (`load_record`, `load_file`) makes the layer's adapters exactly the record's, in the
//! record's order, whatever adapters the receiving layer had or in which order they were
//! attached; a record with no adapter (a base-only checkpoint) leaves the layer's adapters as
//! they are. The merged state is the record's too. A corrupt identity (an empty name, an
//! invalid configuration) fails in the recorder, as any malformed record does.
//!
//! Loading sets values, not trainability: as everywhere in Burn, a parameter keeps the
//! receiving module's `require_grad`, and adapters a record adds are trainable. After loading
//! adapters into a model that had none, call [`LoraModel::freeze_base`](crate::LoraModel::freeze_base)
//! before training, as [`load_adapter`](crate::load_adapter) does.

use burn::module::{
    AutodiffModule, Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper,
    ModuleVisitor, Param,
};

use burn::record::{PrecisionSettings, Record};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::config::LoraConfig;
use crate::layers::adapter::LoraAdapter;

/// An adapter's name, configuration and active flag: the part of a [`LoraAdapter`] that is not
/// a tensor, kept in its record so that loading restores it.
///
/// Deserialising checks it as [`LoraAdapter::from_factors`] does: a non-empty name and a
/// configuration that [`LoraConfig::validate`] accepts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "IdentityFields")]
pub struct AdapterIdentity {
    name: String,
    config: LoraConfig,
    active: bool,
}

/// [`AdapterIdentity`] as read, before it is checked.
#[derive(Deserialize)]
struct IdentityFields {
    name: String,
    config: LoraConfig,
    active: bool,
}

impl TryFrom<IdentityFields> for AdapterIdentity {
    type Error = crate::LoraError;

    fn try_from(fields: IdentityFields) -> crate::Result<Self> {
        Self::new(fields.name, fields.config, fields.active)
    }
}

impl AdapterIdentity {
    /// A checked identity.
    ///
    /// # Errors
    /// [`LoraError::InvalidAdapterName`](crate::LoraError::InvalidAdapterName) for an empty
    /// name, and what [`LoraConfig::validate`] returns for the configuration.
    pub fn new(name: String, config: LoraConfig, active: bool) -> crate::Result<Self> {
        let name = crate::layers::adapter::checked_name(name)?;
        config.validate()?;
        Ok(Self {
            name,
            config,
            active,
        })
    }

    /// The adapter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The adapter's configuration.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Whether the adapter takes part in `forward`.
    pub fn is_active(&self) -> bool {
        self.active
    }

    pub(crate) fn set_active(&mut self, active: bool) {
        self.active = active;
    }
}

impl<B: Backend> Record<B> for AdapterIdentity {
    type Item<S: PrecisionSettings> = AdapterIdentity;

    fn into_item<S: PrecisionSettings>(self) -> Self::Item<S> {
        self
    }

    fn from_item<S: PrecisionSettings>(item: Self::Item<S>, _device: &B::Device) -> Self {
        item
    }
}

/// A layer's named adapters (`None` when it has none, so base-only records load), whose
/// `load_record` takes the record's adapters, identities included (see the
/// [module](self) documentation).
#[derive(Clone, Debug)]
pub struct AdapterList<B: Backend>(pub(crate) Option<Vec<LoraAdapter<B>>>);

impl<B: Backend> AdapterList<B> {
    /// No adapter.
    pub(crate) fn empty() -> Self {
        Self(None)
    }

    /// The adapters, in order.
    pub(crate) fn as_slice(&self) -> &[LoraAdapter<B>] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl<B: Backend> Module<B> for AdapterList<B> {
    type Record = Option<Vec<(<LoraAdapter<B> as Module<B>>::Record, AdapterIdentity)>>;

    fn visit<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        self.0.visit(visitor)
    }

    fn map<M: ModuleMapper<B>>(self, mapper: &mut M) -> Self {
        Self(Module::map(self.0, mapper))
    }

    /// The record's adapters, in the record's order: the first ones load into this list's
    /// parameters (keeping their devices and `require_grad`), the others are created from the
    /// record, and any beyond the record's count are dropped. A record with no adapter keeps
    /// this list as it is.
    fn load_record(self, record: Self::Record) -> Self {
        let Some(records) = record else {
            return self;
        };
        let mut current = self.0.unwrap_or_default().into_iter();
        let loaded: Vec<_> = records
            .into_iter()
            .map(|(record, identity)| match current.next() {
                Some(adapter) => adapter.load_record(record).with_identity(identity),
                None => LoraAdapter::from_record(record, identity),
            })
            .collect();
        Self((!loaded.is_empty()).then_some(loaded))
    }

    fn into_record(self) -> Self::Record {
        self.0.map(|adapters| {
            adapters
                .into_iter()
                .map(|adapter| {
                    let identity = adapter.identity().clone();
                    (adapter.into_record(), identity)
                })
                .collect()
        })
    }

    fn to_device(self, device: &B::Device) -> Self {
        Self(self.0.to_device(device))
    }

    fn fork(self, device: &B::Device) -> Self {
        Self(self.0.fork(device))
    }

    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        self.0.collect_devices(devices)
    }
}

impl<B: AutodiffBackend> AutodiffModule<B> for AdapterList<B> {
    type InnerModule = AdapterList<B::InnerBackend>;

    fn valid(&self) -> Self::InnerModule {
        AdapterList(self.0.valid())
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        Self(<Option<Vec<LoraAdapter<B>>> as AutodiffModule<B>>::from_inner(module.0))
    }
}

impl<B: Backend> ModuleDisplayDefault for AdapterList<B> {
    fn content(&self, content: Content) -> Option<Content> {
        self.0.content(content)
    }
}

impl<B: Backend> ModuleDisplay for AdapterList<B> {}

/// The weight a merge computed, `W + Σ s·ΔW` in the base's layout, with the names of the
/// adapters merged into it; both are in the record, and `load_record` takes the record's
/// merged state (merged or not).
#[derive(Clone, Debug)]
pub struct MergedWeight<B: Backend, const D: usize> {
    pub(crate) weight: Option<Param<Tensor<B, D>>>,
    pub(crate) adapters: Vec<String>,
}

impl<B: Backend, const D: usize> MergedWeight<B, D> {
    /// Unmerged.
    pub(crate) fn none() -> Self {
        Self {
            weight: None,
            adapters: Vec::new(),
        }
    }

    /// Merged: `weight` (detached, frozen) holds the adapters `names`.
    pub(crate) fn merged(weight: Tensor<B, D>, adapters: Vec<String>) -> Self {
        Self {
            weight: Some(Param::from_tensor(weight.detach()).set_require_grad(false)),
            adapters,
        }
    }

    /// The merged weight, if merged.
    pub(crate) fn tensor(&self) -> Option<Tensor<B, D>> {
        self.weight.as_ref().map(Param::val)
    }

    /// Names of the merged adapters (empty when unmerged).
    pub(crate) fn names(&self) -> &[String] {
        match self.weight {
            Some(_) => &self.adapters,
            None => &[],
        }
    }
}

impl<B: Backend, const D: usize> Module<B> for MergedWeight<B, D> {
    type Record = Option<(Param<Tensor<B, D>>, Vec<String>)>;

    fn visit<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        self.weight.visit(visitor)
    }

    fn map<M: ModuleMapper<B>>(self, mapper: &mut M) -> Self {
        Self {
            weight: Module::map(self.weight, mapper),
            adapters: self.adapters,
        }
    }

    /// The record's merged state: unmerged for a record without a merged weight, else its
    /// weight (frozen, on this module's device when it had one) and names.
    fn load_record(self, record: Self::Record) -> Self {
        let Some((record, adapters)) = record else {
            return Self::none();
        };
        let weight = match self.weight {
            Some(weight) => weight.load_record(record),
            None => {
                let (id, tensor, _) = record.consume();
                Param::initialized(id, tensor.detach().set_require_grad(false))
            }
        };
        Self {
            weight: Some(weight),
            adapters,
        }
    }

    fn into_record(self) -> Self::Record {
        let adapters = self.adapters;
        self.weight.map(|weight| (weight.into_record(), adapters))
    }

    fn to_device(self, device: &B::Device) -> Self {
        Self {
            weight: self.weight.to_device(device),
            adapters: self.adapters,
        }
    }

    fn fork(self, device: &B::Device) -> Self {
        Self {
            weight: self.weight.fork(device),
            adapters: self.adapters,
        }
    }

    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        self.weight.collect_devices(devices)
    }
}

impl<B: AutodiffBackend, const D: usize> AutodiffModule<B> for MergedWeight<B, D> {
    type InnerModule = MergedWeight<B::InnerBackend, D>;

    fn valid(&self) -> Self::InnerModule {
        MergedWeight {
            weight: self.weight.valid(),
            adapters: self.adapters.clone(),
        }
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        Self {
            weight: <Option<Param<Tensor<B, D>>> as AutodiffModule<B>>::from_inner(module.weight),
            adapters: module.adapters,
        }
    }
}

impl<B: Backend, const D: usize> ModuleDisplayDefault for MergedWeight<B, D> {
    fn content(&self, content: Content) -> Option<Content> {
        content.add("adapters", &self.names().join(", ")).optional()
    }
}

impl<B: Backend, const D: usize> ModuleDisplay for MergedWeight<B, D> {}
