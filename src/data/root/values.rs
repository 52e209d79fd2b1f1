//! In-memory columns returned by the reader and accepted by the writer.
//!
//! A [`Column`] is either one value per entry ([`Column::Scalar`]) or a
//! variable number per entry ([`Column::Jagged`], with `entries + 1` offsets
//! into the flat [`Values`]), the same split as uproot's `AsDtype` versus
//! `AsJagged` interpretations (uproot `interpretation/numerical.py`,
//! `interpretation/jagged.py`).

use std::fmt;

/// Element type of a numeric column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElemType {
    /// `bool` (`Bool_t`, leaf type `O`).
    Bool,
    /// `int8_t` (`Char_t`, `B`).
    I8,
    /// `uint8_t` (`UChar_t`, `b`).
    U8,
    /// `int16_t` (`S`).
    I16,
    /// `uint16_t` (`s`).
    U16,
    /// `int32_t` (`I`).
    I32,
    /// `uint32_t` (`i`).
    U32,
    /// `int64_t` (`L`).
    I64,
    /// `uint64_t` (`l`).
    U64,
    /// `float` (`F`).
    F32,
    /// `double` (`D`).
    F64,
}

impl ElemType {
    /// Size in bytes on disk.
    pub fn size(self) -> usize {
        match self {
            ElemType::Bool | ElemType::I8 | ElemType::U8 => 1,
            ElemType::I16 | ElemType::U16 => 2,
            ElemType::I32 | ElemType::U32 | ElemType::F32 => 4,
            ElemType::I64 | ElemType::U64 | ElemType::F64 => 8,
        }
    }

    /// C++ spelling (`float`, `int32_t`, ...), as uproot's `typename` uses.
    pub fn cpp_name(self) -> &'static str {
        match self {
            ElemType::Bool => "bool",
            ElemType::I8 => "int8_t",
            ElemType::U8 => "uint8_t",
            ElemType::I16 => "int16_t",
            ElemType::U16 => "uint16_t",
            ElemType::I32 => "int32_t",
            ElemType::U32 => "uint32_t",
            ElemType::I64 => "int64_t",
            ElemType::U64 => "uint64_t",
            ElemType::F32 => "float",
            ElemType::F64 => "double",
        }
    }

    /// ROOT leaf-list type letter (`F`, `D`, `I`, `i`, ...).
    pub fn leaf_letter(self) -> char {
        match self {
            ElemType::Bool => 'O',
            ElemType::I8 => 'B',
            ElemType::U8 => 'b',
            ElemType::I16 => 'S',
            ElemType::U16 => 's',
            ElemType::I32 => 'I',
            ElemType::U32 => 'i',
            ElemType::I64 => 'L',
            ElemType::U64 => 'l',
            ElemType::F32 => 'F',
            ElemType::F64 => 'D',
        }
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cpp_name())
    }
}

/// A flat vector of numbers of one type.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// `bool`
    Bool(Vec<bool>),
    /// `int8_t`
    I8(Vec<i8>),
    /// `uint8_t`
    U8(Vec<u8>),
    /// `int16_t`
    I16(Vec<i16>),
    /// `uint16_t`
    U16(Vec<u16>),
    /// `int32_t`
    I32(Vec<i32>),
    /// `uint32_t`
    U32(Vec<u32>),
    /// `int64_t`
    I64(Vec<i64>),
    /// `uint64_t`
    U64(Vec<u64>),
    /// `float`
    F32(Vec<f32>),
    /// `double`
    F64(Vec<f64>),
}

macro_rules! each_values {
    ($v:expr, $x:ident => $e:expr) => {
        match $v {
            Values::Bool($x) => $e,
            Values::I8($x) => $e,
            Values::U8($x) => $e,
            Values::I16($x) => $e,
            Values::U16($x) => $e,
            Values::I32($x) => $e,
            Values::U32($x) => $e,
            Values::I64($x) => $e,
            Values::U64($x) => $e,
            Values::F32($x) => $e,
            Values::F64($x) => $e,
        }
    };
}

impl Values {
    /// Empty vector of the given type with reserved capacity.
    pub fn with_capacity(t: ElemType, n: usize) -> Values {
        match t {
            ElemType::Bool => Values::Bool(Vec::with_capacity(n)),
            ElemType::I8 => Values::I8(Vec::with_capacity(n)),
            ElemType::U8 => Values::U8(Vec::with_capacity(n)),
            ElemType::I16 => Values::I16(Vec::with_capacity(n)),
            ElemType::U16 => Values::U16(Vec::with_capacity(n)),
            ElemType::I32 => Values::I32(Vec::with_capacity(n)),
            ElemType::U32 => Values::U32(Vec::with_capacity(n)),
            ElemType::I64 => Values::I64(Vec::with_capacity(n)),
            ElemType::U64 => Values::U64(Vec::with_capacity(n)),
            ElemType::F32 => Values::F32(Vec::with_capacity(n)),
            ElemType::F64 => Values::F64(Vec::with_capacity(n)),
        }
    }

    /// Element type.
    pub fn elem_type(&self) -> ElemType {
        match self {
            Values::Bool(_) => ElemType::Bool,
            Values::I8(_) => ElemType::I8,
            Values::U8(_) => ElemType::U8,
            Values::I16(_) => ElemType::I16,
            Values::U16(_) => ElemType::U16,
            Values::I32(_) => ElemType::I32,
            Values::U32(_) => ElemType::U32,
            Values::I64(_) => ElemType::I64,
            Values::U64(_) => ElemType::U64,
            Values::F32(_) => ElemType::F32,
            Values::F64(_) => ElemType::F64,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        each_values!(self, v => v.len())
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i` converted to `f64` (`None` when out of range). 64-bit
    /// integers above 2^53 lose precision.
    pub fn get_f64(&self, i: usize) -> Option<f64> {
        match self {
            Values::Bool(v) => v.get(i).map(|&x| if x { 1.0 } else { 0.0 }),
            Values::I8(v) => v.get(i).map(|&x| x as f64),
            Values::U8(v) => v.get(i).map(|&x| x as f64),
            Values::I16(v) => v.get(i).map(|&x| x as f64),
            Values::U16(v) => v.get(i).map(|&x| x as f64),
            Values::I32(v) => v.get(i).map(|&x| x as f64),
            Values::U32(v) => v.get(i).map(|&x| x as f64),
            Values::I64(v) => v.get(i).map(|&x| x as f64),
            Values::U64(v) => v.get(i).map(|&x| x as f64),
            Values::F32(v) => v.get(i).map(|&x| x as f64),
            Values::F64(v) => v.get(i).copied(),
        }
    }

    /// All values converted to `f64`.
    pub fn to_f64(&self) -> Vec<f64> {
        (0..self.len()).filter_map(|i| self.get_f64(i)).collect()
    }

    /// Values `start..end` (clamped) as a new vector.
    pub fn slice(&self, start: usize, end: usize) -> Values {
        each_values!(self, v => {
            let e = end.min(v.len());
            let s = start.min(e);
            Values::from_vec_like(v.get(s..e).unwrap_or(&[]).to_vec())
        })
    }

    /// Decodes big-endian bytes (length must be a multiple of the size) and appends them.
    pub(super) fn push_be(&mut self, bytes: &[u8]) {
        match self {
            Values::Bool(v) => v.extend(bytes.iter().map(|&b| b != 0)),
            Values::I8(v) => v.extend(bytes.iter().map(|&b| b as i8)),
            Values::U8(v) => v.extend_from_slice(bytes),
            Values::I16(v) => v.extend(bytes.chunks_exact(2).map(|c| i16::from_be_bytes([c[0], c[1]]))),
            Values::U16(v) => v.extend(bytes.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]))),
            Values::I32(v) => v.extend(bytes.chunks_exact(4).map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))),
            Values::U32(v) => v.extend(bytes.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))),
            Values::F32(v) => v.extend(bytes.chunks_exact(4).map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))),
            Values::I64(v) => v.extend(bytes.chunks_exact(8).map(|c| i64::from_be_bytes(b8(c)))),
            Values::U64(v) => v.extend(bytes.chunks_exact(8).map(|c| u64::from_be_bytes(b8(c)))),
            Values::F64(v) => v.extend(bytes.chunks_exact(8).map(|c| f64::from_be_bytes(b8(c)))),
        }
    }

    /// Appends values `start..end` (clamped) as big-endian bytes to `out`.
    pub(super) fn write_be(&self, start: usize, end: usize, out: &mut Vec<u8>) {
        macro_rules! put {
            ($v:expr) => {{
                let e = end.min($v.len());
                let s = start.min(e);
                let part = $v.get(s..e).unwrap_or(&[]);
                out.reserve(part.len() * std::mem::size_of_val(&$v.first().copied().unwrap_or_default()));
                for x in part {
                    out.extend_from_slice(&x.to_be_bytes());
                }
            }};
        }
        match self {
            Values::Bool(v) => {
                let e = end.min(v.len());
                let s = start.min(e);
                out.extend(v.get(s..e).unwrap_or(&[]).iter().map(|&b| u8::from(b)));
            }
            Values::I8(v) => put!(v),
            Values::U8(v) => put!(v),
            Values::I16(v) => put!(v),
            Values::U16(v) => put!(v),
            Values::I32(v) => put!(v),
            Values::U32(v) => put!(v),
            Values::I64(v) => put!(v),
            Values::U64(v) => put!(v),
            Values::F32(v) => put!(v),
            Values::F64(v) => put!(v),
        }
    }
}

fn b8(c: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(c);
    a
}

/// Helper to build `Values` from a typed `Vec`.
trait FromVecLike: Sized {
    fn wrap(v: Vec<Self>) -> Values;
}
macro_rules! fvl {
    ($t:ty, $var:ident) => {
        impl FromVecLike for $t {
            fn wrap(v: Vec<Self>) -> Values {
                Values::$var(v)
            }
        }
        impl From<Vec<$t>> for Values {
            fn from(v: Vec<$t>) -> Values {
                Values::$var(v)
            }
        }
    };
}
fvl!(bool, Bool);
fvl!(i8, I8);
fvl!(u8, U8);
fvl!(i16, I16);
fvl!(u16, U16);
fvl!(i32, I32);
fvl!(u32, U32);
fvl!(i64, I64);
fvl!(u64, U64);
fvl!(f32, F32);
fvl!(f64, F64);

impl Values {
    fn from_vec_like<T: FromVecLike>(v: Vec<T>) -> Values {
        T::wrap(v)
    }
}

/// The contents of one branch.
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    /// One value per entry.
    Scalar(Values),
    /// A variable number of values per entry: entry `i` is
    /// `values[offsets[i]..offsets[i + 1]]`; `offsets.len() == entries + 1`.
    Jagged {
        /// `entries + 1` non-decreasing offsets starting at 0.
        offsets: Vec<u64>,
        /// All values, entry after entry.
        values: Values,
    },
}

impl Column {
    /// Number of entries.
    pub fn entries(&self) -> usize {
        match self {
            Column::Scalar(v) => v.len(),
            Column::Jagged { offsets, .. } => offsets.len().saturating_sub(1),
        }
    }

    /// The flat values.
    pub fn values(&self) -> &Values {
        match self {
            Column::Scalar(v) => v,
            Column::Jagged { values, .. } => values,
        }
    }

    /// Element type.
    pub fn elem_type(&self) -> ElemType {
        self.values().elem_type()
    }
}
