//! The module paths of a model's LoRA layers, and the check that its two layer lists agree.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::error::{LoraError, Result};
use crate::layers::layer::LoraLayer;
use crate::model::LoraModel;

/// The Burn module path of every layer of [`LoraModel::lora_layers`], in the same order
/// (`"layers.0"` for the first layer of a [`LoraMlp`](crate::LoraMlp)).
///
/// Found by walking the module tree and matching each layer's weight parameter.
///
/// # Errors
/// [`LoraError::InvalidModel`] when a listed layer is not part of the model's module tree,
/// when its weight parameter sits at two paths of the tree (a cloned layer shares its
/// parameter ids), or when two listed layers are one and the same.
pub fn lora_layer_paths<B: Backend, M: LoraModel<B>>(model: &M) -> Result<Vec<String>> {
    let mut visitor = ParamCollector::new(false);
    model.visit(&mut visitor);
    let mut paths: HashMap<ParamId, Vec<String>> = HashMap::new();
    for param in visitor.floats {
        paths.entry(param.id).or_default().push(param.path);
    }
    let layers = model.lora_layers();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut result = Vec::with_capacity(layers.len());
    for (index, layer) in layers.iter().enumerate() {
        let found = paths
            .get(&layer.base_weight_id())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let path = match found {
            [path] => path.strip_suffix(".weight").unwrap_or(path),
            [] => {
                return Err(LoraError::InvalidModel(format!(
                    "LoRA layer {index} of lora_layers() is not a field of the model's module tree"
                )))
            }
            [first, second, ..] => {
                return Err(LoraError::InvalidModel(format!(
                    "the weight of LoRA layer {index} appears at two module paths, \"{first}\" and \
                     \"{second}\" (a cloned layer shares its parameter ids): give each layer its own"
                )))
            }
        };
        if let Some(other) = seen.insert(path, index) {
            return Err(LoraError::InvalidModel(format!(
                "lora_layers() lists the layer at \"{path}\" twice (positions {other} and {index})"
            )));
        }
        result.push(path.to_string());
    }
    Ok(result)
}

/// [`LoraModel::lora_layers_mut`], after checking that it lists the same layers as
/// [`LoraModel::lora_layers`] (the same weight parameters) in the same order, so that results
/// computed from one list can be paired with the other.
pub(crate) fn checked_layers_mut<B: Backend, M: LoraModel<B>>(
    model: &mut M,
) -> Result<Vec<&mut dyn LoraLayer<B>>> {
    let ids = weight_ids(model.lora_layers().into_iter());
    let layers = model.lora_layers_mut();
    let ids_mut = weight_ids(layers.iter().map(|layer| &**layer));
    if ids != ids_mut {
        let position = ids
            .iter()
            .zip(&ids_mut)
            .position(|(a, b)| a != b)
            .unwrap_or(ids.len().min(ids_mut.len()));
        return Err(LoraError::InvalidModel(format!(
            "lora_layers() and lora_layers_mut() disagree (lengths {} and {}, first difference \
             at position {position}): they must list the same layers in the same order",
            ids.len(),
            ids_mut.len()
        )));
    }
    Ok(layers)
}

fn weight_ids<'a, B: Backend + 'a>(
    layers: impl Iterator<Item = &'a (dyn LoraLayer<B> + 'a)>,
) -> Vec<ParamId> {
    layers.map(|layer| layer.base_weight_id()).collect()
}

/// Every module path of the model's tree that holds parameters, directly or below: for a
/// parameter at `a.b.weight`, the paths `a` and `a.b`.
pub(crate) fn module_paths<B: Backend, M: Module<B>>(model: &M) -> Vec<String> {
    let mut visitor = ParamCollector::new(false);
    model.visit(&mut visitor);
    let mut paths: Vec<String> = Vec::new();
    for path in visitor
        .floats
        .iter()
        .map(|p| &p.path)
        .chain(&visitor.others)
    {
        let parts: Vec<&str> = path.split('.').collect();
        // `end < parts.len()`: the slice is in bounds.
        for end in 1..parts.len() {
            let module = parts[..end].join(".");
            if !paths.contains(&module) {
                paths.push(module);
            }
        }
    }
    paths
}

/// One float parameter met by a [`ParamCollector`].
pub(crate) struct FloatParam {
    /// Its dotted module path (`layers.0.weight`).
    pub path: String,
    /// Its id.
    pub id: ParamId,
    /// Its number of values.
    pub len: usize,
    /// Its values, when the collector reads them.
    pub data: Option<TensorData>,
}

/// Walks a module and records every float parameter (path, id and, if asked, values) and the
/// paths of its int and bool parameters.
pub(crate) struct ParamCollector {
    stack: Vec<String>,
    read_values: bool,
    /// The float parameters, in the module's visiting order.
    pub floats: Vec<FloatParam>,
    /// Paths of int and bool parameters.
    pub others: Vec<String>,
}

impl ParamCollector {
    /// A collector that reads the float values too when `read_values`.
    pub fn new(read_values: bool) -> Self {
        Self {
            stack: Vec::new(),
            read_values,
            floats: Vec::new(),
            others: Vec::new(),
        }
    }
}

impl<B: Backend> ModuleVisitor<B> for ParamCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let data = self.read_values.then(|| param.val().into_data());
        self.floats.push(FloatParam {
            path: self.stack.join("."),
            id: param.id,
            len: param.shape().num_elements(),
            data,
        });
    }

    fn visit_int<const D: usize>(&mut self, _param: &Param<Tensor<B, D, Int>>) {
        self.others.push(self.stack.join("."));
    }

    fn visit_bool<const D: usize>(&mut self, _param: &Param<Tensor<B, D, Bool>>) {
        self.others.push(self.stack.join("."));
    }
}
