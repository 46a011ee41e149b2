//! LoRA adapters saved for llama.cpp: a GGUF file of `general.type = "adapter"`, as llama.cpp's
//! `convert_lora_to_gguf.py` writes one from a PEFT adapter.

use std::path::Path;

use burn::tensor::backend::Backend;

use super::config::Family;
use super::gguf::{llama_cpp_module, permutation};
use super::model::CausalLm;
use crate::error::{LoraError, Result};
use crate::io::atomic_file::{io_error, write_all_atomic};
use crate::io::gguf::value::GgufValue;
use crate::io::gguf::writer::GgufWriter;
use crate::io::tensor_file::tensor_values;
use crate::layers::layer::LayerKind;
use crate::model::{lora_layer_paths, LoraModel};

impl<B: Backend> CausalLm<B> {
    /// Saves adapter `name` as a llama.cpp LoRA adapter (`llama-cli --lora FILE`,
    /// llama-cpp-python's `Llama(lora_path=FILE)`): a GGUF file with `general.type = "adapter"`,
    /// `adapter.type = "lora"`, `adapter.lora.alpha`, the base's `general.architecture`, and for
    /// every targeted module the F32 tensors `<llama.cpp name>.weight.lora_a` (PEFT's `A`,
    /// `[r, in]`; for `token_embd` its transpose) and `.lora_b` (PEFT's `B`, `[out, r]`), as
    /// llama.cpp's `convert_lora_to_gguf.py` writes a PEFT adapter:
    /// - the rows of `B` on `q_proj` and `k_proj` are permuted as llama.cpp permutes the base's
    ///   (Llama and Mistral architectures), so the file applies to a GGUF base made by
    ///   llama.cpp's converter, or read by [`from_gguf`](Self::from_gguf);
    /// - llama.cpp scales every module by `alpha / r`; where this adapter's scale differs
    ///   (rsLoRA, a per-module rank or alpha), the difference is folded into that module's `B`,
    ///   so the file gives exactly this adapter's update, which the converter does not do.
    ///
    /// The bytes go to a temporary file that then replaces `path` in one rename.
    ///
    /// # Errors
    /// [`LoraError::UnknownAdapter`] when no layer has adapter `name`, [`LoraError::Unsupported`]
    /// for a DoRA adapter (llama.cpp has none) or a module llama.cpp has no name for,
    /// [`LoraError::NonFinite`] for non-finite factors, [`LoraError::Io`] when the file cannot be
    /// written.
    pub fn save_adapter_gguf(&self, name: &str, path: &Path) -> Result<()> {
        let config = self.config();
        let paths = lora_layer_paths(self)?;
        let mut writer = GgufWriter::default();
        let architecture = match config.family {
            Family::Qwen2 => "qwen2",
            // llama.cpp's converter writes Mistral checkpoints as the llama architecture.
            Family::Llama | Family::Mistral => "llama",
        };
        let mut alpha = None;
        let mut tensors = Vec::new();
        for (layer, hf_module) in self.lora_layers().into_iter().zip(&paths) {
            let Some(adapter) = layer.adapter(name) else {
                continue;
            };
            adapter.ensure_finite()?;
            if adapter.magnitude().is_some() {
                return Err(LoraError::Unsupported(format!(
                    "saving DoRA adapter \"{name}\" for llama.cpp, which has no DoRA"
                )));
            }
            let module = llama_cpp_module(hf_module).ok_or_else(|| {
                LoraError::Unsupported(format!(
                    "module \"{hf_module}\" has no llama.cpp name for an adapter"
                ))
            })?;
            let rank = adapter.rank();
            // One alpha for the file, as llama.cpp reads one: the first module's.
            let alpha = *alpha.get_or_insert(adapter.config().alpha);
            // llama.cpp applies `alpha / rank`; this module's scale is `adapter.scale()`, the
            // same number for a plain LoRA module of that alpha.
            let llama_cpp_scale = alpha / rank as f64;
            let fold = if adapter.scale() == llama_cpp_scale {
                1.0
            } else {
                adapter.scale() / llama_cpp_scale
            };
            let a = adapter.lora_a(); // [in, r]
            let b = adapter.lora_b(); // [r, out]
            let [inputs, _] = a.dims();
            let [_, outputs] = b.dims();
            let mut b_values = tensor_values(b.transpose())?; // [out, r]
            if fold != 1.0 {
                for value in &mut b_values {
                    *value = (f64::from(*value) * fold) as f32;
                }
            }
            if let Some(order) = permutation(hf_module, outputs, config).ok_or_else(|| {
                LoraError::InvalidModel(format!(
                    "{hf_module}: {outputs} rows are not whole heads of even width"
                ))
            })? {
                // llama.cpp's row `s` is Hugging Face's row `order[s]`.
                let stored = b_values.clone();
                for (s, &hf) in order.iter().enumerate() {
                    b_values[s * rank..][..rank].copy_from_slice(&stored[hf * rank..][..rank]);
                }
            }
            let (a_shape, a_values) = match layer.kind() {
                // llama.cpp's embedding lookup takes A as stored in burn-lora: [vocabulary, r].
                LayerKind::Embedding => (vec![inputs, rank], tensor_values(a)?),
                LayerKind::Linear => (vec![rank, inputs], tensor_values(a.transpose())?),
                other => {
                    return Err(LoraError::Unsupported(format!(
                        "saving a {other:?} adapter for llama.cpp"
                    )))
                }
            };
            tensors.push((format!("{module}.weight.lora_a"), a_shape, a_values));
            tensors.push((
                format!("{module}.weight.lora_b"),
                vec![outputs, rank],
                b_values,
            ));
        }
        let Some(alpha) = alpha else {
            return Err(LoraError::UnknownAdapter(name.to_string()));
        };
        writer.metadata(
            "general.architecture",
            GgufValue::String(architecture.into()),
        );
        writer.metadata("general.type", GgufValue::String("adapter".into()));
        writer.metadata("adapter.type", GgufValue::String("lora".into()));
        writer.metadata("adapter.lora.alpha", GgufValue::F32(alpha as f32));
        for (tensor, shape, values) in tensors {
            writer.tensor(&tensor, shape, values);
        }
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        }
        write_all_atomic(&[(path, &writer.to_bytes())])
    }
}
