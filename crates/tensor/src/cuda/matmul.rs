//! Batched matrix products through cuBLAS. kiln is row-major and cuBLAS column-major: a
//! row-major `C = A·B` is the column-major `Cᵀ = Bᵀ·Aᵀ`, so the operands swap places and each
//! one is read in place when its matrices are row-major or transposed (a weight's `.t()` view)
//! with one stride between batch entries; anything else is copied first. f16 and bf16 use the
//! tensor cores with f32 accumulation.

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{CudaSlice, CudaView, DevicePtr, DevicePtrMut, DeviceRepr};

use super::storage::{CudaBuf, CudaStorage};
use crate::backend::DeviceStorage;
use crate::{Error, Layout, Result};

/// How one operand is read: its elements, how cuBLAS sees its matrices, and the batch stride.
struct Operand {
    /// A contiguous copy, when the layout could not be read in place.
    copy: Option<CudaStorage>,
    /// First element of the first matrix.
    offset: usize,
    /// Whether the matrices are stored transposed (column-major for kiln).
    transposed: bool,
    /// Leading dimension for cuBLAS.
    ld: usize,
    /// Elements between consecutive batch entries (0 when broadcast).
    batch_stride: usize,
}

/// The single stride between batch entries of `layout`'s leading dimensions, if they have one.
fn batch_stride(layout: &Layout) -> Option<usize> {
    let r = layout.dims().len();
    let (dims, strides) = (&layout.dims()[..r - 2], &layout.strides()[..r - 2]);
    let real: Vec<(usize, usize)> = dims
        .iter()
        .zip(strides)
        .filter(|(&d, _)| d > 1)
        .map(|(&d, &s)| (d, s))
        .collect();
    if real.iter().all(|&(_, s)| s == 0) {
        return Some(0);
    }
    // Collapsible: each stride is the next one times the next size.
    for w in real.windows(2) {
        if w[0].1 != w[1].1 * w[1].0 {
            return None;
        }
    }
    real.last().map(|&(_, s)| s)
}

/// Describe an operand with matrices `rows x cols` at the end of `layout`.
fn operand(s: &CudaStorage, layout: &Layout, rows: usize, cols: usize) -> Result<Operand> {
    let r = layout.dims().len();
    let (rs, cs) = (layout.strides()[r - 2], layout.strides()[r - 1]);
    let in_place = batch_stride(layout).and_then(|bs| {
        if (cs == 1 || cols == 1) && (rs == cols || rows == 1) {
            Some((false, cols.max(1), bs))
        } else if (rs == 1 || rows == 1) && (cs == rows || cols == 1) {
            Some((true, rows.max(1), bs))
        } else {
            None
        }
    });
    Ok(match in_place {
        Some((transposed, ld, batch_stride)) => Operand {
            copy: None,
            offset: layout.offset(),
            transposed,
            ld,
            batch_stride,
        },
        None => Operand {
            copy: Some(s.copy_strided(layout)?),
            offset: 0,
            transposed: false,
            ld: cols.max(1),
            batch_stride: rows * cols,
        },
    })
}

/// A view of `s` from `offset` to its end, as the element type `T`.
fn view_from<T>(s: &CudaSlice<T>, offset: usize) -> CudaView<'_, T> {
    s.slice(offset..)
}

/// `[batch.., m, k] x [batch.., k, n]` on the GPU (layouts already broadcast over the batch).
pub(crate) fn matmul(
    a: &CudaStorage,
    la: &Layout,
    b: &CudaStorage,
    lb: &Layout,
    [m, n, k]: [usize; 3],
) -> Result<CudaStorage> {
    let dtype = a.dtype();
    if !dtype.is_float() {
        return Err(Error::UnsupportedDType {
            op: "matmul",
            dtype,
            expected: "a float dtype on CUDA (f16, bf16, f32, f64)",
        });
    }
    let batch = la.shape().elem_count().checked_div(m * k).unwrap_or(0);
    let batch = if m * k == 0 {
        lb.shape().elem_count().checked_div(k * n).unwrap_or(0)
    } else {
        batch
    };
    let mut out = CudaStorage::alloc(&a.ctx, dtype, batch * m * n)?;
    if batch * m * n == 0 {
        return Ok(out);
    }
    if k == 0 {
        // An empty sum: zeros.
        let zeros = crate::with_dtype!(dtype, T => crate::storage::CpuStorage::from_vec(vec![<T as crate::WithDType>::ZERO; batch * m * n]));
        return CudaStorage::upload(&zeros, a.device());
    }
    let too_big = |v: usize| v > i32::MAX as usize;
    if [m, n, k, batch].into_iter().any(too_big) {
        return Err(a.ctx.error(
            "matmul",
            format!("cuBLAS takes sizes below 2^31, got m={m} n={n} k={k} batch={batch}"),
        ));
    }
    let (oa, ob) = (operand(a, la, m, k)?, operand(b, lb, k, n)?);
    let sa = oa.copy.as_ref().unwrap_or(a);
    let sb = ob.copy.as_ref().unwrap_or(b);
    let blas = &a.ctx.blas;
    let fail = |e: cudarc::cublas::result::CublasError| a.ctx.error("matmul (cuBLAS)", e.to_string());
    // SAFETY: the views hold every element the configured strides and leading dimensions reach
    // (checked by `operand`), and `out` holds batch * m * n elements.
    unsafe {
        match (&sa.buf, &sb.buf, &mut out.buf) {
            (CudaBuf::F32(x), CudaBuf::F32(y), CudaBuf::F32(c)) => gemm(
                blas,
                config(&oa, &ob, [m, n, k], batch, 1.0f32, 0.0f32),
                &view_from(y, ob.offset),
                &view_from(x, oa.offset),
                c,
            ),
            (CudaBuf::F64(x), CudaBuf::F64(y), CudaBuf::F64(c)) => gemm(
                blas,
                config(&oa, &ob, [m, n, k], batch, 1.0f64, 0.0f64),
                &view_from(y, ob.offset),
                &view_from(x, oa.offset),
                c,
            ),
            (CudaBuf::F16(x), CudaBuf::F16(y), CudaBuf::F16(c)) => gemm(
                blas,
                config(&oa, &ob, [m, n, k], batch, half::f16::ONE, half::f16::ZERO),
                &view_from(y, ob.offset),
                &view_from(x, oa.offset),
                c,
            ),
            (CudaBuf::BF16(x), CudaBuf::BF16(y), CudaBuf::BF16(c)) => gemm(
                blas,
                config(&oa, &ob, [m, n, k], batch, half::bf16::ONE, half::bf16::ZERO),
                &view_from(y, ob.offset),
                &view_from(x, oa.offset),
                c,
            ),
            _ => {
                return Err(Error::DTypeMismatch {
                    op: "matmul",
                    lhs: dtype,
                    rhs: b.dtype(),
                })
            }
        }
        .map_err(fail)?;
    }
    Ok(out)
}

/// The cuBLAS call for row-major `C = A·B`: column-major `Cᵀ (n x m) = Bᵀ (n x k) · Aᵀ (k x m)`,
/// so B is cuBLAS's first operand.
fn config<T>(
    a: &Operand,
    b: &Operand,
    [m, n, k]: [usize; 3],
    batch: usize,
    alpha: T,
    beta: T,
) -> StridedBatchedConfig<T> {
    let op = |t: bool| {
        if t {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        }
    };
    StridedBatchedConfig {
        gemm: GemmConfig {
            transa: op(b.transposed),
            transb: op(a.transposed),
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha,
            lda: b.ld as i32,
            ldb: a.ld as i32,
            beta,
            ldc: n as i32,
        },
        batch_size: batch as i32,
        stride_a: b.batch_stride as i64,
        stride_b: a.batch_stride as i64,
        stride_c: (m * n) as i64,
    }
}

/// One strided-batched GEMM call.
///
/// # Safety
/// The operands must hold every element `cfg` reaches.
unsafe fn gemm<T: DeviceRepr, A: DevicePtr<T>, B: DevicePtr<T>, C: DevicePtrMut<T>>(
    blas: &cudarc::cublas::CudaBlas,
    cfg: StridedBatchedConfig<T>,
    a: &A,
    b: &B,
    c: &mut C,
) -> std::result::Result<(), cudarc::cublas::result::CublasError>
where
    cudarc::cublas::CudaBlas: Gemm<T>,
{
    // SAFETY: forwarded from the caller.
    unsafe { blas.gemm_strided_batched(cfg, a, b, c) }
}
