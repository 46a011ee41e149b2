//! Writing GGUF files (version 3, little-endian, 32-byte alignment) of metadata and F32
//! tensors: what burn-lora writes for llama.cpp (LoRA adapters).

use super::value::GgufValue;

/// The alignment of tensor data (GGUF's default: `general.alignment` is not written).
const ALIGNMENT: usize = 32;

/// A GGUF file being put together: metadata entries and F32 tensors, in order.
#[derive(Debug, Default)]
pub(crate) struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl GgufWriter {
    /// Adds metadata entry `key`.
    pub fn metadata(&mut self, key: &str, value: GgufValue) {
        self.metadata.push((key.to_string(), value));
    }

    /// Adds an F32 tensor of PyTorch shape `shape` (slowest dimension first; ggml's order is the
    /// reverse) holding `values` in row-major order.
    pub fn tensor(&mut self, name: &str, shape: Vec<usize>, values: Vec<f32>) {
        self.tensors.push((name.to_string(), shape, values));
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            string(&mut out, key);
            out.extend_from_slice(&type_id(value).to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0usize;
        for (name, shape, values) in &self.tensors {
            string(&mut out, name);
            out.extend_from_slice(&(shape.len() as u32).to_le_bytes());
            for &dim in shape.iter().rev() {
                out.extend_from_slice(&(dim as u64).to_le_bytes());
            }
            out.extend_from_slice(&0u32.to_le_bytes()); // F32
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += (values.len() * 4).next_multiple_of(ALIGNMENT);
        }
        out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
        for (_, _, values) in &self.tensors {
            for value in values {
                out.extend_from_slice(&value.to_le_bytes());
            }
            out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
        }
        out
    }
}

fn string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// GGUF's type id of `value`.
fn type_id(value: &GgufValue) -> u32 {
    match value {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn write_value(out: &mut Vec<u8>, value: &GgufValue) {
    match value {
        GgufValue::U8(v) => out.push(*v),
        GgufValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::Bool(v) => out.push(u8::from(*v)),
        GgufValue::String(v) => string(out, v),
        GgufValue::Array(items) => {
            // An empty array's item type does not matter; UINT8 is written.
            let item_type = items.first().map_or(0, type_id);
            out.extend_from_slice(&item_type.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::gguf::file::GgufFile;

    #[test]
    fn a_written_file_reads_back_with_every_value_and_tensor() {
        let mut writer = GgufWriter::default();
        let values = [
            ("a.u8", GgufValue::U8(7)),
            ("a.i8", GgufValue::I8(-7)),
            ("a.u16", GgufValue::U16(700)),
            ("a.i16", GgufValue::I16(-700)),
            ("a.u32", GgufValue::U32(70_000)),
            ("a.i32", GgufValue::I32(-70_000)),
            ("a.u64", GgufValue::U64(7 << 40)),
            ("a.i64", GgufValue::I64(-7 << 40)),
            ("a.f32", GgufValue::F32(0.25)),
            ("a.f64", GgufValue::F64(-1e-200)),
            ("a.bool", GgufValue::Bool(true)),
            ("a.string", GgufValue::String("adapter ✓".into())),
            (
                "a.array",
                GgufValue::Array(vec![
                    GgufValue::String("x".into()),
                    GgufValue::String("".into()),
                ]),
            ),
            ("a.empty", GgufValue::Array(Vec::new())),
        ];
        for (key, value) in &values {
            writer.metadata(key, value.clone());
        }
        let matrix: Vec<f32> = (0..15).map(|i| i as f32 * 0.5 - 3.0).collect();
        writer.tensor("m.lora_a", vec![3, 5], matrix.clone());
        writer.tensor("v", vec![1], vec![9.0]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.gguf");
        std::fs::write(&path, writer.to_bytes()).unwrap();

        let file = GgufFile::open(&path).unwrap();
        for (key, value) in &values {
            assert_eq!(file.get(key), Some(value), "{key}");
        }
        assert_eq!(file.tensors()["m.lora_a"].shape(), [3, 5]);
        assert_eq!(file.tensors()["m.lora_a"].type_name(), "F32");
        let read: Vec<f32> = file.tensor_data("m.lora_a").unwrap().to_vec().unwrap();
        assert_eq!(read, matrix);
        let read: Vec<f32> = file.tensor_data("v").unwrap().to_vec().unwrap();
        assert_eq!(read, [9.0]);
    }
}
