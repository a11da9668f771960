//! Matrix multiplication with `torch.matmul` semantics, through the `gemm` crate.
//!
//! `gemm` takes arbitrary row/column strides, so transposed and sliced views multiply without a
//! copy. f16/bf16 compute in f32; integer types use a plain triple loop (rarely hot).

use crate::backend::DeviceStorage;
use crate::{DType, Error, Layout, MatmulPrecision, Result, Shape, Tensor, WithDType};

/// Below this many multiply-adds a GEMM runs on the calling thread (threads cost more than they save).
const PARALLEL_FLOPS: usize = 1 << 18;

/// From this many multiply-adds on, f32/f64 products go to `matrixmultiply` (threaded), which
/// measured faster than `gemm` for large square products on 2 cores (`cargo bench --bench gemm`);
/// below it `gemm` is faster.
const LARGE_FLOPS: usize = 1 << 29;

/// Element types the GEMM kernels support.
pub(crate) trait GemmDType: WithDType {
    /// `dst (+)= lhs @ rhs` through `matrixmultiply`; `None` if the type has no such kernel.
    #[allow(clippy::too_many_arguments)]
    fn mm_gemm(
        m: usize,
        n: usize,
        k: usize,
        dst: &mut [Self],
        lhs: &[Self],
        l: MatRef,
        rhs: &[Self],
        r: MatRef,
        beta: Self,
    ) -> Option<()>;

    /// `dst (+)= lhs @ rhs` through kiln's AVX-512 kernel ([`super::sgemm`]); `None` if this type
    /// or this CPU has none.
    #[allow(clippy::too_many_arguments)]
    fn native_gemm(
        _m: usize,
        _n: usize,
        _k: usize,
        _dst: &mut [Self],
        _lhs: &[Self],
        _l: MatRef,
        _rhs: &[Self],
        _r: MatRef,
        _accumulate: bool,
        _threads: bool,
    ) -> Option<()> {
        None
    }

    /// `dst (+)= bf16(lhs) @ bf16(rhs)` with f32 accumulation ([`super::bgemm`]); `None` for
    /// types [`MatmulPrecision::Bf16`] does not apply to.
    #[allow(clippy::too_many_arguments)]
    fn bf16_gemm(
        _m: usize,
        _n: usize,
        _k: usize,
        _dst: &mut [Self],
        _lhs: &[Self],
        _l: MatRef,
        _rhs: &[Self],
        _r: MatRef,
        _accumulate: bool,
        _threads: bool,
    ) -> Option<()> {
        None
    }
}

macro_rules! mm_gemm_impl {
    ($t:ty, $f:path $(, $native:item)*) => {
        impl GemmDType for $t {
            $($native)*

            fn mm_gemm(
                m: usize,
                n: usize,
                k: usize,
                dst: &mut [Self],
                lhs: &[Self],
                l: MatRef,
                rhs: &[Self],
                r: MatRef,
                beta: Self,
            ) -> Option<()> {
                // SAFETY: the caller checked that every index the strides reach lies inside lhs,
                // rhs and the first m*n elements of dst; dst is a distinct &mut.
                unsafe {
                    $f(
                        m,
                        k,
                        n,
                        1.0,
                        lhs.as_ptr().add(l.offset),
                        l.row_stride as isize,
                        l.col_stride as isize,
                        rhs.as_ptr().add(r.offset),
                        r.row_stride as isize,
                        r.col_stride as isize,
                        beta,
                        dst.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                }
                Some(())
            }
        }
    };
}
mm_gemm_impl!(
    f32,
    matrixmultiply::sgemm,
    fn native_gemm(
        m: usize,
        n: usize,
        k: usize,
        dst: &mut [f32],
        lhs: &[f32],
        l: MatRef,
        rhs: &[f32],
        r: MatRef,
        accumulate: bool,
        threads: bool,
    ) -> Option<()> {
        (super::sgemm::available() && super::sgemm::worthwhile(m, n, k))
            .then(|| super::sgemm::sgemm(m, n, k, dst, lhs, l, rhs, r, accumulate, threads))
    },
    fn bf16_gemm(
        m: usize,
        n: usize,
        k: usize,
        dst: &mut [f32],
        lhs: &[f32],
        l: MatRef,
        rhs: &[f32],
        r: MatRef,
        accumulate: bool,
        threads: bool,
    ) -> Option<()> {
        super::bgemm::bgemm(m, n, k, dst, lhs, l, rhs, r, accumulate, threads);
        Some(())
    }
);
mm_gemm_impl!(f64, matrixmultiply::dgemm);

#[allow(clippy::too_many_arguments)]
fn large_gemm<T: GemmDType>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    lhs: &[T],
    l: MatRef,
    rhs: &[T],
    r: MatRef,
    accumulate: bool,
) -> Option<()> {
    T::mm_gemm(
        m,
        n,
        k,
        dst,
        lhs,
        l,
        rhs,
        r,
        if accumulate { T::ONE } else { T::ZERO },
    )
}

/// A strided 2-D operand: pointer offset into a slice plus row and column strides (in elements).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatRef {
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

#[cfg(test)]
impl MatRef {
    /// A matrix starting at element 0 with these strides.
    pub(crate) const fn strided(row_stride: usize, col_stride: usize) -> MatRef {
        MatRef {
            offset: 0,
            row_stride,
            col_stride,
        }
    }
}

/// `dst[m, n] (+)= lhs[m, k] @ rhs[k, n]`; `dst` is row-major with leading dimension `n`.
/// `accumulate` adds into `dst` instead of overwriting it. `precision` is the caller's
/// [`crate::matmul_precision`], read when its op started (so worker threads use the caller's).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into<T: GemmDType>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    lhs: &[T],
    l: MatRef,
    rhs: &[T],
    r: MatRef,
    accumulate: bool,
    allow_threads: bool,
    precision: MatmulPrecision,
) {
    assert!(dst.len() >= m * n, "gemm_into: destination too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::ZERO);
        }
        return;
    }
    // Bounds: the last element each operand touches must lie inside its slice.
    assert!(l.offset + (m - 1) * l.row_stride + (k - 1) * l.col_stride < lhs.len());
    assert!(r.offset + (k - 1) * r.row_stride + (n - 1) * r.col_stride < rhs.len());
    let threads = allow_threads && m * n * k >= PARALLEL_FLOPS;
    if precision == MatmulPrecision::Bf16 {
        if let Some(done) = T::bf16_gemm(m, n, k, dst, lhs, l, rhs, r, accumulate, threads) {
            return done;
        }
    }
    if let Some(done) = T::native_gemm(m, n, k, dst, lhs, l, rhs, r, accumulate, threads) {
        return done;
    }
    if allow_threads && m * n * k >= LARGE_FLOPS {
        if let Some(done) = large_gemm(m, n, k, dst, lhs, l, rhs, r, accumulate) {
            return done;
        }
    }
    let par = if threads {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every access of lhs, rhs and dst in bounds; T is f32 or f64,
    // which `gemm` supports; dst does not alias the inputs (it is a distinct &mut).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr().add(l.offset),
            l.col_stride as isize,
            l.row_stride as isize,
            rhs.as_ptr().add(r.offset),
            r.col_stride as isize,
            r.row_stride as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        );
    }
}

/// Naive reference product of row-major `[m, k] x [k, n]` f32 matrices (for tests and benchmarks).
pub fn gemm_f32_reference(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for p in 0..k {
            let av = a[i * k + p];
            for j in 0..n {
                c[i * n + j] += av * b[p * n + j];
            }
        }
    }
    c
}

impl Tensor {
    /// Matrix product with `torch.matmul` semantics: 1-D·1-D is a dot product, 2-D·2-D a
    /// matrix product, 1-D operands get a dimension prepended/appended (then removed), and
    /// higher ranks are batches whose leading dimensions broadcast.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.check_same_dtype(rhs, "matmul")?;
        let mismatch = |reason: String| Error::ShapeMismatch {
            op: "matmul",
            lhs: self.shape().clone(),
            rhs: rhs.shape().clone(),
            reason,
        };
        if self.rank() == 0 || rhs.rank() == 0 {
            return Err(mismatch("both operands need at least one dimension".into()));
        }
        let a = if self.rank() == 1 {
            self.unsqueeze(0)?
        } else {
            self.clone()
        };
        let b = if rhs.rank() == 1 {
            rhs.unsqueeze(1)?
        } else {
            rhs.clone()
        };
        let (ar, br) = (a.rank(), b.rank());
        let (m, k) = (a.dims()[ar - 2], a.dims()[ar - 1]);
        let (k2, n) = (b.dims()[br - 2], b.dims()[br - 1]);
        if k != k2 {
            return Err(mismatch(format!("inner dimensions differ: {k} vs {k2}")));
        }
        let batch = Shape::new(a.dims()[..ar - 2].to_vec())
            .broadcast_with(&Shape::new(b.dims()[..br - 2].to_vec()), "matmul")
            .map_err(|_| mismatch("batch dimensions do not broadcast".into()))?;
        let mut out_dims = batch.dims().to_vec();
        out_dims.extend([m, n]);
        let la = a
            .layout()
            .broadcast_as(&Shape::new([batch.dims(), &[m, k]].concat()))?;
        let lb = b
            .layout()
            .broadcast_as(&Shape::new([batch.dims(), &[k, n]].concat()))?;
        let out = match (a.cuda(), b.cuda()) {
            (Some(sa), Some(sb)) => {
                Tensor::from_cuda_contiguous(sa.matmul(&la, sb, &lb, [m, n, k])?, out_dims)
            }
            _ => Self::matmul_on_host(&a, &la, &b, &lb, [m, n, k], out_dims)?,
        };
        // Drop the dimensions that were added for 1-D operands.
        let out = if rhs.rank() == 1 { out.squeeze(-1)? } else { out };
        if self.rank() == 1 {
            out.squeeze(if rhs.rank() == 1 { -1 } else { -2 })
        } else {
            Ok(out)
        }
    }

    /// The CPU kernels of [`Tensor::matmul`], by dtype: `a` and `b` at least 2-D, `la` and `lb`
    /// their layouts broadcast over the batch.
    fn matmul_on_host(
        a: &Tensor,
        la: &Layout,
        b: &Tensor,
        lb: &Layout,
        mnk: [usize; 3],
        out_dims: Vec<usize>,
    ) -> Result<Tensor> {
        Ok(match a.dtype() {
            DType::F32 => batched_gemm::<f32>(a, la, b, lb, mnk, out_dims)?,
            DType::F64 => batched_gemm::<f64>(a, la, b, lb, mnk, out_dims)?,
            DType::F16 | DType::BF16 => {
                // Widen, multiply in f32, round back (PyTorch's CPU behaviour).
                let (a32, b32) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
                let la32 = a32.layout().broadcast_as(la.shape())?;
                let lb32 = b32.layout().broadcast_as(lb.shape())?;
                batched_gemm::<f32>(&a32, &la32, &b32, &lb32, mnk, out_dims)?.to_dtype(a.dtype())?
            }
            dt => crate::with_dtype!(dt, T => batched_naive::<T>(a, la, b, lb, mnk, out_dims)?),
        })
    }
}

impl Tensor {
    /// `self @ rhs + bias` (`torch.addmm(bias, self, rhs)`): `self` `[m, k]`, `rhs` `[k, n]` at
    /// any strides (a transposed weight view is read in place) and `bias` `[n]` added to every
    /// row. The product accumulates onto rows that start as the bias, so there is no separate
    /// broadcast pass over the output. f32 and f64; other dtypes take `matmul` then `add`.
    pub fn matmul_bias(&self, rhs: &Tensor, bias: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul_bias";
        self.check_same_dtype(rhs, OP)?;
        self.check_same_dtype(bias, OP)?;
        if self.cuda().is_some() {
            return self.matmul(rhs)?.add(bias);
        }
        let mismatch = |reason: String| Error::ShapeMismatch {
            op: OP,
            lhs: self.shape().clone(),
            rhs: rhs.shape().clone(),
            reason,
        };
        if self.rank() != 2 || rhs.rank() != 2 {
            return Err(mismatch("both operands must be matrices".into()));
        }
        let ([m, k], [k2, n]) = ([self.dims()[0], self.dims()[1]], [rhs.dims()[0], rhs.dims()[1]]);
        if k != k2 {
            return Err(mismatch(format!("inner dimensions differ: {k} vs {k2}")));
        }
        if bias.dims() != [n] {
            return Err(mismatch(format!(
                "the bias has shape {:?}, expected [{n}] (one value per output column)",
                bias.dims()
            )));
        }
        match self.dtype() {
            DType::F32 => addmm::<f32>(self, rhs, bias, [m, n, k]),
            DType::F64 => addmm::<f64>(self, rhs, bias, [m, n, k]),
            _ => self.matmul(rhs)?.add(bias),
        }
    }
}

/// [`Tensor::matmul_bias`] for the GEMM dtypes: the output starts as `m` copies of the bias and
/// the product is accumulated onto it.
fn addmm<T: GemmDType>(a: &Tensor, b: &Tensor, bias: &Tensor, [m, n, k]: [usize; 3]) -> Result<Tensor> {
    let (da, db) = (a.storage_slice::<T>()?, b.storage_slice::<T>()?);
    let mut out = bias.contiguous_slice::<T>()?.repeat(m);
    let (la, lb) = (a.layout(), b.layout());
    gemm_into(
        m,
        n,
        k,
        &mut out,
        da,
        mat_ref(la, la.offset()),
        db,
        mat_ref(lb, lb.offset()),
        true,
        true,
        crate::matmul_precision(),
    );
    Tensor::from_vec(out, [m, n])
}

/// Storage offsets of each matrix in a batch-broadcast layout `[batch..., r, c]`.
fn batch_offsets(l: &Layout) -> Vec<usize> {
    let rank = l.dims().len();
    let batch = Layout::new(
        Shape::new(l.dims()[..rank - 2].to_vec()),
        l.strides()[..rank - 2].to_vec(),
        l.offset(),
    );
    batch.storage_indices()
}

/// The strides of the last two dimensions of `l`, the matrix starting at `offset`.
pub(super) fn mat_ref(l: &Layout, offset: usize) -> MatRef {
    let r = l.dims().len();
    MatRef {
        offset,
        row_stride: l.strides()[r - 2],
        col_stride: l.strides()[r - 1],
    }
}

fn batched_gemm<T: GemmDType>(
    a: &Tensor,
    la: &Layout,
    b: &Tensor,
    lb: &Layout,
    [m, n, k]: [usize; 3],
    out_dims: Vec<usize>,
) -> Result<Tensor> {
    let (da, db) = (a.storage_slice::<T>()?, b.storage_slice::<T>()?);
    let (oa, ob) = (batch_offsets(la), batch_offsets(lb));
    let mut out = vec![T::ZERO; oa.len() * m * n];
    if m * n == 0 {
        return Tensor::from_vec(out, out_dims);
    }
    let small = m * n * k < PARALLEL_FLOPS;
    let precision = crate::matmul_precision();
    if small && oa.len() > 1 {
        // Many small products: one per thread, each single-threaded.
        use rayon::prelude::*;
        out.par_chunks_mut(m * n)
            .zip(oa.par_iter().zip(ob.par_iter()))
            .for_each(|(dst, (&pa, &pb))| {
                gemm_into(
                    m,
                    n,
                    k,
                    dst,
                    da,
                    mat_ref(la, pa),
                    db,
                    mat_ref(lb, pb),
                    false,
                    false,
                    precision,
                );
            });
    } else {
        for ((dst, &pa), &pb) in out.chunks_mut(m * n).zip(&oa).zip(&ob) {
            gemm_into(
                m,
                n,
                k,
                dst,
                da,
                mat_ref(la, pa),
                db,
                mat_ref(lb, pb),
                false,
                true,
                precision,
            );
        }
    }
    Tensor::from_vec(out, out_dims)
}

fn batched_naive<T: WithDType>(
    a: &Tensor,
    la: &Layout,
    b: &Tensor,
    lb: &Layout,
    [m, n, k]: [usize; 3],
    out_dims: Vec<usize>,
) -> Result<Tensor> {
    let (da, db) = (a.storage_slice::<T>()?, b.storage_slice::<T>()?);
    let (oa, ob) = (batch_offsets(la), batch_offsets(lb));
    let mut out = Vec::with_capacity(oa.len() * m * n);
    for (&pa, &pb) in oa.iter().zip(&ob) {
        let (ra, rb) = (mat_ref(la, pa), mat_ref(lb, pb));
        for i in 0..m {
            for j in 0..n {
                let mut acc = T::ZERO;
                for p in 0..k {
                    let x = da[ra.offset + i * ra.row_stride + p * ra.col_stride];
                    let y = db[rb.offset + p * rb.row_stride + j * rb.col_stride];
                    acc = acc.add(x.mul(y));
                }
                out.push(acc);
            }
        }
    }
    Tensor::from_vec(out, out_dims)
}

#[cfg(test)]
mod tests {
    use crate::{DType, Device, Tensor};

    fn ar(n: usize, shape: &[usize]) -> Tensor {
        Tensor::arange(0.0, n as f64, 1.0, DType::F32, Device::Cpu)
            .unwrap()
            .reshape(shape)
            .unwrap()
    }

    #[test]
    fn matmul_bias_is_matmul_then_add() {
        // Big enough for the AVX-512 path (where the machine has it), and one depth past a KC block.
        for (m, n, k) in [(3, 5, 4), (60, 70, 40), (50, 33, 300)] {
            let a = ar(m * k, &[m, k]).mul_scalar(0.01).unwrap().sin().unwrap();
            let w = ar(n * k, &[n, k]).mul_scalar(0.02).unwrap().cos().unwrap();
            let b = ar(n, &[n]).mul_scalar(0.1).unwrap();
            for dt in [DType::F32, DType::F64] {
                let (a, w, b) = (
                    a.to_dtype(dt).unwrap(),
                    w.to_dtype(dt).unwrap(),
                    b.to_dtype(dt).unwrap(),
                );
                let wt = w.t().unwrap();
                let got = a.matmul_bias(&wt, &b).unwrap().to_f64_vec();
                let want = a.matmul(&wt).unwrap().add(&b).unwrap().to_f64_vec();
                let tol = if dt == DType::F32 { 1e-5 } else { 1e-12 };
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= tol * (1.0 + w.abs()),
                        "{m}x{n}x{k} {dt}: {g} vs {w}"
                    );
                }
            }
        }
        let a = ar(6, &[2, 3]);
        let err = |r: crate::Result<Tensor>| r.unwrap_err().to_string();
        assert!(err(a.matmul_bias(&ar(6, &[3, 2]), &ar(3, &[3]))).contains("expected [2]"));
        assert!(err(a.matmul_bias(&ar(6, &[2, 3]), &ar(3, &[3]))).contains("inner dimensions"));
        assert!(err(ar(6, &[6]).matmul_bias(&ar(6, &[6, 1]), &ar(1, &[1]))).contains("matrices"));
    }

    #[test]
    fn matmul_forms() {
        let a = ar(6, &[2, 3]);
        let b = ar(6, &[3, 2]);
        assert_eq!(
            a.matmul(&b).unwrap().to_vec::<f32>().unwrap(),
            vec![10., 13., 28., 40.]
        );
        // transposed view, no copy
        assert_eq!(
            a.matmul(&a.t().unwrap()).unwrap().to_vec::<f32>().unwrap(),
            vec![5., 14., 14., 50.]
        );
        let v = ar(3, &[3]);
        assert_eq!(v.matmul(&v).unwrap().dims(), &[] as &[usize]);
        assert_eq!(v.matmul(&v).unwrap().to_scalar::<f32>().unwrap(), 5.);
        assert_eq!(a.matmul(&v).unwrap().to_vec::<f32>().unwrap(), vec![5., 14.]);
        assert_eq!(v.matmul(&b).unwrap().to_vec::<f32>().unwrap(), vec![10., 13.]);
        // batch broadcast: [2,1,2,3] x [4,3,2] -> [2,4,2,2]
        let x = ar(12, &[2, 1, 2, 3]);
        let y = ar(24, &[4, 3, 2]);
        let z = x.matmul(&y).unwrap();
        assert_eq!(z.dims(), &[2, 4, 2, 2]);
        let z11 = x
            .narrow(0, 1, 1)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .matmul(&y.narrow(0, 1, 1).unwrap().squeeze(0).unwrap())
            .unwrap();
        assert_eq!(
            z.narrow(0, 1, 1)
                .unwrap()
                .narrow(1, 1, 1)
                .unwrap()
                .to_vec::<f32>()
                .unwrap(),
            z11.to_vec::<f32>().unwrap()
        );
        let ai = a.to_dtype(DType::I64).unwrap();
        assert_eq!(
            ai.matmul(&b.to_dtype(DType::I64).unwrap())
                .unwrap()
                .to_vec::<i64>()
                .unwrap(),
            vec![10, 13, 28, 40]
        );
        assert!(a.matmul(&a).is_err());
    }

    #[test]
    fn large_products_agree_with_the_small_kernel() {
        // 1024 x 512 x 1024 goes through matrixmultiply; 64-row blocks of it through gemm.
        let mut rng = crate::TensorRng::new(5);
        let a = Tensor::randn([1024, 512], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
        let bt = Tensor::randn([1024, 512], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
        let b = bt.t().unwrap(); // strided operand
        let big = a.matmul(&b).unwrap();
        let blocks: Vec<Tensor> = a
            .chunk(16, 0)
            .unwrap()
            .iter()
            .map(|r| r.matmul(&b).unwrap())
            .collect();
        let small = Tensor::cat(&blocks, 0).unwrap();
        let diff = big
            .sub(&small)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0, false)
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-3);
    }
}
