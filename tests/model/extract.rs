//! `extract_adapter`: an adapter from a fine-tuned copy of a model, by truncated SVD of each
//! layer's change. The "fine-tuned" copies here are the base with known low-rank changes merged
//! into its weights, so the exact answer is known.

use burn_lora::{
    extract_adapter, load_adapter, save_adapter, ExtractRank, ExtractedLayer, LoraConfig,
    LoraError, LoraLayer, LoraMlp, LoraModel, PathMap, Targets,
};

use crate::common::safetensors_io::read_config;
use crate::common::{base_model, insert_trained, max_abs_diff, probe, values, B};

const WIDTHS: [usize; 4] = [10, 12, 9, 5];

/// The base and a copy whose layer `i` changed by a random update of rank `ranks[i]` (none
/// where the rank is 0), merged into its weights.
fn base_and_tuned(ranks: &[usize]) -> (LoraMlp<B>, LoraMlp<B>) {
    let base = base_model(&WIDTHS);
    let mut tuned = base.clone();
    let layers: Vec<(usize, LoraConfig)> = ranks
        .iter()
        .enumerate()
        .filter(|(_, &rank)| rank > 0)
        .map(|(i, &rank)| (i, LoraConfig::new(rank, 2.0 * rank as f64)))
        .collect();
    insert_trained(&mut tuned, "change", &layers, 40);
    for index in 0..ranks.len() {
        tuned.layer_mut(index).unwrap().merge_and_unload().unwrap();
    }
    (base, tuned)
}

/// `extract_adapter` of an adapter "x" on every layer.
fn extract_all(
    model: &mut LoraMlp<B>,
    tuned: &LoraMlp<B>,
    rank: ExtractRank,
) -> burn_lora::Result<Vec<ExtractedLayer>> {
    extract_adapter(model, tuned, "x", rank, &Targets::all())
}

/// The base's outputs, weights and adapters are as they were.
fn assert_unchanged(model: &LoraMlp<B>, before: &LoraMlp<B>) {
    for (ours, theirs) in model.layers().iter().zip(before.layers()) {
        assert_eq!(values(ours.weight()), values(theirs.weight()));
        assert_eq!(ours.adapter_names(), theirs.adapter_names());
    }
}

#[test]
fn changes_of_the_kept_rank_are_recovered_and_a_lower_rank_misses_what_it_drops() {
    let (base, tuned) = base_and_tuned(&[2, 2, 2]);
    let x = probe(WIDTHS[0]);
    let mut extracted = base.clone();
    let report = extract_all(&mut extracted, &tuned, ExtractRank::Fixed(2)).unwrap();
    assert_eq!(report.len(), 3);
    for layer in &report {
        assert_eq!(layer.rank, 2);
        assert!(layer.change_norm > 0.1, "{layer:?}");
        assert!(layer.relative_error < 1e-5, "{layer:?}");
    }
    let diff = max_abs_diff(extracted.forward(x.clone()), tuned.forward(x.clone()));
    assert!(diff < 1e-5, "rank 2 on rank-2 changes: {diff}");
    assert!(max_abs_diff(base.forward(x.clone()), tuned.forward(x.clone())) > 1e-2);
    // The adapter is the model's active, trainable adapter, the base frozen.
    assert_eq!(extracted.adapter_names(), vec!["x"]);
    assert!(!extracted.layers()[0].weight_param().is_require_grad());

    let mut rank_one = base.clone();
    let report = extract_all(&mut rank_one, &tuned, ExtractRank::Fixed(1)).unwrap();
    for (layer, ours) in report.iter().zip(rank_one.layers()) {
        // What the adapter misses is what it drops: ‖ΔW − A B‖ / ‖ΔW‖.
        let change = ours.weight() + ours.adapter("x").unwrap().delta_weight();
        let index: usize = layer.path.trim_start_matches("layers.").parse().unwrap();
        let missed = tuned.layers()[index].weight() - change;
        let missed = values(missed.powi_scalar(2).sum()).first().unwrap().sqrt();
        let expected = layer.relative_error * layer.change_norm;
        assert!(
            (f64::from(missed) - expected).abs() < 1e-4 * layer.change_norm,
            "{layer:?}: missed {missed}"
        );
        assert!(layer.relative_error > 0.05, "{layer:?}");
    }
}

#[test]
fn an_energy_share_gives_each_layer_its_rank_and_the_file_a_rank_pattern() {
    // Layer 1 unchanged: no adapter there.
    let (base, tuned) = base_and_tuned(&[2, 0, 3]);
    let mut extracted = base.clone();
    let report = extract_all(
        &mut extracted,
        &tuned,
        ExtractRank::Energy {
            share: 0.999_999,
            max_rank: 8,
        },
    )
    .unwrap();
    let ranks: Vec<usize> = report.iter().map(|l| l.rank).collect();
    assert_eq!(ranks, vec![2, 0, 3]);
    assert!(extracted.layers()[1].adapters().is_empty());
    let x = probe(WIDTHS[0]);
    assert!(max_abs_diff(extracted.forward(x.clone()), tuned.forward(x.clone())) < 1e-5);

    let dir = tempfile::tempdir().unwrap();
    save_adapter(&extracted, "x", dir.path(), &PathMap::identity()).unwrap();
    let config = read_config(dir.path());
    let patterns = [&config["rank_pattern"], &config["alpha_pattern"]];
    assert!(
        patterns
            .iter()
            .any(|p| p.as_object().is_some_and(|p| !p.is_empty())),
        "ranks 2 and 3 need a pattern: {config}"
    );
    let mut reloaded = base.clone();
    load_adapter(&mut reloaded, "x", dir.path(), &PathMap::identity()).unwrap();
    assert_eq!(
        values(reloaded.forward(x.clone())),
        values(extracted.forward(x))
    );

    // A tiny share keeps one direction per changed layer, and the cap holds.
    let mut capped = base.clone();
    let report = extract_all(
        &mut capped,
        &tuned,
        ExtractRank::Energy {
            share: 1.0,
            max_rank: 1,
        },
    )
    .unwrap();
    assert_eq!(
        report.iter().map(|l| l.rank).collect::<Vec<_>>(),
        vec![1, 0, 1]
    );
}

#[test]
fn bad_inputs_are_errors_that_change_nothing() {
    let (base, tuned) = base_and_tuned(&[2, 2, 2]);
    let mut model = base.clone();
    let check = |model: &LoraMlp<B>| assert_unchanged(model, &base);

    // Another shape.
    let other = base_model(&[10, 12, 8, 5]);
    let err = extract_all(&mut model, &other, ExtractRank::Fixed(2)).unwrap_err();
    assert!(matches!(err, LoraError::ShapeMismatch { .. }), "{err:?}");
    check(&model);
    // Another depth.
    let shallow = base_model(&[10, 12, 5]);
    let err = extract_all(&mut model, &shallow, ExtractRank::Fixed(2)).unwrap_err();
    assert!(matches!(err, LoraError::InvalidModel(_)), "{err:?}");
    check(&model);
    // A rank above the last layer's min(9, 5), a zero rank, shares outside (0, 1].
    for rank in [
        ExtractRank::Fixed(6),
        ExtractRank::Fixed(0),
        ExtractRank::Energy {
            share: 0.0,
            max_rank: 4,
        },
        ExtractRank::Energy {
            share: 1.5,
            max_rank: 4,
        },
        ExtractRank::Energy {
            share: f64::NAN,
            max_rank: 4,
        },
    ] {
        let err = extract_all(&mut model, &tuned, rank).unwrap_err();
        assert!(
            matches!(
                err,
                LoraError::RankTooLarge { .. } | LoraError::ZeroRank | LoraError::InvalidInput(_)
            ),
            "{rank:?}: {err:?}"
        );
        check(&model);
    }
    // Nothing changed, and a tuned model that still holds adapters.
    let err = extract_all(&mut model, &base, ExtractRank::Fixed(2)).unwrap_err();
    assert!(matches!(err, LoraError::InvalidInput(_)), "{err:?}");
    let mut unmerged = base.clone();
    insert_trained(&mut unmerged, "t", &[(0, LoraConfig::new(2, 2.0))], 3);
    let err = extract_all(&mut model, &unmerged, ExtractRank::Fixed(2)).unwrap_err();
    assert!(matches!(err, LoraError::Unsupported(_)), "{err:?}");
    check(&model);
    // A name already there.
    model
        .attach("x", &LoraConfig::new(2, 2.0), &Targets::all())
        .unwrap();
    let before = model.clone();
    let err = extract_all(&mut model, &tuned, ExtractRank::Fixed(2)).unwrap_err();
    assert!(matches!(err, LoraError::DuplicateAdapter(_)), "{err:?}");
    assert_unchanged(&model, &before);
}
