//! Safetensors plumbing shared by adapter and weight files: reading float tensors of any common
//! dtype as f32, writing f32 tensors, and writing files atomically.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::atomic_file::io_error;
use crate::error::{LoraError, Result};

/// A float tensor read from a file: row-major values and its shape.
#[derive(Debug, Clone)]
pub(crate) struct FloatTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl FloatTensor {
    /// The transpose of a 2-D tensor, laid out contiguously (so kernels see a plain row-major
    /// matrix, as for a tensor created in Burn's orientation).
    pub fn transposed(&self) -> FloatTensor {
        let (rows, cols) = match self.shape.as_slice() {
            [rows, cols] => (*rows, *cols),
            _ => return self.clone(),
        };
        let mut values = vec![0.0; self.values.len()];
        for (index, value) in self.values.iter().enumerate() {
            let (row, col) = (index / cols, index % cols);
            values[col * rows + row] = *value;
        }
        FloatTensor {
            shape: vec![cols, rows],
            values,
        }
    }

    /// The tensor on a Burn device (must be 2-D or 1-D as `D` says; the caller checked the shape).
    pub fn into_burn<B: Backend, const D: usize>(self, device: &B::Device) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(self.values, self.shape), device)
    }
}

/// Reads a whole file, mapping I/O errors to [`LoraError::Io`].
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io_error(path, e))
}

/// Every tensor of a safetensors buffer as f32 (F32, F64, F16 and BF16 are accepted). Truncated or garbage buffers, unsupported dtypes and non-finite values are
/// errors naming the file and key.
pub(crate) fn read_float_tensors(
    path: &Path,
    bytes: &[u8],
) -> Result<HashMap<String, FloatTensor>> {
    let invalid = |reason: String| LoraError::InvalidFile {
        path: path.display().to_string(),
        format: "safetensors".into(),
        reason,
    };
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| invalid(e.to_string()))?;
    let mut out = HashMap::with_capacity(tensors.len());
    for (key, view) in tensors.iter() {
        let tensor = to_f32(path, key, &view)?;
        if tensor.values.iter().any(|v| !v.is_finite()) {
            return Err(LoraError::NonFinite(format!(
                "{}: tensor \"{key}\"",
                path.display()
            )));
        }
        out.insert(key.to_string(), tensor);
    }
    Ok(out)
}

fn to_f32(path: &Path, key: &str, view: &TensorView<'_>) -> Result<FloatTensor> {
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(LoraError::UnsupportedDtype {
                path: path.display().to_string(),
                key: key.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    };
    Ok(FloatTensor {
        shape: view.shape().to_vec(),
        values,
    })
}

/// The row-major f32 values of a Burn tensor.
pub(crate) fn tensor_values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<Vec<f32>> {
    tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| LoraError::InvalidModel(format!("cannot read tensor values: {e:?}")))
}

/// Serialises f32 tensors (name, shape, values) to safetensors bytes with `metadata`.
pub(crate) fn serialize_f32(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: HashMap<String, String>,
    path: &Path,
) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, values)| values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let invalid = |reason: String| LoraError::InvalidFile {
        path: path.display().to_string(),
        format: "safetensors".into(),
        reason,
    };
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|view| (name.clone(), view))
                .map_err(|e| invalid(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| invalid(e.to_string()))
}
