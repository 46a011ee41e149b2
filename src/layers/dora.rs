//! DoRA (weight-decomposed low-rank adaptation, Liu et al. 2024) as PEFT computes it: the
//! column norms `‖W + s·A B‖`, the scale `m / ‖W + s·A B‖` a DoRA adapter applies to its layer's
//! output features, and [`DoraNorms`], which keeps the norms while the weights cannot change.
//!
//! In the adapters' matrix view (`W [d_input, d_output]`, see
//! [`LoraLayer::adapter_dims`](crate::LoraLayer::adapter_dims)) a DoRA layer computes
//! `y = k ⊙ (x W + s·x A B) + b` with `k = m / ‖W + s·A B‖` (one value per output feature, the
//! norm over `d_input`, detached), which is `base + (k - 1) ⊙ (y_base - b) + k ⊙ s·x A B`:
//! PEFT's formula, added to the base output like any adapter's update.

use std::sync::{Mutex, PoisonError};

use burn::module::{
    AutodiffModule, Content, Devices, EmptyRecord, Module, ModuleDisplay, ModuleDisplayDefault,
    ModuleMapper, ModuleVisitor,
};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

use crate::layers::adapter::LoraAdapter;

/// `‖matrix[:, j]‖₂` for each column `j`: `[d_input, d_output]` → `[d_output]`.
pub(crate) fn column_norms<B: Backend>(matrix: Tensor<B, 2>) -> Tensor<B, 1> {
    matrix.square().sum_dim(0).sqrt().squeeze_dim(0)
}

/// The detached norms `‖W + s·A B‖` of `adapter` over the base `W` (the adapters' matrix view).
pub(crate) fn weight_norms<B: Backend>(
    base: Tensor<B, 2>,
    adapter: &LoraAdapter<B>,
) -> Tensor<B, 1> {
    column_norms(base.detach() + adapter.delta_weight())
}

/// `m / norms`, with a zero norm (a column of `W + s·A B` that is all zero, so that every scale
/// gives the same zero column) dividing by one instead of making the output NaN.
pub(crate) fn magnitude_scale<B: Backend>(
    magnitude: Tensor<B, 1>,
    norms: Tensor<B, 1>,
) -> Tensor<B, 1> {
    let zero = norms.clone().equal_elem(0.0);
    magnitude / norms.mask_fill(zero, 1.0)
}

/// A DoRA adapter's update to a base output: `(k - 1) ⊙ base + k ⊙ lora`, where `base` is the
/// base output without its bias (`x W`) and `lora` the adapter's `s·x A B`, both for the same
/// (dropped-out) input, and `k` the magnitude scale broadcast to their shape.
pub(crate) fn update<B: Backend, const D: usize>(
    base: Tensor<B, D>,
    lora: Tensor<B, D>,
    scale: Tensor<B, D>,
) -> Tensor<B, D> {
    base * scale.clone().sub_scalar(1.0) + lora * scale
}

/// The DoRA norms `‖W + s·A B‖` of a layer's adapters, computed on first use and kept while the
/// weights cannot change: on a backend without autodiff only (inference; in training the
/// factors change every step, so the norms are recomputed in every forward, detached as in
/// PEFT).
///
/// Anything that can change the layer's weights drops them: mapping the module (an optimizer
/// step, `to_device`, `fork`, freezing), loading a record, converting between autodiff and
/// inference (`valid`), changing the layer's adapters, replacing its base. A clone starts empty.
/// A record holds nothing of them.
#[derive(Debug)]
pub struct DoraNorms<B: Backend> {
    norms: Mutex<Vec<(String, Tensor<B, 1>)>>,
}

impl<B: Backend> Default for DoraNorms<B> {
    fn default() -> Self {
        Self {
            norms: Mutex::new(Vec::new()),
        }
    }
}

impl<B: Backend> Clone for DoraNorms<B> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<B: Backend> DoraNorms<B> {
    /// The norms of adapter `name`, from the cache on a backend without autodiff, else computed
    /// by `compute` (and kept, on such a backend).
    pub(crate) fn get_or_compute(
        &self,
        name: &str,
        device: &B::Device,
        compute: impl FnOnce() -> Tensor<B, 1>,
    ) -> Tensor<B, 1> {
        if B::ad_enabled(device) {
            return compute();
        }
        // A panic while the lock was held cannot leave the list half-written: entries are pushed
        // whole.
        let mut norms = self.norms.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, cached)) = norms.iter().find(|(n, _)| n == name) {
            return cached.clone();
        }
        let computed = compute();
        norms.push((name.to_string(), computed.clone()));
        computed
    }

    /// Forgets every norm (the weights or the adapters changed).
    pub(crate) fn clear(&mut self) {
        self.norms
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// How many adapters' norms are kept (always 0 on an autodiff backend).
    pub fn len(&self) -> usize {
        self.norms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no norm is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<B: Backend> Module<B> for DoraNorms<B> {
    type Record = EmptyRecord;

    fn visit<V: ModuleVisitor<B>>(&self, _visitor: &mut V) {}

    fn map<M: ModuleMapper<B>>(self, _mapper: &mut M) -> Self {
        Self::default()
    }

    fn load_record(self, _record: Self::Record) -> Self {
        Self::default()
    }

    fn into_record(self) -> Self::Record {
        EmptyRecord::new()
    }

    fn to_device(self, _device: &B::Device) -> Self {
        Self::default()
    }

    fn fork(self, _device: &B::Device) -> Self {
        Self::default()
    }

    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        devices
    }
}

impl<B: AutodiffBackend> AutodiffModule<B> for DoraNorms<B> {
    type InnerModule = DoraNorms<B::InnerBackend>;

    fn valid(&self) -> Self::InnerModule {
        DoraNorms::default()
    }

    fn from_inner(_module: Self::InnerModule) -> Self {
        Self::default()
    }
}

impl<B: Backend> ModuleDisplayDefault for DoraNorms<B> {
    fn content(&self, content: Content) -> Option<Content> {
        // A leaf with nothing to record, shown by name as Burn shows `PhantomData`: without
        // content, Burn's display (the Learner's model summary among others) panics.
        content.add_single(&"DoraNorms".to_string()).optional()
    }
}

impl<B: Backend> ModuleDisplay for DoraNorms<B> {}
