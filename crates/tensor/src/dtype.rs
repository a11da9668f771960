//! Element types: the runtime [`DType`] tag and the [`WithDType`] trait that ties it to Rust types.

use half::{bf16, f16};

use crate::storage::{Buffer, CpuStorage};

/// The element type of a tensor, chosen at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// Unsigned 8-bit integer (images, masks).
    U8,
    /// Unsigned 32-bit integer (token ids).
    U32,
    /// Signed 64-bit integer (indices, as PyTorch's `long`).
    I64,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// 32-bit float, the default for training.
    F32,
    /// 64-bit float (reference computations, gradient checks).
    F64,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// Whether this is an integer type.
    pub fn is_int(self) -> bool {
        !self.is_float()
    }

    /// The lowercase name used in file formats and messages (`f32`, `bf16`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::U8 => "u8",
            DType::U32 => "u32",
            DType::I64 => "i64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }

    /// Every dtype, in a fixed order.
    pub const ALL: [DType; 7] = [
        DType::U8,
        DType::U32,
        DType::I64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
    ];
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Rust type that can be a tensor element. Arithmetic on integers wraps, as in PyTorch.
pub trait WithDType:
    Copy
    + Send
    + Sync
    + 'static
    + bytemuck::Pod
    + PartialOrd
    + PartialEq
    + std::fmt::Debug
    + std::fmt::Display
    + Default
{
    /// The runtime tag of this type.
    const DTYPE: DType;
    /// The additive identity.
    const ZERO: Self;
    /// The multiplicative identity.
    const ONE: Self;
    /// Convert from f64 (saturating / rounding toward zero for integers, as `as` does).
    fn from_f64(v: f64) -> Self;
    /// Convert to f64.
    fn to_f64(self) -> f64;
    /// Addition (wrapping for integers).
    fn add(self, o: Self) -> Self;
    /// Subtraction (wrapping for integers).
    fn sub(self, o: Self) -> Self;
    /// Multiplication (wrapping for integers).
    fn mul(self, o: Self) -> Self;
    /// Division (integer division truncates; division by zero gives zero for integers).
    fn div(self, o: Self) -> Self;
    /// Wrap a buffer of this type into CPU storage.
    fn into_storage(buf: Buffer<Self>) -> CpuStorage;
    /// Borrow the elements of storage of this type, or `None` for another dtype.
    fn storage_slice(s: &CpuStorage) -> Option<&[Self]>;
}

macro_rules! float_with_dtype {
    ($t:ty, $variant:ident, $from:expr, $to:expr, $zero:expr, $one:expr) => {
        impl WithDType for $t {
            const DTYPE: DType = DType::$variant;
            const ZERO: Self = $zero;
            const ONE: Self = $one;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                $to(self)
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self + o
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self - o
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self * o
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                self / o
            }
            fn into_storage(buf: Buffer<Self>) -> CpuStorage {
                CpuStorage::$variant(buf)
            }
            fn storage_slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(b) => Some(b.as_slice()),
                    _ => None,
                }
            }
        }
    };
}

macro_rules! int_with_dtype {
    ($t:ty, $variant:ident) => {
        impl WithDType for $t {
            const DTYPE: DType = DType::$variant;
            const ZERO: Self = 0;
            const ONE: Self = 1;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self.wrapping_sub(o)
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                if o == 0 {
                    0
                } else {
                    self.wrapping_div(o)
                }
            }
            fn into_storage(buf: Buffer<Self>) -> CpuStorage {
                CpuStorage::$variant(buf)
            }
            fn storage_slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(b) => Some(b.as_slice()),
                    _ => None,
                }
            }
        }
    };
}

int_with_dtype!(u8, U8);
int_with_dtype!(u32, U32);
int_with_dtype!(i64, I64);
float_with_dtype!(f32, F32, |v| v as f32, |v| v as f64, 0.0, 1.0);
float_with_dtype!(f64, F64, |v| v, |v| v, 0.0, 1.0);
float_with_dtype!(f16, F16, f16::from_f64, f16::to_f64, f16::ZERO, f16::ONE);
float_with_dtype!(bf16, BF16, bf16::from_f64, bf16::to_f64, bf16::ZERO, bf16::ONE);

/// A float type with native math (f32, f64); f16/bf16 compute through f32.
pub trait FloatDType: WithDType + num_traits::Float + std::iter::Sum {
    /// Convert from f32.
    fn from_f32(v: f32) -> Self;
}

impl FloatDType for f32 {
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl FloatDType for f64 {
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v as f64
    }
}
