//! [`Snapshot`]: everything observable about a model, bit for bit, to prove that a failed
//! operation left it exactly as it was.

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
