//! Safetensors files read in place: the header is parsed when the file opens, and each tensor is
//! read from the file only when asked for, in bounded chunks, straight into the backend's float
//! type.
//!
//! Loading a checkpoint this way holds, besides the model being built, one chunk of file bytes
//! and nothing else: no copy of the file, no f32 copy of a BF16 tensor, no map of converted
//! tensors. Positioned reads are used rather than a memory map. A map's touched pages count in
//! the process's resident memory until it is unmapped, so reading a whole file through one
//! would add the file's size to the peak; dropping pages early (`madvise`) or mapping each
//! tensor apart needs `unsafe`, which burn-lora does not use. The page cache serves both the
//! same way, and a chunk of a few hundred KiB keeps every read large.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::cast::ToElement;
use burn::tensor::{DType, Element, ElementConversion, Tensor, TensorData};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;

use crate::error::{LoraError, Result};
use crate::io::atomic_file::io_error;
use crate::io::dense_values::{dense_data, finite_elem, scatter_transposed, DenseSource};
use crate::io::positioned_read::{read_exact_at, PARALLEL_READS};

/// The bytes read from the file at a time (whole rows of a transposed tensor are read together,
/// so a chunk may hold more when one row is longer).
const CHUNK_BYTES: usize = 1024 * 1024;

/// Tensors of fewer values are read by one thread.
const PARALLEL_ELEMENTS: usize = 1 << 20;

/// The most threads one tensor is read with: the conversion is bound by memory beyond a few.
/// One where the platform has no positioned reads.
const MAX_WORKERS: usize = if PARALLEL_READS { 4 } else { 1 };

/// Safetensors' own limit on the header's length.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// An open safetensors file whose header has been checked: every tensor lies inside the file,
/// one after the other with no gap, its byte length matching its dtype and shape, and the file
/// ends where the last one does.
pub(crate) struct SafetensorsReader {
    path: PathBuf,
    file: File,
    /// Where the data section starts: after the 8-byte length and the header.
    data_start: u64,
    metadata: Metadata,
    /// The most threads a large tensor is read with.
    workers: usize,
}

impl SafetensorsReader {
    /// Opens `path` and reads its header; no tensor data is read.
    ///
    /// # Errors
    /// [`LoraError::Io`] when the file cannot be opened or read, [`LoraError::InvalidFile`]
    /// when it is not a complete safetensors file (truncated, garbage, a header that does not
    /// describe the data that follows).
    pub fn open(path: &Path) -> Result<Self> {
        let invalid = |reason: String| LoraError::InvalidFile {
            path: path.display().to_string(),
            format: "safetensors".into(),
            reason,
        };
        let mut file = File::open(path).map_err(|e| io_error(path, e))?;
        let file_len = file.metadata().map_err(|e| io_error(path, e))?.len();
        if file_len < 8 {
            return Err(invalid(format!(
                "{file_len} bytes: shorter than the 8-byte header length"
            )));
        }
        let mut prefix = [0u8; 8];
        file.read_exact(&mut prefix)
            .map_err(|e| io_error(path, e))?;
        let header_len = u64::from_le_bytes(prefix);
        if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
            return Err(invalid(format!(
                "a header of {header_len} bytes in a file of {file_len}"
            )));
        }
        // `header_len ≤ MAX_HEADER_BYTES` fits in usize.
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| io_error(path, e))?;
        // Safetensors' `Metadata` checks, as it deserialises, that the tensors follow each other
        // from offset 0 and that each one's byte length is its dtype's size times its shape.
        let metadata: Metadata =
            serde_json::from_slice(&header).map_err(|e| invalid(format!("header: {e}")))?;
        let data_len = metadata
            .tensors()
            .values()
            .map(|info| info.data_offsets.1 as u64)
            .max()
            .unwrap_or(0);
        let data_start = 8 + header_len;
        if data_start + data_len != file_len {
            return Err(invalid(format!(
                "the header describes {data_len} bytes of tensor data, the file holds {}",
                file_len - data_start
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            data_start,
            metadata,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS)),
        })
    }

    /// The same file read with at most `workers` threads per tensor (tests split tensors in
    /// more parts than this machine's cores).
    #[cfg(test)]
    fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Opens every file of `files` ([`open`](Self::open)).
    ///
    /// # Errors
    /// As [`open`](Self::open), for the first file that fails.
    pub fn open_all(files: &[impl AsRef<Path>]) -> Result<Vec<Self>> {
        files.iter().map(|file| Self::open(file.as_ref())).collect()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys of every tensor in the file, in no particular order.
    pub fn keys(&self) -> Vec<String> {
        self.metadata.tensors().into_keys().collect()
    }

    /// The dtype, shape and place of tensor `key`, if the file holds it.
    pub fn info(&self, key: &str) -> Option<&TensorInfo> {
        self.metadata.info(key)
    }

    /// Reads tensor `key` as values of the float type `dtype` (a BF16 tensor stays BF16 when
    /// `dtype` is BF16, with no f32 copy in between; a type other than F64, F32, F16 and BF16
    /// gets f32 values), transposing a 2-D tensor on the way when `transpose` is set: the
    /// result is contiguous, as a tensor created in that layout.
    ///
    /// # Errors
    /// Each naming the file and key: [`LoraError::MissingKey`] when the file has no such tensor,
    /// [`LoraError::UnsupportedDtype`] unless it is F32, F64, F16 or BF16,
    /// [`LoraError::NonFinite`] when a value is NaN or infinite in `dtype` (an f64 beyond f32's
    /// range read as f32), [`LoraError::Io`] when the file cannot be read.
    pub fn read_float(&self, key: &str, transpose: bool, dtype: DType) -> Result<TensorData> {
        let info = self.info(key).ok_or_else(|| LoraError::MissingKey {
            path: self.path.display().to_string(),
            key: key.to_string(),
        })?;
        let mut shape = info.shape.clone();
        let transpose = transpose && shape.len() == 2;
        if transpose {
            shape.reverse();
        }
        let source = Stored {
            reader: self,
            key,
            info,
            transpose,
        };
        dense_data(dtype, shape, &source)
    }

    /// Reads the tensor's values, each decoded from `N` little-endian bytes and converted to
    /// `E`, into a vector of the tensor's element count. A large tensor is split over a few
    /// threads, each reading its own part of the file with positioned reads: a range of the
    /// values, or for a transposed tensor a range of its columns, which is a contiguous range
    /// of the result.
    fn decode<E: Element, S: ToElement, const N: usize>(
        &self,
        key: &str,
        info: &TensorInfo,
        transpose: bool,
        from_le_bytes: impl Fn([u8; N]) -> S + Sync,
    ) -> Result<Vec<E>> {
        let count: usize = info.shape.iter().product();
        let mut out: Vec<E> = vec![0.0f32.elem(); count];
        if count == 0 {
            return Ok(out);
        }
        let part = Part {
            reader: self,
            key,
            // The header check put every tensor inside the file.
            start: self.data_start + info.data_offsets.0 as u64,
            from_le_bytes: &from_le_bytes,
        };
        let workers = if count < PARALLEL_ELEMENTS {
            1
        } else {
            self.workers
        };
        let results: Vec<Result<()>> = std::thread::scope(|scope| {
            let part = &part;
            let handles: Vec<_> = match info.shape.as_slice() {
                [rows, cols] if transpose => {
                    let (rows, cols) = (*rows, *cols);
                    // `count > 0`, so `rows` and `cols` are too.
                    let per_worker = cols.div_ceil(workers);
                    out.chunks_mut(per_worker * rows)
                        .enumerate()
                        .map(|(index, slice)| {
                            let columns =
                                index * per_worker..index * per_worker + slice.len() / rows;
                            scope.spawn(move || part.columns(rows, cols, columns, slice))
                        })
                        .collect()
                }
                _ => {
                    let per_worker = count.div_ceil(workers);
                    out.chunks_mut(per_worker)
                        .enumerate()
                        .map(|(index, slice)| {
                            scope.spawn(move || part.values(index * per_worker, slice))
                        })
                        .collect()
                }
            };
            handles
                .into_iter()
                .map(|handle| {
                    handle.join().unwrap_or_else(|_| {
                        Err(LoraError::InvalidFile {
                            path: self.path.display().to_string(),
                            format: "safetensors".into(),
                            reason: format!("reading tensor \"{key}\" failed"),
                        })
                    })
                })
                .collect()
        });
        results.into_iter().collect::<Result<Vec<()>>>()?;
        Ok(out)
    }
}

/// One stored tensor of a [`SafetensorsReader`], read as it is or transposed.
struct Stored<'a> {
    reader: &'a SafetensorsReader,
    key: &'a str,
    info: &'a TensorInfo,
    transpose: bool,
}

impl DenseSource for Stored<'_> {
    fn values<E: Element>(&self) -> Result<Vec<E>> {
        let (reader, key, info, transpose) = (self.reader, self.key, self.info, self.transpose);
        match info.dtype {
            Dtype::F32 => reader.decode(key, info, transpose, f32::from_le_bytes),
            Dtype::F64 => reader.decode(key, info, transpose, f64::from_le_bytes),
            Dtype::F16 => reader.decode(key, info, transpose, half::f16::from_le_bytes),
            Dtype::BF16 => reader.decode(key, info, transpose, half::bf16::from_le_bytes),
            other => Err(LoraError::UnsupportedDtype {
                path: reader.path.display().to_string(),
                key: key.to_string(),
                dtype: format!("{other:?}"),
            }),
        }
    }
}

/// One tensor's place in the file and how its values decode: what each worker reads from.
struct Part<'a, F> {
    reader: &'a SafetensorsReader,
    key: &'a str,
    /// The file offset of the tensor's first byte.
    start: u64,
    from_le_bytes: &'a F,
}

impl<F> Part<'_, F> {
    /// Reads `buffer.len()` bytes at `offset` from the tensor's start.
    fn read(&self, offset: usize, buffer: &mut [u8]) -> Result<()> {
        read_exact_at(&self.reader.file, buffer, self.start + offset as u64)
            .map_err(|e| io_error(&self.reader.path, e))
    }

    /// `E` from `N` bytes, refused when not finite.
    fn value<E: Element, S: ToElement, const N: usize>(&self, bytes: &[u8]) -> Result<E>
    where
        F: Fn([u8; N]) -> S,
    {
        let mut raw = [0u8; N];
        // Callers pass `chunks_exact(N)` slices, of exactly `N` bytes.
        raw.copy_from_slice(bytes);
        finite_elem((self.from_le_bytes)(raw)).ok_or_else(|| {
            LoraError::NonFinite(format!(
                "{}: tensor \"{}\"",
                self.reader.path.display(),
                self.key
            ))
        })
    }

    /// Values `first..first + out.len()` of the tensor, in order.
    fn values<E: Element, S: ToElement, const N: usize>(
        &self,
        first: usize,
        out: &mut [E],
    ) -> Result<()>
    where
        F: Fn([u8; N]) -> S,
    {
        let per_chunk = (CHUNK_BYTES / N).min(out.len());
        let mut bytes = vec![0u8; per_chunk * N];
        for (index, slots) in out.chunks_mut(per_chunk).enumerate() {
            let bytes = &mut bytes[..slots.len() * N];
            self.read((first + index * per_chunk) * N, bytes)?;
            for (slot, raw) in slots.iter_mut().zip(bytes.chunks_exact(N)) {
                *slot = self.value(raw)?;
            }
        }
        Ok(())
    }

    /// Columns `columns` of the stored `[rows, cols]` matrix as rows of the transposed result:
    /// `out[(c - columns.start) * rows + r]` is stored row `r`, column `c`. Reads whole stored
    /// rows, a block of them at a time, and writes each column's part of the block in one run.
    fn columns<E: Element, S: ToElement, const N: usize>(
        &self,
        rows: usize,
        cols: usize,
        columns: std::ops::Range<usize>,
        out: &mut [E],
    ) -> Result<()>
    where
        F: Fn([u8; N]) -> S,
    {
        let row_bytes = cols * N;
        let block_rows = (CHUNK_BYTES / row_bytes).clamp(1, rows);
        let mut bytes = vec![0u8; block_rows * row_bytes];
        let width = columns.len();
        let mut block: Vec<E> = Vec::with_capacity(block_rows * width);
        let mut first_row = 0;
        while first_row < rows {
            let n = block_rows.min(rows - first_row);
            let bytes = &mut bytes[..n * row_bytes];
            self.read(first_row * row_bytes, bytes)?;
            // This worker's columns of each row read, row after row.
            block.clear();
            for row in bytes.chunks_exact(row_bytes) {
                for raw in row[columns.start * N..columns.end * N].chunks_exact(N) {
                    block.push(self.value(raw)?);
                }
            }
            scatter_transposed(&block, width, rows, first_row, out);
            first_row += n;
        }
        Ok(())
    }
}

/// The float type `Tensor::from_data` creates on `device` (Burn's device settings decide it; an
/// empty tensor allocates nothing).
pub(crate) fn float_dtype<B: Backend>(device: &B::Device) -> DType {
    Tensor::<B, 1>::empty([0], device).dtype()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::io::tensor_file::tests::safetensors_bytes;

    /// A safetensors file in a fresh folder holding `tensors` (key, dtype, shape, raw bytes).
    fn file_with(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.safetensors");
        std::fs::write(&path, safetensors_bytes(tensors)).unwrap();
        (dir, path)
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// `rows × cols` distinct values, none of them round in f32.
    fn matrix(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| (i as f32) * 0.25 - 1000.125)
            .collect()
    }

    fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut out = vec![0.0; values.len()];
        for r in 0..rows {
            for c in 0..cols {
                out[c * rows + r] = values[r * cols + c];
            }
        }
        out
    }

    /// Equal lengths and values, naming the first difference (not printing a million values).
    fn assert_same(read: &[f32], expected: &[f32], what: &str) {
        assert_eq!(read.len(), expected.len(), "{what}: length");
        if let Some(index) = (0..read.len()).find(|&i| read[i] != expected[i]) {
            panic!(
                "{what}: value {index} is {}, expected {}",
                read[index], expected[index]
            );
        }
    }

    fn read_f32(
        path: &Path,
        key: &str,
        transpose: bool,
        workers: usize,
    ) -> Result<(Vec<usize>, Vec<f32>)> {
        let reader = SafetensorsReader::open(path)?.with_workers(workers);
        let data = reader.read_float(key, transpose, DType::F32)?;
        assert_eq!(data.dtype, DType::F32);
        Ok((data.shape.to_vec(), data.to_vec::<f32>().unwrap()))
    }

    #[test]
    fn tensors_larger_than_a_chunk_read_exactly_as_stored_and_transposed() {
        // 1031 × 1019 (4.2 MB) and 3 × 350,001 are split over 2 or 3 threads, in parts of
        // unequal length; the second has rows longer than a chunk. 300 × 257 is read by one thread in
        // more than one chunk, and no row count divides it evenly; 1 × 1 and 0-sized are the
        // edges.
        const { assert!(1031 * 1019 > PARALLEL_ELEMENTS && 350_001 * 4 > CHUNK_BYTES) };
        for (rows, cols) in [
            (1031, 1019),
            (3, 350_001),
            (300, 257),
            (1, 1),
            (2, 0),
            (0, 4),
            (17, 5),
        ] {
            let values = matrix(rows, cols);
            let (_dir, path) =
                file_with(&[("w", Dtype::F32, vec![rows, cols], f32_bytes(&values))]);
            let expected = transpose(&values, rows, cols);
            for workers in [1, 2, 3] {
                let what = format!("{rows}x{cols} by {workers} threads");
                let (shape, read) = read_f32(&path, "w", false, workers).unwrap();
                assert_eq!(shape, [rows, cols]);
                assert_same(&read, &values, &format!("{what}, as stored"));
                let (shape, read) = read_f32(&path, "w", true, workers).unwrap();
                assert_eq!(shape, [cols, rows]);
                assert_same(&read, &expected, &format!("{what}, transposed"));
            }
        }
    }

    #[test]
    fn half_precision_stays_bit_identical_in_its_own_type_and_converts_to_others() {
        let values = matrix(40, 33);
        let bf16: Vec<half::bf16> = values.iter().map(|v| half::bf16::from_f32(*v)).collect();
        let f16: Vec<half::f16> = values
            .iter()
            .map(|v| half::f16::from_f32(*v / 64.0))
            .collect();
        let bytes =
            |bits: Vec<u16>| -> Vec<u8> { bits.iter().flat_map(|b| b.to_le_bytes()).collect() };
        let (_dir, path) = file_with(&[
            (
                "b",
                Dtype::BF16,
                vec![40, 33],
                bytes(bf16.iter().map(|v| v.to_bits()).collect()),
            ),
            (
                "h",
                Dtype::F16,
                vec![40, 33],
                bytes(f16.iter().map(|v| v.to_bits()).collect()),
            ),
        ]);
        let reader = SafetensorsReader::open(&path).unwrap();

        let data = reader.read_float("b", false, DType::BF16).unwrap();
        assert_eq!(data.dtype, DType::BF16, "no f32 copy of a BF16 tensor");
        assert_eq!(data.to_vec::<half::bf16>().unwrap(), bf16);
        let data = reader.read_float("h", true, DType::F16).unwrap();
        assert_eq!(data.dtype, DType::F16);
        let stored: Vec<f32> = f16.iter().map(|v| v.to_f32()).collect();
        let expected: Vec<half::f16> = transpose(&stored, 40, 33)
            .iter()
            .map(|v| half::f16::from_f32(*v))
            .collect();
        assert_eq!(data.to_vec::<half::f16>().unwrap(), expected);

        // Into f32 and f64 each value converts exactly; BF16 into F16 rounds as `half` does.
        let data = reader.read_float("b", false, DType::F32).unwrap();
        let widened: Vec<f32> = bf16.iter().map(|v| v.to_f32()).collect();
        assert_eq!(data.to_vec::<f32>().unwrap(), widened);
        let data = reader.read_float("h", false, DType::F64).unwrap();
        let widened: Vec<f64> = f16.iter().map(|v| v.to_f64()).collect();
        assert_eq!(data.to_vec::<f64>().unwrap(), widened);
    }

    #[test]
    fn a_value_not_finite_in_the_target_type_is_an_error_naming_file_and_key() {
        // 70,000 is finite in f32 and beyond f16's 65,504.
        let (_dir, path) = file_with(&[
            ("big", Dtype::F32, vec![3], f32_bytes(&[1.0, 70_000.0, 2.0])),
            ("nan", Dtype::F32, vec![2], f32_bytes(&[1.0, f32::NAN])),
        ]);
        let reader = SafetensorsReader::open(&path).unwrap();
        assert!(reader.read_float("big", false, DType::F32).is_ok());
        for (key, dtype) in [
            ("big", DType::F16),
            ("nan", DType::F32),
            ("nan", DType::BF16),
        ] {
            let err = reader.read_float(key, false, dtype).unwrap_err();
            assert!(
                matches!(&err, LoraError::NonFinite(what)
                    if what.contains(&format!("\"{key}\"")) && what.contains("weights.safetensors")),
                "{key} as {dtype:?}: {err:?}"
            );
        }
    }

    #[test]
    fn non_float_dtypes_and_absent_keys_are_errors_naming_them() {
        let ids: Vec<u8> = [0i64, 1, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let (_dir, path) = file_with(&[("ids", Dtype::I64, vec![3], ids)]);
        let reader = SafetensorsReader::open(&path).unwrap();
        assert_eq!(reader.keys(), ["ids"]);
        assert!(matches!(
            reader.read_float("ids", false, DType::F32).unwrap_err(),
            LoraError::UnsupportedDtype { key, dtype, .. } if key == "ids" && dtype == "I64"
        ));
        assert!(matches!(
            reader.read_float("absent", false, DType::F32).unwrap_err(),
            LoraError::MissingKey { key, .. } if key == "absent"
        ));
    }

    #[test]
    fn truncated_padded_garbage_and_absent_files_are_errors_when_opened() {
        let (dir, path) = file_with(&[
            ("a", Dtype::F32, vec![2, 3], f32_bytes(&[0.5; 6])),
            ("b", Dtype::F32, vec![4], f32_bytes(&[0.25; 4])),
        ]);
        let valid = std::fs::read(&path).unwrap();
        assert!(
            SafetensorsReader::open(&path).is_ok(),
            "the untouched file opens"
        );
        let header = u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
        let mut huge_header = valid.clone();
        huge_header[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut padded = valid.clone();
        padded.extend_from_slice(&[0; 4]);
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let cases: [(&str, &[u8]); 8] = [
            ("truncated in the data", &valid[..valid.len() - 7]),
            ("truncated after the header", &valid[..8 + header]),
            ("truncated in the header", &valid[..8 + header / 2]),
            ("shorter than the length prefix", &valid[..5]),
            ("header length past the end", &huge_header),
            ("bytes after the last tensor", &padded),
            ("garbage bytes", &garbage),
            ("empty", &[]),
        ];
        for (what, bytes) in cases {
            let bad = dir.path().join("bad.safetensors");
            std::fs::write(&bad, bytes).unwrap();
            let err = SafetensorsReader::open(&bad).err().unwrap();
            assert!(
                matches!(&err, LoraError::InvalidFile { path, format, reason }
                    if path.ends_with("bad.safetensors") && format == "safetensors"
                        && !reason.is_empty()),
                "{what}: {err:?}"
            );
        }
        let absent = dir.path().join("absent.safetensors");
        assert!(matches!(
            SafetensorsReader::open(&absent).err().unwrap(),
            LoraError::Io { .. }
        ));
    }
}
