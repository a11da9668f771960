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
mod bgemm;
pub mod binary;
mod cast;
pub mod conv;
mod display;
mod index;
mod kv_element;
mod matmul;
mod norm;
mod packed_rhs;
pub mod pool;
mod reduce;
pub mod rowwise;
mod sgemm;
mod shape_ops;
pub mod unary;

pub use matmul::gemm_f32_reference;
pub(crate) use matmul::{gemm_into, GemmDType, MatRef};
pub use packed_rhs::PackedRhs;

use crate::{Result, Tensor, WithDType};

/// Apply `f` to every element of `t` (as `T`), producing a new contiguous tensor of `U`.
pub(crate) fn map_elements<T: WithDType, U: WithDType>(
    t: &Tensor,
    f: impl Fn(T) -> U + Sync,
) -> Result<Tensor> {
    let src = t.contiguous_slice::<T>()?;
    let out = map_slices(&src, &src, |x, _| f(x));
    Tensor::from_vec(out, t.shape().clone())
}

/// `f(a[i], b[i])` for every `i` into a new vector (`a` and `b` of one length), in chunks whose
/// inner loops vectorise, on rayon threads above [`PARALLEL_THRESHOLD`] elements.
pub(crate) fn map_slices<A: Copy + Sync, B: Copy + Sync, U: Send>(
    a: &[A],
    b: &[B],
    f: impl Fn(A, B) -> U + Sync,
) -> Vec<U> {
    let n = a.len();
    assert_eq!(n, b.len(), "map_slices: operands of different lengths");
    let mut out: Vec<U> = Vec::with_capacity(n);
    let dst = &mut out.spare_capacity_mut()[..n];
    if n >= PARALLEL_THRESHOLD {
        use rayon::prelude::*;
        dst.par_chunks_mut(PARALLEL_CHUNK)
            .zip(a.par_chunks(PARALLEL_CHUNK).zip(b.par_chunks(PARALLEL_CHUNK)))
            .for_each(|(o, (a, b))| fill_mv(o, a, b, &f));
    } else {
        fill_mv(dst, a, b, &f);
    }
    // SAFETY: `fill` wrote every one of the first `n` elements (the chunks cover `dst`).
    unsafe { out.set_len(n) };
    out
}

/// `o[i] = f(a[i], b[i])`: [`map_slices`]' loop (inlined into each instruction-set copy, and the
/// element function with it).
#[inline(always)]
fn fill<A: Copy, B: Copy, U, G: Fn(A, B) -> U>(o: &mut [std::mem::MaybeUninit<U>], a: &[A], b: &[B], f: &G) {
    for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
        o.write(f(x, y));
    }
}

crate::multiversion! {
    /// [`fill`] for this machine's widest vectors.
    fn fill_mv[A: Copy, B: Copy, U, G: Fn(A, B) -> U](o: &mut [std::mem::MaybeUninit<U>], a: &[A], b: &[B], f: &G) = fill[A, B, U, G]
}

/// Element counts above which element-wise kernels split work across rayon threads.
pub(crate) const PARALLEL_THRESHOLD: usize = 1 << 16;
/// Smallest chunk a rayon task gets, so task overhead stays negligible.
pub(crate) const PARALLEL_CHUNK: usize = 1 << 14;
