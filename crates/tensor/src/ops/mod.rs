//! The operations on [`crate::Tensor`], one family per file. Every op validates its
//! arguments and returns an [`crate::Error`] naming itself and the shapes involved.

pub mod binary;
mod cast;
pub mod conv;
mod display;
mod index;
mod matmul;
mod norm;
pub mod pool;
mod reduce;
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
