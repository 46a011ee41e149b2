//! GGML's tensor types: the layout of each (values and bytes per block), and the dequantization
//! of those burn-lora reads, as ggml's `dequantize_row_*` and the `gguf` package (which
//! transformers uses) compute them: every product and sum rounds to f32 on its own, so the
//! values are bit for bit the reference's.

use half::{bf16, f16};

/// Values in a K-quant super-block.
const QK_K: usize = 256;

/// A tensor type of a GGUF file, by its ggml id. Every id ggml defines is known, so that a file
/// holding tensors burn-lora cannot read still opens, and only reading those tensors fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlType(u32);

/// `(name, id, values per block, bytes per block)` of every type ggml defines.
/// (Ids 4, 5 and 31-33 belonged to types ggml has removed; files with them are refused.)
const TYPES: [(&str, u32, usize, usize); 34] = [
    ("F32", 0, 1, 4),
    ("F16", 1, 1, 2),
    ("Q4_0", 2, 32, 2 + 16),
    ("Q4_1", 3, 32, 2 + 2 + 16),
    ("Q5_0", 6, 32, 2 + 4 + 16),
    ("Q5_1", 7, 32, 2 + 2 + 4 + 16),
    ("Q8_0", 8, 32, 2 + 32),
    ("Q8_1", 9, 32, 4 + 4 + 32),
    ("Q2_K", 10, QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
    ("Q3_K", 11, QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
    ("Q4_K", 12, QK_K, 2 + 2 + QK_K / 2 + 12),
    ("Q5_K", 13, QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
    ("Q6_K", 14, QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),
    ("Q8_K", 15, QK_K, 4 + QK_K + QK_K / 8),
    ("IQ2_XXS", 16, QK_K, 2 + QK_K / 4),
    ("IQ2_XS", 17, QK_K, 2 + QK_K / 4 + QK_K / 32),
    ("IQ3_XXS", 18, QK_K, 2 + QK_K / 4 + QK_K / 8),
    ("IQ1_S", 19, QK_K, 2 + QK_K / 8 + QK_K / 16),
    ("IQ4_NL", 20, 32, 2 + 16),
    ("IQ3_S", 21, QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4),
    ("IQ2_S", 22, QK_K, 2 + QK_K / 4 + QK_K / 16),
    ("IQ4_XS", 23, QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
    ("I8", 24, 1, 1),
    ("I16", 25, 1, 2),
    ("I32", 26, 1, 4),
    ("I64", 27, 1, 8),
    ("F64", 28, 1, 8),
    ("IQ1_M", 29, QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
    ("BF16", 30, 1, 2),
    ("TQ1_0", 34, QK_K, 2 + 4 * 13),
    ("TQ2_0", 35, QK_K, 2 + 64),
    ("MXFP4", 39, 32, 1 + 16),
    ("NVFP4", 40, 64, 4 + 32),
    ("Q1_0", 41, 128, 2 + 16),
];

impl GgmlType {
    pub const F32: Self = Self(0);
    pub const F16: Self = Self(1);
    pub const Q4_0: Self = Self(2);
    pub const Q4_1: Self = Self(3);
    pub const Q5_0: Self = Self(6);
    pub const Q5_1: Self = Self(7);
    pub const Q8_0: Self = Self(8);
    pub const Q4_K: Self = Self(12);
    pub const Q5_K: Self = Self(13);
    pub const Q6_K: Self = Self(14);
    pub const F64: Self = Self(28);
    pub const BF16: Self = Self(30);

    /// The type of ggml id `id`, if ggml defines one.
    pub fn from_id(id: u32) -> Option<Self> {
        TYPES
            .iter()
            .any(|&(_, known, _, _)| known == id)
            .then_some(Self(id))
    }

    /// `(name, values per block, bytes per block)`; `from_id` made only known ids.
    fn entry(self) -> (&'static str, usize, usize) {
        TYPES
            .iter()
            .find(|&&(_, id, _, _)| id == self.0)
            .map_or(("", 1, 0), |&(name, _, values, bytes)| {
                (name, values, bytes)
            })
    }

    /// Its name in ggml (`Q4_K`).
    pub fn name(self) -> &'static str {
        self.entry().0
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        self.entry().1
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.entry().2
    }

    /// Whether burn-lora dequantizes this type.
    pub fn is_readable(self) -> bool {
        matches!(self.0, 0 | 1 | 2 | 3 | 6 | 7 | 8 | 12 | 13 | 14 | 28 | 30)
    }

    /// Decodes the blocks in `bytes` (a whole number of them) into `out`, `block_values()`
    /// values for each. `is_readable()` types only; any other writes nothing.
    pub fn dequantize(self, bytes: &[u8], out: &mut [f32]) {
        let (values, size) = (self.block_values(), self.block_bytes());
        if size == 0 {
            return;
        }
        for (block, out) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(values)) {
            match self {
                Self::F32 => out[0] = f32::from_le_bytes(array(block)),
                Self::F16 => out[0] = f16::from_le_bytes(array(block)).to_f32(),
                Self::BF16 => out[0] = bf16::from_le_bytes(array(block)).to_f32(),
                Self::F64 => out[0] = f64::from_le_bytes(array(block)) as f32,
                Self::Q4_0 => q4_0(block, out),
                Self::Q4_1 => q4_1(block, out),
                Self::Q5_0 => q5_0(block, out),
                Self::Q5_1 => q5_1(block, out),
                Self::Q8_0 => q8_0(block, out),
                Self::Q4_K => q4_k(block, out),
                Self::Q5_K => q5_k(block, out),
                Self::Q6_K => q6_k(block, out),
                _ => {}
            }
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())
    }
}

/// The first `N` bytes of `bytes` (every caller passes a block at least that long).
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// The f16 at `offset`, as f32.
fn half_at(bytes: &[u8], offset: usize) -> f32 {
    f16::from_le_bytes([bytes[offset], bytes[offset + 1]]).to_f32()
}

/// `x = (q - 8)·d`: f16 `d`, 16 bytes whose low nibbles are values 0-15 and high nibbles 16-31.
fn q4_0(block: &[u8], out: &mut [f32]) {
    let d = half_at(block, 0);
    for (j, &q) in block[2..18].iter().enumerate() {
        out[j] = d * ((q & 0x0F) as i32 - 8) as f32;
        out[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

/// `x = q·d + m`: f16 `d`, f16 `m`, then nibbles as [`q4_0`].
fn q4_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (half_at(block, 0), half_at(block, 2));
    for (j, &q) in block[4..20].iter().enumerate() {
        out[j] = d * (q & 0x0F) as f32 + m;
        out[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// The 5-bit values of a `Q5_0` / `Q5_1` block: low nibbles as [`q4_0`], the fifth bit of value
/// `j` is bit `j` of the little-endian u32 `qh`.
fn five_bit(qh: u32, qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for (j, &byte) in qs.iter().enumerate() {
        q[j] = (byte & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        q[j + 16] = (byte >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

/// `x = (q - 16)·d`: f16 `d`, u32 `qh`, 16 bytes of nibbles.
fn q5_0(block: &[u8], out: &mut [f32]) {
    let d = half_at(block, 0);
    let q = five_bit(u32::from_le_bytes(array(&block[2..])), &block[6..22]);
    for (x, q) in out.iter_mut().zip(q) {
        *x = d * (q as i32 - 16) as f32;
    }
}

/// `x = q·d + m`: f16 `d`, f16 `m`, u32 `qh`, 16 bytes of nibbles.
fn q5_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (half_at(block, 0), half_at(block, 2));
    let q = five_bit(u32::from_le_bytes(array(&block[4..])), &block[8..24]);
    for (x, q) in out.iter_mut().zip(q) {
        *x = d * q as f32 + m;
    }
}

/// `x = q·d`: f16 `d`, 32 × i8.
fn q8_0(block: &[u8], out: &mut [f32]) {
    let d = half_at(block, 0);
    for (x, &q) in out.iter_mut().zip(&block[2..34]) {
        *x = (q as i8) as f32 * d;
    }
}

/// The 6-bit scale and min of sub-block `j` (0-7) of a `Q4_K` / `Q5_K` super-block, packed in
/// its 12 scale bytes (ggml's `get_scale_min_k4`).
fn scale_min(scales: &[u8], j: usize) -> (f32, f32) {
    let (scale, min) = if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    };
    (scale as f32, min as f32)
}

/// `x = (d·scale)·q - dmin·min` per sub-block of 32: f16 `d`, f16 `dmin`, 12 scale bytes, then
/// 128 bytes in groups of 32 whose low nibbles are one sub-block and high nibbles the next.
fn q4_k(block: &[u8], out: &mut [f32]) {
    let (d, dmin) = (half_at(block, 0), half_at(block, 2));
    let (scales, qs) = (&block[4..16], &block[16..144]);
    for (j, out) in out.chunks_exact_mut(32).enumerate() {
        let (scale, min) = scale_min(scales, j);
        let (d, m) = (d * scale, dmin * min);
        let shift = 4 * (j % 2);
        for (x, &q) in out.iter_mut().zip(&qs[32 * (j / 2)..]) {
            *x = d * ((q >> shift) & 0x0F) as f32 - m;
        }
    }
}

/// [`q4_k`] with a fifth bit: 32 bytes `qh` after the scales, bit `j` of `qh[l]` going to value
/// `l` of sub-block `j`.
fn q5_k(block: &[u8], out: &mut [f32]) {
    let (d, dmin) = (half_at(block, 0), half_at(block, 2));
    let (scales, qh, qs) = (&block[4..16], &block[16..48], &block[48..176]);
    for (j, out) in out.chunks_exact_mut(32).enumerate() {
        let (scale, min) = scale_min(scales, j);
        let (d, m) = (d * scale, dmin * min);
        let shift = 4 * (j % 2);
        for (l, x) in out.iter_mut().enumerate() {
            let low = (qs[32 * (j / 2) + l] >> shift) & 0x0F;
            let high = ((qh[l] >> j) & 1) << 4;
            *x = d * (low | high) as f32 - m;
        }
    }
}

/// `x = (d·scale)·(q - 32)` per sub-block of 16: 128 bytes of low nibbles, 64 bytes of 2-bit
/// highs, 16 × i8 scales, f16 `d`, laid out in two halves of 128 values (ggml's
/// `dequantize_row_q6_K`).
fn q6_k(block: &[u8], out: &mut [f32]) {
    let (ql, qh, scales) = (&block[..128], &block[128..192], &block[192..208]);
    let d = half_at(block, 208);
    for (half, out) in out.chunks_exact_mut(128).enumerate() {
        let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
        for l in 0..32 {
            let quarters = [
                (ql[l] & 0x0F) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (k, q) in quarters.into_iter().enumerate() {
                let index = 32 * k + l;
                let scale = scales[8 * half + index / 16] as i8 as f32;
                out[index] = d * scale * (q as i32 - 32) as f32;
            }
        }
    }
}
