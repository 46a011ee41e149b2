//! [`GgufFile`]: a GGUF file (llama.cpp's format) opened in place. The header, metadata and
//! tensor table are read and checked when it opens; each tensor is read, dequantized and
//! converted when asked for, a block of rows at a time.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Element, TensorData};
use indexmap::IndexMap;

use super::ggml_type::GgmlType;
use super::value::GgufValue;
use crate::error::{LoraError, Result};
use crate::io::atomic_file::io_error;
use crate::io::dense_values::{dense_data, finite_elem, scatter_transposed, DenseSource};
use crate::io::positioned_read::read_exact_at;

/// `GGUF`, little-endian.
const MAGIC: u32 = 0x4655_4747;

/// The alignment of tensor data when `general.alignment` does not say.
const DEFAULT_ALIGNMENT: u64 = 32;

/// ggml's most dimensions.
const MAX_DIMS: usize = 4;

/// Arrays nested deeper than this are refused (the specification nests them; no file needs
/// more than an array of arrays).
const MAX_DEPTH: usize = 8;

/// The bytes read from the file at a time when a tensor is read (whole rows; more when one row
/// is longer).
const CHUNK_BYTES: usize = 1024 * 1024;

/// One tensor of a [`GgufFile`]: its shape in PyTorch's order (the reverse of ggml's, slowest
/// dimension first), its ggml type, and where its data lies.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    shape: Vec<usize>,
    ggml_type: GgmlType,
    /// From the start of the file.
    offset: u64,
    bytes: usize,
}

impl GgufTensor {
    /// The shape in PyTorch's order: a linear weight of `n` outputs and `k` inputs is `[n, k]`.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The ggml type's name (`F32`, `Q4_K`, ...).
    pub fn type_name(&self) -> &'static str {
        self.ggml_type.name()
    }

    /// Whether burn-lora reads this tensor's type: F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0,
    /// Q5_1, Q8_0, Q4_K, Q5_K and Q6_K.
    pub fn is_readable(&self) -> bool {
        self.ggml_type.is_readable()
    }

    /// Its size in the file, in bytes.
    pub fn byte_len(&self) -> usize {
        self.bytes
    }
}

/// A GGUF file (version 2 or 3), its header, metadata and tensor table read and checked: every
/// string is UTF-8, every count fits in the file, every tensor's data lies inside it at the
/// alignment the file states, and its rows hold whole blocks of its type. Tensors are read when
/// asked for.
///
/// ```no_run
/// use burn_lora::GgufFile;
///
/// let gguf = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
/// assert_eq!(gguf.get("general.architecture").and_then(|v| v.as_str()), Some("llama"));
/// let embedding = gguf.tensor_data("token_embd.weight")?; // f32, [vocabulary, width]
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    file: File,
    version: u32,
    metadata: IndexMap<String, GgufValue>,
    tensors: IndexMap<String, GgufTensor>,
}

impl GgufFile {
    /// Opens `path` and reads its header, metadata and tensor table; no tensor data is read.
    ///
    /// # Errors
    /// [`LoraError::Io`] when the file cannot be read, [`LoraError::InvalidFile`] when it is
    /// not a GGUF file this reader understands (another magic, version 1 or a big-endian file,
    /// truncated, a count or length beyond the file, a string that is not UTF-8, an unknown
    /// value type, a tensor out of the file, misaligned or of more than 4 dimensions, two
    /// tensors of one name), [`LoraError::UnsupportedDtype`] for a tensor of a ggml type id
    /// ggml does not define.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let file_len = file.metadata().map_err(|e| io_error(path, e))?.len();
        let mut header = Header {
            reader: BufReader::new(&file),
            position: 0,
            file_len,
            path,
        };
        let magic = header.u32("the magic")?;
        if magic != MAGIC {
            return Err(header.invalid(format!(
                "the magic is {magic:#010x}, not GGUF's {MAGIC:#010x}"
            )));
        }
        let version = header.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(header.invalid(format!(
                "version {version}: only versions 2 and 3, little-endian, are read{}",
                if version.swap_bytes() <= 3 {
                    " (this looks like a big-endian file)"
                } else {
                    ""
                }
            )));
        }
        let tensor_count = header.u64("the tensor count")?;
        let metadata_count = header.u64("the metadata count")?;
        // Each metadata entry takes at least 13 bytes and each tensor 24.
        header.fits(metadata_count, 13, "metadata entries")?;
        header.fits(tensor_count, 24, "tensors")?;

        let mut metadata = IndexMap::new();
        for _ in 0..metadata_count {
            let key = header.string("a metadata key")?;
            let value_type = header.u32("a value type")?;
            let value = header.value(value_type, 0, &key)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(header.invalid(format!("metadata key \"{key}\" appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(GgufValue::U32(n)) if n.is_power_of_two() => u64::from(*n),
            Some(other) => {
                return Err(header.invalid(format!(
                    "general.alignment is {other:?}: a UINT32 power of two is expected"
                )))
            }
        };

        let mut infos = Vec::new();
        for _ in 0..tensor_count {
            let name = header.string("a tensor name")?;
            let dims = header.u32("a tensor's dimension count")? as usize;
            if dims > MAX_DIMS {
                return Err(header.invalid(format!(
                    "tensor \"{name}\" has {dims} dimensions, more than ggml's {MAX_DIMS}"
                )));
            }
            let mut ne = Vec::with_capacity(dims);
            for _ in 0..dims {
                let n = header.u64("a tensor dimension")?;
                ne.push(usize::try_from(n).map_err(|_| {
                    header.invalid(format!("tensor \"{name}\": dimension {n} is too large"))
                })?);
            }
            let id = header.u32("a tensor type")?;
            let offset = header.u64("a tensor offset")?;
            let ggml_type = GgmlType::from_id(id).ok_or_else(|| LoraError::UnsupportedDtype {
                path: path.display().to_string(),
                key: name.clone(),
                dtype: format!("ggml type {id}, which ggml does not define"),
            })?;
            infos.push((name, ne, ggml_type, offset));
        }
        let data_start = header.position.div_ceil(alignment) * alignment;

        let mut tensors: IndexMap<String, GgufTensor> = IndexMap::new();
        for (name, ne, ggml_type, offset) in infos {
            let invalid = |reason: String| header.invalid(format!("tensor \"{name}\": {reason}"));
            let count = ne
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .ok_or_else(|| invalid(format!("{ne:?} overflows")))?;
            let block = ggml_type.block_values();
            // A scalar is one row of one value.
            let row = ne.first().copied().unwrap_or(1);
            if row % block != 0 {
                return Err(invalid(format!(
                    "rows of {row} values do not hold whole {ggml_type} blocks of {block}"
                )));
            }
            let bytes = (count / block)
                .checked_mul(ggml_type.block_bytes())
                .ok_or_else(|| invalid(format!("{ne:?} overflows")))?;
            if offset % alignment != 0 {
                return Err(invalid(format!(
                    "offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            let start = data_start
                .checked_add(offset)
                .filter(|start| {
                    start
                        .checked_add(bytes as u64)
                        .is_some_and(|end| end <= file_len)
                })
                .ok_or_else(|| {
                    invalid(format!(
                        "{bytes} bytes at offset {offset} of the data lie beyond the file's end"
                    ))
                })?;
            let tensor = GgufTensor {
                shape: ne.iter().rev().copied().collect(),
                ggml_type,
                offset: start,
                bytes,
            };
            if tensors.insert(name.clone(), tensor).is_some() {
                return Err(header.invalid(format!("tensor \"{name}\" appears twice")));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            version,
            metadata,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The format's version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every metadata entry, in the file's order.
    pub fn metadata(&self) -> &IndexMap<String, GgufValue> {
        &self.metadata
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// Every tensor, by name, in the file's order.
    pub fn tensors(&self) -> &IndexMap<String, GgufTensor> {
        &self.tensors
    }

    /// Reads tensor `name`, dequantized, as f32 tensor data of its PyTorch shape.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn tensor_data(&self, name: &str) -> Result<TensorData> {
        self.read(name, false, DType::F32)
    }

    /// Reads tensor `name`, dequantized as ggml does, into values of the float type `dtype`
    /// (F64, F32, F16 or BF16; f32 for any other), transposing a 2-D tensor on the way when
    /// `transpose` is set (the result is contiguous). One block of rows is dequantized at a
    /// time, so reading holds the result and a chunk of the file.
    ///
    /// # Errors
    /// Each naming the file and tensor: [`LoraError::MissingKey`] when there is no such
    /// tensor, [`LoraError::UnsupportedDtype`] for a type burn-lora does not dequantize,
    /// [`LoraError::NonFinite`] for a value that is NaN or infinite in `dtype`,
    /// [`LoraError::Io`] when the file cannot be read.
    pub(crate) fn read(&self, name: &str, transpose: bool, dtype: DType) -> Result<TensorData> {
        self.read_rows(name, transpose, dtype, None)
    }

    /// [`read`](Self::read), with the rows (the slowest dimension, PyTorch's first) reordered
    /// when `row_order` is given: stored row `s` becomes row `row_order[s]` of the result,
    /// before any transposition. `row_order` is a permutation of the rows (the caller made it).
    pub(crate) fn read_rows(
        &self,
        name: &str,
        transpose: bool,
        dtype: DType,
        row_order: Option<&[usize]>,
    ) -> Result<TensorData> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| LoraError::MissingKey {
                path: self.path.display().to_string(),
                key: name.to_string(),
            })?;
        if !tensor.is_readable() {
            return Err(LoraError::UnsupportedDtype {
                path: self.path.display().to_string(),
                key: name.to_string(),
                dtype: format!("ggml {}", tensor.ggml_type),
            });
        }
        let mut shape = tensor.shape.clone();
        let transpose = transpose && shape.len() == 2;
        if transpose {
            shape.reverse();
        }
        let rows = tensor.shape.first().copied().unwrap_or(1);
        if row_order.is_some_and(|order| order.len() != rows || order.iter().any(|&r| r >= rows)) {
            return Err(LoraError::InvalidModel(format!(
                "{}: a row order that is not one of tensor \"{name}\"'s {rows} rows",
                self.path.display()
            )));
        }
        let source = Quantized {
            file: self,
            name,
            tensor,
            transpose,
            row_order,
        };
        dense_data(dtype, shape, &source)
    }
}

/// One tensor of a [`GgufFile`], read as it is or transposed.
struct Quantized<'a> {
    file: &'a GgufFile,
    name: &'a str,
    tensor: &'a GgufTensor,
    transpose: bool,
    /// Where each stored row goes, when not in order.
    row_order: Option<&'a [usize]>,
}

impl DenseSource for Quantized<'_> {
    fn values<E: Element>(&self) -> Result<Vec<E>> {
        let tensor = self.tensor;
        let count: usize = tensor.shape.iter().product();
        if count == 0 {
            return Ok(Vec::new());
        }
        // ggml rows: the fastest dimension, a whole number of blocks (checked at opening).
        let width = tensor.shape.last().copied().unwrap_or(1);
        let rows = count / width;
        let row_bytes = width / tensor.ggml_type.block_values() * tensor.ggml_type.block_bytes();
        let block_rows = (CHUNK_BYTES / row_bytes.max(1)).clamp(1, rows);
        let mut bytes = vec![0u8; block_rows * row_bytes];
        let mut decoded = vec![0f32; block_rows * width];
        let mut block: Vec<E> = Vec::with_capacity(block_rows * width);
        let mut out: Vec<E> = if self.transpose || self.row_order.is_some() {
            vec![E::from_elem(0.0f32); count]
        } else {
            Vec::with_capacity(count)
        };
        let mut first_row = 0;
        while first_row < rows {
            let n = block_rows.min(rows - first_row);
            let (bytes, decoded) = (&mut bytes[..n * row_bytes], &mut decoded[..n * width]);
            let offset = tensor.offset + (first_row * row_bytes) as u64;
            read_exact_at(&self.file.file, bytes, offset)
                .map_err(|e| io_error(&self.file.path, e))?;
            tensor.ggml_type.dequantize(bytes, decoded);
            block.clear();
            for &value in decoded.iter() {
                block.push(finite_elem(value).ok_or_else(|| {
                    LoraError::NonFinite(format!(
                        "{}: tensor \"{}\"",
                        self.file.path.display(),
                        self.name
                    ))
                })?);
            }
            match (self.row_order, self.transpose) {
                (None, true) => scatter_transposed(&block, width, rows, first_row, &mut out),
                (None, false) => out.extend_from_slice(&block),
                // The order is checked to be within the rows; only llama.cpp's q/k weights,
                // small, take this way.
                (Some(order), transpose) => {
                    for (r, row) in block.chunks_exact(width).enumerate() {
                        let to = order[first_row + r];
                        if transpose {
                            for (c, &value) in row.iter().enumerate() {
                                out[c * rows + to] = value;
                            }
                        } else {
                            out[to * width..][..width].copy_from_slice(row);
                        }
                    }
                }
            }
            first_row += n;
        }
        Ok(out)
    }
}

/// The reading position in a GGUF file's header, metadata and tensor table.
struct Header<'a> {
    reader: BufReader<&'a File>,
    position: u64,
    file_len: u64,
    path: &'a Path,
}

impl Header<'_> {
    fn invalid(&self, reason: String) -> LoraError {
        LoraError::InvalidFile {
            path: self.path.display().to_string(),
            format: "GGUF".into(),
            reason,
        }
    }

    /// The bytes left after the position.
    fn remaining(&self) -> u64 {
        self.file_len.saturating_sub(self.position)
    }

    /// Refuses `count` items of at least `size` bytes each when they cannot fit in the rest of
    /// the file (before anything is allocated for them).
    fn fits(&self, count: u64, size: u64, what: &str) -> Result<()> {
        if count > self.remaining() / size {
            return Err(self.invalid(format!(
                "{count} {what} cannot fit in the {} bytes left at offset {}",
                self.remaining(),
                self.position
            )));
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        self.fill(&mut out, what)?;
        Ok(out)
    }

    fn fill(&mut self, out: &mut [u8], what: &str) -> Result<()> {
        if (out.len() as u64) > self.remaining() {
            return Err(self.invalid(format!(
                "the file ends at {} bytes, in {what} at offset {}",
                self.file_len, self.position
            )));
        }
        self.reader
            .read_exact(out)
            .map_err(|e| io_error(self.path, e))?;
        self.position += out.len() as u64;
        Ok(())
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.bytes(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.bytes(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        self.fits(len, 1, "string bytes")?;
        // `len` fits in the rest of the file, which is in memory's reach as a read.
        let mut bytes = vec![0u8; len as usize];
        self.fill(&mut bytes, what)?;
        String::from_utf8(bytes).map_err(|e| {
            let at = self.position;
            self.invalid(format!("{what} ending at offset {at} is not UTF-8: {e}"))
        })
    }

    /// A metadata value of type `value_type`, `depth` arrays deep, for metadata `key`.
    fn value(&mut self, value_type: u32, depth: usize, key: &str) -> Result<GgufValue> {
        let what = format!("the value of \"{key}\"");
        Ok(match value_type {
            0 => GgufValue::U8(self.bytes::<1>(&what)?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.bytes(&what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.bytes(&what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.bytes(&what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.bytes(&what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.bytes(&what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.bytes(&what)?)),
            7 => match self.bytes::<1>(&what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                other => {
                    return Err(self.invalid(format!("{what} is a BOOL of byte {other}")));
                }
            },
            8 => GgufValue::String(self.string(&what)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(
                        self.invalid(format!("{what} nests arrays deeper than {MAX_DEPTH}"))
                    );
                }
                let item_type = self.u32(&what)?;
                let count = self.u64(&what)?;
                // The smallest item of each type: 1 byte, a string's 8-byte length, an array's
                // 12-byte type and count.
                let size = match item_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => 1,
                };
                self.fits(count, size, "array items")?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(item_type, depth + 1, key)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.bytes(&what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.bytes(&what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.bytes(&what)?)),
            other => {
                return Err(self.invalid(format!("{what} has the unknown value type {other}")));
            }
        })
    }
}
