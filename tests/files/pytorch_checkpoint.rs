//! `load_pytorch_checkpoint` (mirrors `src/io/pytorch_checkpoint.rs`): a PyTorch / Hugging Face
//! state dict loads into any Burn module through a `PathMap`, transposing linear weights and
//! renaming norm parameters; every key is accounted for; every bad file is an error naming the
//! key, and the model is left exactly as it was.

use std::path::{Path, PathBuf};

use crate::common::assert_error::{assert_invalid_file, assert_shape_mismatch};
use crate::common::safetensors_io::{raw, raw_mut, read_raw, write_raw, Raw};
use crate::common::snapshot::ParamSnapshot;
use crate::common::{peft_fixture, values, AB, B};
use burn::module::{Module, Param};
use burn::nn::attention::{MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_lora::{
    load_pytorch_checkpoint, LoadOptions, LoadReport, LoraConfig, LoraError, LoraLayer, LoraLinear,
    LoraLinearConfig, PathMap,
};
use safetensors::Dtype;

const VOCAB: usize = 7;
const DIM: usize = 4;
const HIDDEN: usize = 6;
const OUT: usize = 3;
const BLOCKS: usize = 2;

#[derive(Module, Debug)]
struct Block<B: Backend> {
    query: LoraLinear<B>,
    ffn: Linear<B>,
    norm: LayerNorm<B>,
}

/// A model with a LoRA layer, Burn's `Linear`, `LayerNorm`, `Embedding` and a `Vec` of blocks.
#[derive(Module, Debug)]
struct Net<B: Backend> {
    embedding: Embedding<B>,
    blocks: Vec<Block<B>>,
    head: Linear<B>,
    norm: LayerNorm<B>,
}

/// A fresh [`Net`] whose LoRA layers carry a trained-looking adapter (base frozen).
fn net<Bk: Backend>() -> Net<Bk> {
    let device = Default::default();
    let blocks = (0..BLOCKS)
        .map(|_| {
            let mut query = LoraLinearConfig::new(DIM, HIDDEN).init(&device).unwrap();
            query
                .add_adapter("default", &LoraConfig::new(2, 4.0))
                .unwrap();
            Block {
                query,
                ffn: LinearConfig::new(HIDDEN, DIM).init(&device),
                norm: LayerNormConfig::new(DIM).init(&device),
            }
        })
        .collect();
    Net {
        embedding: EmbeddingConfig::new(VOCAB, DIM).init(&device),
        blocks,
        head: LinearConfig::new(DIM, OUT).init(&device),
        norm: LayerNormConfig::new(OUT).init(&device),
    }
}

/// Burn paths of [`Net`] to the Hugging Face-style names of [`state_dict`].
fn net_paths() -> PathMap {
    PathMap::identity()
        .rename("embedding", "embeddings.word_embeddings")
        .rename("head", "classifier")
        .rename("norm", "final_norm")
        .regex(
            r"^blocks\.(\d+)\.query$",
            "encoder.layer.$1.attention.self.query",
        )
        .unwrap()
        .regex(
            r"^blocks\.(\d+)\.ffn$",
            "encoder.layer.$1.intermediate.dense",
        )
        .unwrap()
        .regex(
            r"^blocks\.(\d+)\.norm$",
            "encoder.layer.$1.output.LayerNorm",
        )
        .unwrap()
}

/// Distinct values for tensor number `seed`, exact in f16 and bf16 (multiples of 1/8 in
/// [-1, 1)).
fn pattern(count: usize, seed: usize) -> Vec<f32> {
    (0..count)
        .map(|i| ((i * 7 + seed * 5) % 16) as f32 / 8.0 - 1.0)
        .collect()
}

/// The keys and PyTorch shapes of [`Net`]'s state dict, in the model's parameter order.
fn state_dict_shapes() -> Vec<(String, Vec<usize>)> {
    let mut shapes = vec![("embeddings.word_embeddings.weight".into(), vec![VOCAB, DIM])];
    for i in 0..BLOCKS {
        let query = format!("encoder.layer.{i}.attention.self.query");
        let dense = format!("encoder.layer.{i}.intermediate.dense");
        let norm = format!("encoder.layer.{i}.output.LayerNorm");
        shapes.extend([
            (format!("{query}.weight"), vec![HIDDEN, DIM]),
            (format!("{query}.bias"), vec![HIDDEN]),
            (format!("{dense}.weight"), vec![DIM, HIDDEN]),
            (format!("{dense}.bias"), vec![DIM]),
            (format!("{norm}.weight"), vec![DIM]),
            (format!("{norm}.bias"), vec![DIM]),
        ]);
    }
    shapes.extend([
        ("classifier.weight".into(), vec![OUT, DIM]),
        ("classifier.bias".into(), vec![OUT]),
        ("final_norm.weight".into(), vec![OUT]),
        ("final_norm.bias".into(), vec![OUT]),
    ]);
    shapes
}

/// [`Net`]'s state dict as PyTorch would save it: Hugging Face-style names, `[out, in]` linear
/// weights, norms as `weight` / `bias`; every tensor F32.
fn state_dict() -> Vec<Raw> {
    state_dict_shapes()
        .into_iter()
        .enumerate()
        .map(|(seed, (key, shape))| {
            let count = shape.iter().product();
            Raw::f32(&key, shape, &pattern(count, seed))
        })
        .collect()
}

/// `tensor` stored as `dtype` (F16, BF16 or F64) with the same values.
fn stored_as(tensor: &Raw, dtype: Dtype) -> Raw {
    let values = tensor.f32_values();
    let data = match dtype {
        Dtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::F64 => values
            .iter()
            .flat_map(|v| f64::from(*v).to_le_bytes())
            .collect(),
        other => panic!("no conversion to {other:?}"),
    };
    Raw {
        dtype,
        data,
        ..tensor.clone()
    }
}

/// The row-major transpose of a `[rows, cols]` matrix.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| values[r * cols + c]))
        .collect()
}

/// Writes `tensors` to a fresh file; the folder lives as long as the returned guard.
fn write(tensors: &[Raw]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_raw(&path, tensors);
    (dir, path)
}

fn load<Bk: Backend, M: Module<Bk>>(
    model: &mut M,
    path: &Path,
    options: &LoadOptions,
) -> Result<LoadReport, LoraError> {
    load_pytorch_checkpoint(model, path, &net_paths(), options)
}

/// Asserts the Burn tensor holds the file tensor `key`'s values, transposed when it is `[out, in]`.
fn assert_holds<const D: usize>(
    tensor: Tensor<B, D>,
    tensors: &[Raw],
    key: &str,
    transposed: bool,
) {
    let file = raw(tensors, key);
    let mut expected = file.f32_values();
    if transposed {
        expected = transpose(&expected, file.shape[0], file.shape[1]);
    }
    assert_eq!(values(tensor), expected, "{key}");
}

#[test]
fn checkpoint_loads_every_key_through_a_regex_path_map_transposing_linears_and_renaming_norms() {
    let tensors = state_dict();
    let (_dir, path) = write(&tensors);
    let mut model = net::<B>();
    let before = ParamSnapshot::of(&model);
    let report = load(&mut model, &path, &LoadOptions::new()).unwrap();

    let keys: Vec<String> = state_dict_shapes().into_iter().map(|(k, _)| k).collect();
    assert_eq!(report.loaded, keys, "every key, in the model's order");
    assert!(
        report.missing.is_empty() && report.unused.is_empty(),
        "{report:?}"
    );

    assert_holds(
        model.embedding.weight.val(),
        &tensors,
        "embeddings.word_embeddings.weight",
        false,
    );
    for (i, block) in model.blocks.iter().enumerate() {
        let layer = format!("encoder.layer.{i}");
        assert_holds(
            block.query.weight(),
            &tensors,
            &format!("{layer}.attention.self.query.weight"),
            true,
        );
        assert_holds(
            block.query.bias().unwrap(),
            &tensors,
            &format!("{layer}.attention.self.query.bias"),
            false,
        );
        assert_holds(
            block.ffn.weight.val(),
            &tensors,
            &format!("{layer}.intermediate.dense.weight"),
            true,
        );
        assert_holds(
            block.ffn.bias.as_ref().unwrap().val(),
            &tensors,
            &format!("{layer}.intermediate.dense.bias"),
            false,
        );
        assert_holds(
            block.norm.gamma.val(),
            &tensors,
            &format!("{layer}.output.LayerNorm.weight"),
            false,
        );
        assert_holds(
            block.norm.beta.as_ref().unwrap().val(),
            &tensors,
            &format!("{layer}.output.LayerNorm.bias"),
            false,
        );
    }
    assert_holds(model.head.weight.val(), &tensors, "classifier.weight", true);
    assert_holds(
        model.head.bias.as_ref().unwrap().val(),
        &tensors,
        "classifier.bias",
        false,
    );
    assert_holds(model.norm.gamma.val(), &tensors, "final_norm.weight", false);
    assert_holds(
        model.norm.beta.as_ref().unwrap().val(),
        &tensors,
        "final_norm.bias",
        false,
    );

    // The adapters are not part of a base checkpoint: untouched, still active.
    let after = ParamSnapshot::of(&model);
    for (a, b) in before.params.iter().zip(&after.params) {
        if a.path.contains(".adapters.") {
            assert_eq!(a, b, "{} changed", a.path);
        }
    }
    assert!(after.params.iter().any(|p| p.path.contains(".adapters.")));
    for block in &model.blocks {
        assert_eq!(block.query.active_adapters(), vec!["default"]);
    }
}

#[test]
fn checkpoint_reads_f16_bf16_and_f64_tensors() {
    let mut tensors = state_dict();
    for (key, dtype) in [
        ("embeddings.word_embeddings.weight", Dtype::BF16),
        ("encoder.layer.0.attention.self.query.weight", Dtype::F16),
        ("classifier.bias", Dtype::F64),
    ] {
        let t = raw_mut(&mut tensors, key);
        *t = stored_as(t, dtype);
    }
    let (_dir, path) = write(&tensors);
    let mut model = net::<B>();
    load(&mut model, &path, &LoadOptions::new()).unwrap();
    let f32_dict = state_dict();
    assert_holds(
        model.embedding.weight.val(),
        &f32_dict,
        "embeddings.word_embeddings.weight",
        false,
    );
    assert_holds(
        model.blocks[0].query.weight(),
        &f32_dict,
        "encoder.layer.0.attention.self.query.weight",
        true,
    );
    assert_holds(
        model.head.bias.as_ref().unwrap().val(),
        &f32_dict,
        "classifier.bias",
        false,
    );
}

#[test]
fn checkpoint_keeps_each_parameters_id_and_gradient_setting() {
    let (_dir, path) = write(&state_dict());
    let mut model = net::<AB>();
    let before = ParamSnapshot::of(&model);
    load(&mut model, &path, &LoadOptions::new()).unwrap();
    let after = ParamSnapshot::of(&model);
    assert_eq!(before.params.len(), after.params.len());
    for (a, b) in before.params.iter().zip(&after.params) {
        assert_eq!(
            (&a.path, a.id, a.require_grad),
            (&b.path, b.id, b.require_grad)
        );
    }
    // Both settings are present: the LoRA base is frozen, the rest (adapters included) trains.
    assert!(!after.get("blocks.0.query.weight").require_grad);
    assert!(after.get("blocks.0.query.adapters.0.lora_a").require_grad);
    assert!(after.get("blocks.1.ffn.weight").require_grad);
    assert!(
        after.get("head.weight").bits != before.get("head.weight").bits,
        "loaded"
    );
}

/// Writes the state dict edited by `edit`, loads it into a fresh [`Net`] with `options`, expects
/// an error and checks that no parameter changed.
fn load_fails(edit: impl FnOnce(&mut Vec<Raw>), options: &LoadOptions) -> LoraError {
    let mut tensors = state_dict();
    edit(&mut tensors);
    let (_dir, path) = write(&tensors);
    let mut model = net::<B>();
    let before = ParamSnapshot::of(&model);
    let err = load(&mut model, &path, options).unwrap_err();
    before.assert_same(&ParamSnapshot::of(&model), &format!("failed with: {err}"));
    err
}

/// An I64 buffer as Hugging Face saves it, with no Burn parameter for it.
fn position_ids() -> Raw {
    Raw {
        key: "embeddings.position_ids".into(),
        dtype: Dtype::I64,
        shape: vec![1, 5],
        data: (0..5i64).flat_map(|v| v.to_le_bytes()).collect(),
    }
}

#[test]
fn checkpoint_missing_key_is_an_error_naming_it_unless_allowed() {
    // The last parameter in the model's order: every other one would have loaded first.
    let missing = "final_norm.bias";
    let err = load_fails(|t| t.retain(|t| t.key != missing), &LoadOptions::new());
    assert!(
        matches!(&err, LoraError::MissingKey { path, key } if key == missing && path.ends_with("model.safetensors")),
        "{err:?}"
    );

    let mut tensors = state_dict();
    tensors.retain(|t| t.key != missing);
    let (_dir, path) = write(&tensors);
    for options in [
        LoadOptions::new().with_allow_missing(true),
        LoadOptions::new()
            .with_missing_pattern(r"^final_norm\.")
            .unwrap(),
    ] {
        let mut model = net::<B>();
        let before = ParamSnapshot::of(&model);
        let report = load(&mut model, &path, &options).unwrap();
        assert_eq!(report.missing, vec![missing]);
        assert_eq!(report.loaded.len(), tensors.len());
        assert!(report.unused.is_empty());
        let after = ParamSnapshot::of(&model);
        assert_eq!(
            after.get("norm.beta"),
            before.get("norm.beta"),
            "kept its value"
        );
        assert_holds(model.norm.gamma.val(), &tensors, "final_norm.weight", false);
    }
}

#[test]
fn checkpoint_unused_key_is_an_error_naming_it_unless_allowed_or_matched_by_a_pattern() {
    let err = load_fails(|t| t.push(position_ids()), &LoadOptions::new());
    assert!(
        matches!(&err, LoraError::UnexpectedKey { key, .. } if key == "embeddings.position_ids"),
        "an unused int buffer is unused, not a dtype error: {err:?}"
    );
    let err = load_fails(
        |t| t.push(Raw::f32("pooler.dense.bias", vec![2], &[0.5, 0.5])),
        &LoadOptions::new()
            .with_unused_pattern("position_ids")
            .unwrap(),
    );
    assert!(
        matches!(&err, LoraError::UnexpectedKey { key, .. } if key == "pooler.dense.bias"),
        "the pattern allows only what it matches: {err:?}"
    );

    let mut tensors = state_dict();
    tensors.push(position_ids());
    let (_dir, path) = write(&tensors);
    for options in [
        LoadOptions::new().with_allow_unused(true),
        LoadOptions::new()
            .with_unused_pattern(r"\.position_ids$")
            .unwrap(),
    ] {
        let mut model = net::<B>();
        let report = load(&mut model, &path, &options).unwrap();
        assert_eq!(report.unused, vec!["embeddings.position_ids"]);
        assert_eq!(report.loaded.len(), tensors.len() - 1);
        assert!(report.missing.is_empty());
    }
}

#[test]
fn checkpoint_invalid_key_pattern_is_invalid_pattern() {
    for err in [
        LoadOptions::new()
            .with_unused_pattern("(position")
            .unwrap_err(),
        LoadOptions::new().with_missing_pattern("[a-").unwrap_err(),
    ] {
        assert!(matches!(err, LoraError::InvalidPattern { .. }), "{err:?}");
    }
}

#[test]
fn checkpoint_wrong_shape_is_shape_mismatch_naming_the_key_in_pytorchs_layout() {
    // Burn's orientation [in, out] instead of PyTorch's [out, in].
    let err = load_fails(
        |t| raw_mut(t, "classifier.weight").shape = vec![DIM, OUT],
        &LoadOptions::new(),
    );
    assert_shape_mismatch(&err, "classifier.weight", &[OUT, DIM], &[DIM, OUT]);
    let err = load_fails(
        |t| {
            let t = raw_mut(t, "final_norm.weight");
            *t = Raw::f32(&t.key, vec![OUT + 1], &[1.0; OUT + 1]);
        },
        &LoadOptions::new(),
    );
    assert_shape_mismatch(&err, "final_norm.weight", &[OUT], &[OUT + 1]);
}

#[test]
fn checkpoint_non_float_or_non_finite_used_tensor_is_an_error_naming_it() {
    let err = load_fails(
        |t| {
            let t = raw_mut(t, "final_norm.bias");
            t.dtype = Dtype::I32;
        },
        &LoadOptions::new(),
    );
    assert!(
        matches!(&err, LoraError::UnsupportedDtype { key, dtype, .. } if key == "final_norm.bias" && dtype == "I32"),
        "{err:?}"
    );
    for bad in [f32::NAN, f32::INFINITY] {
        let err = load_fails(
            |t| raw_mut(t, "final_norm.weight").data[4..8].copy_from_slice(&bad.to_le_bytes()),
            &LoadOptions::new(),
        );
        assert!(
            matches!(&err, LoraError::NonFinite(what) if what.contains("final_norm.weight") && what.contains("model.safetensors")),
            "{err:?}"
        );
    }
}

#[test]
fn checkpoint_truncated_garbage_or_absent_file_is_an_error_and_changes_nothing() {
    let (dir, path) = write(&state_dict());
    let bytes = std::fs::read(&path).unwrap();
    let garbage: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    for (what, content) in [
        ("truncated", &bytes[..bytes.len() - 3]),
        ("cut in the header", &bytes[..20]),
        ("garbage", garbage.as_slice()),
    ] {
        let file = dir.path().join(format!("{what}.safetensors"));
        std::fs::write(&file, content).unwrap();
        let mut model = net::<B>();
        let before = ParamSnapshot::of(&model);
        let err = load(&mut model, &file, &LoadOptions::new()).unwrap_err();
        assert_invalid_file(&err, &format!("{what}.safetensors"), "safetensors", what);
        before.assert_same(&ParamSnapshot::of(&model), what);
    }
    let mut model = net::<B>();
    let err = load(
        &mut model,
        &dir.path().join("absent.safetensors"),
        &LoadOptions::new(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, LoraError::Io { path, .. } if path.ends_with("absent.safetensors")),
        "{err:?}"
    );
}

#[test]
fn checkpoint_into_a_merged_lora_layer_is_refused_and_changes_nothing() {
    let (_dir, path) = write(&state_dict());
    let mut model = net::<B>();
    model.blocks[1].query.merge().unwrap();
    let before = ParamSnapshot::of(&model);
    let err = load(&mut model, &path, &LoadOptions::new()).unwrap_err();
    assert!(
        matches!(&err, LoraError::Unsupported(what) if what.contains("\"blocks.1.query\"") && what.contains("unmerge")),
        "{err:?}"
    );
    before.assert_same(&ParamSnapshot::of(&model), "merged");
    model.blocks[1].query.unmerge().unwrap();
    load(&mut model, &path, &LoadOptions::new()).unwrap();
}

#[derive(Module, Debug)]
struct ConvNet<B: Backend> {
    conv: Conv2d<B>,
    bn: BatchNorm<B>,
    fc: Linear<B>,
}

fn conv_net() -> ConvNet<B> {
    let device = Default::default();
    ConvNet {
        conv: Conv2dConfig::new([2, 4], [3, 3]).init(&device),
        bn: BatchNormConfig::new(4).init(&device),
        fc: LinearConfig::new(4, 3).init(&device),
    }
}

/// A PyTorch state dict of [`ConvNet`], `num_batches_tracked` (I64, a scalar) included.
fn conv_state_dict() -> Vec<Raw> {
    let mut tensors: Vec<Raw> = [
        ("conv.weight", vec![4, 2, 3, 3]),
        ("conv.bias", vec![4]),
        ("bn.weight", vec![4]),
        ("bn.bias", vec![4]),
        ("bn.running_mean", vec![4]),
        ("bn.running_var", vec![4]),
        ("fc.weight", vec![3, 4]),
        ("fc.bias", vec![3]),
    ]
    .into_iter()
    .enumerate()
    .map(|(seed, (key, shape))| {
        let count = shape.iter().product();
        Raw::f32(key, shape, &pattern(count, seed + 1))
    })
    .collect();
    tensors.push(Raw {
        key: "bn.num_batches_tracked".into(),
        dtype: Dtype::I64,
        shape: vec![],
        data: 12i64.to_le_bytes().to_vec(),
    });
    tensors
}

#[test]
fn checkpoint_loads_conv2d_as_is_and_batch_norm_with_running_stats() {
    let tensors = conv_state_dict();
    let (_dir, path) = write(&tensors);
    let mut model = conv_net();
    let report =
        load_pytorch_checkpoint(&mut model, &path, &PathMap::identity(), &LoadOptions::new())
            .unwrap();
    assert_eq!(
        report.unused,
        vec!["bn.num_batches_tracked"],
        "allowed: Burn has no counterpart"
    );
    assert_eq!(report.loaded.len(), 8);
    assert_holds(model.conv.weight.val(), &tensors, "conv.weight", false);
    assert_holds(model.bn.gamma.val(), &tensors, "bn.weight", false);
    assert_holds(model.bn.beta.val(), &tensors, "bn.bias", false);
    assert_holds(
        model.bn.running_mean.value(),
        &tensors,
        "bn.running_mean",
        false,
    );
    assert_holds(
        model.bn.running_var.value(),
        &tensors,
        "bn.running_var",
        false,
    );
    assert_holds(model.fc.weight.val(), &tensors, "fc.weight", true);
}

#[test]
fn checkpoint_error_after_batch_norm_leaves_its_running_stats_as_they_were() {
    // Running stats live behind a lock that clones of the module share (a write into a clone
    // shows in the original): nothing may be written before every check passed, the last one
    // being the unused keys.
    type Edit = fn(&mut Vec<Raw>);
    let cases: [(&str, Edit); 2] = [
        ("shape mismatch", |t| {
            raw_mut(t, "fc.weight").shape = vec![4, 3]
        }),
        ("unused key", |t| {
            t.push(Raw::f32("fc2.bias", vec![1], &[0.5]))
        }),
    ];
    for (what, edit) in cases {
        let mut tensors = conv_state_dict();
        edit(&mut tensors);
        let (_dir, path) = write(&tensors);
        let mut model = conv_net();
        let before = ParamSnapshot::of(&model);
        let err =
            load_pytorch_checkpoint(&mut model, &path, &PathMap::identity(), &LoadOptions::new())
                .unwrap_err();
        before.assert_same(&ParamSnapshot::of(&model), what);
        match what {
            "shape mismatch" => assert_shape_mismatch(&err, "fc.weight", &[3, 4], &[4, 3]),
            _ => assert!(
                matches!(&err, LoraError::UnexpectedKey { key, .. } if key == "fc2.bias"),
                "{err:?}"
            ),
        }
    }
}

/// The tiny BERT of `tests/fixtures/peft/bert_tiny_qv` in Burn modules (no forward needed here).
#[derive(Module, Debug)]
struct BertEmbeddings<B: Backend> {
    word_embeddings: Embedding<B>,
    position_embeddings: Embedding<B>,
    token_type_embeddings: Embedding<B>,
    layer_norm: LayerNorm<B>,
}

#[derive(Module, Debug)]
struct BertLayer<B: Backend> {
    mha: MultiHeadAttention<B>,
    attention_norm: LayerNorm<B>,
    intermediate: LoraLinear<B>,
    output: Linear<B>,
    output_norm: LayerNorm<B>,
}

#[derive(Module, Debug)]
struct BertEncoder<B: Backend> {
    layers: Vec<BertLayer<B>>,
}

#[derive(Module, Debug)]
struct Bert<B: Backend> {
    embeddings: BertEmbeddings<B>,
    encoder: BertEncoder<B>,
}

fn tiny_bert() -> Bert<B> {
    let device = Default::default();
    let (hidden, ffn) = (32, 64);
    let layers = (0..2)
        .map(|_| {
            let mut intermediate = LoraLinearConfig::new(hidden, ffn).init(&device).unwrap();
            intermediate
                .add_adapter("default", &LoraConfig::new(4, 8.0))
                .unwrap();
            BertLayer {
                mha: MultiHeadAttentionConfig::new(hidden, 4).init(&device),
                attention_norm: LayerNormConfig::new(hidden).init(&device),
                intermediate,
                output: LinearConfig::new(ffn, hidden).init(&device),
                output_norm: LayerNormConfig::new(hidden).init(&device),
            }
        })
        .collect();
    Bert {
        embeddings: BertEmbeddings {
            word_embeddings: EmbeddingConfig::new(120, hidden).init(&device),
            position_embeddings: EmbeddingConfig::new(64, hidden).init(&device),
            token_type_embeddings: EmbeddingConfig::new(2, hidden).init(&device),
            layer_norm: LayerNormConfig::new(hidden).init(&device),
        },
        encoder: BertEncoder { layers },
    }
}

/// Hugging Face's BERT names for [`Bert`].
fn bert_paths() -> PathMap {
    let layer = |burn: &str, torch: &str| {
        (
            format!(r"^encoder\.layers\.(\d+)\.{burn}$"),
            format!("encoder.layer.$1.{torch}"),
        )
    };
    [
        (
            r"^embeddings\.layer_norm$".to_string(),
            "embeddings.LayerNorm".to_string(),
        ),
        layer(r"mha\.(query|key|value)", "attention.self.$2"),
        layer(r"mha\.output", "attention.output.dense"),
        layer("attention_norm", "attention.output.LayerNorm"),
        layer("intermediate", "intermediate.dense"),
        layer("output", "output.dense"),
        layer("output_norm", "output.LayerNorm"),
    ]
    .into_iter()
    .fold(PathMap::identity(), |map, (pattern, replacement)| {
        map.regex(&pattern, replacement).unwrap()
    })
}

#[test]
fn bert_fixture_state_dict_has_only_float_keys_and_loads_whole_into_a_burn_bert() {
    let path = peft_fixture("bert_tiny_qv").join("base_model.safetensors");
    let tensors = read_raw(&path);
    let keys: Vec<&str> = tensors.iter().map(|t| t.key.as_str()).collect();
    assert_eq!(keys.len(), 37, "{keys:?}");
    for tensor in &tensors {
        assert!(
            matches!(
                tensor.dtype,
                Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64
            ),
            "{}: {:?}",
            tensor.key,
            tensor.dtype
        );
    }

    let mut model = tiny_bert();
    let report =
        load_pytorch_checkpoint(&mut model, &path, &bert_paths(), &LoadOptions::new()).unwrap();
    let mut loaded = report.loaded.clone();
    loaded.sort();
    assert_eq!(loaded, keys, "every key parses and loads");
    assert!(report.missing.is_empty() && report.unused.is_empty());

    let layer = &model.encoder.layers[1];
    assert_holds(
        layer.mha.query.weight.val(),
        &tensors,
        "encoder.layer.1.attention.self.query.weight",
        true,
    );
    assert_holds(
        layer.mha.output.weight.val(),
        &tensors,
        "encoder.layer.1.attention.output.dense.weight",
        true,
    );
    assert_holds(
        layer.intermediate.weight(),
        &tensors,
        "encoder.layer.1.intermediate.dense.weight",
        true,
    );
    assert_holds(
        layer.output_norm.gamma.val(),
        &tensors,
        "encoder.layer.1.output.LayerNorm.weight",
        false,
    );
    assert_holds(
        model.embeddings.position_embeddings.weight.val(),
        &tensors,
        "embeddings.position_embeddings.weight",
        false,
    );
    assert_holds(
        model.embeddings.layer_norm.beta.as_ref().unwrap().val(),
        &tensors,
        "embeddings.LayerNorm.bias",
        false,
    );
}

// ---------------------------------------------------------------------------------------------
// 2-D weights of modules of the user's own: their layout is stated, never guessed.
// ---------------------------------------------------------------------------------------------

/// A projection of the user's own: a square `weight`, so no shape check can tell its layout.
#[derive(Module, Debug)]
struct MyProj<B: Backend> {
    weight: Param<Tensor<B, 2>>,
}

/// The user's own struct that happens to be named like Burn's `Linear`, holding PyTorch's
/// `[out, in]` layout and its bias.
mod own {
    use burn::module::{Module, Param};
    use burn::tensor::backend::Backend;
    use burn::tensor::Tensor;

    #[derive(Module, Debug)]
    pub struct Linear<B: Backend> {
        pub weight: Param<Tensor<B, 2>>,
        pub bias: Param<Tensor<B, 1>>,
    }
}

#[derive(Module, Debug)]
struct CustomNet<B: Backend> {
    proj: MyProj<B>,
    named_linear: own::Linear<B>,
    head: Linear<B>,
}

fn custom_net() -> CustomNet<B> {
    let device = Default::default();
    let zeros = |shape: [usize; 2]| Param::from_tensor(Tensor::zeros(shape, &device));
    CustomNet {
        proj: MyProj {
            weight: zeros([DIM, DIM]),
        },
        named_linear: own::Linear {
            weight: zeros([OUT, DIM]),
            bias: Param::from_tensor(Tensor::zeros([OUT], &device)),
        },
        head: LinearConfig::new(DIM, OUT).init(&device),
    }
}

/// [`CustomNet`]'s file: every tensor in the Burn model's own shape, except `head` (PyTorch's).
fn custom_state_dict() -> Vec<Raw> {
    [
        ("proj.weight", vec![DIM, DIM]),
        ("named_linear.weight", vec![OUT, DIM]),
        ("named_linear.bias", vec![OUT]),
        ("head.weight", vec![OUT, DIM]),
        ("head.bias", vec![OUT]),
    ]
    .into_iter()
    .enumerate()
    .map(|(seed, (key, shape))| {
        let count = shape.iter().product();
        Raw::f32(key, shape, &pattern(count, seed + 3))
    })
    .collect()
}

/// Loads [`custom_state_dict`] into a fresh [`CustomNet`] with `options`.
fn load_custom(options: &LoadOptions) -> (CustomNet<B>, Result<LoadReport, LoraError>) {
    let (_dir, path) = write(&custom_state_dict());
    let mut model = custom_net();
    let before = ParamSnapshot::of(&model);
    let result = load_pytorch_checkpoint(&mut model, &path, &PathMap::identity(), options);
    if let Err(err) = &result {
        before.assert_same(&ParamSnapshot::of(&model), &format!("failed with: {err}"));
    }
    (model, result)
}

/// Asserts `result` failed with [`LoraError::UnknownLayout`] for `key`, its reason containing
/// `reason_contains`.
fn assert_unknown_layout(result: Result<LoadReport, LoraError>, key: &str, reason_contains: &str) {
    match result {
        Err(LoraError::UnknownLayout {
            key: found, reason, ..
        }) => {
            assert_eq!(found, key, "{reason}");
            assert!(reason.contains(reason_contains), "{reason}");
        }
        other => panic!("expected UnknownLayout for {key}, got {other:?}"),
    }
}

/// The layout of `named_linear.weight` (it is PyTorch's already, so "untransposed").
fn named_linear_as_is() -> LoadOptions {
    LoadOptions::new()
        .with_untransposed_pattern(r"^named_linear\.weight$")
        .unwrap()
}

#[test]
fn square_weight_of_a_custom_module_is_an_error_until_its_layout_is_stated() {
    let (_, result) = load_custom(&named_linear_as_is());
    assert_unknown_layout(result, "proj.weight", "MyProj");

    let tensors = custom_state_dict();
    let transposed = named_linear_as_is()
        .with_transposed_pattern(r"^proj\.weight$")
        .unwrap();
    let (model, result) = load_custom(&transposed);
    result.unwrap();
    assert_holds(model.proj.weight.val(), &tensors, "proj.weight", true);
    assert_holds(model.head.weight.val(), &tensors, "head.weight", true);

    let as_is = named_linear_as_is()
        .with_untransposed_pattern(r"^proj\.weight$")
        .unwrap();
    let (model, result) = load_custom(&as_is);
    result.unwrap();
    assert_holds(model.proj.weight.val(), &tensors, "proj.weight", false);
    assert_holds(
        model.named_linear.weight.val(),
        &tensors,
        "named_linear.weight",
        false,
    );
}

#[test]
fn a_custom_module_named_linear_is_not_taken_for_burns() {
    // Its bias is [out] of a weight stored [out, in]: not Burn's Linear, whatever the name.
    let options = LoadOptions::new()
        .with_untransposed_pattern(r"^proj\.weight$")
        .unwrap();
    let (_, result) = load_custom(&options);
    assert_unknown_layout(result, "named_linear.weight", "Linear");
}

#[test]
fn contradictory_or_impossible_layout_statements_are_errors() {
    let both = named_linear_as_is()
        .with_transposed_pattern(r"^proj\.")
        .unwrap()
        .with_untransposed_pattern(r"proj\.weight$")
        .unwrap();
    assert_unknown_layout(load_custom(&both).1, "proj.weight", "both");

    let one_d = named_linear_as_is()
        .with_untransposed_pattern(r"^proj\.weight$")
        .unwrap()
        .with_transposed_pattern(r"^head\.bias$")
        .unwrap();
    assert_unknown_layout(load_custom(&one_d).1, "head.bias", "1-D");

    assert!(matches!(
        LoadOptions::new().with_transposed_pattern("[a-"),
        Err(LoraError::InvalidPattern { .. })
    ));
}

/// A `Linear` whose parameters are lazy and whose initialisation panics: a load that builds
/// them from the file never runs it (a load that initialised first would throw the values away).
fn lazy_linear_that_must_not_initialise<Bk: Backend>(weight_grad: bool) -> Linear<Bk> {
    let device: Bk::Device = Default::default();
    let weight = Param::uninitialized(
        burn::module::ParamId::new(),
        |_: &Bk::Device, _| -> Tensor<Bk, 2> { panic!("the weight was initialised at random") },
        device.clone(),
        weight_grad,
        [DIM, OUT].into(),
    );
    let bias = Param::uninitialized(
        burn::module::ParamId::new(),
        |_: &Bk::Device, _| -> Tensor<Bk, 1> { panic!("the bias was initialised at random") },
        device,
        true,
        [OUT].into(),
    );
    Linear {
        weight,
        bias: Some(bias),
    }
}

#[derive(Module, Debug)]
struct LazyNet<B: Backend> {
    linear: Linear<B>,
}

#[test]
fn lazy_parameters_are_built_from_the_file_with_their_id_gradient_setting_and_load_mapper() {
    let weight: Vec<f32> = (0..OUT * DIM).map(|i| i as f32 * 0.5 - 2.0).collect();
    let bias = [0.25, -1.5, 3.0];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_raw(
        &path,
        &[
            Raw::f32("linear.weight", vec![OUT, DIM], &weight),
            Raw::f32("linear.bias", vec![OUT], &bias),
        ],
    );
    // PyTorch's [out, in] weight, as Burn's [in, out].
    let expected: Vec<f32> = (0..DIM * OUT)
        .map(|i| weight[(i % OUT) * DIM + i / OUT])
        .collect();

    for weight_grad in [false, true] {
        let mut net = LazyNet::<AB> {
            linear: lazy_linear_that_must_not_initialise(weight_grad),
        };
        // A load mapper the user installed on the (still lazy) bias: it runs on the file's values.
        net.linear.bias = net
            .linear
            .bias
            .map(|b| b.load_mapper(|t| t.mul_scalar(2.0)));
        let ids = (net.linear.weight.id, net.linear.bias.as_ref().map(|b| b.id));
        load_pytorch_checkpoint(&mut net, &path, &PathMap::identity(), &LoadOptions::new())
            .unwrap();
        assert_eq!(
            (net.linear.weight.id, net.linear.bias.as_ref().map(|b| b.id)),
            ids
        );
        let loaded_bias = net.linear.bias.as_ref().unwrap().val();
        assert_eq!(net.linear.weight.val().is_require_grad(), weight_grad);
        assert!(loaded_bias.is_require_grad());
        assert_eq!(values(net.linear.weight.val().inner()), expected);
        assert_eq!(
            values(loaded_bias.inner()),
            bias.iter().map(|b| b * 2.0).collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_failed_load_leaves_lazy_parameters_lazy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    // The bias holds a NaN: found only while reading, after the weight has been read.
    write_raw(
        &path,
        &[
            Raw::f32("linear.weight", vec![OUT, DIM], &[0.5; OUT * DIM]),
            Raw::f32("linear.bias", vec![OUT], &[0.0, f32::NAN, 1.0]),
        ],
    );
    let mut net = LazyNet::<B> {
        linear: lazy_linear_that_must_not_initialise(false),
    };
    let err = load_pytorch_checkpoint(&mut net, &path, &PathMap::identity(), &LoadOptions::new())
        .unwrap_err();
    assert!(
        matches!(&err, LoraError::NonFinite(what) if what.contains("linear.bias")),
        "{err:?}"
    );
    assert!(
        !net.linear.weight.is_initialized(),
        "the model is as it was"
    );
    assert!(!net.linear.bias.as_ref().unwrap().is_initialized());
}
