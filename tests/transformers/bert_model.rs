//! BERT as Hugging Face builds it, with every bad input an error: the dropouts of `config.json`
//! (read, defaulted and checked as Hugging Face does), their placement in training, and
//! `try_forward`'s checks of the ids a server receives. The blocks' own configurations return
//! errors rather than panic.

use std::path::{Path, PathBuf};

use crate::common::{assert_same_up_to_reduction_order, max_abs_diff, B};
use burn::module::{AutodiffModule, Initializer};
use burn::nn::LinearConfig;
use burn::tensor::{Int, Tensor, TensorData};
use burn_lora::nn::attention::MultiHeadAttentionConfig;
use burn_lora::nn::bert::BertConfig;
use burn_lora::nn::transformer::{PositionWiseFeedForwardConfig, TransformerEncoderConfig};
use burn_lora::nn::Dropout;
use burn_lora::{LoraError, LoraLinear};

/// The tiny BERT fixture's `config.json` with `edit` applied to its JSON object, in a temporary
/// folder (kept alive by the returned guard).
fn edited_config(
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> (tempfile::TempDir, PathBuf) {
    let source = crate::common::existing_peft_fixture("bert_tiny_qv").join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(source).unwrap()).unwrap();
    edit(json.as_object_mut().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    (dir, path)
}

fn read(path: &Path) -> Result<BertConfig, LoraError> {
    BertConfig::from_hf_json(path)
}

#[test]
fn a_dropout_outside_zero_one_in_config_json_is_an_error() {
    for key in ["hidden_dropout_prob", "attention_probs_dropout_prob"] {
        for value in [1.5, -0.1] {
            let (_dir, path) = edited_config(|c| {
                c.insert(key.into(), value.into());
            });
            let err = read(&path).unwrap_err();
            assert!(
                matches!(&err, LoraError::InvalidModel(m) if m.contains(key)),
                "{key} = {value}: {err:?}"
            );
        }
    }
    // Built directly, the configuration is checked by init.
    let device = Default::default();
    let config = BertConfig::new(50, 16, 1, 2, 32, 8).with_hidden_dropout_prob(1.5);
    assert!(matches!(
        config.init::<B>(&device),
        Err(LoraError::InvalidModel(_))
    ));
    let config = BertConfig::new(50, 16, 1, 2, 32, 8).with_attention_probs_dropout_prob(f64::NAN);
    assert!(matches!(
        config.init::<B>(&device),
        Err(LoraError::InvalidModel(_))
    ));
}

#[test]
fn sizes_whose_parameter_count_overflows_are_errors() {
    // Sizes whose parameter count overflows are refused before Burn allocates anything.
    for config in [
        BertConfig::new(usize::MAX / 2, 16, 1, 2, 32, 8),
        BertConfig::new(50, 1 << 32, 1 << 30, 1 << 16, 32, 8),
    ] {
        let result = config.init::<B>(&Default::default());
        assert!(
            matches!(result, Err(LoraError::InvalidModel(_))),
            "{:?}",
            result.err()
        );
    }
}

#[test]
fn a_config_of_another_model_type_is_refused_and_one_without_is_read() {
    // A Llama config with its activation removed has every field a BERT needs.
    let llama = crate::common::existing_peft_fixture("llama_tiny").join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(llama).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("hidden_act");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let err = read(&path).unwrap_err();
    assert!(
        matches!(&err, LoraError::Unsupported(m) if m.contains("\"llama\"")),
        "{err:?}"
    );

    let (_dir, path) = edited_config(|c| {
        c.remove("model_type");
    });
    assert_eq!(read(&path).unwrap().hidden_size, 32);
}

#[test]
fn missing_dropouts_take_hugging_faces_default_and_both_are_read() {
    let (_dir, path) = edited_config(|c| {
        c.remove("hidden_dropout_prob");
        c.insert("attention_probs_dropout_prob".into(), 0.25.into());
    });
    let config = read(&path).unwrap();
    assert_eq!(config.hidden_dropout_prob, 0.1);
    assert_eq!(config.attention_probs_dropout_prob, 0.25);

    let bert = config.init::<B>(&Default::default()).unwrap();
    assert_eq!(bert.embeddings.dropout.prob(), 0.1);
    for layer in &bert.encoder.layers {
        // Hugging Face: probabilities dropped after the softmax, sub-layer outputs dropped
        // before their residual sums, nothing inside the feed-forward block.
        assert_eq!(layer.mha.dropout.prob(), 0.25);
        assert!(layer.mha.dropout_after_softmax);
        assert_eq!(layer.dropout.prob(), 0.1);
        assert_eq!(layer.pwff.dropout.prob(), 0.0);
    }
}

/// Ids `[2, 5]`, all within a vocabulary of 50, with an all-ones mask.
fn ids() -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    let device = Default::default();
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![1i64, 7, 3, 49, 0, 5, 2, 8, 11, 4], [2, 5]),
        &device,
    );
    (ids, Tensor::ones([2, 5], &device))
}

#[test]
fn attention_dropout_drops_the_probabilities_in_training() {
    type AB = crate::common::AB;
    let device = Default::default();
    // Every probability dropped: the attended values are zero, whatever the scores.
    let config = BertConfig::new(50, 16, 2, 2, 32, 8)
        .with_hidden_dropout_prob(0.0)
        .with_attention_probs_dropout_prob(1.0);
    let training = config.init::<AB>(&device).unwrap();
    // Reading every parameter initialises the lazy ones, so that the copy below shares them.
    crate::common::snapshot::ParamSnapshot::of(&training);
    // The same weights at inference (no dropout), with zero value projections: the attended
    // values are zero too.
    let mut expected = training.valid();
    for layer in &mut expected.encoder.layers {
        layer.mha.value = LoraLinear::from_linear(
            LinearConfig::new(16, 16)
                .with_initializer(Initializer::Zeros)
                .init(&device),
        );
    }
    let (ids, mask) = ids();
    let to_ad = |t: Tensor<B, 2, Int>| Tensor::<AB, 2, Int>::from_data(t.into_data(), &device);
    let want = expected.forward(ids.clone(), mask.clone(), None);
    let trained = training.forward(to_ad(ids.clone()), to_ad(mask.clone()), None);
    // Equal up to the rounding of the autodiff backend's kernels.
    let diff = max_abs_diff(trained.inner(), want.clone());
    assert!(diff < 1e-5, "{diff}");
    // Burn's placement, scores dropped before the softmax, attends uniformly instead.
    let mut burns = training;
    for layer in &mut burns.encoder.layers {
        layer.mha.dropout_after_softmax = false;
    }
    let scores_dropped = burns.forward(to_ad(ids), to_ad(mask), None);
    let diff = max_abs_diff(scores_dropped.inner(), want);
    assert!(diff > 1e-2, "{diff}");
}

#[test]
fn try_forward_rejects_bad_ids_masks_and_lengths_and_otherwise_is_forward() {
    let device = Default::default();
    let bert = BertConfig::new(50, 16, 1, 2, 32, 8)
        .with_type_vocab_size(2)
        .init::<B>(&device)
        .unwrap();
    let (ids, mask) = ids();
    let int = |values: Vec<i64>, shape: [usize; 2]| {
        Tensor::<B, 2, Int>::from_data(TensorData::new(values, shape), &device)
    };
    // Bit for bit on the CPU; a GPU backend's autotuning may pick another kernel the second time.
    assert_same_up_to_reduction_order(
        bert.try_forward(ids.clone(), mask.clone(), None).unwrap(),
        bert.forward(ids.clone(), mask.clone(), None),
    );
    let bad: Vec<(&str, Result<_, LoraError>)> = vec![
        (
            "id = vocabulary size",
            bert.try_forward(int(vec![1, 50], [1, 2]), int(vec![1, 1], [1, 2]), None),
        ),
        (
            "negative id",
            bert.try_forward(int(vec![-1, 2], [1, 2]), int(vec![1, 1], [1, 2]), None),
        ),
        (
            "longer than max_position_embeddings",
            bert.try_forward(int(vec![1; 9], [1, 9]), int(vec![1; 9], [1, 9]), None),
        ),
        (
            "mask of another shape",
            bert.try_forward(ids.clone(), int(vec![1; 4], [2, 2]), None),
        ),
        (
            "mask value 2",
            bert.try_forward(
                ids.clone(),
                int(vec![1, 1, 2, 1, 1, 1, 1, 1, 1, 1], [2, 5]),
                None,
            ),
        ),
        (
            "token type outside the token types",
            bert.try_forward(ids.clone(), mask.clone(), Some(int(vec![2; 10], [2, 5]))),
        ),
        (
            "token types of another shape",
            bert.try_forward(ids.clone(), mask.clone(), Some(int(vec![0; 5], [1, 5]))),
        ),
        (
            "empty batch",
            bert.try_forward(int(vec![], [0, 5]), int(vec![], [0, 5]), None),
        ),
    ];
    for (case, result) in bad {
        assert!(
            matches!(result, Err(LoraError::InvalidInput(_))),
            "{case}: {:?}",
            result.map(|t| t.dims())
        );
    }
}

#[test]
fn block_configs_are_checked_instead_of_panicking() {
    let device = Default::default();
    let invalid = |result: Result<(), LoraError>, case: &str| {
        assert!(
            matches!(result, Err(LoraError::InvalidModel(_))),
            "{case}: {result:?}"
        );
    };
    let mha = |config: MultiHeadAttentionConfig| config.init::<B>(&device).map(|_| ());
    invalid(
        mha(MultiHeadAttentionConfig::new(10, 3)),
        "d_model 10, 3 heads",
    );
    invalid(mha(MultiHeadAttentionConfig::new(8, 0)), "no head");
    invalid(mha(MultiHeadAttentionConfig::new(0, 2)), "d_model 0");
    invalid(
        mha(MultiHeadAttentionConfig::new(8, 2).with_dropout(1.5)),
        "attention dropout 1.5",
    );
    let pwff = |config: PositionWiseFeedForwardConfig| config.init::<B>(&device).map(|_| ());
    invalid(pwff(PositionWiseFeedForwardConfig::new(8, 0)), "d_ff 0");
    invalid(
        pwff(PositionWiseFeedForwardConfig::new(8, 16).with_dropout(-0.5)),
        "feed-forward dropout -0.5",
    );
    let encoder = |config: TransformerEncoderConfig| config.init::<B>(&device).map(|_| ());
    invalid(
        encoder(TransformerEncoderConfig::new(10, 16, 4, 2)),
        "d_model 10, 4 heads",
    );
    invalid(
        encoder(TransformerEncoderConfig::new(8, 16, 2, 2).with_dropout(f64::NAN)),
        "NaN dropout",
    );
    assert!(encoder(TransformerEncoderConfig::new(8, 16, 2, 2)).is_ok());
    let config = BertConfig::new(50, 10, 1, 4, 32, 8);
    assert!(matches!(
        config.init::<B>(&device),
        Err(LoraError::InvalidModel(_))
    ));
}

#[test]
fn dropout_probability_is_checked() {
    for prob in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
        assert!(
            matches!(Dropout::new(prob), Err(LoraError::InvalidModel(_))),
            "{prob}"
        );
        let burn = burn::nn::Dropout { prob };
        assert!(Dropout::try_from(burn).is_err(), "{prob} from Burn's");
    }
    for prob in [0.0, 0.5, 1.0] {
        assert_eq!(Dropout::new(prob).unwrap().prob(), prob);
    }
}
