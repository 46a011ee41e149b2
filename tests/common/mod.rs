//! Helpers shared by the integration tests. The generic ones (seeded RNG, tensor comparisons)
//! live in `burn_lora_support::testing`, shared with the other crates' tests.
#![allow(dead_code, unused_imports)]

pub use burn_lora_support::backend::{Inference as B, Train as AB};
pub use burn_lora_support::fixtures::{large_data, peft_fixture};
pub use burn_lora_support::testing::{
    assert_bit_identical, assert_same_up_to_reduction_order, matmul_tol, max_abs_diff, randn,
    values,
};

use burn::tensor::Tensor;
use burn_lora::{
    LoraAdapter, LoraConfig, LoraLayer, LoraLinear, LoraMlp, LoraMlpConfig, LoraModel,
};

/// A freshly initialised MLP with these widths (input first) and no adapter.
///
/// Burn initialises parameters lazily and `clone` copies the *lazy* state, so clones of an
/// untouched model would each draw their own random weights. Reading every weight first makes
/// clones share one base.
pub fn base_model(widths: &[usize]) -> LoraMlp<B> {
    let last = widths.len() - 1;
    let model = LoraMlpConfig::new(widths[0], widths[1..last].to_vec(), widths[last])
        .init::<B>(&Default::default())
        .unwrap();
    for layer in model.layers() {
        let _ = (layer.weight(), layer.bias());
    }
    model
}

/// Inserts adapter `name` with random non-zero factors (a stand-in for a trained adapter) on the
/// given layers, each with its own config, and makes it the active adapter.
pub fn insert_trained(
    model: &mut LoraMlp<B>,
    name: &str,
    layers: &[(usize, LoraConfig)],
    seed: u64,
) {
    for (index, config) in layers {
        let layer = model.layer_mut(*index).unwrap();
        insert_trained_layer(layer, name, config, seed + 10 * *index as u64);
    }
    model.freeze_base();
    model.set_active_adapter(name).unwrap();
}

/// Inserts adapter `name` with random non-zero factors (seeds `seed`, `seed + 1`) into one layer
/// and makes it the layer's only active adapter.
pub fn insert_trained_layer(layer: &mut LoraLinear<B>, name: &str, config: &LoraConfig, seed: u64) {
    let (d_in, d_out) = (layer.d_input(), layer.d_output());
    let adapter = LoraAdapter::from_factors(
        name,
        config,
        randn([d_in, config.rank], seed),
        randn::<B, 2>([config.rank, d_out], seed + 1).mul_scalar(0.1),
    )
    .unwrap();
    layer.insert_adapter(adapter).unwrap();
}

/// The same config on every layer of `model`.
pub fn on_all(model: &LoraMlp<B>, config: &LoraConfig) -> Vec<(usize, LoraConfig)> {
    (0..model.layers().len())
        .map(|i| (i, config.clone()))
        .collect()
}

/// A deterministic input batch of 3 rows (no RNG, so concurrent tests cannot disturb it).
pub fn probe(d_input: usize) -> Tensor<B, 2> {
    let values: Vec<f32> = (0..3 * d_input).map(|i| (i as f32 * 0.37).sin()).collect();
    Tensor::<B, 1>::from_floats(values.as_slice(), &Default::default()).reshape([3, d_input])
}

/// The folder of a PEFT fixture shipped in the repository (`tests/fixtures/peft/<name>`); fails
/// loudly when it is missing.
pub fn existing_peft_fixture(name: &str) -> std::path::PathBuf {
    let dir = peft_fixture(name);
    assert!(
        dir.is_dir(),
        "PEFT fixture folder {} is missing: these tests need the files PEFT wrote \
         (see tests/fixtures/peft/README.md)",
        dir.display()
    );
    dir
}

pub mod assert_error;
pub mod safetensors_io;
pub mod snapshot;

/// Loads a PyTorch state dict strictly (every key used, every parameter found), as the base
/// of a model is loaded before its adapter.
pub fn load_pytorch_base<Bk: burn::tensor::backend::Backend, M: burn::module::Module<Bk>>(
    model: &mut M,
    file: &std::path::Path,
    paths: &burn_lora::PathMap,
) -> burn_lora::Result<burn_lora::LoadReport> {
    burn_lora::load_pytorch_checkpoint(model, file, paths, &burn_lora::LoadOptions::new())
}

/// Holds the test binary's one lock on the backend's random generator. Flex and NdArray keep a
/// single global generator, so a test that seeds it (`B::seed`) and checks what it draws next
/// would see another thread's draws (a module initialised by a test running beside it) in
/// between: every test of a binary that holds such a test takes this lock first. Only the
/// `training` binary does (see its `main.rs`).
pub fn backend_rng_guard() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
