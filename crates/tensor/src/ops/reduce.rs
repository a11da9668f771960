//! Reductions over any set of dimensions (with `keepdim`), softmax and log-softmax.
//!
//! The reduced dimensions are moved last (a view) and gathered into rows, so every kernel is a
//! tight loop over a contiguous row. Float sums accumulate in f64.

use rayon::prelude::*;

use crate::backend::{DeviceStorage, RowReduce};
use crate::fast_math::FastExp;
use crate::{DType, Dim, Dims, Error, FloatDType, Result, Shape, Tensor, WithDType};

/// The shape of a reduction's result.
fn reduced_shape(dims: &[usize], axes: &[usize], keepdim: bool) -> Shape {
    let mut out = Vec::with_capacity(dims.len());
    for (i, &d) in dims.iter().enumerate() {
        if axes.contains(&i) {
            if keepdim {
                out.push(1);
            }
        } else {
            out.push(d);
        }
    }
    Shape::new(out)
}

/// Permute `t` so that `axes` come last and return (rows, row length, contiguous data).
fn rows_of<T: WithDType>(t: &Tensor, axes: &[usize]) -> Result<(usize, usize, Vec<T>)> {
    let mut perm: Vec<usize> = (0..t.rank()).filter(|d| !axes.contains(d)).collect();
    perm.extend_from_slice(axes);
    let p = t.permute(&perm)?;
    let inner: usize = axes.iter().map(|&a| t.dims()[a]).product();
    let outer = t
        .dims()
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .product();
    Ok((outer, inner, p.to_vec::<T>()?))
}

/// Reduce each row of the moved-last layout with `f`.
fn reduce_with<T: WithDType, U: WithDType>(
    t: &Tensor,
    dims: impl Dims,
    keepdim: bool,
    op: &'static str,
    f: impl Fn(&[T]) -> U,
) -> Result<Tensor> {
    let axes = dims.to_indices(t.rank(), op)?;
    let out_shape = reduced_shape(t.dims(), &axes, keepdim);
    let (outer, inner, data) = rows_of::<T>(t, &axes)?;
    let out: Vec<U> = if inner == 0 {
        (0..outer).map(|_| f(&[])).collect()
    } else {
        data.chunks_exact(inner).map(&f).collect()
    };
    Tensor::from_vec(out, out_shape)
}

/// Run a row reduction on the device backend holding `t`, if any: the reduced axes are moved
/// last (a view) and every row reduced to one value.
fn reduce_on_device(t: &Tensor, axes: &[usize], keepdim: bool, op: RowReduce) -> Option<Result<Tensor>> {
    let s = t.cuda()?;
    Some((|| {
        let mut perm: Vec<usize> = (0..t.rank()).filter(|d| !axes.contains(d)).collect();
        perm.extend_from_slice(axes);
        let p = t.permute(&perm)?;
        let len: usize = axes.iter().map(|&a| t.dims()[a]).product();
        let rows = t.elem_count().checked_div(len).unwrap_or(0);
        let out_shape = reduced_shape(t.dims(), axes, keepdim);
        Ok(Tensor::from_cuda_contiguous(
            s.reduce_rows(p.layout(), rows, len, op)?,
            out_shape,
        ))
    })())
}

fn check_nonempty(t: &Tensor, axes_len: usize, op: &'static str) -> Result<()> {
    if t.elem_count() == 0 || axes_len == 0 && t.rank() > 0 && t.elem_count() == 0 {
        return Err(Error::InvalidShape {
            op,
            shape: t.shape().clone(),
            reason: "cannot reduce an empty tensor".into(),
        });
    }
    Ok(())
}

impl Tensor {
    /// Sum over `dims`.
    pub fn sum(&self, dims: impl Dims, keepdim: bool) -> Result<Tensor> {
        let axes = dims.to_indices(self.rank(), "sum")?;
        if let Some(r) = reduce_on_device(self, &axes, keepdim, RowReduce::Sum) {
            return r;
        }
        match self.dtype() {
            DType::F16 | DType::BF16 | DType::F32 => {
                let d = self.dtype();
                let t = if d == DType::F32 {
                    self.clone()
                } else {
                    self.to_dtype(DType::F32)?
                };
                sum_leading_or_rows(&t, &axes, keepdim)?.to_dtype(d)
            }
            DType::F64 => reduce_with::<f64, f64>(self, axes, keepdim, "sum", |r| r.iter().sum()),
            dt => {
                crate::with_dtype!(dt, T => reduce_with::<T, T>(self, axes, keepdim, "sum", |r| r.iter().fold(T::ZERO, |a, &b| a.add(b))))
            }
        }
    }
    /// Sum of all elements, as a 0-d tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum(crate::AllDims.to_indices(self.rank(), "sum")?, false)
    }
    /// Mean over `dims` (floats).
    pub fn mean(&self, dims: impl Dims, keepdim: bool) -> Result<Tensor> {
        self.check_float("mean")?;
        let axes = dims.to_indices(self.rank(), "mean")?;
        let n: usize = axes.iter().map(|&a| self.dims()[a]).product();
        self.sum(axes, keepdim)?.affine(1.0 / n as f64, 0.0)
    }
    /// Mean of all elements, as a 0-d tensor.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.mean(crate::AllDims.to_indices(self.rank(), "mean")?, false)
    }
    /// Maximum over `dims`.
    pub fn max(&self, dims: impl Dims, keepdim: bool) -> Result<Tensor> {
        let axes = dims.to_indices(self.rank(), "max")?;
        check_nonempty(self, axes.len(), "max")?;
        if let Some(r) = reduce_on_device(self, &axes, keepdim, RowReduce::Max) {
            return r;
        }
        crate::with_dtype!(self.dtype(), T => reduce_with::<T, T>(self, axes, keepdim, "max", |r| {
            r.iter().copied().fold(r[0], |m, x| if super::binary::is_nan(x) || x > m { x } else { m })
        }))
    }
    /// Minimum over `dims`.
    pub fn min(&self, dims: impl Dims, keepdim: bool) -> Result<Tensor> {
        let axes = dims.to_indices(self.rank(), "min")?;
        check_nonempty(self, axes.len(), "min")?;
        if let Some(r) = reduce_on_device(self, &axes, keepdim, RowReduce::Min) {
            return r;
        }
        crate::with_dtype!(self.dtype(), T => reduce_with::<T, T>(self, axes, keepdim, "min", |r| {
            r.iter().copied().fold(r[0], |m, x| if super::binary::is_nan(x) || x < m { x } else { m })
        }))
    }
    /// Index (i64) of the first maximum along `dim`.
    pub fn argmax(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        let d = dim.to_index(self.rank(), "argmax")?;
        check_nonempty(self, 1, "argmax")?;
        if let Some(r) = reduce_on_device(self, &[d], keepdim, RowReduce::ArgMax) {
            return r;
        }
        crate::with_dtype!(self.dtype(), T => reduce_with::<T, i64>(self, d, keepdim, "argmax", |r| {
            let mut best = 0;
            for (i, &x) in r.iter().enumerate() {
                if x > r[best] { best = i; }
            }
            best as i64
        }))
    }
    /// Index (i64) of the first minimum along `dim`.
    pub fn argmin(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        let d = dim.to_index(self.rank(), "argmin")?;
        check_nonempty(self, 1, "argmin")?;
        if let Some(r) = reduce_on_device(self, &[d], keepdim, RowReduce::ArgMin) {
            return r;
        }
        crate::with_dtype!(self.dtype(), T => reduce_with::<T, i64>(self, d, keepdim, "argmin", |r| {
            let mut best = 0;
            for (i, &x) in r.iter().enumerate() {
                if x < r[best] { best = i; }
            }
            best as i64
        }))
    }
    /// Variance over `dims` with `correction` (1 = unbiased, as `torch.var`'s default; 0 = population).
    pub fn var(&self, dims: impl Dims, correction: usize, keepdim: bool) -> Result<Tensor> {
        self.check_float("var")?;
        let axes = dims.to_indices(self.rank(), "var")?;
        if self.cuda().is_some() {
            let n: usize = axes.iter().map(|&a| self.dims()[a]).product();
            let centred = self.sub(&self.mean(axes.as_slice(), true)?)?;
            let squares = centred.sqr()?.sum(axes.as_slice(), keepdim)?;
            return squares.affine(1.0 / (n as f64 - correction as f64), 0.0);
        }
        self.float_rows(axes, keepdim, "var", move |r: &[f64]| {
            let n = r.len() as f64;
            let mean = r.iter().sum::<f64>() / n;
            r.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - correction as f64)
        })
    }
    /// `log(sum(exp(x)))` over `dims`, computed stably.
    pub fn logsumexp(&self, dims: impl Dims, keepdim: bool) -> Result<Tensor> {
        self.check_float("logsumexp")?;
        let axes = dims.to_indices(self.rank(), "logsumexp")?;
        if self.cuda().is_some() {
            // m + log(sum(exp(x - m))), with m the row maximum (rows of -inf give NaN here).
            let m = self.max(axes.as_slice(), true)?;
            let s = self.sub(&m)?.exp()?.sum(axes.as_slice(), keepdim)?.log()?;
            let m = if keepdim {
                m
            } else {
                self.max(axes.as_slice(), false)?
            };
            return s.add(&m);
        }
        self.float_rows(axes, keepdim, "logsumexp", |r: &[f64]| {
            let m = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                return m;
            }
            m + r.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
        })
    }

    /// Row reduction computed in f64 and returned in the input dtype.
    fn float_rows(
        &self,
        axes: Vec<usize>,
        keepdim: bool,
        op: &'static str,
        f: impl Fn(&[f64]) -> f64,
    ) -> Result<Tensor> {
        let t64 = self.to_dtype(DType::F64)?;
        reduce_with::<f64, f64>(&t64, axes, keepdim, op, f)?.to_dtype(self.dtype())
    }

    /// Softmax along `dim`: rows sum to 1, invariant to adding a constant to a row.
    pub fn softmax(&self, dim: impl Dim) -> Result<Tensor> {
        self.softmax_impl(dim, false, "softmax")
    }
    /// Log-softmax along `dim`, computed without forming the softmax.
    pub fn log_softmax(&self, dim: impl Dim) -> Result<Tensor> {
        self.softmax_impl(dim, true, "log_softmax")
    }

    fn softmax_impl(&self, dim: impl Dim, log: bool, op: &'static str) -> Result<Tensor> {
        self.check_float(op)?;
        let d = dim.to_index(self.rank(), op)?;
        if let Some(s) = self.cuda() {
            // Move `dim` last (a view), normalise the rows, and view the result back.
            let last = self.rank() - 1;
            let p = self.transpose(d, last)?;
            let rows = s.softmax_rows(p.layout(), self.dims()[d], log)?;
            return Tensor::from_cuda_contiguous(rows, p.shape().clone()).transpose(d, last);
        }
        match self.dtype() {
            DType::F32 => softmax_kernel::<f32>(self, d, log),
            DType::F64 => softmax_kernel::<f64>(self, d, log),
            dt => softmax_kernel::<f32>(&self.to_dtype(DType::F32)?, d, log)?.to_dtype(dt),
        }
    }
}

/// Sum f32 data: leading dims of a contiguous tensor accumulate whole rows (the bias-gradient
/// case); anything else goes through rows.
fn sum_leading_or_rows(t: &Tensor, axes: &[usize], keepdim: bool) -> Result<Tensor> {
    let leading = axes.iter().enumerate().all(|(i, &a)| i == a);
    if leading && t.is_contiguous() && !axes.is_empty() && axes.len() < t.rank() {
        let out_shape = reduced_shape(t.dims(), axes, keepdim);
        let cols: usize = t.dims()[axes.len()..].iter().product();
        let data = t.contiguous_slice::<f32>()?;
        let mut acc = vec![0f64; cols];
        for row in data.chunks_exact(cols.max(1)) {
            for (a, &x) in acc.iter_mut().zip(row) {
                *a += x as f64;
            }
        }
        return Tensor::from_vec(acc.into_iter().map(|x| x as f32).collect::<Vec<_>>(), out_shape);
    }
    reduce_with::<f32, f32>(t, axes.to_vec(), keepdim, "sum", |r| {
        r.iter().map(|&x| x as f64).sum::<f64>() as f32
    })
}

/// Softmax (or log-softmax) of each `n`-value row of `data` in place: the row's maximum, then
/// `e^(x - max)` through [`FastExp`] (f32: a vectorised polynomial within 2 ulp of `expf`; f64:
/// libm), summed in row order.
#[inline(always)]
fn softmax_rows_kernel<F: FastExp>(data: &mut [F], n: usize, log: bool) {
    for row in data.chunks_exact_mut(n) {
        let m = row.iter().copied().fold(F::neg_infinity(), F::max);
        let m = if m.is_finite() { m } else { F::zero() };
        if log {
            let mut s = F::zero();
            for &x in row.iter() {
                s = s + (x - m).fast_exp();
            }
            let ls = s.ln() + m;
            row.iter_mut().for_each(|x| *x = *x - ls);
        } else {
            row.iter_mut().for_each(|x| *x = (*x - m).fast_exp());
            let s = row.iter().fold(F::zero(), |s, &e| s + e);
            let inv = s.recip();
            row.iter_mut().for_each(|x| *x = *x * inv);
        }
    }
}

crate::multiversion! {
    /// [`softmax_rows_kernel`] for this machine's widest vectors.
    fn softmax_rows[F: FastExp](data: &mut [F], n: usize, log: bool) = softmax_rows_kernel[F]
}

/// Rows of softmax work (values) above which rows run on several threads.
const PARALLEL_SOFTMAX: usize = 1 << 16;

fn softmax_kernel<F: FastExp>(t: &Tensor, d: usize, log: bool) -> Result<Tensor> {
    let last = t.rank() - 1;
    let moved = if d == last {
        t.clone()
    } else {
        t.transpose(d, last)?
    };
    let n = moved.dims()[last];
    let mut data = moved.to_vec::<F>()?;
    if n > 0 {
        // Rows are independent: whole rows per task, so the result does not depend on threads.
        if data.len() >= PARALLEL_SOFTMAX && data.len() > n {
            let rows_per_task = (PARALLEL_SOFTMAX / 4 / n).max(1);
            data.par_chunks_mut(rows_per_task * n)
                .for_each(|chunk| softmax_rows(chunk, n, log));
        } else {
            softmax_rows(&mut data, n, log);
        }
    }
    let out = Tensor::from_vec(data, moved.shape().clone())?;
    if d == last {
        Ok(out)
    } else {
        out.transpose(d, last)?.contiguous()
    }
}

fn nll_grad_impl<F: FloatDType>(lsm: &Tensor, targets: &[i64], scale: f64) -> Result<Tensor> {
    let c = lsm.dims()[1];
    let src = lsm.contiguous_slice::<F>()?;
    let s = <F as WithDType>::from_f64(scale);
    let mut out = super::map_slices(&src, &src, |v, _| v.exp() * s);
    for (row, &t) in targets.iter().enumerate() {
        let i = row * c + t as usize;
        out[i] = out[i] - s;
    }
    Tensor::from_vec(out, lsm.shape().clone())
}

impl Tensor {
    /// The gradient of the mean negative log-likelihood with respect to the logits, from their
    /// log-softmax `self` (`[N, C]`) and the target classes: `(softmax - onehot(targets)) * scale`,
    /// in one pass (no `[N, C]` one-hot matrix). Targets must be in `0..C`.
    pub fn nll_grad_from_log_softmax(&self, targets: &[i64], scale: f64) -> Result<Tensor> {
        const OP: &str = "nll_grad_from_log_softmax";
        let [n, c] = self.dims2(OP)?;
        if targets.len() != n || targets.iter().any(|&t| t < 0 || t as usize >= c) {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!(
                    "expected {n} targets in 0..{c}, got {} (or one out of range)",
                    targets.len()
                ),
            });
        }
        if self.cuda().is_some() {
            // softmax·scale minus scale at each target: the one-hot rows built on the host.
            let ids = Tensor::from_slice(targets, [n])?;
            let hot = ids.one_hot_dtype(c, self.dtype())?.to_device(self.device())?;
            return self.exp()?.sub(&hot)?.affine(scale, 0.0);
        }
        float_dispatch!(OP, self.dtype(), F => nll_grad_impl::<F>(self, targets, scale),
            half => Err(Error::UnsupportedDType { op: OP, dtype: self.dtype(), expected: "f32 or f64" }))
    }
}

#[cfg(test)]
mod tests {
    use crate::Tensor;

    fn t() -> Tensor {
        Tensor::from_vec(vec![1f32, 5., 3., 4., 2., 6.], [2, 3]).unwrap()
    }

    #[test]
    fn reductions_hand_checked() {
        let a = t();
        assert_eq!(a.sum(1, false).unwrap().to_vec::<f32>().unwrap(), vec![9., 12.]);
        assert_eq!(a.sum(0, true).unwrap().dims(), &[1, 3]);
        assert_eq!(
            a.sum(0, false).unwrap().to_vec::<f32>().unwrap(),
            vec![5., 7., 9.]
        );
        assert_eq!(a.sum_all().unwrap().to_scalar::<f32>().unwrap(), 21.);
        assert_eq!(a.mean(-1, false).unwrap().to_vec::<f32>().unwrap(), vec![3., 4.]);
        assert_eq!(a.max(1, false).unwrap().to_vec::<f32>().unwrap(), vec![5., 6.]);
        assert_eq!(a.min([0, 1], false).unwrap().to_scalar::<f32>().unwrap(), 1.);
        assert_eq!(a.argmax(1, false).unwrap().to_vec::<i64>().unwrap(), vec![1, 2]);
        assert_eq!(
            a.argmin(0, false).unwrap().to_vec::<i64>().unwrap(),
            vec![0, 1, 0]
        );
        // torch.var([1,5,3]) = 4, population = 8/3
        assert_eq!(a.var(1, 1, false).unwrap().to_vec::<f32>().unwrap(), vec![4., 4.]);
        let pv = a.var(1, 0, false).unwrap().to_vec::<f32>().unwrap();
        assert!((pv[0] - 8.0 / 3.0).abs() < 1e-6);
        let lse = a.logsumexp(1, false).unwrap().to_vec::<f32>().unwrap();
        assert!((lse[0] - (1f32.exp() + 5f32.exp() + 3f32.exp()).ln()).abs() < 1e-5);
        let i = Tensor::from_vec(vec![1i64, 2, 3], [3]).unwrap();
        assert_eq!(i.sum(0, false).unwrap().to_scalar::<i64>().unwrap(), 6);
    }

    #[test]
    fn softmax_hand_checked() {
        let x = Tensor::from_vec(vec![0f64, (2f64).ln()], [1, 2]).unwrap();
        let s = x.softmax(1).unwrap().to_vec::<f64>().unwrap();
        assert!((s[0] - 1.0 / 3.0).abs() < 1e-12 && (s[1] - 2.0 / 3.0).abs() < 1e-12);
        let ls = x.log_softmax(1).unwrap().to_vec::<f64>().unwrap();
        assert!((ls[0] - (1.0f64 / 3.0).ln()).abs() < 1e-12);
        let s0 = t().softmax(0).unwrap();
        let col = s0.sum(0, false).unwrap().to_vec::<f32>().unwrap();
        assert!(col.iter().all(|&c| (c - 1.0).abs() < 1e-6));
    }

    #[test]
    fn reduce_empty_is_error() {
        let e = Tensor::from_vec(Vec::<f32>::new(), [0]).unwrap();
        assert!(e.max(0, false).is_err());
        assert_eq!(e.sum(0, false).unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}
