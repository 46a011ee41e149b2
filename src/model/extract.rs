//! [`extract_adapter`]: a LoRA adapter from a fully fine-tuned model, by truncated SVD of each
//! layer's weight change.

use burn::tensor::backend::Backend;

use crate::config::LoraConfig;
use crate::error::{LoraError, Result};
use crate::layers::adapter::{checked_name, LoraAdapter};
use crate::model::targets::Targets;
use crate::model::{
    check_unmerged, checked_layers_mut, freeze_for_new_adapter, has_adapters, LoraModel,
};
use crate::svd::truncated_svd;

/// How many singular directions of a layer's weight change an extracted adapter keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ExtractRank {
    /// The same rank on every layer; a layer narrower than it is an error
    /// ([`LoraError::RankTooLarge`]).
    Fixed(usize),
    /// Per layer, the smallest rank whose singular values keep at least `share` of the change's
    /// energy `‖ΔW‖²_F = Σ σ_i²`, at most `max_rank` (and the layer's `min(d_input, d_output)`).
    Energy {
        /// The share of `Σ σ_i²` to keep, in `(0, 1]`.
        share: f64,
        /// The largest rank any layer gets.
        max_rank: usize,
    },
}

/// What [`extract_adapter`] kept of one layer's change.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtractedLayer {
    /// The layer's Burn module path.
    pub path: String,
    /// The adapter's rank there; `0` where the weight did not change (no adapter).
    pub rank: usize,
    /// `‖ΔW‖_F`, the change itself.
    pub change_norm: f64,
    /// `‖ΔW − A B‖_F / ‖ΔW‖_F`: what the adapter misses of the change (Eckart–Young: no adapter
    /// of that rank misses less); `0` where nothing changed.
    pub relative_error: f64,
}

/// Attaches to `base` an adapter `name` that approximates what full fine-tuning did to `tuned`,
/// a fine-tuned copy of the same model: for each LoRA layer `targets` selects, the truncated
/// SVD of the weight's change `ΔW = W_tuned − W_base ≈ U_r S_r V_rᵀ` gives `A = U_r S_r`,
/// `B = V_rᵀ` and `alpha = r` (scale 1), so that the layer computes `W_base + A B`. The rank is
/// fixed, or per layer the smallest that keeps a share of the change's energy
/// ([`ExtractRank`]); where ranks differ, [`save_adapter`](crate::save_adapter) writes PEFT's
/// `rank_pattern` and `alpha_pattern`. Layers whose weight did not change get no adapter.
///
/// Only the targeted layers' weights are carried over. Everything else fine-tuning changed
/// (biases, norms, a classification head, layers not targeted) stays `base`'s: take those from
/// `tuned` yourself (PEFT's `modules_to_save`); the returned report gives each layer's rank and
/// the share of its change the adapter misses. The SVDs run on the host in `f64`
/// ([`truncated_svd`]).
///
/// Makes the adapter active and freezes as [`LoraModel::attach`] does.
///
/// # Errors
/// Checked before `base` changes: an empty or duplicate name, adapters merged in `base`, two
/// models whose LoRA layers differ in paths, kinds or shapes ([`LoraError::InvalidModel`],
/// [`LoraError::ShapeMismatch`]), a `tuned` layer holding adapters (merge them into its weights
/// first: `merge_and_unload`), targets that match no layer, a rank of 0, a fixed rank above a
/// layer's `min(d_input, d_output)`, a share outside `(0, 1]`, non-finite weights, and
/// [`LoraError::InvalidInput`] when no targeted weight changed.
pub fn extract_adapter<B: Backend, M: LoraModel<B>>(
    base: &mut M,
    tuned: &M,
    name: &str,
    rank: ExtractRank,
    targets: &Targets,
) -> Result<Vec<ExtractedLayer>> {
    checked_name(name.to_string())?;
    check_unmerged(base.lora_layers())?;
    match rank {
        ExtractRank::Fixed(0) | ExtractRank::Energy { max_rank: 0, .. } => {
            return Err(LoraError::ZeroRank)
        }
        ExtractRank::Energy { share, .. } if !(share > 0.0 && share <= 1.0) => {
            return Err(LoraError::InvalidInput(format!(
                "an energy share of {share} (it must be in (0, 1])"
            )))
        }
        _ => {}
    }
    let paths = base.lora_layer_paths()?;
    let tuned_paths = tuned.lora_layer_paths()?;
    if paths != tuned_paths {
        return Err(LoraError::InvalidModel(format!(
            "the fine-tuned model's LoRA layers {tuned_paths:?} are not the base's {paths:?}"
        )));
    }
    let (base_layers, tuned_layers) = (base.lora_layers(), tuned.lora_layers());
    let mut report = Vec::new();
    let mut adapters = Vec::new();
    for (index, path) in paths.iter().enumerate() {
        // `lora_layers` lists the layers of `lora_layer_paths`, in its order.
        let (ours, theirs) = (base_layers[index], tuned_layers[index]);
        if !targets.selects(path, ours.kind()) {
            continue;
        }
        if ours.kind() != theirs.kind() || ours.base_weight_shape() != theirs.base_weight_shape() {
            return Err(LoraError::ShapeMismatch {
                what: format!("{path}: the fine-tuned {:?} layer's weight", theirs.kind()),
                expected: ours.base_weight_shape(),
                found: theirs.base_weight_shape(),
            });
        }
        if !theirs.adapters().is_empty() {
            return Err(LoraError::Unsupported(format!(
                "{path}: the fine-tuned layer holds adapters {:?}; merge them into its weight \
                 first (merge_and_unload)",
                theirs.adapter_names()
            )));
        }
        ours.check_can_add(name)?;
        let change = theirs.base_matrix() - ours.base_matrix();
        let [d_input, d_output] = change.dims();
        let widest = d_input.min(d_output);
        let most = match rank {
            ExtractRank::Fixed(rank) if rank > widest => {
                return Err(LoraError::RankTooLarge {
                    rank,
                    d_input,
                    d_output,
                    max: widest,
                })
            }
            ExtractRank::Fixed(rank) => rank,
            ExtractRank::Energy { max_rank, .. } => max_rank.min(widest),
        };
        let factors = truncated_svd(change, most)?;
        let energies: Vec<f64> = factors.singular_values.iter().map(|s| s * s).collect();
        let total: f64 = energies.iter().sum();
        if total == 0.0 {
            report.push(ExtractedLayer {
                path: path.clone(),
                rank: 0,
                change_norm: 0.0,
                relative_error: 0.0,
            });
            continue;
        }
        let kept = match rank {
            ExtractRank::Fixed(rank) => rank,
            ExtractRank::Energy { share, .. } => {
                let mut sum = 0.0;
                let needed = energies
                    .iter()
                    .position(|e| {
                        sum += e;
                        sum >= share * total
                    })
                    .map_or(most, |i| i + 1);
                needed.min(most)
            }
        };
        let missed: f64 = energies.iter().skip(kept).sum();
        report.push(ExtractedLayer {
            path: path.clone(),
            rank: kept,
            change_norm: total.sqrt(),
            relative_error: (missed / total).sqrt(),
        });
        let config = LoraConfig::new(kept, kept as f64);
        let lora_a = factors.left.slice([0..d_input, 0..kept]);
        let lora_b = factors.right.slice([0..kept, 0..d_output]);
        adapters.push((
            index,
            LoraAdapter::from_factors(name, &config, lora_a, lora_b)?,
        ));
    }
    if report.is_empty() {
        return Err(LoraError::InvalidTargets(format!(
            "no LoRA layer matches {targets:?}; the model's LoRA layers are {paths:?}"
        )));
    }
    if adapters.is_empty() {
        return Err(LoraError::InvalidInput(
            "no targeted layer's weight differs between the two models".to_string(),
        ));
    }
    let had_adapters = has_adapters(base);
    let mut layers = checked_layers_mut(base)?;
    let mut inserted: Vec<usize> = Vec::new();
    for (index, adapter) in adapters {
        if let Err(error) = layers[index].insert_adapter(adapter) {
            for index in inserted {
                let _ = layers[index].remove_adapter(name);
            }
            return Err(error);
        }
        inserted.push(index);
    }
    freeze_for_new_adapter(base, had_adapters);
    base.set_active_adapter(name)?;
    Ok(report)
}
