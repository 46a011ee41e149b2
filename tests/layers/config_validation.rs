//! `LoraConfig` checks and scaling.

use crate::common::B;
use burn_lora::LoraLayer;
use burn_lora::{LoraConfig, LoraError, LoraInit, LoraLinearConfig, LoraMlpConfig};

#[test]
fn scale_is_alpha_over_rank() {
    assert_eq!(LoraConfig::new(4, 8.0).scale(), 2.0);
    assert_eq!(LoraConfig::new(1, 1.0).scale(), 1.0);
}

#[test]
fn rslora_scale_is_alpha_over_sqrt_rank() {
    let config = LoraConfig::new(16, 8.0).with_use_rslora(true);
    assert_eq!(config.scale(), 2.0);
    let config = LoraConfig::new(2, 3.0).with_use_rslora(true);
    assert!((config.scale() - 3.0 / 2f64.sqrt()).abs() < 1e-15);
}

#[test]
fn rank_zero_is_rejected() {
    assert_eq!(LoraConfig::new(0, 1.0).validate(), Err(LoraError::ZeroRank));
}

#[test]
fn rank_above_layer_size_is_rejected() {
    let err = LoraConfig::new(5, 1.0).validate_for(4, 10).unwrap_err();
    assert_eq!(
        err,
        LoraError::RankTooLarge {
            rank: 5,
            d_input: 4,
            d_output: 10,
            max: 4
        }
    );
    assert!(err.to_string().contains("rank 5"), "{err}");
    assert!(LoraConfig::new(4, 1.0).validate_for(4, 10).is_ok());
}

#[test]
fn negative_or_non_finite_alpha_is_rejected() {
    for alpha in [-1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let err = LoraConfig::new(1, alpha).validate().unwrap_err();
        assert!(matches!(err, LoraError::InvalidAlpha(_)), "{alpha}: {err}");
    }
    assert!(LoraConfig::new(1, 0.0).validate().is_ok());
}

#[test]
fn dropout_outside_unit_interval_is_rejected() {
    for p in [-0.1, 1.0, 1.5, f64::NAN] {
        let err = LoraConfig::new(1, 1.0)
            .with_dropout(p)
            .validate()
            .unwrap_err();
        assert!(matches!(err, LoraError::InvalidDropout(_)), "{p}: {err}");
    }
    assert!(LoraConfig::new(1, 1.0).with_dropout(0.0).validate().is_ok());
    assert!(LoraConfig::new(1, 1.0)
        .with_dropout(0.99)
        .validate()
        .is_ok());
}

#[test]
fn bad_gaussian_std_is_rejected() {
    for std in [0.0, -1.0, f64::NAN] {
        let err = LoraConfig::new(1, 1.0)
            .with_init(LoraInit::Gaussian { std })
            .validate()
            .unwrap_err();
        assert!(matches!(err, LoraError::InvalidInitStd(_)), "{std}: {err}");
    }
}

#[test]
fn bad_config_is_an_error_when_attaching_and_changes_nothing() {
    let device = Default::default();
    let mut layer = LoraLinearConfig::new(4, 3).init::<B>(&device).unwrap();
    let err = layer
        .add_adapter("a", &LoraConfig::new(4, 1.0))
        .unwrap_err();
    assert!(
        matches!(err, LoraError::RankTooLarge { max: 3, .. }),
        "{err}"
    );
    assert!(layer.adapter_names().is_empty());
}

#[test]
fn zero_width_models_are_rejected() {
    let device = Default::default();
    assert!(matches!(
        LoraLinearConfig::new(0, 3).init::<B>(&device),
        Err(LoraError::InvalidModel(_))
    ));
    assert!(matches!(
        LoraMlpConfig::new(4, vec![0], 2).init::<B>(&device),
        Err(LoraError::InvalidModel(_))
    ));
}

#[test]
fn config_round_trips_through_json() {
    let config = LoraConfig::new(8, 16.0)
        .with_dropout(0.1)
        .with_use_rslora(true)
        .with_init(LoraInit::Gaussian { std: 0.02 });
    let json = burn::config::config_to_json(&config);
    let back: LoraConfig = burn::config::Config::load_binary(json.as_bytes()).unwrap();
    assert_eq!(back, config);
}
