//! [`Snapshot`]: everything observable about a model, bit for bit, to prove that a failed
//! operation left it exactly as it was; [`ParamSnapshot`]: every parameter of any module.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_lora::LoraLayer;
use burn_lora::{LoraMlp, LoraModel};

use super::{probe, values, B};

/// The bit patterns of a tensor's f32 values.
pub fn bits<Bk: Backend, const D: usize>(tensor: Tensor<Bk, D>) -> Vec<u32> {
    values(tensor).iter().map(|v| v.to_bits()).collect()
}

/// Everything observable about a model, bit for bit: adapter names and states, base weights,
/// adapter factors and the output on a fixed batch ([`probe`]).
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub names: Vec<String>,
    pub layers: Vec<LayerState>,
    pub output: Vec<u32>,
}

/// One layer of a [`Snapshot`].
#[derive(Debug, PartialEq)]
pub struct LayerState {
    pub adapters: Vec<String>,
    pub active: Vec<String>,
    pub enabled: bool,
    pub merged: bool,
    pub weight: Vec<u32>,
    pub bias: Option<Vec<u32>>,
    /// Per adapter: `A` bits, `B` bits, scale bits.
    pub factors: Vec<(Vec<u32>, Vec<u32>, u64)>,
}

impl Snapshot {
    pub fn of(model: &LoraMlp<B>) -> Self {
        let layers = model
            .layers()
            .iter()
            .map(|layer| LayerState {
                adapters: layer
                    .adapter_names()
                    .iter()
                    .map(|n| n.to_string())
                    .collect(),
                active: layer
                    .active_adapters()
                    .iter()
                    .map(|n| n.to_string())
                    .collect(),
                enabled: layer.is_enabled(),
                merged: layer.is_merged(),
                weight: bits(layer.weight()),
                bias: layer.bias().map(bits),
                factors: layer
                    .adapters()
                    .iter()
                    .map(|a| (bits(a.lora_a()), bits(a.lora_b()), a.scale().to_bits()))
                    .collect(),
            })
            .collect();
        let d_input = model.layers()[0].d_input();
        Self {
            names: model.adapter_names(),
            layers,
            output: bits(model.forward(probe(d_input))),
        }
    }

    /// Panics, naming the first difference (not dumping every value), if `self != other`.
    pub fn assert_same(&self, other: &Snapshot, context: &str) {
        assert_eq!(self.names, other.names, "adapter names changed ({context})");
        assert_eq!(
            self.layers.len(),
            other.layers.len(),
            "layer count changed ({context})"
        );
        for (index, (a, b)) in self.layers.iter().zip(&other.layers).enumerate() {
            let what = |field: &str| format!("layers.{index} {field} changed ({context})");
            assert_eq!(a.adapters, b.adapters, "{}", what("adapter names"));
            assert_eq!(a.active, b.active, "{}", what("active adapters"));
            assert_eq!(
                (a.enabled, a.merged),
                (b.enabled, b.merged),
                "{}",
                what("state")
            );
            assert!(a.weight == b.weight, "{}", what("base weight"));
            assert!(a.bias == b.bias, "{}", what("base bias"));
            assert!(a.factors == b.factors, "{}", what("adapter factors"));
        }
        assert!(self.output == other.output, "output changed ({context})");
        assert!(self == other, "model changed ({context})");
    }
}

/// Every float parameter of any module, bit for bit, with its Burn path, id and gradient
/// setting: proves that a failed load left a model of any shape exactly as it was, and that a
/// successful one kept ids and gradient settings.
#[derive(Debug, PartialEq)]
pub struct ParamSnapshot {
    pub params: Vec<ParamState>,
}

/// One parameter of a [`ParamSnapshot`].
#[derive(Debug, PartialEq)]
pub struct ParamState {
    /// Its dotted Burn path (`blocks.0.query.weight`).
    pub path: String,
    pub id: ParamId,
    pub require_grad: bool,
    pub shape: Vec<usize>,
    pub bits: Vec<u32>,
}

impl ParamSnapshot {
    /// Reads every float parameter of `model` (initialising lazy ones).
    pub fn of<Bk: Backend, M: Module<Bk>>(model: &M) -> Self {
        let mut reader = ParamReader {
            stack: Vec::new(),
            params: Vec::new(),
        };
        model.visit(&mut reader);
        Self {
            params: reader.params,
        }
    }

    /// The parameter at `path` (panics, naming it, when there is none).
    pub fn get(&self, path: &str) -> &ParamState {
        self.params
            .iter()
            .find(|p| p.path == path)
            .unwrap_or_else(|| panic!("no parameter at {path}"))
    }

    /// Panics, naming the first parameter that differs, if `self != other`.
    pub fn assert_same(&self, other: &ParamSnapshot, context: &str) {
        let paths = |s: &ParamSnapshot| s.params.iter().map(|p| p.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths(self), paths(other), "parameters changed ({context})");
        for (a, b) in self.params.iter().zip(&other.params) {
            assert!(a == b, "{} changed ({context})", a.path);
        }
    }
}

struct ParamReader {
    stack: Vec<String>,
    params: Vec<ParamState>,
}

impl<Bk: Backend> ModuleVisitor<Bk> for ParamReader {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        let value = param.val();
        self.params.push(ParamState {
            path: self.stack.join("."),
            id: param.id,
            require_grad: value.is_require_grad(),
            shape: value.dims().to_vec(),
            bits: bits(value),
        });
    }
}
