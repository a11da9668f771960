//! Dense linear algebra on 2-D `f32`/`f64` tensors through LAPACK (`ndarray-linalg` with system
//! OpenBLAS): [`Tensor::qr`], [`Tensor::svd`], [`Tensor::solve`] and [`Tensor::cholesky`].
//!
//! Only available with the `linalg` cargo feature. Results follow `torch.linalg`: reduced QR,
//! economy SVD (`full_matrices=False`), lower Cholesky factor. Wrong ranks or shapes are
//! [`Error::InvalidShape`]/[`Error::ShapeMismatch`]; numerical failures (singular matrix, not
//! positive definite, non-finite input, no convergence) are [`Error::Linalg`].

use ndarray::{Array1, Array2, ShapeBuilder};
use ndarray_linalg::error::LinalgError;
use ndarray_linalg::{Cholesky, Factorize, JobSvd, Lapack, Scalar, Solve, QR, SVDDC, UPLO};

use crate::{DType, Error, Result, Tensor, WithDType};

/// A float type LAPACK handles: `f32` or `f64`.
trait LinalgFloat: WithDType + Lapack + Scalar<Real = Self> {}
impl LinalgFloat for f32 {}
impl LinalgFloat for f64 {}

/// Run `$body` with `$F` bound to `f32` or `f64` for the dtype of `$t`, or fail naming `$op`.
macro_rules! with_float {
    ($t:expr, $op:expr, $F:ident => $body:expr) => {
        match $t.dtype() {
            DType::F32 => {
                type $F = f32;
                $body
            }
            DType::F64 => {
                type $F = f64;
                $body
            }
            dtype => Err(Error::UnsupportedDType {
                op: $op,
                dtype,
                expected: "f32 or f64",
            }),
        }
    };
}

/// The tensor as an `ndarray` matrix, after checking that it is 2-D and finite.
fn matrix<F: LinalgFloat>(t: &Tensor, op: &'static str) -> Result<Array2<F>> {
    let [m, n] = t.dims2(op)?;
    let v = t.to_vec::<F>()?;
    if v.iter().any(|x| !WithDType::to_f64(*x).is_finite()) {
        return Err(Error::Linalg {
            op,
            reason: "the matrix contains NaN or infinity".into(),
        });
    }
    Array2::from_shape_vec((m, n), v).map_err(|e| Error::Linalg {
        op,
        reason: e.to_string(),
    })
}

/// A tensor from an `ndarray` matrix in any memory order.
fn from_matrix<F: LinalgFloat>(a: &Array2<F>) -> Result<Tensor> {
    Tensor::from_vec(a.iter().copied().collect(), [a.nrows(), a.ncols()])
}

fn from_vector<F: LinalgFloat>(a: &Array1<F>) -> Result<Tensor> {
    Tensor::from_vec(a.to_vec(), [a.len()])
}

/// An [`Error::Linalg`] for a LAPACK failure, with `failure` explaining a computational one.
fn lapack_error(op: &'static str, failure: &'static str) -> impl Fn(LinalgError) -> Error {
    move |e| Error::Linalg {
        op,
        reason: match e {
            LinalgError::Lapack(inner) => format!("{failure} ({inner})"),
            other => other.to_string(),
        },
    }
}

fn square(t: &Tensor, op: &'static str) -> Result<usize> {
    let [m, n] = t.dims2(op)?;
    if m != n {
        return Err(Error::InvalidShape {
            op,
            shape: t.shape().clone(),
            reason: "expected a square matrix".into(),
        });
    }
    Ok(n)
}

fn qr_impl<F: LinalgFloat>(t: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "qr";
    let a = matrix::<F>(t, OP)?;
    let (m, n) = a.dim();
    let k = m.min(n);
    if k == 0 {
        return Ok((
            Tensor::zeros([m, 0], F::DTYPE, t.device())?,
            Tensor::zeros([0, n], F::DTYPE, t.device())?,
        ));
    }
    let (q, r) = a.qr().map_err(lapack_error(OP, "QR factorization failed"))?;
    Ok((from_matrix(&q)?, from_matrix(&r)?))
}

fn svd_impl<F: LinalgFloat>(t: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "svd";
    let a = matrix::<F>(t, OP)?;
    let (m, n) = a.dim();
    let k = m.min(n);
    if k == 0 {
        return Ok((
            Tensor::zeros([m, 0], F::DTYPE, t.device())?,
            Tensor::zeros([0], F::DTYPE, t.device())?,
            Tensor::zeros([0, n], F::DTYPE, t.device())?,
        ));
    }
    let (u, s, vt) = a
        .svddc(JobSvd::Some)
        .map_err(lapack_error(OP, "the SVD did not converge"))?;
    let missing = || Error::Linalg {
        op: OP,
        reason: "LAPACK returned no singular vectors".into(),
    };
    let (u, vt) = (u.ok_or_else(missing)?, vt.ok_or_else(missing)?);
    Ok((from_matrix(&u)?, from_vector(&s)?, from_matrix(&vt)?))
}

fn solve_impl<F: LinalgFloat>(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "solve";
    let n = square(a, OP)?;
    let rows_ok = b.rank() >= 1 && b.rank() <= 2 && b.dims()[0] == n;
    if !rows_ok {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs: a.shape().clone(),
            rhs: b.shape().clone(),
            reason: format!("b must be [{n}] or [{n}, k] for a [{n}, {n}] matrix"),
        });
    }
    let am = matrix::<F>(a, OP)?;
    let k = if b.rank() == 1 { 1 } else { b.dims()[1] };
    let bm = matrix::<F>(&b.reshape([n, k])?, OP)?;
    if n == 0 || k == 0 {
        return Tensor::zeros(b.shape(), F::DTYPE, b.device());
    }
    let lu = am
        .factorize()
        .map_err(lapack_error(OP, "the matrix is singular"))?;
    // Column-major result: each column is one solve.
    let mut x = Array2::<F>::zeros((n, k).f());
    for j in 0..k {
        let col = lu
            .solve(&bm.column(j).to_owned())
            .map_err(lapack_error(OP, "the matrix is singular"))?;
        x.column_mut(j).assign(&col);
    }
    if x.iter().any(|v| !WithDType::to_f64(*v).is_finite()) {
        return Err(Error::Linalg {
            op: OP,
            reason: "the matrix is singular to working precision (the solution is not finite)".into(),
        });
    }
    from_matrix(&x)?.reshape(b.shape())
}

fn cholesky_impl<F: LinalgFloat>(t: &Tensor) -> Result<Tensor> {
    const OP: &str = "cholesky";
    let n = square(t, OP)?;
    if n == 0 {
        return Tensor::zeros([0, 0], F::DTYPE, t.device());
    }
    let a = matrix::<F>(t, OP)?;
    let l = a
        .cholesky(UPLO::Lower)
        .map_err(lapack_error(OP, "the matrix is not positive definite"))?;
    from_matrix(&l)
}

impl Tensor {
    /// Reduced QR decomposition of an `[m, n]` matrix, as `torch.linalg.qr(mode="reduced")`:
    /// `Q` is `[m, k]` with orthonormal columns, `R` is `[k, n]` upper triangular, `k = min(m, n)`,
    /// and `Q · R == self`. Needs the `linalg` feature; `f32`/`f64` only.
    pub fn qr(&self) -> Result<(Tensor, Tensor)> {
        with_float!(self, "qr", F => qr_impl::<F>(self))
    }

    /// Economy singular-value decomposition of an `[m, n]` matrix, as
    /// `torch.linalg.svd(full_matrices=False)`: `(U [m, k], S [k], Vt [k, n])` with `k = min(m,
    /// n)`, singular values in descending order, and `U · diag(S) · Vt == self`. Needs the
    /// `linalg` feature; `f32`/`f64` only.
    pub fn svd(&self) -> Result<(Tensor, Tensor, Tensor)> {
        with_float!(self, "svd", F => svd_impl::<F>(self))
    }

    /// Solve `a · x = b` for a square `[n, n]` matrix `a` and `b` of shape `[n]` or `[n, k]`
    /// (the result has `b`'s shape), as `torch.linalg.solve`. A singular `a` is an
    /// [`Error::Linalg`]. Needs the `linalg` feature; `f32`/`f64` only, one dtype for both.
    pub fn solve(a: &Tensor, b: &Tensor) -> Result<Tensor> {
        a.check_same_dtype(b, "solve")?;
        with_float!(a, "solve", F => solve_impl::<F>(a, b))
    }

    /// The lower-triangular Cholesky factor `L` of a symmetric positive-definite matrix, with
    /// `L · Lᵀ == self`, as `torch.linalg.cholesky` (only the lower triangle of `self` is read).
    /// A matrix that is not positive definite is an [`Error::Linalg`]. Needs the `linalg`
    /// feature; `f32`/`f64` only.
    pub fn cholesky(&self) -> Result<Tensor> {
        with_float!(self, "cholesky", F => cholesky_impl::<F>(self))
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Device, Error, Tensor, TensorRng};

    fn assert_close(a: &Tensor, b: &Tensor, tol: f64) {
        assert_eq!(a.dims(), b.dims());
        for (x, y) in a.to_f64_vec().iter().zip(b.to_f64_vec()) {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    fn random(shape: [usize; 2], dtype: DType, seed: u64) -> Tensor {
        let mut rng = TensorRng::new(seed);
        let v: Vec<f64> = (0..shape[0] * shape[1]).map(|_| rng.next_normal()).collect();
        Tensor::from_vec(v, shape).unwrap().to_dtype(dtype).unwrap()
    }

    fn diag(s: &Tensor) -> Tensor {
        let k = s.dims()[0];
        let eye = Tensor::eye(k, s.dtype(), Device::Cpu).unwrap();
        eye.mul(&s.reshape([1, k]).unwrap()).unwrap()
    }

    #[test]
    fn qr_reconstructs_tall_wide_and_square() {
        for (shape, dtype, tol) in [
            ([5, 3], DType::F64, 1e-12),
            ([3, 5], DType::F64, 1e-12),
            ([4, 4], DType::F32, 1e-5),
        ] {
            let a = random(shape, dtype, 1);
            let (q, r) = a.qr().unwrap();
            let k = shape[0].min(shape[1]);
            assert_eq!((q.dims(), r.dims()), (&[shape[0], k][..], &[k, shape[1]][..]));
            assert_close(&q.matmul(&r).unwrap(), &a, tol);
            let qtq = q.t().unwrap().matmul(&q).unwrap();
            assert_close(&qtq, &Tensor::eye(k, dtype, Device::Cpu).unwrap(), tol);
            let rv = r.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
            for (i, row) in rv.iter().enumerate() {
                assert!(
                    row[..i.min(row.len())].iter().all(|&x| x == 0.0),
                    "R is upper triangular"
                );
            }
        }
        // Non-contiguous input.
        let a = random([3, 4], DType::F64, 2).t().unwrap();
        let (q, r) = a.qr().unwrap();
        assert_close(&q.matmul(&r).unwrap(), &a, 1e-12);
    }

    #[test]
    fn svd_reconstructs() {
        for (shape, dtype, tol) in [
            ([6, 4], DType::F64, 1e-12),
            ([4, 6], DType::F64, 1e-12),
            ([5, 5], DType::F32, 1e-4),
        ] {
            let a = random(shape, dtype, 3);
            let (u, s, vt) = a.svd().unwrap();
            let k = shape[0].min(shape[1]);
            assert_eq!(u.dims(), &[shape[0], k]);
            assert_eq!(s.dims(), &[k]);
            assert_eq!(vt.dims(), &[k, shape[1]]);
            let sv = s.to_f64_vec();
            assert!(sv.windows(2).all(|w| w[0] >= w[1]) && sv.iter().all(|&x| x >= 0.0));
            let rec = u.matmul(&diag(&s)).unwrap().matmul(&vt).unwrap();
            assert_close(&rec, &a, tol);
        }
        // Known singular values: diag(3, 2) rotated.
        let a = Tensor::from_vec(vec![0.0f64, 2.0, 3.0, 0.0], [2, 2]).unwrap();
        let (_, s, _) = a.svd().unwrap();
        assert_close(&s, &Tensor::from_vec(vec![3.0f64, 2.0], [2]).unwrap(), 1e-12);
    }

    #[test]
    fn solve_vector_and_matrix_rhs() {
        // 2x + y = 5, x + 3y = 10  ->  x = 1, y = 3
        let a = Tensor::from_vec(vec![2.0f64, 1.0, 1.0, 3.0], [2, 2]).unwrap();
        let b = Tensor::from_vec(vec![5.0f64, 10.0], [2]).unwrap();
        let x = Tensor::solve(&a, &b).unwrap();
        assert_close(&x, &Tensor::from_vec(vec![1.0f64, 3.0], [2]).unwrap(), 1e-12);
        let a = random([5, 5], DType::F32, 4);
        let b = random([5, 3], DType::F32, 5);
        let x = Tensor::solve(&a, &b).unwrap();
        assert_eq!(x.dims(), &[5, 3]);
        assert_close(&a.matmul(&x).unwrap(), &b, 1e-3);
    }

    #[test]
    fn cholesky_reconstructs() {
        let m = random([4, 4], DType::F64, 6);
        let spd = m
            .matmul(&m.t().unwrap())
            .unwrap()
            .add(&Tensor::eye(4, DType::F64, Device::Cpu).unwrap())
            .unwrap();
        let l = spd.cholesky().unwrap();
        let lv = l.to_vec2::<f64>().unwrap();
        for (i, row) in lv.iter().enumerate() {
            assert!(row[i + 1..].iter().all(|&x| x == 0.0), "L is lower triangular");
            assert!(row[i] > 0.0);
        }
        assert_close(&l.matmul(&l.t().unwrap()).unwrap(), &spd, 1e-12);
        // [[4, 2], [2, 3]] = L Lᵀ with L = [[2, 0], [1, sqrt(2)]]
        let a = Tensor::from_vec(vec![4.0f32, 2.0, 2.0, 3.0], [2, 2]).unwrap();
        let l = a.cholesky().unwrap();
        assert_close(
            &l,
            &Tensor::from_vec(vec![2.0f32, 0.0, 1.0, 2f32.sqrt()], [2, 2]).unwrap(),
            1e-6,
        );
    }

    #[test]
    fn failures_are_errors() {
        let not_pd = Tensor::from_vec(vec![1.0f64, 2.0, 2.0, 1.0], [2, 2]).unwrap();
        let e = not_pd.cholesky().unwrap_err();
        assert!(matches!(e, Error::Linalg { op: "cholesky", .. }), "{e}");
        assert!(e.to_string().contains("positive definite"), "{e}");
        let singular = Tensor::from_vec(vec![1.0f64, 2.0, 2.0, 4.0], [2, 2]).unwrap();
        let b = Tensor::from_vec(vec![1.0f64, 1.0], [2]).unwrap();
        let e = Tensor::solve(&singular, &b).unwrap_err();
        assert!(matches!(e, Error::Linalg { op: "solve", .. }), "{e}");
        assert!(e.to_string().contains("singular"), "{e}");
        let v = Tensor::from_vec(vec![1.0f64, 2.0, 3.0], [3]).unwrap();
        assert!(matches!(v.qr().unwrap_err(), Error::InvalidShape { .. }));
        let rect = Tensor::zeros([2, 3], DType::F64, Device::Cpu).unwrap();
        assert!(matches!(rect.cholesky().unwrap_err(), Error::InvalidShape { .. }));
        assert!(matches!(
            Tensor::solve(&rect, &b).unwrap_err(),
            Error::InvalidShape { .. }
        ));
        let sq = Tensor::eye(3, DType::F64, Device::Cpu).unwrap();
        assert!(matches!(
            Tensor::solve(&sq, &b).unwrap_err(),
            Error::ShapeMismatch { .. }
        ));
        let ints = Tensor::eye(2, DType::I64, Device::Cpu).unwrap();
        assert!(matches!(ints.svd().unwrap_err(), Error::UnsupportedDType { .. }));
        let nan = Tensor::from_vec(vec![f64::NAN, 0.0, 0.0, 1.0], [2, 2]).unwrap();
        assert!(matches!(nan.svd().unwrap_err(), Error::Linalg { .. }));
        // Empty matrices follow torch's shapes.
        let (q, r) = Tensor::zeros([3, 0], DType::F32, Device::Cpu)
            .unwrap()
            .qr()
            .unwrap();
        assert_eq!((q.dims(), r.dims()), (&[3usize, 0][..], &[0usize, 0][..]));
    }
}
