//! How a parameter of a Burn module appears in a PyTorch state dict: its key and its layout.
//!
//! | holding module | Burn field | PyTorch name | layout |
//! | --- | --- | --- | --- |
//! | `Linear`, `LoraLinear` | `weight [in, out]` | `weight` | transposed: `[out, in]` |
//! | `LayerNorm`, `BatchNorm`, `GroupNorm`, `InstanceNorm`, `RmsNorm` | `gamma`, `beta` | `weight`, `bias` | same |
//! | `PRelu` | `alpha` | `weight` | same |
//! | anything else (`Embedding`, `Conv2d`, `LoraEmbedding`, `LoraConv2d`, `running_mean`, …) | `name` | `name` | same |
//!
//! LoRA adapters (every field of a `LoraAdapter`, or any other `Lora…Adapter` struct) and the
//! `merged_weight` of LoRA layers are not part of a base checkpoint.

use crate::io::path_map::PathMap;

/// Norm layers whose `gamma` / `beta` PyTorch calls `weight` / `bias`.
const NORMS: [&str; 5] = [
    "LayerNorm",
    "BatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "RmsNorm",
];

/// Layers whose 2-D `weight` is `[in, out]` in Burn and `[out, in]` in PyTorch.
const TRANSPOSED: [&str; 2] = ["Linear", "LoraLinear"];

/// What a PyTorch checkpoint holds for one float parameter of a Burn module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TorchParam {
    /// The parameter is the tensor `key`.
    Load {
        /// Its key in the state dict.
        key: String,
        /// Whether the file holds the transpose of Burn's 2-D layout.
        transpose: bool,
        /// Buffers the holding PyTorch module has and Burn has not (BatchNorm's
        /// `num_batches_tracked`): the file may hold them, unused.
        pytorch_only: Vec<String>,
    },
    /// A factor of a LoRA adapter.
    Adapter,
    /// The merged weight of a LoRA layer (adapters merged in place); the path of the layer.
    Merged(String),
}

/// Where the parameter reached through `stack` (the `(name, container_type)` pairs of Burn's
/// `enter_module` calls, the parameter's own field last) lives in a PyTorch state dict, its
/// module path renamed by `paths`. `rank` is the parameter's number of dimensions.
pub(crate) fn torch_param(stack: &[(String, String)], rank: usize, paths: &PathMap) -> TorchParam {
    if stack.iter().any(|(_, container)| is_adapter(container)) {
        return TorchParam::Adapter;
    }
    let Some(((name, _), modules)) = stack.split_last() else {
        // Module::visit on a bare Param: no path at all.
        return TorchParam::Load {
            key: String::new(),
            transpose: false,
            pytorch_only: Vec::new(),
        };
    };
    let holder = stack
        .iter()
        .rev()
        .find_map(|(_, container)| {
            container
                .strip_prefix("Struct:")
                .or_else(|| container.strip_prefix("Enum:"))
        })
        .unwrap_or_default();
    let module = modules
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(".");
    if name == "merged_weight" && holder.starts_with("Lora") {
        return TorchParam::Merged(module);
    }
    let torch_module = paths.to_torch(&module);
    let in_module = |name: &str| match torch_module.as_str() {
        "" => name.to_string(),
        path => format!("{path}.{name}"),
    };
    let torch_name = match (name.as_str(), holder) {
        ("gamma", norm) if NORMS.contains(&norm) => "weight",
        ("beta", norm) if NORMS.contains(&norm) => "bias",
        ("alpha", "PRelu") => "weight",
        (name, _) => name,
    };
    let pytorch_only = match holder {
        "BatchNorm" => vec![in_module("num_batches_tracked")],
        _ => Vec::new(),
    };
    TorchParam::Load {
        key: in_module(torch_name),
        transpose: name == "weight" && rank == 2 && TRANSPOSED.contains(&holder),
        pytorch_only,
    }
}

/// Whether a container type is a LoRA adapter (`Struct:LoraAdapter`, or any
/// `Struct:Lora…Adapter` of other LoRA layers).
fn is_adapter(container: &str) -> bool {
    container
        .strip_prefix("Struct:Lora")
        .is_some_and(|rest| rest.ends_with("Adapter"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stack from `name:Container` items (`0:Vec` for a Vec index).
    fn stack(items: &[&str]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|item| {
                let (name, container) = item.split_once(':').unwrap();
                let container = match container {
                    "Vec" => "Vec".to_string(),
                    other => format!("Struct:{other}"),
                };
                (name.to_string(), container)
            })
            .collect()
    }

    fn load(key: &str, transpose: bool) -> TorchParam {
        TorchParam::Load {
            key: key.into(),
            transpose,
            pytorch_only: Vec::new(),
        }
    }

    fn param(items: &[&str], rank: usize) -> TorchParam {
        torch_param(&stack(items), rank, &PathMap::identity())
    }

    #[test]
    fn linear_weights_are_transposed_and_keep_their_names() {
        assert_eq!(
            param(&["fc:Net", "weight:Linear"], 2),
            load("fc.weight", true)
        );
        assert_eq!(param(&["fc:Net", "bias:Linear"], 1), load("fc.bias", false));
        assert_eq!(
            param(&["layers:Net", "0:Vec", "weight:LoraLinear"], 2),
            load("layers.0.weight", true)
        );
    }

    #[test]
    fn embedding_and_conv_weights_keep_burns_layout() {
        for holder in ["Embedding", "LoraEmbedding"] {
            assert_eq!(
                param(&["emb:Net", &format!("weight:{holder}")], 2),
                load("emb.weight", false)
            );
        }
        for holder in ["Conv2d", "LoraConv2d"] {
            assert_eq!(
                param(&["conv:Net", &format!("weight:{holder}")], 4),
                load("conv.weight", false)
            );
        }
    }

    #[test]
    fn norm_gamma_and_beta_are_weight_and_bias() {
        for norm in NORMS {
            assert_eq!(
                param(&["norm:Net", &format!("gamma:{norm}")], 1).key(),
                "norm.weight"
            );
            assert_eq!(
                param(&["norm:Net", &format!("beta:{norm}")], 1).key(),
                "norm.bias"
            );
        }
        assert_eq!(param(&["act:Net", "alpha:PRelu"], 1).key(), "act.weight");
        // Other modules' gamma stays gamma.
        assert_eq!(param(&["x:Net", "gamma:Mine"], 1).key(), "x.gamma");
    }

    #[test]
    fn batch_norm_running_stats_keep_their_names_and_allow_num_batches_tracked() {
        for field in ["running_mean", "running_var", "gamma"] {
            let TorchParam::Load { pytorch_only, .. } =
                param(&["bn:Net", &format!("{field}:BatchNorm")], 1)
            else {
                panic!("{field} must load");
            };
            assert_eq!(pytorch_only, vec!["bn.num_batches_tracked".to_string()]);
        }
        assert_eq!(
            param(&["bn:Net", "running_var:BatchNorm"], 1).key(),
            "bn.running_var"
        );
    }

    #[test]
    fn adapters_and_merged_weights_are_not_loaded() {
        let lora_a = [
            "layers:Net",
            "0:Vec",
            "adapters:LoraLinear",
            "0:Vec",
            "lora_a:LoraAdapter",
        ];
        assert_eq!(param(&lora_a, 2), TorchParam::Adapter);
        assert_eq!(
            param(
                &[
                    "emb:Net",
                    "adapters:LoraEmbedding",
                    "0:Vec",
                    "a:LoraEmbeddingAdapter"
                ],
                2
            ),
            TorchParam::Adapter
        );
        assert_eq!(
            param(&["layers:Net", "1:Vec", "merged_weight:LoraLinear"], 2),
            TorchParam::Merged("layers.1".into())
        );
        // A user's own field called merged_weight is an ordinary parameter.
        assert_eq!(
            param(&["x:Net", "merged_weight:Mine"], 2),
            load("x.merged_weight", false)
        );
    }

    #[test]
    fn the_module_path_goes_through_the_path_map_and_root_parameters_have_bare_names() {
        let paths = PathMap::identity()
            .regex(
                r"^encoder\.layers\.(\d+)\.norm$",
                "encoder.layer.$1.output.LayerNorm",
            )
            .unwrap();
        let stack = stack(&[
            "encoder:Bert",
            "layers:Encoder",
            "3:Vec",
            "norm:Block",
            "gamma:LayerNorm",
        ]);
        assert_eq!(
            torch_param(&stack, 1, &paths).key(),
            "encoder.layer.3.output.LayerNorm.weight"
        );
        assert_eq!(param(&["scale:Net"], 1), load("scale", false));
    }

    impl TorchParam {
        fn key(&self) -> &str {
            match self {
                TorchParam::Load { key, .. } => key,
                other => panic!("not loaded: {other:?}"),
            }
        }
    }
}
