//! The metadata values of a GGUF file.

/// A metadata value of a GGUF file, with the type the file gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `UINT8`.
    U8(u8),
    /// `INT8`.
    I8(i8),
    /// `UINT16`.
    U16(u16),
    /// `INT16`.
    I16(i16),
    /// `UINT32`.
    U32(u32),
    /// `INT32`.
    I32(i32),
    /// `UINT64`.
    U64(u64),
    /// `INT64`.
    I64(i64),
    /// `FLOAT32`.
    F32(f32),
    /// `FLOAT64`.
    F64(f64),
    /// `BOOL`.
    Bool(bool),
    /// `STRING` (UTF-8).
    String(String),
    /// `ARRAY`: values of one type.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// An integer of any width and sign, if it is one and not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// An integer of any width and sign.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// A number of any type, as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(v) => Some(v),
            _ => None,
        }
    }

    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// An array's values.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(v) => Some(v),
            _ => None,
        }
    }

    /// The name of its type, as GGUF's specification writes it (`UINT32`, `ARRAY`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "UINT8",
            Self::I8(_) => "INT8",
            Self::U16(_) => "UINT16",
            Self::I16(_) => "INT16",
            Self::U32(_) => "UINT32",
            Self::I32(_) => "INT32",
            Self::U64(_) => "UINT64",
            Self::I64(_) => "INT64",
            Self::F32(_) => "FLOAT32",
            Self::F64(_) => "FLOAT64",
            Self::Bool(_) => "BOOL",
            Self::String(_) => "STRING",
            Self::Array(_) => "ARRAY",
        }
    }
}
