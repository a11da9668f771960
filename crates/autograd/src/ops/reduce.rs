//! Reductions, softmax and log-softmax.

use kiln_tensor::{Dim, Dims, Shape, Tensor};

use crate::{Result, Var};

/// The shape of a reduction result with `keepdim = true`.
fn kept_shape(input: &Shape, axes: &[usize]) -> Vec<usize> {
    input
        .dims()
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect()
}

/// Bring a reduction's output gradient back to the input shape (a broadcast view).
fn expand_back(g: &Tensor, input: &Shape, axes: &[usize]) -> kiln_tensor::Result<Tensor> {
    g.reshape(kept_shape(input, axes))?.broadcast_to(input.clone())
}

impl Var {
    fn axes(&self, dims: impl Dims, op: &'static str) -> Result<Vec<usize>> {
        Ok(dims.to_indices(self.rank(), op)?)
    }

    /// Sum over `dims`.
    pub fn sum(&self, dims: impl Dims, keepdim: bool) -> Result<Var> {
        let axes = self.axes(dims, "sum")?;
        let y = self.value().sum(axes.clone(), keepdim)?;
        let shape = self.shape().clone();
        Ok(Var::from_op("sum", y, &[self], move |g| {
            Ok(vec![Some(expand_back(g, &shape, &axes)?)])
        }))
    }
    /// Sum of all elements (a scalar).
    pub fn sum_all(&self) -> Result<Var> {
        self.sum((0..self.rank()).collect::<Vec<_>>(), false)
    }
    /// Mean over `dims`.
    pub fn mean(&self, dims: impl Dims, keepdim: bool) -> Result<Var> {
        let axes = self.axes(dims, "mean")?;
        let n: usize = axes.iter().map(|&a| self.dims()[a]).product();
        self.sum(axes, keepdim)?.mul_scalar(1.0 / n as f64)
    }
    /// Mean of all elements (a scalar).
    pub fn mean_all(&self) -> Result<Var> {
        self.mean((0..self.rank()).collect::<Vec<_>>(), false)
    }
    /// Maximum over `dims`; ties share the gradient evenly.
    pub fn max(&self, dims: impl Dims, keepdim: bool) -> Result<Var> {
        let axes = self.axes(dims, "max")?;
        let y = self.value().max(axes.clone(), keepdim)?;
        self.extreme_backward("max", y, axes)
    }
    /// Minimum over `dims`; ties share the gradient evenly.
    pub fn min(&self, dims: impl Dims, keepdim: bool) -> Result<Var> {
        let axes = self.axes(dims, "min")?;
        let y = self.value().min(axes.clone(), keepdim)?;
        self.extreme_backward("min", y, axes)
    }
    fn extreme_backward(&self, op: &'static str, y: Tensor, axes: Vec<usize>) -> Result<Var> {
        let x = self.value().clone();
        let yk = y.reshape(kept_shape(x.shape(), &axes))?;
        Ok(Var::from_op(op, y, &[self], move |g| {
            let mask = x.eq(&yk)?.to_dtype(x.dtype())?;
            let count = mask.sum(axes.clone(), true)?;
            let gk = g.reshape(kept_shape(x.shape(), &axes))?;
            Ok(vec![Some(mask.mul(&gk.div(&count)?)?)])
        }))
    }
    /// Variance over `dims` with `correction` (1 = unbiased).
    pub fn var(&self, dims: impl Dims, correction: usize, keepdim: bool) -> Result<Var> {
        let axes = self.axes(dims, "var")?;
        let y = self.value().var(axes.clone(), correction, keepdim)?;
        let x = self.value().clone();
        let n: usize = axes.iter().map(|&a| x.dims()[a]).product();
        Ok(Var::from_op("var", y, &[self], move |g| {
            let centered = x.sub(&x.mean(axes.clone(), true)?)?;
            let gk = g.reshape(kept_shape(x.shape(), &axes))?;
            Ok(vec![Some(
                centered
                    .mul(&gk)?
                    .mul_scalar(2.0 / (n as f64 - correction as f64))?,
            )])
        }))
    }
    /// `log Σ exp(x)` over `dims`.
    pub fn logsumexp(&self, dims: impl Dims, keepdim: bool) -> Result<Var> {
        let axes = self.axes(dims, "logsumexp")?;
        let y = self.value().logsumexp(axes.clone(), keepdim)?;
        let x = self.value().clone();
        let yk = y.reshape(kept_shape(x.shape(), &axes))?;
        Ok(Var::from_op("logsumexp", y, &[self], move |g| {
            let p = x.sub(&yk)?.exp()?;
            let gk = g.reshape(kept_shape(x.shape(), &axes))?;
            Ok(vec![Some(p.mul(&gk)?)])
        }))
    }
    /// Softmax along `dim`.
    pub fn softmax(&self, dim: impl Dim) -> Result<Var> {
        let d = dim.to_index(self.rank(), "softmax")?;
        let y = self.value().softmax(d)?;
        let yc = y.clone();
        Ok(Var::from_op("softmax", y, &[self], move |g| {
            let dot = g.mul(&yc)?.sum(d, true)?;
            Ok(vec![Some(yc.mul(&g.sub(&dot)?)?)])
        }))
    }
    /// Log-softmax along `dim`.
    pub fn log_softmax(&self, dim: impl Dim) -> Result<Var> {
        let d = dim.to_index(self.rank(), "log_softmax")?;
        let y = self.value().log_softmax(d)?;
        let yc = y.clone();
        Ok(Var::from_op("log_softmax", y, &[self], move |g| {
            let gs = g.sum(d, true)?;
            Ok(vec![Some(g.sub(&yc.exp()?.mul(&gs)?)?)])
        }))
    }
}
