//! A BF16 checkpoint on a backend whose float type is BF16: the weights load as they are stored,
//! bit for bit, with no f32 copy in between, and the model runs.
//!
//! A binary of its own: the float type is a setting of the device, made once per process before
//! any tensor is created (Burn's `set_default_float_dtype`), so it cannot share a process with
//! the f32 tests. It runs on Flex, whichever backend the other tests use.

#[path = "../common/mod.rs"]
mod common;

use std::collections::HashMap;

use burn::backend::Flex;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::set_default_float_dtype;
use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};
use burn_lora::nn::llama::{CausalLm, CausalLmInput};
use common::existing_peft_fixture;
use common::safetensors_io::{read_raw, write_raw, Raw};
use safetensors::Dtype;

/// Every float parameter's dtype and raw little-endian bytes, by module path.
#[derive(Default)]
struct Values {
    path: Vec<String>,
    found: HashMap<String, (DType, Vec<u8>)>,
}

impl ModuleVisitor<Flex> for Values {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Flex, D>>) {
        let data = param.val().into_data();
        let bits: Vec<u8> = data
            .to_vec::<half::bf16>()
            .map(|values| values.iter().flat_map(|v| v.to_le_bytes()).collect())
            .unwrap_or_default();
        self.found.insert(self.path.join("."), (data.dtype, bits));
    }
}

#[test]
fn a_bf16_checkpoint_loads_bit_for_bit_into_a_bf16_backend_and_runs() {
    let device = Default::default();
    set_default_float_dtype::<Flex>(&device, FloatDType::BF16)
        .expect("the first tensor of this process comes after this setting");

    // llama_tiny's f32 checkpoint rounded to BF16, as a BF16 file.
    let source = existing_peft_fixture("llama_tiny");
    let temp = tempfile::tempdir().unwrap();
    std::fs::copy(source.join("config.json"), temp.path().join("config.json")).unwrap();
    let tensors: Vec<Raw> = read_raw(&source.join("model.safetensors"))
        .into_iter()
        .map(|raw| Raw {
            dtype: Dtype::BF16,
            data: raw
                .f32_values()
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            ..raw
        })
        .collect();
    write_raw(&temp.path().join("model.safetensors"), &tensors);

    let lm = CausalLm::<Flex>::from_pretrained(temp.path(), &device).unwrap();
    let mut values = Values::default();
    lm.visit(&mut values);
    assert!(!values.found.is_empty());
    for (path, (dtype, _)) in &values.found {
        assert_eq!(*dtype, DType::BF16, "{path}");
    }
    // 1-D tensors and embeddings keep the file's layout: the same bytes (linear weights are
    // transposed on the way, which the f32 tests check).
    let mut compared = 0;
    let same_layout = |raw: &&Raw| raw.shape.len() == 1 || raw.key.contains("embed_tokens");
    for raw in tensors.iter().filter(same_layout) {
        // RMSNorm's `weight` is Burn's `gamma`.
        let path = match raw.key.strip_suffix("norm.weight") {
            Some(module) => format!("{module}norm.gamma"),
            None => raw.key.clone(),
        };
        if let Some((_, bits)) = values.found.get(&path) {
            assert!(bits == &raw.data, "{path}: not the file's bytes");
            compared += 1;
        }
    }
    // The embedding and every norm: two per layer and the final one.
    assert!(compared >= 4, "{compared} tensors compared");

    let ids = Tensor::<Flex, 2, Int>::from_data(TensorData::from([[1i64, 5, 9, 2]]), &device);
    let logits = lm.forward(CausalLmInput::new(ids)).unwrap();
    assert_eq!(logits.dtype(), DType::BF16);
    let logits: Vec<f32> = logits.into_data().convert::<f32>().to_vec().unwrap();
    assert!(logits.iter().all(|v| v.is_finite()));
}
