//! A frozen weight matrix kept quantized in host memory, dequantized where it is used.

use core::fmt;

use burn::tensor::backend::Backend;
use burn::tensor::quantization::{QuantLevel, QuantMode, QuantParam, QuantScheme, QuantValue};
use burn::tensor::{Tensor, TensorData};

/// Why a matrix could not be quantized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizeError(String);

impl fmt::Display for QuantizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot quantize the weight: {}", self.0)
    }
}

impl std::error::Error for QuantizeError {}

impl QuantizeError {
    /// What made the matrix unquantizable, without the message's prefix.
    pub fn reason(&self) -> &str {
        &self.0
    }
}

/// A matrix `W` `[rows, columns]` quantized with a [`QuantScheme`] of Burn 0.21: symmetric
/// integers of 8 bits (`Q8S`, `Q8F`) or 4 bits (`Q4S`, `Q4F`; two to a byte), one `f32` scale
/// per tensor (`QuantLevel::Tensor`) or per block of `b` consecutive values of a row
/// (`QuantLevel::Block` of one dimension, `b` dividing `columns`).
///
/// `q = round(w / scale)` clamped to the value type's range, `scale = max|w| / (range / 2)` over
/// the block (`range / 2` is 127 for `Q8S`, 127.5 for `Q8F`, 7 for `Q4S`, 7.5 for `Q4F`, as
/// Burn computes it), so that every value is within `scale / 2` of the original one; a block of
/// zeros has scale 0.
///
/// It lives in host memory whatever the backend, so that a layer generic over the backend can
/// keep it; [`dequantize`](Self::dequantize) gives the `f32` values back.
#[derive(Clone, PartialEq)]
pub struct QuantizedMatrix {
    shape: [usize; 2],
    bits: u8,
    block: usize,
    values: Vec<u8>,
    scales: Vec<f32>,
}

impl fmt::Debug for QuantizedMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuantizedMatrix")
            .field("shape", &self.shape)
            .field("bits", &self.bits)
            .field("block", &self.block)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl QuantizedMatrix {
    /// Quantizes `values`, a `[rows, columns]` matrix in row-major order, with `scheme`.
    ///
    /// # Errors
    /// A scheme this type does not hold (floating-point value types, `Q2*`, scales other than
    /// `f32`, blocks of more than one dimension or not dividing a row), a length other than
    /// `rows · columns`, or a value that is not finite.
    pub fn quantize(
        values: &[f32],
        [rows, columns]: [usize; 2],
        scheme: &QuantScheme,
    ) -> Result<Self, QuantizeError> {
        let (bits, half_range, [low, high]) = match scheme.value {
            QuantValue::Q8S => (8, 127.0, [-127.0, 127.0]),
            QuantValue::Q8F => (8, 127.5, [-128.0, 127.0]),
            QuantValue::Q4S => (4, 7.0, [-7.0, 7.0]),
            QuantValue::Q4F => (4, 7.5, [-8.0, 7.0]),
            other => {
                return Err(QuantizeError(format!(
                    "value type {other:?} (8- and 4-bit integers are held: Q8S, Q8F, Q4S, Q4F)"
                )))
            }
        };
        let QuantMode::Symmetric = scheme.mode;
        if scheme.param != QuantParam::F32 {
            return Err(QuantizeError(format!(
                "scales of {:?} (f32 scales are held)",
                scheme.param
            )));
        }
        let len = rows.checked_mul(columns).ok_or_else(|| {
            QuantizeError(format!("a [{rows}, {columns}] matrix has too many values"))
        })?;
        if values.len() != len {
            return Err(QuantizeError(format!(
                "{} values for a [{rows}, {columns}] matrix",
                values.len()
            )));
        }
        let block = match scheme.level {
            QuantLevel::Tensor => len.max(1),
            QuantLevel::Block(size) => match size.as_slice() {
                &[b] if b > 0 && columns.is_multiple_of(b as usize) => b as usize,
                other => {
                    return Err(QuantizeError(format!(
                        "blocks of {other:?} (blocks of one dimension dividing the row's {columns} \
                         values are held)"
                    )))
                }
            },
        };
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(QuantizeError(format!("value {index} is {}", values[index])));
        }
        let scales: Vec<f32> = values
            .chunks(block)
            .map(|chunk| chunk.iter().fold(0.0f32, |m, v| m.max(v.abs())) / half_range)
            .collect();
        // Written at their final length (a collected `flat_map` grows by doubling, and would
        // keep up to twice the bytes).
        let quantize = |index: usize, v: f32| {
            let scale = scales[index / block];
            let q = if scale > 0.0 {
                (v / scale).round()
            } else {
                0.0
            };
            q.clamp(low, high) as i8 as u8
        };
        let values: Vec<u8> = match bits {
            8 => values
                .iter()
                .enumerate()
                .map(|(i, &v)| quantize(i, v))
                .collect(),
            _ => values
                .chunks(2)
                .enumerate()
                .map(|(pair, v)| {
                    let low = quantize(2 * pair, v[0]) & 0x0f;
                    let high = v.get(1).map_or(0, |&v| quantize(2 * pair + 1, v) << 4);
                    low | high
                })
                .collect(),
        };
        Ok(Self {
            shape: [rows, columns],
            bits,
            block,
            values,
            scales,
        })
    }

    /// Quantizes a matrix tensor (read back to the host in `f32`) with `scheme`; see
    /// [`quantize`](Self::quantize) for the errors.
    pub fn from_tensor<B: Backend>(
        tensor: Tensor<B, 2>,
        scheme: &QuantScheme,
    ) -> Result<Self, QuantizeError> {
        let shape = tensor.dims();
        let data = tensor.into_data().convert::<f32>();
        let values = data
            .as_slice::<f32>()
            .map_err(|e| QuantizeError(format!("the tensor's values could not be read: {e:?}")))?;
        Self::quantize(values, shape, scheme)
    }

    /// The dequantized matrix as a tensor on `device`, `[rows, columns]`.
    pub fn to_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(self.dequantize(), self.shape), device)
    }

    /// The matrix's shape, `[rows, columns]`.
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }

    /// Bits per value: 8 or 4.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Values per scale (all of them for one scale per tensor).
    pub fn block(&self) -> usize {
        self.block
    }

    /// Bytes held: the packed values and the scales.
    pub fn bytes(&self) -> usize {
        self.values.len() + 4 * self.scales.len()
    }

    /// The `f32` values, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.shape[0] * self.shape[1]];
        self.dequantize_into(0, &mut out);
        out
    }

    /// Values `start..start + out.len()` of the row-major order into `out`, a block (one scale)
    /// at a time, so that the inner loops multiply by one scale and vectorise.
    pub(crate) fn dequantize_into(&self, start: usize, out: &mut [f32]) {
        let mut index = start;
        let mut rest = out;
        while !rest.is_empty() {
            let block = index / self.block;
            let len = ((block + 1) * self.block - index).min(rest.len());
            let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(len);
            let scale = self.scales[block];
            match self.bits {
                8 => {
                    for (out, &q) in chunk.iter_mut().zip(&self.values[index..index + len]) {
                        *out = q as i8 as f32 * scale;
                    }
                }
                _ => dequantize_nibbles(&self.values, index, chunk, scale),
            }
            index += len;
            rest = tail;
        }
    }
}

/// 4-bit values `index..index + out.len()` (two to a byte, the even one in the low half) times
/// `scale` into `out`.
fn dequantize_nibbles(values: &[u8], index: usize, out: &mut [f32], scale: f32) {
    // The nibble shifted to the top of a byte, read as `i8` and shifted back: sign-extended.
    let low = |byte: u8| ((byte << 4) as i8 >> 4) as f32 * scale;
    let high = |byte: u8| ((byte & 0xf0) as i8 >> 4) as f32 * scale;
    let (out, index) = match out.split_first_mut() {
        Some((first, rest)) if !index.is_multiple_of(2) => {
            *first = high(values[index / 2]);
            (rest, index + 1)
        }
        _ => (out, index),
    };
    let last = index + out.len().saturating_sub(1);
    let mut pairs = out.chunks_exact_mut(2);
    for (pair, &byte) in (&mut pairs).zip(&values[index / 2..]) {
        pair[0] = low(byte);
        pair[1] = high(byte);
    }
    if let [odd] = pairs.into_remainder() {
        *odd = low(values[last / 2]);
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::quantization::{QuantLevel, QuantScheme, QuantValue};

    use super::QuantizedMatrix;

    fn values(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect()
    }

    fn scheme(value: QuantValue, level: QuantLevel) -> QuantScheme {
        QuantScheme::default().with_value(value).with_level(level)
    }

    /// Any range of values, from any start and across blocks of odd sizes, comes back as each
    /// value's `q · scale`, read one at a time.
    #[test]
    fn any_range_dequantizes_value_by_value() {
        let original = values(4 * 9);
        for value in [QuantValue::Q8S, QuantValue::Q4S, QuantValue::Q4F] {
            for level in [
                QuantLevel::Tensor,
                QuantLevel::block([3]),
                QuantLevel::block([9]),
            ] {
                let q =
                    QuantizedMatrix::quantize(&original, [4, 9], &scheme(value, level)).unwrap();
                let one = |index: usize| {
                    let q_value = match q.bits {
                        8 => q.values[index] as i8,
                        _ => {
                            let byte = q.values[index / 2];
                            let nibble = if index.is_multiple_of(2) {
                                byte << 4
                            } else {
                                byte & 0xf0
                            };
                            (nibble as i8) >> 4
                        }
                    };
                    q_value as f32 * q.scales[index / q.block]
                };
                for start in 0..original.len() {
                    for len in 0..=original.len() - start {
                        let mut out = vec![f32::NAN; len];
                        q.dequantize_into(start, &mut out);
                        let expected: Vec<f32> = (start..start + len).map(one).collect();
                        assert_eq!(out, expected, "{value:?} {level:?} {start}+{len}");
                    }
                }
            }
        }
    }

    /// Every value within half its block's scale, for each value type, per tensor and per
    /// block; the bytes held are the packed values and one `f32` per block.
    #[test]
    fn values_come_back_within_half_a_scale() {
        let original = values(6 * 64);
        for value in [
            QuantValue::Q8S,
            QuantValue::Q8F,
            QuantValue::Q4S,
            QuantValue::Q4F,
        ] {
            for level in [QuantLevel::Tensor, QuantLevel::block([32])] {
                let q =
                    QuantizedMatrix::quantize(&original, [6, 64], &scheme(value, level)).unwrap();
                let back = q.dequantize();
                let blocks = original.len() / q.block();
                assert_eq!(
                    q.bytes(),
                    original.len() * q.bits() as usize / 8 + 4 * blocks
                );
                for (block, (o, b)) in original
                    .chunks(q.block())
                    .zip(back.chunks(q.block()))
                    .enumerate()
                {
                    let max = o.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let half = if q.bits() == 8 { 127.0 } else { 7.0 };
                    let tolerance = max / half / 2.0 + 1e-6;
                    for (o, b) in o.iter().zip(b) {
                        assert!(
                            (o - b).abs() <= tolerance,
                            "{value:?} {level:?} block {block}: {o} came back as {b}"
                        );
                    }
                }
            }
        }
    }

    /// The extremes and zero are exact, and a block of zeros stays zeros.
    #[test]
    fn extremes_zero_and_empty_blocks_are_exact() {
        let mut original = vec![0.0f32; 64];
        original[0] = -2.0;
        original[1] = 2.0;
        let q = QuantizedMatrix::quantize(
            &original,
            [2, 32],
            &scheme(QuantValue::Q4S, QuantLevel::block([32])),
        )
        .unwrap();
        assert_eq!(q.dequantize(), original);
    }

    #[test]
    fn unsupported_schemes_shapes_and_values_are_errors() {
        let v = values(64);
        let bad = [
            scheme(QuantValue::E4M3, QuantLevel::Tensor),
            scheme(QuantValue::Q2S, QuantLevel::Tensor),
            scheme(QuantValue::Q8S, QuantLevel::block([24])),
            scheme(QuantValue::Q8S, QuantLevel::block([4, 4])),
            scheme(QuantValue::Q8S, QuantLevel::Tensor)
                .with_param(burn::tensor::quantization::QuantParam::F16),
        ];
        for scheme in bad {
            let error = QuantizedMatrix::quantize(&v, [2, 32], &scheme).unwrap_err();
            assert!(error.to_string().starts_with("cannot quantize"), "{error}");
        }
        let q8 = scheme(QuantValue::Q8S, QuantLevel::Tensor);
        assert!(QuantizedMatrix::quantize(&v, [3, 32], &q8).is_err());
        let mut nan = v.clone();
        nan[5] = f32::NAN;
        let error = QuantizedMatrix::quantize(&nan, [2, 32], &q8).unwrap_err();
        assert!(error.to_string().contains("value 5"), "{error}");
    }
}
