//! [`ParameterReport`]: per-layer shapes and the original / added / percentage parameter counts.

use std::fmt;

use burn::tensor::backend::Backend;

use crate::error::Result;
use crate::model::paths::ParamCollector;
use crate::model::LoraModel;

/// Shapes of one adapter in a [`LayerReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterShapes {
    /// The adapter's name.
    pub name: String,
    /// Shape of `A`, `[d_input, rank]` (the layer's adapter view, see
    /// [`LoraLayer::adapter_dims`](crate::LoraLayer::adapter_dims)).
    pub lora_a: [usize; 2],
    /// Shape of `B`, `[rank, d_output]`.
    pub lora_b: [usize; 2],
    /// Length of DoRA's magnitude `m` (`d_output`); `None` for a plain LoRA adapter.
    pub magnitude: Option<usize>,
}

/// The parameters of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerReport {
    /// The layer's module path, e.g. `layers.0`.
    pub path: String,
    /// Shape of the base weight as Burn stores it (`[d_input, d_output]` for a linear layer).
    pub weight: Vec<usize>,
    /// Length of the base bias, if any.
    pub bias: Option<usize>,
    /// The layer's adapters.
    pub adapters: Vec<AdapterShapes>,
}

impl LayerReport {
    /// Base values: weight plus bias.
    pub fn base_params(&self) -> usize {
        self.weight.iter().product::<usize>() + self.bias.unwrap_or(0)
    }

    /// Adapter values: `A` plus `B` (plus DoRA's magnitude) of every adapter.
    pub fn lora_params(&self) -> usize {
        self.adapters
            .iter()
            // Fixed-size `[usize; 2]` shapes: the indices are checked at compile time.
            .map(|a| {
                a.lora_a[0] * a.lora_a[1] + a.lora_b[0] * a.lora_b[1] + a.magnitude.unwrap_or(0)
            })
            .sum()
    }
}

/// How many parameters a model has and how many its adapters add, as the notebook prints it.
///
/// ```
/// use burn::backend::Flex as Inference;
/// use burn_lora::{LoraConfig, LoraMlpConfig, LoraModel, Targets};
///
/// let mut model = LoraMlpConfig::new(784, vec![1000, 2000], 10).init::<Inference>(&Default::default())?;
/// model.attach("default", &LoraConfig::new(1, 1.0), &Targets::all())?;
/// let report = model.parameter_report()?;
/// assert_eq!(report.base_params(), 2_807_010);
/// assert_eq!(report.lora_params(), 6_794);
/// assert_eq!(format!("{:.3}", report.percent_added()), "0.242");
/// println!("{report}");
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterReport {
    /// One entry per LoRA layer, in order.
    pub layers: Vec<LayerReport>,
    /// Values of the parameters outside the LoRA layers (norms, plain layers, ...).
    pub other_params: usize,
}

impl ParameterReport {
    /// Values of the original model: the LoRA layers' bases plus every other parameter.
    pub fn base_params(&self) -> usize {
        self.layers
            .iter()
            .map(LayerReport::base_params)
            .sum::<usize>()
            + self.other_params
    }

    /// Values added by the adapters.
    pub fn lora_params(&self) -> usize {
        self.layers.iter().map(LayerReport::lora_params).sum()
    }

    /// Base plus adapters.
    pub fn total_params(&self) -> usize {
        self.base_params() + self.lora_params()
    }

    /// Adapter values as a percentage of the base.
    pub fn percent_added(&self) -> f64 {
        match self.base_params() {
            0 => 0.0,
            base => self.lora_params() as f64 / base as f64 * 100.0,
        }
    }
}

impl fmt::Display for ParameterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, layer) in self.layers.iter().enumerate() {
            write!(
                f,
                "Layer {} ({}): W: {:?}",
                index + 1,
                layer.path,
                layer.weight
            )?;
            if let Some(bias) = layer.bias {
                write!(f, " + bias: [{bias}]")?;
            }
            for adapter in &layer.adapters {
                let prefix = if layer.adapters.len() > 1 {
                    format!("{}.", adapter.name)
                } else {
                    String::new()
                };
                write!(
                    f,
                    " + {prefix}lora_A: {:?} + {prefix}lora_B: {:?}",
                    adapter.lora_a, adapter.lora_b
                )?;
                if let Some(magnitude) = adapter.magnitude {
                    write!(f, " + {prefix}magnitude: [{magnitude}]")?;
                }
            }
            writeln!(f)?;
        }
        if self.other_params > 0 {
            writeln!(
                f,
                "Other parameters (outside LoRA layers): {}",
                grouped(self.other_params)
            )?;
        }
        let rows = [
            ("Total number of parameters (original)", self.base_params()),
            (
                "Total number of parameters (original + LoRA)",
                self.total_params(),
            ),
            ("Parameters introduced by LoRA", self.lora_params()),
        ];
        for (label, value) in rows {
            writeln!(f, "{:<46}{:>12}", format!("{label}:"), grouped(value))?;
        }
        write!(
            f,
            "{:<46}{:>11.3}%",
            "Parameters increment:",
            self.percent_added()
        )
    }
}

/// The report of `model`: one entry per LoRA layer, plus the count of every other parameter
/// (adapter factors and merged weights excluded).
///
/// The parameters outside the LoRA layers are those not under a layer's module path, so the
/// paths must be known: without them every layer's parameters would count twice, once as the
/// layer's and once as "other". Hence the errors of [`lora_layer_paths`].
///
/// [`lora_layer_paths`]: crate::lora_layer_paths
pub(crate) fn parameter_report<B: Backend, M: LoraModel<B>>(model: &M) -> Result<ParameterReport> {
    let paths = model.lora_layer_paths()?;
    let layers: Vec<LayerReport> = model
        .lora_layers()
        .into_iter()
        .zip(&paths)
        .map(|(layer, path)| LayerReport {
            path: path.clone(),
            weight: layer.base_weight_shape(),
            bias: layer.base_bias_len(),
            adapters: layer
                .adapters()
                .iter()
                .map(|adapter| {
                    let (lora_a, lora_b) = adapter.shapes();
                    AdapterShapes {
                        name: adapter.name().to_string(),
                        lora_a,
                        lora_b,
                        magnitude: adapter.is_dora().then_some(lora_b[1]),
                    }
                })
                .collect(),
        })
        .collect();
    let mut collector = ParamCollector::new(false);
    model.visit(&mut collector);
    let other_params = collector
        .floats
        .iter()
        .filter(|param| {
            !paths.iter().any(|layer| {
                param
                    .path
                    .strip_prefix(layer.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
            })
        })
        .map(|param| param.len)
        .sum();
    Ok(ParameterReport {
        layers,
        other_params,
    })
}

/// `2807010` → `"2,807,010"`.
fn grouped(value: usize) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::grouped;

    #[test]
    fn grouped_inserts_thousands_separators() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(6_794), "6,794");
        assert_eq!(grouped(2_807_010), "2,807,010");
    }
}
