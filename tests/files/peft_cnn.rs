//! Cross-implementation check of LoRA on convolutions against files written by Hugging Face PEFT
//! (`tests/fixtures/peft/cnn_conv` and `cnn_conv_dora`, see their README): a small CNN's PyTorch
//! state dict, the rank-4 (alpha 8) adapter PEFT saved for `conv1`, `conv2` and `head` (plain
//! LoRA, and DoRA with its magnitudes), and the outputs PyTorch computed with the adapter
//! disabled, enabled and merged. Loading both into the same CNN built from
//! `LoraConv2d` / `LoraLinear` must reproduce those outputs, and saving the loaded adapter again
//! must give back PEFT's file.

use std::path::PathBuf;

use crate::common::safetensors_io::{
    assert_same_adapter_tensors, read_config, read_tensor, target_modules,
};
use crate::common::{load_pytorch_base, max_abs_diff};
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::max_pool2d;
use burn::tensor::Tensor;
use burn_lora::{
    load_adapter, save_adapter, LayerKind, LoraConv2d, LoraConv2dConfig, LoraLayer, LoraLinear,
    LoraLinearConfig, LoraModel, PathMap, VisitLoraLayers,
};
use serde_json::Value;

type Inf = crate::common::B;

/// Largest absolute difference allowed between a burn-lora output and PyTorch's.
///
/// The logits are of order 1 (PyTorch saw |y_lora - y_base| up to 0.56, meta.json). Both sides
/// compute in f32 but sum in different orders: convolutions of 9 and 72 terms (Burn's im2col +
/// gemm against PyTorch's kernels), a 784-term head, and the adapters' updates either as
/// separate small convolutions or folded into the kernel. Each logit therefore differs by a few
/// ulps of its partial sums, ~1e-6; PyTorch itself saw |y_merged - y_lora| ≈ 2.4e-7 from
/// merely reassociating. 1e-5 leaves room for that rounding, while a wrong kernel layout
/// (transposed `A`, channels and kernel positions swapped), a wrong scale, stride or padding
/// would move the logits by 1e-2 or more. (The max-pool is exact; ReLU is exact.)
const TOLERANCE: f32 = 1e-5;

/// The adapter name used when loading PEFT's adapter.
const NAME: &str = "peft";

/// PyTorch's `Cnn`: conv1 = Conv2d(1, 8, 3, padding 1), ReLU, conv2 = Conv2d(8, 16, 3, stride 2,
/// padding 1), ReLU, max_pool2d(2), flatten (channel-major), head = Linear(784, 10).
#[derive(Module, Debug)]
struct Cnn<B: Backend> {
    conv1: LoraConv2d<B>,
    conv2: LoraConv2d<B>,
    head: LoraLinear<B>,
}

impl<B: Backend> VisitLoraLayers<B> for Cnn<B> {
    fn visit_lora_layers<'a>(&'a self, layers: &mut Vec<&'a dyn LoraLayer<B>>) {
        self.conv1.visit_lora_layers(layers);
        self.conv2.visit_lora_layers(layers);
        self.head.visit_lora_layers(layers);
    }

    fn visit_lora_layers_mut<'a>(&'a mut self, layers: &mut Vec<&'a mut dyn LoraLayer<B>>) {
        self.conv1.visit_lora_layers_mut(layers);
        self.conv2.visit_lora_layers_mut(layers);
        self.head.visit_lora_layers_mut(layers);
    }
}

impl<B: Backend> LoraModel<B> for Cnn<B> {}

impl<B: Backend> Cnn<B> {
    /// Freshly initialised (the fixture's values are loaded over it).
    fn init(device: &B::Device) -> Self {
        let same = PaddingConfig2d::Explicit(1, 1, 1, 1);
        Self {
            conv1: LoraConv2dConfig::new([1, 8], [3, 3])
                .with_padding(same.clone())
                .init(device)
                .unwrap(),
            conv2: LoraConv2dConfig::new([8, 16], [3, 3])
                .with_stride([2, 2])
                .with_padding(same)
                .init(device)
                .unwrap(),
            head: LoraLinearConfig::new(784, 10).init(device).unwrap(),
        }
    }

    /// Logits `[batch, 10]` of images `[batch, 1, 28, 28]`.
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = relu(self.conv1.forward(x));
        let x = relu(self.conv2.forward(x));
        let x = max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false);
        let [batch, channels, height, width] = x.dims();
        self.head
            .forward(x.reshape([batch, channels * height * width]))
    }
}

/// The fixtures: plain LoRA and DoRA on the same CNN.
const FIXTURES: [&str; 2] = ["cnn_conv", "cnn_conv_dora"];

fn fixture_dir(fixture: &str) -> PathBuf {
    crate::common::existing_peft_fixture(fixture)
}

/// The CNN with PyTorch's base weights and PEFT's adapter loaded under [`NAME`].
fn loaded_model(fixture: &str) -> Cnn<Inf> {
    let dir = fixture_dir(fixture);
    let mut model = Cnn::init(&Default::default());
    load_pytorch_base(
        &mut model,
        &dir.join("base_model.safetensors"),
        &PathMap::identity(),
    )
    .expect("the PyTorch base loads");
    load_adapter(&mut model, NAME, &dir.join("adapter"), &PathMap::identity())
        .expect("PEFT's adapter loads");
    model
}

/// `x`, `y_base`, `y_lora` or `y_merged` from the fixture's `io.safetensors`.
fn io<const D: usize>(fixture: &str, key: &str) -> Tensor<Inf, D> {
    read_tensor(&fixture_dir(fixture).join("io.safetensors"), key)
}

fn assert_close(what: &str, ours: Tensor<Inf, 2>, torch: Tensor<Inf, 2>) -> f32 {
    assert_eq!(ours.dims(), torch.dims(), "{what}: shapes differ");
    let diff = max_abs_diff(ours, torch);
    println!("{what}: max |burn - pytorch| = {diff:e}");
    assert!(
        diff <= TOLERANCE,
        "{what}: max |burn - pytorch| = {diff:e} exceeds {TOLERANCE:e}"
    );
    diff
}

#[test]
fn peft_conv_adapter_loads_with_rank_4_and_scale_2_on_every_layer() {
    for fixture in FIXTURES {
        let model = loaded_model(fixture);
        assert_eq!(model.adapter_names(), vec![NAME]);
        let expected = [
            (LayerKind::Conv2d, [9, 8]),
            (LayerKind::Conv2d, [72, 16]),
            (LayerKind::Linear, [784, 10]),
        ];
        for (layer, (kind, dims)) in model.lora_layers().into_iter().zip(expected) {
            assert_eq!(layer.kind(), kind);
            assert_eq!(layer.adapter_dims(), dims);
            let adapter = layer.adapter(NAME).expect("adapter");
            assert_eq!((adapter.rank(), adapter.scale()), (4, 2.0));
            assert_eq!(adapter.shapes(), ([dims[0], 4], [4, dims[1]]));
            assert_eq!(adapter.is_dora(), fixture.ends_with("dora"), "{fixture}");
        }
    }
}

#[test]
fn disabled_enabled_and_merged_outputs_match_pytorch_within_1e_5() {
    for fixture in FIXTURES {
        outputs_match_pytorch(fixture);
    }
}

fn outputs_match_pytorch(fixture: &str) {
    // Inference folds each conv adapter into its kernel for inputs this size (see
    // `training_backend_runs_the_adapter_convolutions_and_matches_pytorch` for the unfused path).
    let x: Tensor<Inf, 4> = io(fixture, "x");
    let mut model = loaded_model(fixture);
    let what = |what: &str| format!("{fixture}: {what}");

    model.set_enabled(false);
    let base = assert_close(
        &what("adapter disabled vs y_base"),
        model.forward(x.clone()),
        io(fixture, "y_base"),
    );
    model.set_enabled(true);
    let lora = assert_close(
        &what("adapter enabled vs y_lora"),
        model.forward(x.clone()),
        io(fixture, "y_lora"),
    );
    // The adapter must actually matter, or the comparison above proves nothing.
    assert!(max_abs_diff(io::<2>(fixture, "y_lora"), io(fixture, "y_base")) > 0.1);

    let unloaded = model.merge_and_unload().unwrap();
    assert!(unloaded.adapter_names().is_empty());
    let merged = assert_close(
        &what("merge_and_unload vs y_merged"),
        unloaded.forward(x.clone()),
        io(fixture, "y_merged"),
    );
    model.merge().unwrap();
    let in_place = assert_close(
        &what("in-place merge vs y_merged"),
        model.forward(x.clone()),
        io(fixture, "y_merged"),
    );

    println!(
        "{fixture}: max diffs against PyTorch: base {base:e}, lora {lora:e}, merge_and_unload \
         {merged:e}, merge {in_place:e} (tolerance {TOLERANCE:e})"
    );
}

#[test]
fn training_backend_runs_the_adapter_convolutions_and_matches_pytorch() {
    // On an autodiff backend the adapters run as PEFT runs them (two convolutions each), not
    // folded into the kernel: the same outputs within the same tolerance.
    type Train = crate::common::AB;
    for fixture in FIXTURES {
        let dir = fixture_dir(fixture);
        let mut model = Cnn::<Train>::init(&Default::default());
        load_pytorch_base(
            &mut model,
            &dir.join("base_model.safetensors"),
            &PathMap::identity(),
        )
        .unwrap();
        load_adapter(&mut model, NAME, &dir.join("adapter"), &PathMap::identity()).unwrap();
        let x = Tensor::<Train, 4>::from_inner(io(fixture, "x"));
        assert_close(
            &format!("{fixture}: autodiff, enabled vs y_lora"),
            model.forward(x).inner(),
            io(fixture, "y_lora"),
        );
    }
}

#[test]
fn saving_the_loaded_peft_adapter_reproduces_peft_files_bit_for_bit() {
    for fixture in FIXTURES {
        let dir = fixture_dir(fixture).join("adapter");
        let model = loaded_model(fixture);
        let out = tempfile::tempdir().unwrap();
        save_adapter(&model, NAME, out.path(), &PathMap::identity()).unwrap();

        assert_same_adapter_tensors(&dir, out.path());

        let theirs: Value = read_config(&dir);
        let ours: Value = read_config(out.path());
        assert_eq!(ours["r"].as_u64(), Some(4));
        assert_eq!(ours["lora_alpha"].as_f64(), theirs["lora_alpha"].as_f64());
        assert_eq!(ours["use_dora"].as_bool(), theirs["use_dora"].as_bool());
        assert_eq!(target_modules(&ours), target_modules(&theirs));
    }
}
