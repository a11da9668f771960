//! Metadata values: the typed key-value pairs of a GGUF header, their parsing, and accessors.

use crate::error::{GgufError, Result};
use crate::reader::Reader;

/// How deep arrays may nest (an array of arrays is depth 2). ggml itself writes depth 1; a
/// deeper one in a file is an error rather than unbounded recursion.
pub const MAX_ARRAY_DEPTH: usize = 4;

/// The type id of a metadata value, as stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// 0: u8.
    U8,
    /// 1: i8.
    I8,
    /// 2: u16.
    U16,
    /// 3: i16.
    I16,
    /// 4: u32.
    U32,
    /// 5: i32.
    I32,
    /// 6: f32.
    F32,
    /// 7: bool (one byte, 0 or 1).
    Bool,
    /// 8: string (u64 length + UTF-8 bytes).
    String,
    /// 9: array (element type u32, count u64, elements).
    Array,
    /// 10: u64.
    U64,
    /// 11: i64.
    I64,
    /// 12: f64.
    F64,
}

impl ValueType {
    /// The type for a file's type id, `None` for ids outside 0..=12.
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The id stored in the file.
    pub fn id(self) -> u32 {
        use ValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// A short name (`u32`, `string`, ...).
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// The fewest bytes one value of this type takes in the file.
    fn min_bytes(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetadataValue {
    /// u8.
    U8(u8),
    /// i8.
    I8(i8),
    /// u16.
    U16(u16),
    /// i16.
    I16(i16),
    /// u32.
    U32(u32),
    /// i32.
    I32(i32),
    /// u64.
    U64(u64),
    /// i64.
    I64(i64),
    /// f32.
    F32(f32),
    /// f64.
    F64(f64),
    /// bool.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of one element type.
    Array(MetadataArray),
}

/// An array value, stored per element type so typed access is a slice and 49 152 token
/// strings take no more than the strings themselves.
#[derive(Clone, Debug, PartialEq)]
pub enum MetadataArray {
    /// u8 elements.
    U8(Vec<u8>),
    /// i8 elements.
    I8(Vec<i8>),
    /// u16 elements.
    U16(Vec<u16>),
    /// i16 elements.
    I16(Vec<i16>),
    /// u32 elements.
    U32(Vec<u32>),
    /// i32 elements.
    I32(Vec<i32>),
    /// u64 elements.
    U64(Vec<u64>),
    /// i64 elements.
    I64(Vec<i64>),
    /// f32 elements.
    F32(Vec<f32>),
    /// f64 elements.
    F64(Vec<f64>),
    /// bool elements.
    Bool(Vec<bool>),
    /// string elements.
    String(Vec<String>),
    /// Nested arrays (each with its own element type).
    Array(Vec<MetadataArray>),
}

macro_rules! array_accessors {
    ($($name:ident, $variant:ident, $t:ty;)*) => {
        impl MetadataArray {$(
            #[doc = concat!("The elements when they are `", stringify!($t), "`.")]
            pub fn $name(&self) -> Option<&[$t]> {
                match self {
                    MetadataArray::$variant(v) => Some(v),
                    _ => None,
                }
            }
        )*}
        impl MetadataValue {$(
            #[doc = concat!("The elements of an array of `", stringify!($t), "`.")]
            pub fn $name(&self) -> Option<&[$t]> {
                self.as_array()?.$name()
            }
        )*}
    };
}

array_accessors! {
    as_u8_array, U8, u8;
    as_i8_array, I8, i8;
    as_u16_array, U16, u16;
    as_i16_array, I16, i16;
    as_u32_array, U32, u32;
    as_i32_array, I32, i32;
    as_u64_array, U64, u64;
    as_i64_array, I64, i64;
    as_f32_array, F32, f32;
    as_f64_array, F64, f64;
    as_bool_array, Bool, bool;
    as_string_array, String, String;
    as_nested_array, Array, MetadataArray;
}

impl MetadataArray {
    /// The element type.
    pub fn element_type(&self) -> ValueType {
        match self {
            MetadataArray::U8(_) => ValueType::U8,
            MetadataArray::I8(_) => ValueType::I8,
            MetadataArray::U16(_) => ValueType::U16,
            MetadataArray::I16(_) => ValueType::I16,
            MetadataArray::U32(_) => ValueType::U32,
            MetadataArray::I32(_) => ValueType::I32,
            MetadataArray::U64(_) => ValueType::U64,
            MetadataArray::I64(_) => ValueType::I64,
            MetadataArray::F32(_) => ValueType::F32,
            MetadataArray::F64(_) => ValueType::F64,
            MetadataArray::Bool(_) => ValueType::Bool,
            MetadataArray::String(_) => ValueType::String,
            MetadataArray::Array(_) => ValueType::Array,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetadataArray::U8(v) => v.len(),
            MetadataArray::I8(v) => v.len(),
            MetadataArray::U16(v) => v.len(),
            MetadataArray::I16(v) => v.len(),
            MetadataArray::U32(v) => v.len(),
            MetadataArray::I32(v) => v.len(),
            MetadataArray::U64(v) => v.len(),
            MetadataArray::I64(v) => v.len(),
            MetadataArray::F32(v) => v.len(),
            MetadataArray::F64(v) => v.len(),
            MetadataArray::Bool(v) => v.len(),
            MetadataArray::String(v) => v.len(),
            MetadataArray::Array(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A description such as `array of 3 u32` for error messages.
    pub fn type_description(&self) -> String {
        format!("array of {} {}", self.len(), self.element_type().name())
    }
}

impl MetadataValue {
    /// The stored type.
    pub fn value_type(&self) -> ValueType {
        match self {
            MetadataValue::U8(_) => ValueType::U8,
            MetadataValue::I8(_) => ValueType::I8,
            MetadataValue::U16(_) => ValueType::U16,
            MetadataValue::I16(_) => ValueType::I16,
            MetadataValue::U32(_) => ValueType::U32,
            MetadataValue::I32(_) => ValueType::I32,
            MetadataValue::U64(_) => ValueType::U64,
            MetadataValue::I64(_) => ValueType::I64,
            MetadataValue::F32(_) => ValueType::F32,
            MetadataValue::F64(_) => ValueType::F64,
            MetadataValue::Bool(_) => ValueType::Bool,
            MetadataValue::String(_) => ValueType::String,
            MetadataValue::Array(_) => ValueType::Array,
        }
    }

    /// A description of the type for error messages (`u32`, `array of 3 string`, ...).
    pub fn type_description(&self) -> String {
        match self {
            MetadataValue::Array(a) => a.type_description(),
            v => v.value_type().name().to_string(),
        }
    }

    /// The value of any integer type, widened to i128 (`None` for non-integers).
    fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            MetadataValue::U8(v) => v.into(),
            MetadataValue::I8(v) => v.into(),
            MetadataValue::U16(v) => v.into(),
            MetadataValue::I16(v) => v.into(),
            MetadataValue::U32(v) => v.into(),
            MetadataValue::I32(v) => v.into(),
            MetadataValue::U64(v) => v.into(),
            MetadataValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value of any integer type whose value fits in a u32.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_integer().and_then(|v| u32::try_from(v).ok())
    }

    /// The value of any unsigned integer type, or of a signed one holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_integer().and_then(|v| u64::try_from(v).ok())
    }

    /// The value of any integer type whose value fits in an i32.
    pub fn as_i32(&self) -> Option<i32> {
        self.as_integer().and_then(|v| i32::try_from(v).ok())
    }

    /// The value of any integer type whose value fits in an i64.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_integer().and_then(|v| i64::try_from(v).ok())
    }

    /// An f32 value (an f64 one is rounded to f32).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetadataValue::F32(v) => Some(v),
            MetadataValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// An f64 or f32 value.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::F32(v) => Some(v.into()),
            MetadataValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// A bool value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// A string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// An array value.
    pub fn as_array(&self) -> Option<&MetadataArray> {
        match self {
            MetadataValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Reads one value of type `ty`; `what` names it in errors.
pub(crate) fn read_value(r: &mut Reader<'_>, ty: ValueType, what: &str) -> Result<MetadataValue> {
    Ok(match ty {
        ValueType::U8 => MetadataValue::U8(r.u8(what)?),
        ValueType::I8 => MetadataValue::I8(r.i8(what)?),
        ValueType::U16 => MetadataValue::U16(r.u16(what)?),
        ValueType::I16 => MetadataValue::I16(r.i16(what)?),
        ValueType::U32 => MetadataValue::U32(r.u32(what)?),
        ValueType::I32 => MetadataValue::I32(r.i32(what)?),
        ValueType::U64 => MetadataValue::U64(r.u64(what)?),
        ValueType::I64 => MetadataValue::I64(r.i64(what)?),
        ValueType::F32 => MetadataValue::F32(r.f32(what)?),
        ValueType::F64 => MetadataValue::F64(r.f64(what)?),
        ValueType::Bool => MetadataValue::Bool(read_bool(r, what)?),
        ValueType::String => MetadataValue::String(r.string(what)?),
        ValueType::Array => MetadataValue::Array(read_array(r, what, 1)?),
    })
}

/// Reads a value type id.
pub(crate) fn read_type(r: &mut Reader<'_>, what: &str) -> Result<ValueType> {
    let offset = r.pos();
    let type_id = r.u32(what)?;
    ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
        what: what.to_string(),
        offset,
        type_id,
    })
}

fn read_bool(r: &mut Reader<'_>, what: &str) -> Result<bool> {
    let offset = r.pos();
    match r.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::InvalidBool {
            what: what.to_string(),
            offset,
            value,
        }),
    }
}

/// Reads an array (element type, count, elements) at nesting `depth` (1 for a top-level array).
fn read_array(r: &mut Reader<'_>, what: &str, depth: usize) -> Result<MetadataArray> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::NestingTooDeep {
            what: what.to_string(),
            offset: r.pos(),
            depth,
            max: MAX_ARRAY_DEPTH,
        });
    }
    let elem = read_type(r, what)?;
    // Bounded by the remaining bytes, so collecting into a Vec of `n` never over-allocates.
    let n = r.count(elem.min_bytes(), what)?;
    macro_rules! elems {
        ($variant:ident, $read:expr) => {
            MetadataArray::$variant((0..n).map(|_| $read).collect::<Result<Vec<_>>>()?)
        };
    }
    Ok(match elem {
        ValueType::U8 => MetadataArray::U8(r.take(n as u64, what)?.to_vec()),
        ValueType::I8 => elems!(I8, r.i8(what)),
        ValueType::U16 => elems!(U16, r.u16(what)),
        ValueType::I16 => elems!(I16, r.i16(what)),
        ValueType::U32 => elems!(U32, r.u32(what)),
        ValueType::I32 => elems!(I32, r.i32(what)),
        ValueType::U64 => elems!(U64, r.u64(what)),
        ValueType::I64 => elems!(I64, r.i64(what)),
        ValueType::F32 => elems!(F32, r.f32(what)),
        ValueType::F64 => elems!(F64, r.f64(what)),
        ValueType::Bool => elems!(Bool, read_bool(r, what)),
        ValueType::String => elems!(String, r.string(what)),
        ValueType::Array => elems!(Array, read_array(r, what, depth + 1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_accessors_widen_and_reject_what_does_not_fit() {
        assert_eq!(MetadataValue::U8(7).as_u64(), Some(7));
        assert_eq!(MetadataValue::I32(7).as_u64(), Some(7));
        assert_eq!(MetadataValue::I32(-1).as_u64(), None);
        assert_eq!(MetadataValue::U64(1 << 40).as_u32(), None);
        assert_eq!(MetadataValue::U64(5).as_u32(), Some(5));
        assert_eq!(MetadataValue::F32(1.0).as_u32(), None);
        assert_eq!(MetadataValue::String("x".into()).as_str(), Some("x"));
        let a = MetadataValue::Array(MetadataArray::I32(vec![1, 2]));
        assert_eq!(a.as_i32_array(), Some(&[1, 2][..]));
        assert_eq!(a.as_string_array(), None);
        assert_eq!(a.type_description(), "array of 2 i32");
    }

    #[test]
    fn type_ids_round_trip() {
        for id in 0..13 {
            assert_eq!(ValueType::from_id(id).map(ValueType::id), Some(id));
        }
        assert_eq!(ValueType::from_id(13), None);
    }
}
