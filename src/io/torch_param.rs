//! How a parameter of a Burn module appears in a PyTorch state dict: its key and its layout.
//!
//! | holding module | Burn field | PyTorch name | layout |
//! | --- | --- | --- | --- |
//! | `Linear`, `LoraLinear` | `weight [in, out]` | `weight` | transposed: `[out, in]` |
//! | `Embedding`, `LoraEmbedding` | `weight [n, d]` | `weight` | same |
//! | any other module | 2-D `weight` | `weight` | unknown: the caller must say |
//! | `LayerNorm`, `BatchNorm`, `GroupNorm`, `InstanceNorm`, `RmsNorm` | `gamma`, `beta` | `weight`, `bias` | same |
//! | `PRelu` | `alpha` | `weight` | same |
//! | anything else (`Conv2d`, `LoraConv2d`, `running_mean`, …) | `name` | `name` | same |
//!
//! Burn's visitor names a module only by its type's bare name (`Struct:Linear`), so a known
//! module is recognised by that name *and* by its float parameters: `Linear` holds exactly
//! `weight [in, out]` and maybe `bias [out]`, `LoraLinear` the same and maybe `merged_weight`,
//! `Embedding` only `weight`, `LoraEmbedding` `weight` and maybe `merged_weight`. A module of
//! another name, or of a known name with other parameters, has a 2-D `weight` of unknown layout.
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

/// How a float parameter's values are laid out in the PyTorch file, relative to Burn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layout {
    /// The same shape and order in both.
    Same,
    /// A 2-D weight that PyTorch stores transposed (`[out, in]` for Burn's `[in, out]`).
    Transposed,
    /// A 2-D `weight` of a module burn-lora does not know: either layout is possible. The
    /// reason, naming the module type.
    Unknown(String),
}

/// The float parameters a module holds directly: `(field name, shape)`.
pub(crate) type Fields = [(String, Vec<usize>)];

/// What a PyTorch checkpoint holds for one float parameter of a Burn module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TorchParam {
    /// The parameter is the tensor `key`.
    Load {
        /// Its key in the state dict.
        key: String,
        /// How the file lays it out.
        layout: Layout,
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
/// module path renamed by `paths`. `rank` is the parameter's number of dimensions and `fields`
/// the float parameters its holding module holds directly (itself included).
pub(crate) fn torch_param(
    stack: &[(String, String)],
    rank: usize,
    fields: &Fields,
    paths: &PathMap,
) -> TorchParam {
    if stack.iter().any(|(_, container)| is_adapter(container)) {
        return TorchParam::Adapter;
    }
    let Some(((name, _), modules)) = stack.split_last() else {
        // Module::visit on a bare Param: no path at all.
        return TorchParam::Load {
            key: String::new(),
            layout: Layout::Same,
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
    let layout = if name == "weight" && rank == 2 {
        weight_layout(holder, fields)
    } else {
        Layout::Same
    };
    TorchParam::Load {
        key: in_module(torch_name),
        layout,
        pytorch_only,
    }
}

/// The layout of the 2-D `weight` of a module of type `holder` holding `fields`.
fn weight_layout(holder: &str, fields: &Fields) -> Layout {
    let shape = |field: &str| {
        fields
            .iter()
            .find(|(name, _)| name == field)
            .map(|(_, shape)| shape.as_slice())
    };
    let only = |allowed: &[&str]| {
        fields
            .iter()
            .all(|(name, _)| allowed.contains(&name.as_str()))
    };
    let weight = shape("weight").unwrap_or_default();
    let same_as_weight = |field: &str| shape(field).is_none_or(|s| s == weight);
    let linear_bias =
        shape("bias").is_none_or(|bias| bias.len() == 1 && weight.get(1) == bias.first());
    let known = match holder {
        "Linear" => only(&["weight", "bias"]) && linear_bias,
        "LoraLinear" => {
            only(&["weight", "bias", "merged_weight"])
                && linear_bias
                && same_as_weight("merged_weight")
        }
        "Embedding" => only(&["weight"]),
        "LoraEmbedding" => only(&["weight", "merged_weight"]) && same_as_weight("merged_weight"),
        _ => false,
    };
    match (holder, known) {
        ("Linear" | "LoraLinear", true) => Layout::Transposed,
        ("Embedding" | "LoraEmbedding", true) => Layout::Same,
        ("Linear" | "LoraLinear" | "Embedding" | "LoraEmbedding", false) => {
            Layout::Unknown(format!(
                "it is the 2-D weight of a module named {holder} whose parameters {:?} are not \
                 those of burn-lora's or Burn's {holder}, so its layout is unknown",
                fields
                    .iter()
                    .map(|(name, shape)| format!("{name} {shape:?}"))
                    .collect::<Vec<_>>()
            ))
        }
        _ => Layout::Unknown(format!(
            "it is the 2-D weight of a module of type {holder}, which burn-lora does not know \
             (only Linear and LoraLinear, stored transposed, and Embedding and LoraEmbedding, \
             stored as in Burn)"
        )),
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

    fn load(key: &str, layout: Layout) -> TorchParam {
        TorchParam::Load {
            key: key.into(),
            layout,
            pytorch_only: Vec::new(),
        }
    }

    fn fields(items: &[(&str, &[usize])]) -> Vec<(String, Vec<usize>)> {
        items
            .iter()
            .map(|(name, shape)| (name.to_string(), shape.to_vec()))
            .collect()
    }

    /// The parameter at `items`, its module holding it alone (shape `[3; rank]`).
    fn param(items: &[&str], rank: usize) -> TorchParam {
        let (own, _) = items.last().unwrap().split_once(':').unwrap();
        param_in(items, &[(own, &vec![3; rank])])
    }

    /// The parameter at `items` (the last of `holding`), its module holding `holding`.
    fn param_in(items: &[&str], holding: &[(&str, &[usize])]) -> TorchParam {
        let (own, _) = items.last().unwrap().split_once(':').unwrap();
        let rank = holding
            .iter()
            .find(|(name, _)| *name == own)
            .unwrap()
            .1
            .len();
        torch_param(&stack(items), rank, &fields(holding), &PathMap::identity())
    }

    fn layout(param: TorchParam) -> Layout {
        match param {
            TorchParam::Load { layout, .. } => layout,
            other => panic!("not loaded: {other:?}"),
        }
    }

    #[test]
    fn linear_weights_are_transposed_and_keep_their_names() {
        let linear: &[(&str, &[usize])] = &[("weight", &[4, 3]), ("bias", &[3])];
        assert_eq!(
            param_in(&["fc:Net", "weight:Linear"], linear),
            load("fc.weight", Layout::Transposed)
        );
        assert_eq!(
            param_in(&["fc:Net", "bias:Linear"], linear),
            load("fc.bias", Layout::Same)
        );
        assert_eq!(
            param(&["fc:Net", "weight:Linear"], 2),
            load("fc.weight", Layout::Transposed),
            "a Linear without bias"
        );
        let lora_linear: &[(&str, &[usize])] = &[
            ("weight", &[4, 3]),
            ("bias", &[3]),
            ("merged_weight", &[4, 3]),
        ];
        assert_eq!(
            param_in(&["layers:Net", "0:Vec", "weight:LoraLinear"], lora_linear),
            load("layers.0.weight", Layout::Transposed)
        );
    }

    #[test]
    fn embedding_and_conv_weights_keep_burns_layout() {
        assert_eq!(
            param(&["emb:Net", "weight:Embedding"], 2),
            load("emb.weight", Layout::Same)
        );
        assert_eq!(
            param_in(
                &["emb:Net", "weight:LoraEmbedding"],
                &[("weight", &[10, 4]), ("merged_weight", &[10, 4])]
            ),
            load("emb.weight", Layout::Same)
        );
        for holder in ["Conv2d", "LoraConv2d", "Mine"] {
            assert_eq!(
                param(&["conv:Net", &format!("weight:{holder}")], 4),
                load("conv.weight", Layout::Same)
            );
        }
    }

    #[test]
    fn a_2d_weight_of_an_unknown_module_has_an_unknown_layout() {
        let Layout::Unknown(reason) = layout(param(&["proj:Net", "weight:MyProj"], 2)) else {
            panic!("a custom module's 2-D weight must not get a layout");
        };
        assert!(reason.contains("MyProj"), "{reason}");
        // Its other parameters, 2-D or not, and 1-D weights load as they are.
        assert_eq!(
            layout(param(&["proj:Net", "table:MyProj"], 2)),
            Layout::Same
        );
        assert_eq!(
            layout(param(&["proj:Net", "weight:MyProj"], 1)),
            Layout::Same
        );
    }

    #[test]
    fn a_module_named_like_a_known_one_with_other_parameters_has_an_unknown_layout() {
        // PyTorch's layout under the name Linear: bias [out] is weight's first side.
        let torch_like: &[(&str, &[usize])] = &[("weight", &[3, 4]), ("bias", &[3])];
        let extra: &[(&str, &[usize])] = &[("weight", &[4, 4]), ("scale", &[4])];
        for (holder, holding) in [
            ("Linear", torch_like),
            ("Linear", extra),
            ("LoraLinear", extra),
            ("Embedding", extra),
            ("LoraEmbedding", extra),
        ] {
            let found = layout(param_in(&["m:Net", &format!("weight:{holder}")], holding));
            assert!(
                matches!(&found, Layout::Unknown(reason) if reason.contains(holder)),
                "{holder} {holding:?}: {found:?}"
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
            load("x.merged_weight", Layout::Same)
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
        let gamma = fields(&[("gamma", &[4]), ("beta", &[4])]);
        assert_eq!(
            torch_param(&stack, 1, &gamma, &paths).key(),
            "encoder.layer.3.output.LayerNorm.weight"
        );
        assert_eq!(param(&["scale:Net"], 1), load("scale", Layout::Same));
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
