//! Adapter files in Hugging Face PEFT's format: `adapter_model.safetensors` + `adapter_config.json`.
//!
//! PEFT names tensors `base_model.model.<module path>.lora_A.weight` with shape `[r, in]` and
//! `...lora_B.weight` with shape `[out, r]`: the transposes of burn-lora's `A [in, r]` and
//! `B [r, out]`. A DoRA adapter adds its magnitude as `...<module path>.lora_magnitude_vector`
//! (`[out]`; `[1, out, 1, 1]` for a convolution). Saving transposes and names; loading checks
//! every tensor against the model before anything changes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::config::LoraConfig;
use crate::error::{LoraError, Result};
use crate::io::atomic_file::{io_error, write_all_atomic};
use crate::io::path_map::PathMap;
use crate::io::peft_config::PeftConfig;
use crate::io::tensor_file::{
    read_bytes, read_float_tensors, serialize_f32, tensor_values, FloatTensor,
};
use crate::layers::adapter::LoraAdapter;
use crate::layers::principal_init::principal_init;
use crate::model::{
    check_unmerged, checked_layers_mut, freeze_for_new_adapter, has_adapters, lora_layer_paths,
    LoraModel,
};

/// File name of the tensors in an adapter directory.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// File name of the configuration in an adapter directory.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// The prefix PEFT puts before module paths.
const PEFT_PREFIX: &str = "base_model.model.";
/// The names PEFT gives `A` (slot 0), `B` (slot 1) and DoRA's magnitude (slot 2) after a module
/// path, for every layer kind.
const FACTOR_SUFFIXES: [(&str, usize); 5] = [
    (".lora_A.weight", 0),
    (".lora_B.weight", 1),
    (".lora_embedding_A", 0),
    (".lora_embedding_B", 1),
    (MAGNITUDE_SUFFIX, 2),
];
/// PEFT's name for DoRA's magnitude after a module path (no `.weight`).
const MAGNITUDE_SUFFIX: &str = ".lora_magnitude_vector";

/// Saves adapter `name` of `model` to `dir` as `adapter_model.safetensors` and
/// `adapter_config.json`, in PEFT's names, orientation and config fields. `paths` maps Burn module
/// paths to the PyTorch ones (use [`PathMap::identity`] when they are the same).
///
/// The two files are replaced as a pair: both are written in full to temporary files first, and
/// if replacing the second fails, the first is put back, so a failed save (an error returned)
/// leaves an existing adapter folder as it was. The pair is not replaced in one step, though: a
/// reader looking while it is saved, or a crash between the two renames, can see the new weights
/// beside the old config; if even putting the old weights back fails, the error says so and
/// names the backup file holding them.
///
/// ```
/// use burn::backend::Flex as Inference;
/// use burn_lora::{
///     load_adapter, save_adapter, LoraConfig, LoraMlpConfig, LoraModel, PathMap, Targets,
/// };
///
/// let device = Default::default();
/// let mut model = LoraMlpConfig::new(8, vec![6], 3).init::<Inference>(&device)?;
/// model.attach("default", &LoraConfig::new(2, 4.0), &Targets::all())?;
/// let dir = tempfile::tempdir().unwrap();
/// save_adapter(&model, "default", dir.path(), &PathMap::identity())?;
///
/// // Later: the same base, a fresh adapter slot filled from the file.
/// model.remove_adapter("default")?;
/// load_adapter(&mut model, "default", dir.path(), &PathMap::identity())?;
/// assert_eq!(model.adapter_names(), vec!["default"]);
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
pub fn save_adapter<B: Backend, M: LoraModel<B>>(
    model: &M,
    name: &str,
    dir: &Path,
    paths: &PathMap,
) -> Result<()> {
    write_adapter(model, name, dir, paths, false)
}

/// Saves adapter `name` as [`save_adapter`] does, converted for the original base where its init
/// rewrote the base (PiSSA, OLoRA): PEFT's `save_pretrained(...,
/// path_initial_model_for_weight_conversion=...)`. Each such layer's adapter becomes the plain
/// LoRA of rank `2r` whose update on the original weight `W` is what the trained adapter adds
/// to the residual base, `s·A B − s·A₀ B₀` ([`LoraAdapter::converted_factors`](crate::LoraAdapter::converted_factors);
/// `alpha` doubled, by `√2` with rsLoRA), with PEFT's default `init_lora_weights = true`: PEFT,
/// mistral.rs and [`load_adapter`] apply it to the untouched checkpoint. Other adapters are
/// written as they are.
///
/// ```
/// use burn::backend::Flex as Inference;
/// use burn::tensor::{Tensor, Tolerance};
/// use burn_lora::{
///     load_adapter, save_adapter_converted, LoraConfig, LoraInit, LoraMlpConfig, LoraModel,
///     PathMap, Targets,
/// };
///
/// let device = Default::default();
/// let mut model = LoraMlpConfig::new(8, vec![6], 3).init::<Inference>(&device)?;
/// let pissa = LoraConfig::new(2, 4.0).with_init(LoraInit::Pissa { power_iterations: None });
/// model.attach("pissa", &pissa, &Targets::all())?; // the base is now W − s·A₀B₀
/// // ... training changes A and B ...
/// let x = Tensor::<Inference, 2>::ones([2, 8], &device);
/// let trained = model.forward(x.clone());
/// let dir = tempfile::tempdir().unwrap();
/// save_adapter_converted(&model, "pissa", dir.path(), &PathMap::identity())?;
///
/// // Removing the adapter gives the original base back (up to rounding); the converted
/// // adapter (rank 4) on it gives the trained model's outputs.
/// model.remove_adapter("pissa")?;
/// load_adapter(&mut model, "converted", dir.path(), &PathMap::identity())?;
/// model
///     .forward(x)
///     .into_data()
///     .assert_approx_eq::<f32>(&trained.into_data(), Tolerance::absolute(1e-5));
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
pub fn save_adapter_converted<B: Backend, M: LoraModel<B>>(
    model: &M,
    name: &str,
    dir: &Path,
    paths: &PathMap,
) -> Result<()> {
    write_adapter(model, name, dir, paths, true)
}

/// [`save_adapter`], or [`save_adapter_converted`] with `converted`.
fn write_adapter<B: Backend, M: LoraModel<B>>(
    model: &M,
    name: &str,
    dir: &Path,
    paths: &PathMap,
    converted: bool,
) -> Result<()> {
    let burn_paths = lora_layer_paths(model)?;
    let mut targets: Vec<(String, LoraConfig)> = Vec::new();
    let mut tensors = Vec::new();
    for (layer, burn_path) in model.lora_layers().into_iter().zip(&burn_paths) {
        let Some(adapter) = layer.adapter(name) else {
            continue;
        };
        adapter.ensure_finite()?;
        let torch_path = paths.to_torch(burn_path);
        let (config, lora_a, lora_b) = if converted {
            adapter.converted_factors()
        } else {
            (adapter.config().clone(), adapter.lora_a(), adapter.lora_b())
        };
        let [key_a, key_b] = layer.peft_factor_keys();
        let [shape_a, shape_b] = layer.peft_factor_shapes(config.rank);
        tensors.push((
            format!("{PEFT_PREFIX}{torch_path}.{key_a}"),
            shape_a,
            tensor_values(lora_a.transpose())?,
        ));
        tensors.push((
            format!("{PEFT_PREFIX}{torch_path}.{key_b}"),
            shape_b,
            tensor_values(lora_b.transpose())?,
        ));
        if let Some(magnitude) = adapter.magnitude() {
            tensors.push((
                format!("{PEFT_PREFIX}{torch_path}{MAGNITUDE_SUFFIX}"),
                layer.peft_magnitude_shape(),
                tensor_values(magnitude)?,
            ));
        }
        targets.push((torch_path, config));
    }
    if targets.is_empty() {
        return Err(LoraError::UnknownAdapter(name.to_string()));
    }
    let config = PeftConfig::from_layers(&targets)?;

    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = serialize_f32(&tensors, metadata, &weights_path)?;
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let json = serde_json::to_vec_pretty(&config).map_err(|e| LoraError::InvalidFile {
        path: config_path.display().to_string(),
        format: "adapter_config.json".into(),
        reason: e.to_string(),
    })?;
    write_all_atomic(&[(&weights_path, &weights), (&config_path, &json)])
}

/// Loads the PEFT adapter in `dir` into `model` under `name` and makes it the active adapter.
///
/// Keys may carry PEFT's `base_model.model.` prefix or not. Rank and scale come from the config
/// (`rank_pattern`, `alpha_pattern` and rsLoRA included). Every tensor is checked first: a missing
/// or unexpected key, a shape or rank mismatch, an unsupported dtype, non-finite values, a
/// truncated or garbage file are errors naming the key, and on any error the model is left
/// exactly as it was. Freezes as [`LoraModel::attach`] does: a head made trainable after the
/// first adapter stays trainable.
///
/// A PiSSA or OLoRA adapter saved for its residual base (`init_lora_weights` `"pissa"` or
/// `"olora"`, as PEFT and [`save_adapter`] save it) loads onto the original model: each
/// targeted layer's base becomes the residual its init leaves, rebuilt from the layer's weight
/// as PEFT rebuilds it, and the adapter keeps the factors that init starts from (see
/// [`LoraInit::Pissa`](crate::LoraInit::Pissa)). A randomised SVD's residual (`pissa_niter_k`)
/// cannot be rebuilt, and such a file is refused.
pub fn load_adapter<B: Backend, M: LoraModel<B>>(
    model: &mut M,
    name: &str,
    dir: &Path,
    paths: &PathMap,
) -> Result<()> {
    let adapters = read_adapter(model, name, dir, paths)?;
    let had_adapters = has_adapters(model);
    for (layer, adapter) in checked_layers_mut(model)?.into_iter().zip(adapters) {
        if let Some((adapter, residual)) = adapter {
            if let Some(residual) = residual {
                layer.replace_base_matrix(residual)?;
            }
            layer.insert_adapter(adapter)?;
        }
    }
    freeze_for_new_adapter(model, had_adapters);
    model.set_active_adapter(name)
}

/// A layer's adapter as read, with the residual base a PiSSA or OLoRA adapter applies to.
type ReadAdapter<B> = (LoraAdapter<B>, Option<Tensor<B, 2>>);

/// Reads and checks the adapter files; one entry per model layer (`None` where not targeted).
fn read_adapter<B: Backend, M: LoraModel<B>>(
    model: &M,
    name: &str,
    dir: &Path,
    paths: &PathMap,
) -> Result<Vec<Option<ReadAdapter<B>>>> {
    crate::layers::adapter::checked_name(name.to_string())?;
    // `load_adapter` ends by activating the adapter model-wide, which refuses merged layers: check
    // every layer now, not only the targeted ones, so that a merged layer elsewhere cannot fail
    // the load after the adapters were inserted.
    check_unmerged(model.lora_layers())?;
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let config = PeftConfig::parse(&config_path, &read_bytes(&config_path)?)?;
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    let tensors = read_float_tensors(&weights_path, &read_bytes(&weights_path)?)?;
    let file = weights_path.display().to_string();

    // Group the file's tensors by module path: path -> (A, B, DoRA's magnitude).
    let mut by_module: BTreeMap<String, [Option<(String, FloatTensor)>; 3]> = BTreeMap::new();
    for (key, tensor) in tensors {
        let bare = key.strip_prefix(PEFT_PREFIX).unwrap_or(&key);
        let Some((module, slot)) = FACTOR_SUFFIXES
            .iter()
            .find_map(|(suffix, slot)| bare.strip_suffix(suffix).map(|module| (module, *slot)))
        else {
            return Err(LoraError::UnexpectedKey {
                path: file,
                key,
                reason: "not a LoRA tensor (lora_A.weight, lora_B.weight, lora_embedding_A, \
                         lora_embedding_B, lora_magnitude_vector)"
                    .into(),
            });
        };
        // `slot` is 0, 1 or 2 (`FACTOR_SUFFIXES`) into a triple.
        let entry = &mut by_module.entry(module.to_string()).or_default()[slot];
        if let Some((other, _)) = entry {
            // The same factor with and without PEFT's prefix: which one wins would be arbitrary.
            let reason = format!("the same tensor as \"{other}\"");
            return Err(LoraError::UnexpectedKey {
                path: file,
                key,
                reason,
            });
        }
        *entry = Some((key, tensor));
    }

    let layers = model.lora_layers();
    let torch_paths: Vec<String> = lora_layer_paths(model)?
        .iter()
        .map(|p| paths.to_torch(p))
        .collect();
    for (module, factors) in &by_module {
        let key = factors
            .iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .next()
            .unwrap_or_default();
        if !torch_paths.contains(module) {
            return Err(LoraError::UnexpectedKey {
                path: file,
                key,
                reason: format!("the model has no LoRA layer at \"{module}\""),
            });
        }
        if !config.targets(module) {
            return Err(LoraError::UnexpectedKey {
                path: file,
                key,
                reason: format!(
                    "\"{module}\" is not in the config's target_modules (or is excluded)"
                ),
            });
        }
    }

    let mut adapters = Vec::with_capacity(layers.len());
    let mut any = false;
    for (layer, torch_path) in layers.iter().zip(&torch_paths) {
        let factors = by_module.remove(torch_path);
        if factors.is_none() && (config.is_all_linear() || !config.targets(torch_path)) {
            adapters.push(None);
            continue;
        }
        let [a, b, magnitude] = factors.unwrap_or_default();
        let [key_a, key_b] = layer.peft_factor_keys();
        let missing = |factor: &str| LoraError::MissingKey {
            path: file.clone(),
            key: format!("{PEFT_PREFIX}{torch_path}.{factor}"),
        };
        let (a_key, a) = a.ok_or_else(|| missing(key_a))?;
        let (b_key, b) = b.ok_or_else(|| missing(key_b))?;
        for (key, expected) in [(&a_key, key_a), (&b_key, key_b)] {
            if !key.ends_with(expected) {
                return Err(LoraError::UnexpectedKey {
                    path: file.clone(),
                    key: key.clone(),
                    reason: format!("the layer at \"{torch_path}\" names this factor {expected}"),
                });
            }
        }
        // Unsupported layer (a grouped convolution), duplicate name or merged layer: refused
        // before the shapes, which such a layer may not even define.
        layer.check_can_add(name)?;
        let lora_config = config.lora_config_for(torch_path)?;
        layer.check_config_fits_base(&lora_config)?;
        let rank = lora_config.rank;
        let [d_input, d_output] = layer.adapter_dims();
        let [shape_a, shape_b] = layer.peft_factor_shapes(rank);
        for (key, tensor, expected) in [(&a_key, &a, &shape_a), (&b_key, &b, &shape_b)] {
            if &tensor.shape != expected {
                return Err(LoraError::ShapeMismatch {
                    what: format!("{file}: adapter key \"{key}\""),
                    expected: expected.clone(),
                    found: tensor.shape.clone(),
                });
            }
        }
        let magnitude = match (magnitude, lora_config.use_dora) {
            (Some((key, tensor)), true) => {
                let expected = layer.peft_magnitude_shape();
                if tensor.shape != expected {
                    return Err(LoraError::ShapeMismatch {
                        what: format!("{file}: adapter key \"{key}\""),
                        expected,
                        found: tensor.shape,
                    });
                }
                Some(tensor.reshaped(vec![d_output]))
            }
            (None, true) => return Err(missing(&MAGNITUDE_SUFFIX[1..])),
            (Some((key, _)), false) => {
                return Err(LoraError::UnexpectedKey {
                    path: file,
                    key,
                    reason: "a DoRA magnitude, but the config's use_dora is false".into(),
                })
            }
            (None, false) => None,
        };
        let device = layer.device();
        let a = a
            .reshaped(vec![rank, d_input])
            .transposed()
            .into_burn::<B, 2>(&device);
        let b = b
            .reshaped(vec![d_output, rank])
            .transposed()
            .into_burn::<B, 2>(&device);
        let adapter = match magnitude {
            Some(m) => {
                let m = m.into_burn::<B, 1>(&device);
                LoraAdapter::from_dora_factors(name, &lora_config, a, b, m)?
            }
            None => LoraAdapter::from_factors(name, &lora_config, a, b)?,
        };
        // PiSSA or OLoRA: the trained factors apply to the residual base, rebuilt here from the
        // layer's weight as PEFT rebuilds it, and the factors it starts from are kept.
        let (adapter, residual) = if lora_config.init.rewrites_base() {
            layer.check_new_adapter(name, &lora_config)?;
            let init = principal_init(layer.base_matrix(), &lora_config)?;
            let adapter = adapter.with_given_initial_factors(init.lora_a, init.lora_b);
            (adapter, Some(init.residual))
        } else {
            (adapter, None)
        };
        adapters.push(Some((adapter, residual)));
        any = true;
    }
    if !any {
        return Err(LoraError::InvalidFile {
            path: file,
            format: "adapter_model.safetensors".into(),
            reason: "no LoRA tensors for any layer of the model".into(),
        });
    }
    Ok(adapters)
}
