//! burn-lora's `Dropout`, the one module of `burn_lora::nn` whose output depends on the
//! backend's random generator.

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::common::{assert_bit_identical, backend_rng_guard, randn, AB, B};

/// burn-lora's `Dropout` (in every block of `burn_lora::nn`) against Burn's: same display and record, and
/// in training a mask of zeros and `1 / (1 - p)` with the expected share, reproducible from
/// the backend's seed, and the same mask in the gradient.
#[test]
fn dropout_zeroes_and_scales_reproducibly_in_training_only() {
    let _rng = backend_rng_guard();

    const P: f64 = 0.25;
    const ROWS: usize = 200;
    const COLS: usize = 500;
    let burn_dropout = burn::nn::DropoutConfig::new(P).init();
    let dropout = burn_lora::nn::Dropout::try_from(burn_dropout.clone()).unwrap();
    assert_eq!(dropout.to_string(), burn_dropout.to_string());
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let bytes =
        Recorder::<B>::record(&recorder, Module::<B>::into_record(burn_dropout), ()).unwrap();
    let record = Recorder::<B>::load::<<burn_lora::nn::Dropout as Module<B>>::Record>(
        &recorder,
        bytes,
        &Default::default(),
    )
    .expect("Burn's Dropout record loads into burn-lora's");
    // A constant is not restored from a record, by either module: the probability stays.
    let loaded = Module::<B>::load_record(burn_lora::nn::Dropout::new(0.5).unwrap(), record);
    assert_eq!(loaded.prob(), 0.5);

    let device = Default::default();
    let run = |seed: u64| {
        AB::seed(&device, seed);
        let x = Tensor::<AB, 2>::ones([ROWS, COLS], &device).require_grad();
        let y = dropout.forward(x.clone());
        let grads = y.clone().sum().backward();
        let grad = x.grad(&grads).expect("a gradient for the input");
        (y.into_data(), grad.into_data())
    };
    let (y, grad) = run(5);
    let scale = (1.0 / (1.0 - P)) as f32;
    let values = y.to_vec::<f32>().unwrap();
    assert!(values.iter().all(|&v| v == 0.0 || (v - scale).abs() < 1e-6));
    let dropped = values.iter().filter(|&&v| v == 0.0).count() as f64 / values.len() as f64;
    // Binomial standard deviation sqrt(0.25 · 0.75 / 100000) ≈ 1.4e-3: 5 sigma is 6.8e-3.
    assert!((dropped - P).abs() < 6.8e-3, "dropped share {dropped}");
    // d(sum y)/dx is the mask itself.
    grad.assert_eq(&y, true);
    let (again, _) = run(5);
    again.assert_eq(&y, true);
    let (other, _) = run(6);
    assert_ne!(other, y, "another seed gives another mask");

    // Inference: the input unchanged; p = 1 zeroes everything (Burn's divides by zero).
    let x: Tensor<B, 2> = randn([ROWS, COLS], 3);
    assert_bit_identical(dropout.forward(x.clone()), x);
    let all = burn_lora::nn::Dropout::new(1.0)
        .unwrap()
        .forward(Tensor::<AB, 2>::ones([4, 4], &device));
    all.into_data()
        .assert_eq(&TensorData::zeros::<f32, _>([4, 4]), true);
}
