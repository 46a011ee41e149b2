//! Safetensors plumbing for small files read whole (adapters): reading float tensors of any
//! common dtype as f32, and writing f32 tensors. Base checkpoints, which can be large, are read
//! in place by [`safetensors_reader`](super::safetensors_reader).

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{LoraError, Result};
use crate::io::atomic_file::io_error;

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
        // `values` holds `rows * cols` values (safetensors checks a tensor's byte length against
        // its shape, and `reshaped` keeps the count), so `col * rows + row` is in bounds; with
        // `cols = 0` there is no value and no division.
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

    /// The same values under another shape with as many elements (the caller checked it).
    pub fn reshaped(self, shape: Vec<usize>) -> FloatTensor {
        FloatTensor {
            shape,
            values: self.values,
        }
    }

    /// The values as Burn tensor data (f32, this shape).
    pub fn into_data(self) -> TensorData {
        TensorData::new(self.values, self.shape)
    }

    /// The tensor on a Burn device (must be 2-D or 1-D as `D` says; the caller checked the shape).
    pub fn into_burn<B: Backend, const D: usize>(self, device: &B::Device) -> Tensor<B, D> {
        Tensor::from_data(self.into_data(), device)
    }
}

/// Reads a whole file, mapping I/O errors to [`LoraError::Io`].
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io_error(path, e))
}

/// Every tensor of a safetensors buffer as f32 (F32, F64, F16 and BF16 are accepted).
/// Truncated or garbage buffers, unsupported dtypes and non-finite values are errors naming the
/// file and key.
pub(crate) fn read_float_tensors(
    path: &Path,
    bytes: &[u8],
) -> Result<HashMap<String, FloatTensor>> {
    let tensors = parse_safetensors(path, bytes)?;
    let mut out = HashMap::with_capacity(tensors.len());
    for (key, view) in tensors.iter() {
        out.insert(key.to_string(), float_tensor(path, key, &view)?);
    }
    Ok(out)
}

/// The safetensors header of `bytes`, checked (every tensor's offsets inside the buffer, sizes
/// matching dtype and shape) but no tensor converted: read the ones needed with
/// [`float_tensor`]. Truncated or garbage buffers are [`LoraError::InvalidFile`].
pub(crate) fn parse_safetensors<'data>(
    path: &Path,
    bytes: &'data [u8],
) -> Result<SafeTensors<'data>> {
    SafeTensors::deserialize(bytes).map_err(|e| LoraError::InvalidFile {
        path: path.display().to_string(),
        format: "safetensors".into(),
        reason: e.to_string(),
    })
}

/// The tensor `key` of file `path` as f32: [`LoraError::UnsupportedDtype`] unless it is F32,
/// F64, F16 or BF16, [`LoraError::NonFinite`] if a value is NaN or infinite as f32.
pub(crate) fn float_tensor(path: &Path, key: &str, view: &TensorView<'_>) -> Result<FloatTensor> {
    let tensor = to_f32(path, key, view)?;
    if tensor.values.iter().any(|v| !v.is_finite()) {
        return Err(LoraError::NonFinite(format!(
            "{}: tensor \"{key}\"",
            path.display()
        )));
    }
    Ok(tensor)
}

fn to_f32(path: &Path, key: &str, view: &TensorView<'_>) -> Result<FloatTensor> {
    let data = view.data();
    // `chunks_exact(n)` yields slices of exactly `n` bytes.
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

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use super::*;

    const KEY: &str = "base_model.model.layers.0.lora_A.weight";

    fn path() -> PathBuf {
        PathBuf::from("some/dir/adapter_model.safetensors")
    }

    /// Safetensors bytes holding `tensors` (key, dtype, shape, raw little-endian data).
    pub(crate) fn safetensors_bytes(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(key, dtype, shape, data)| {
                let view = TensorView::new(*dtype, shape.clone(), data).unwrap();
                (key.to_string(), view)
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    /// One tensor `KEY` of shape `[n]` holding `data`, as `dtype`.
    fn one(dtype: Dtype, n: usize, data: Vec<u8>) -> Vec<u8> {
        safetensors_bytes(&[(KEY, dtype, vec![n], data)])
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    fn read(bytes: &[u8]) -> Result<HashMap<String, FloatTensor>> {
        read_float_tensors(&path(), bytes)
    }

    #[test]
    fn f32_tensors_are_read_bit_exactly_with_their_shapes_by_key() {
        let a = [1.0, -0.0, 1e-40, f32::MAX, -3.25, 0.1];
        let b = [7.5, f32::MIN_POSITIVE];
        let bytes = safetensors_bytes(&[
            ("a", Dtype::F32, vec![2, 3], f32_bytes(&a)),
            ("b", Dtype::F32, vec![2], f32_bytes(&b)),
        ]);
        let tensors = read(&bytes).unwrap();
        assert_eq!(tensors.len(), 2);
        assert_eq!(tensors["a"].shape, vec![2, 3]);
        assert_eq!(bits(&tensors["a"].values), bits(&a));
        assert_eq!(tensors["b"].shape, vec![2]);
        assert_eq!(bits(&tensors["b"].values), bits(&b));
    }

    #[test]
    fn f64_f16_and_bf16_tensors_are_converted_to_f32() {
        let f64_values = [1.5f64, -0.25, 0.1, 1e-300];
        let f64_data: Vec<u8> = f64_values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let half_data =
            |bits: &[u16]| -> Vec<u8> { bits.iter().flat_map(|b| b.to_le_bytes()).collect() };
        let cases: [(Dtype, Vec<u8>, Vec<f32>); 3] = [
            // f64 rounds to the nearest f32 (0.1 → 0.1f32); 1e-300 underflows to 0.
            (Dtype::F64, f64_data, vec![1.5, -0.25, 0.1, 0.0]),
            // 1, -2, 1/3 rounded to f16, 65504 (f16::MAX), the smallest subnormal.
            (
                Dtype::F16,
                half_data(&[0x3C00, 0xC000, 0x3555, 0x7BFF, 0x0001]),
                vec![1.0, -2.0, 1365.0 / 4096.0, 65504.0, 2f32.powi(-24)],
            ),
            // 1, -3, 1/3 rounded to bf16, bf16::MAX.
            (
                Dtype::BF16,
                half_data(&[0x3F80, 0xC040, 0x3EAB, 0x7F7F]),
                vec![1.0, -3.0, 171.0 / 512.0, 1.992_187_5 * 2f32.powi(127)],
            ),
        ];
        for (dtype, data, expected) in cases {
            let n = expected.len();
            let tensors = read(&one(dtype, n, data)).unwrap();
            let tensor = &tensors[KEY];
            assert_eq!(tensor.shape, vec![n], "{dtype:?} shape");
            assert_eq!(bits(&tensor.values), bits(&expected), "{dtype:?} values");
        }
    }

    #[test]
    fn integer_bool_complex_and_small_float_dtypes_are_unsupported_naming_path_key_and_dtype() {
        let path_text = path().display().to_string();
        for dtype in [
            Dtype::BOOL,
            Dtype::U8,
            Dtype::I8,
            Dtype::I16,
            Dtype::U16,
            Dtype::I32,
            Dtype::U32,
            Dtype::I64,
            Dtype::U64,
            Dtype::C64,
            Dtype::F8_E4M3,
            Dtype::F8_E5M2,
        ] {
            let data = vec![0; 3 * dtype.bitsize() / 8];
            let err = read(&one(dtype, 3, data)).unwrap_err();
            assert_eq!(
                err,
                LoraError::UnsupportedDtype {
                    path: path_text.clone(),
                    key: KEY.into(),
                    dtype: format!("{dtype:?}"),
                },
            );
        }
    }

    #[test]
    fn nan_and_infinite_values_are_non_finite_naming_path_and_key() {
        let f32_with = |bad: f32| f32_bytes(&[1.0, bad, 2.0]);
        let cases: [(&str, Dtype, Vec<u8>); 6] = [
            ("f32 NaN", Dtype::F32, f32_with(f32::NAN)),
            ("f32 +inf", Dtype::F32, f32_with(f32::INFINITY)),
            ("f32 -inf", Dtype::F32, f32_with(f32::NEG_INFINITY)),
            (
                "f16 +inf",
                Dtype::F16,
                [0x3C00u16, 0x7C00, 0x3C00]
                    .iter()
                    .flat_map(|b| b.to_le_bytes())
                    .collect(),
            ),
            (
                "bf16 NaN",
                Dtype::BF16,
                [0x3F80u16, 0x7FC0, 0x3F80]
                    .iter()
                    .flat_map(|b| b.to_le_bytes())
                    .collect(),
            ),
            // Finite in f64 but beyond f32's range: it would load as infinity.
            (
                "f64 1e300",
                Dtype::F64,
                [1.0f64, 1e300, 2.0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
        ];
        for (what, dtype, data) in cases {
            let err = read(&one(dtype, 3, data)).unwrap_err();
            assert!(
                matches!(&err, LoraError::NonFinite(message)
                    if message.contains(KEY) && message.contains(&path().display().to_string())),
                "{what}: {err:?}"
            );
        }
    }

    #[test]
    fn truncated_garbage_and_empty_bytes_are_invalid_safetensors_file_naming_the_path() {
        let valid = safetensors_bytes(&[
            (KEY, Dtype::F32, vec![2, 3], f32_bytes(&[0.5; 6])),
            ("b", Dtype::F32, vec![4], f32_bytes(&[0.25; 4])),
        ]);
        assert_eq!(
            read(&valid).unwrap().len(),
            2,
            "the untouched bytes are valid"
        );
        let header = u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
        assert!(header > 40, "the header must be longer than the cut below");
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut length_past_the_end = valid.clone();
        length_past_the_end[..8].copy_from_slice(&(valid.len() as u64).to_le_bytes());
        let cases: [(&str, &[u8]); 7] = [
            ("truncated in the data", &valid[..valid.len() - 7]),
            ("truncated in half", &valid[..valid.len() / 2]),
            ("truncated in the header", &valid[..40]),
            ("shorter than the length prefix", &valid[..5]),
            ("header length past the end", &length_past_the_end),
            ("garbage bytes", &garbage),
            ("empty", &[]),
        ];
        for (what, bytes) in cases {
            let err = read(bytes).unwrap_err();
            assert!(
                matches!(&err, LoraError::InvalidFile { path: p, format, reason }
                    if *p == path().display().to_string()
                        && format == "safetensors"
                        && !reason.is_empty()),
                "{what}: {err:?}"
            );
        }
    }

    #[test]
    fn one_tensor_is_read_by_key_without_converting_the_others() {
        let half: Vec<u8> = [0x3C00u16, 0xC000]
            .iter()
            .flat_map(|b| b.to_le_bytes())
            .collect();
        let ids: Vec<u8> = [0i64, 1, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = safetensors_bytes(&[
            ("weight", Dtype::F16, vec![2], half),
            ("position_ids", Dtype::I64, vec![1, 3], ids),
        ]);
        // The whole-file reader refuses the int buffer...
        assert!(matches!(
            read(&bytes).unwrap_err(),
            LoraError::UnsupportedDtype { key, .. } if key == "position_ids"
        ));
        // ...the lazy one reads the float tensor and names the int one only when asked for it.
        let file = parse_safetensors(&path(), &bytes).unwrap();
        let mut keys = file.names();
        keys.sort();
        assert_eq!(keys, ["position_ids", "weight"]);
        let weight = float_tensor(&path(), "weight", &file.tensor("weight").unwrap()).unwrap();
        assert_eq!(weight.shape, vec![2]);
        assert_eq!(weight.values, vec![1.0, -2.0]);
        let view = file.tensor("position_ids").unwrap();
        assert_eq!(
            float_tensor(&path(), "position_ids", &view).unwrap_err(),
            LoraError::UnsupportedDtype {
                path: path().display().to_string(),
                key: "position_ids".into(),
                dtype: "I64".into(),
            }
        );
    }

    #[test]
    fn float_tensor_refuses_non_finite_values_naming_the_key() {
        let bytes = safetensors_bytes(&[("w", Dtype::F32, vec![2], f32_bytes(&[1.0, f32::NAN]))]);
        let file = parse_safetensors(&path(), &bytes).unwrap();
        let err = float_tensor(&path(), "w", &file.tensor("w").unwrap()).unwrap_err();
        assert!(
            matches!(&err, LoraError::NonFinite(what) if what.contains("\"w\"")),
            "{err:?}"
        );
    }

    #[test]
    fn parse_safetensors_refuses_truncated_bytes_as_invalid_file() {
        let bytes = safetensors_bytes(&[("w", Dtype::F32, vec![2], f32_bytes(&[1.0, 2.0]))]);
        let err = parse_safetensors(&path(), &bytes[..bytes.len() - 1]).unwrap_err();
        assert!(
            matches!(&err, LoraError::InvalidFile { format, .. } if format == "safetensors"),
            "{err:?}"
        );
    }

    #[test]
    fn into_data_keeps_shape_and_values() {
        let tensor = FloatTensor {
            shape: vec![2, 1],
            values: vec![0.5, -1.5],
        };
        let data = tensor.into_data();
        assert_eq!(data.shape.to_vec(), vec![2, 1]);
        assert_eq!(data.to_vec::<f32>().unwrap(), vec![0.5, -1.5]);
    }

    #[test]
    fn transposed_swaps_rows_and_columns_of_a_2d_tensor() {
        let matrix = FloatTensor {
            shape: vec![2, 3],
            values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        };
        let t = matrix.transposed();
        assert_eq!(t.shape, vec![3, 2]);
        assert_eq!(t.values, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let back = t.transposed();
        assert_eq!(back.shape, matrix.shape);
        assert_eq!(back.values, matrix.values);
    }

    #[test]
    fn transposed_leaves_a_1d_tensor_as_it_is() {
        let vector = FloatTensor {
            shape: vec![3],
            values: vec![1.0, 2.0, 3.0],
        };
        let t = vector.transposed();
        assert_eq!(t.shape, vec![3]);
        assert_eq!(t.values, vec![1.0, 2.0, 3.0]);
    }
}
