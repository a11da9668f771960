//! The operations on [`crate::Tensor`], one family per file. Every op validates its
//! arguments and returns an [`crate::Error`] naming itself and the shapes involved.

// Defined before the modules so every op file can use it.
/// Run `$native` with `$F` bound to f32 or f64, `$half` for f16/bf16, and error on integers.
macro_rules! float_dispatch {
    ($op:expr, $dtype:expr, $F:ident => $native:expr, half => $half:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $F = f32;
                $native
            }
            $crate::DType::F64 => {
                type $F = f64;
                $native
            }
            $crate::DType::F16 | $crate::DType::BF16 => $half,
            dtype => Err($crate::Error::UnsupportedDType {
                op: $op,
                dtype,
                expected: "a float dtype (f16, bf16, f32, f64)",
            }),
        }
    };
}

pub mod attention;
pub mod binary;
mod cast;
pub mod conv;
mod display;
mod index;
mod matmul;
mod norm;
pub mod pool;
mod reduce;
pub mod rowwise;
mod shape_ops;
pub mod unary;

pub use matmul::gemm_f32_reference;
pub(crate) use matmul::{gemm_into, GemmDType, MatRef};

use crate::{Result, Tensor, WithDType};

/// Apply `f` to every element of `t` (as `T`), producing a new contiguous tensor of `U`.
pub(crate) fn map_elements<T: WithDType, U: WithDType>(
    t: &Tensor,
    f: impl Fn(T) -> U + Sync,
) -> Result<Tensor> {
    let src = t.contiguous_slice::<T>()?;
    let out: Vec<U> = if src.len() >= PARALLEL_THRESHOLD {
        use rayon::prelude::*;
        src.par_iter()
            .with_min_len(PARALLEL_CHUNK)
            .map(|&x| f(x))
            .collect()
    } else {
        src.iter().map(|&x| f(x)).collect()
    };
    Tensor::from_vec(out, t.shape().clone())
}

/// Element counts above which element-wise kernels split work across rayon threads.
pub(crate) const PARALLEL_THRESHOLD: usize = 1 << 16;
/// Smallest chunk a rayon task gets, so task overhead stays negligible.
pub(crate) const PARALLEL_CHUNK: usize = 1 << 14;
