//! Raw safetensors and `adapter_config.json` access for tests: read a file's tensors as they are
//! stored (any dtype, raw bytes), write them back, edit an adapter directory in place, and build
//! the PyTorch state dict of a model's base.

use std::collections::HashMap;
use std::path::Path;

use burn_lora::LoraLayer;
use burn_lora::{LoraMlp, LoraModel, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Map, Value};

use super::{values, B};

/// The prefix PEFT puts before module paths in adapter tensor keys.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// One tensor of a safetensors file, raw.
#[derive(Debug, Clone, PartialEq)]
pub struct Raw {
    pub key: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Raw {
    /// An F32 tensor holding `values` (little-endian, as safetensors stores them).
    pub fn f32(key: &str, shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            key: key.to_string(),
            dtype: Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The tensor as a Burn tensor of rank `D` (F32 only; panics, naming the key, otherwise).
    pub fn to_tensor<const D: usize>(&self) -> burn::tensor::Tensor<B, D> {
        let data = burn::tensor::TensorData::new(self.f32_values(), self.shape.clone());
        burn::tensor::Tensor::from_data(data, &Default::default())
    }

    /// An I64 tensor (token ids, masks) as a Burn int tensor (panics for any other dtype).
    pub fn to_int_tensor<const D: usize>(&self) -> burn::tensor::Tensor<B, D, burn::tensor::Int> {
        assert_eq!(self.dtype, Dtype::I64, "tensor {} must be I64", self.key);
        let values: Vec<i64> = self
            .data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        let data = burn::tensor::TensorData::new(values, self.shape.clone());
        burn::tensor::Tensor::from_data(data, &Default::default())
    }

    /// The values of an F32 tensor (panics, naming the key, for any other dtype).
    pub fn f32_values(&self) -> Vec<f32> {
        assert_eq!(self.dtype, Dtype::F32, "tensor {} must be F32", self.key);
        self.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}

/// Reads a whole file, panicking with its path when it cannot.
pub fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every tensor of the safetensors file at `path`, sorted by key.
pub fn read_raw(path: &Path) -> Vec<Raw> {
    let bytes = read_file(path);
    let tensors = SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{} is not valid safetensors: {e}", path.display()));
    let mut raw: Vec<Raw> = tensors
        .iter()
        .map(|(key, view)| Raw {
            key: key.to_string(),
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            data: view.data().to_vec(),
        })
        .collect();
    raw.sort_by(|a, b| a.key.cmp(&b.key));
    raw
}

/// The `__metadata__` of the safetensors file at `path` (empty when it has none).
pub fn read_metadata(path: &Path) -> HashMap<String, String> {
    let bytes = read_file(path);
    let (_, metadata) = SafeTensors::read_metadata(&bytes)
        .unwrap_or_else(|e| panic!("{} is not valid safetensors: {e}", path.display()));
    metadata.metadata().clone().unwrap_or_default()
}

/// Writes `tensors` to `path` as safetensors with PEFT's metadata (`format: pt`).
pub fn write_raw(path: &Path, tensors: &[Raw]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            let view = TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap();
            (t.key.clone(), view)
        })
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata)).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The tensor named `key` among `tensors` (the test's own fixture: it is there).
pub fn raw<'a>(tensors: &'a [Raw], key: &str) -> &'a Raw {
    tensors
        .iter()
        .find(|t| t.key == key)
        .unwrap_or_else(|| panic!("fixture has no tensor {key}"))
}

/// The F32 tensor `key` of the safetensors file at `path`, as a Burn tensor of rank `D`.
pub fn read_tensor<const D: usize>(path: &Path, key: &str) -> burn::tensor::Tensor<B, D> {
    raw(&read_raw(path), key).to_tensor()
}

/// The tensor named `key` among `tensors`, to edit.
pub fn raw_mut<'a>(tensors: &'a mut [Raw], key: &str) -> &'a mut Raw {
    tensors
        .iter_mut()
        .find(|t| t.key == key)
        .unwrap_or_else(|| panic!("fixture has no tensor {key}"))
}

/// Rewrites `dir/adapter_model.safetensors` through `edit`.
pub fn edit_tensors(dir: &Path, edit: impl FnOnce(&mut Vec<Raw>)) {
    let path = dir.join(ADAPTER_WEIGHTS_FILE);
    let mut tensors = read_raw(&path);
    edit(&mut tensors);
    write_raw(&path, &tensors);
}

/// Rewrites `dir/adapter_config.json` through `edit`.
pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut Map<String, Value>)) {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let mut config = read_config(dir);
    edit(config.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

/// `dir/adapter_config.json`, parsed.
pub fn read_config(dir: &Path) -> Value {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    serde_json::from_slice(&read_file(&path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// PEFT's key of `factor` (`lora_A` or `lora_B`) of the module at `module`.
pub fn key(module: &str, factor: &str) -> String {
    format!("{PEFT_PREFIX}{module}.{factor}.weight")
}

/// The PyTorch state dict of `model`'s base: `layers.N.weight [out, in]`, `layers.N.bias [out]`.
pub fn state_dict(model: &LoraMlp<B>) -> Vec<Raw> {
    model
        .layers()
        .iter()
        .enumerate()
        .flat_map(|(i, layer)| {
            let (d_in, d_out) = (layer.d_input(), layer.d_output());
            [
                Raw::f32(
                    &format!("layers.{i}.weight"),
                    vec![d_out, d_in],
                    &values(layer.weight().transpose()),
                ),
                Raw::f32(
                    &format!("layers.{i}.bias"),
                    vec![d_out],
                    &values(layer.bias().unwrap()),
                ),
            ]
        })
        .collect()
}

/// Asserts that the adapter tensors in `ours` are PEFT's in `theirs`, bit for bit: the same
/// keys, F32, the same shapes and the same bytes.
pub fn assert_same_adapter_tensors(theirs: &Path, ours: &Path) {
    let theirs = read_raw(&theirs.join(ADAPTER_WEIGHTS_FILE));
    let ours = read_raw(&ours.join(ADAPTER_WEIGHTS_FILE));
    let keys = |tensors: &[Raw]| -> Vec<String> { tensors.iter().map(|t| t.key.clone()).collect() };
    assert_eq!(keys(&ours), keys(&theirs), "key sets differ");
    for (their, our) in theirs.iter().zip(&ours) {
        let key = &their.key;
        assert_eq!(our.dtype, Dtype::F32, "{key} dtype");
        assert_eq!(their.dtype, our.dtype, "{key} dtype");
        assert_eq!(their.shape, our.shape, "{key} shape");
        // Load (reshape, transpose) then save (transpose, reshape) is exact.
        assert!(
            their.data == our.data,
            "{key}: values are not bit-identical"
        );
    }
}

/// The `target_modules` list of an adapter config, as a set.
pub fn target_modules(config: &Value) -> std::collections::BTreeSet<String> {
    config["target_modules"]
        .as_array()
        .expect("target_modules is a list")
        .iter()
        .map(|v| v.as_str().expect("target_modules holds names").to_string())
        .collect()
}
