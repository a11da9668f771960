//! Shape ops and views: gradients are the inverse view (reshape back, inverse permutation,
//! zero-padding for narrow, slices for cat).

use kiln_tensor::{Dim, Shape, Tensor};

use super::sum_to_shape;
use crate::{Result, Var};

impl Var {
    /// Reshape (a view when possible).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Var> {
        let y = self.value().reshape(shape)?;
        let s = self.shape().clone();
        Ok(Var::from_op("reshape", y, &[self], move |g| {
            Ok(vec![Some(g.reshape(s.clone())?)])
        }))
    }
    /// Reshape with one `-1` inferred.
    pub fn reshape_infer(&self, dims: &[i64]) -> Result<Var> {
        let y = self.value().reshape_infer(dims)?;
        self.reshape(y.shape().clone())
    }
    /// Reorder dimensions.
    pub fn permute(&self, perm: &[usize]) -> Result<Var> {
        let y = self.value().permute(perm)?;
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        Ok(Var::from_op("permute", y, &[self], move |g| {
            Ok(vec![Some(g.permute(&inv)?)])
        }))
    }
    /// Swap two dimensions.
    pub fn transpose(&self, d0: impl Dim, d1: impl Dim) -> Result<Var> {
        let (a, b) = (
            d0.to_index(self.rank(), "transpose")?,
            d1.to_index(self.rank(), "transpose")?,
        );
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }
    /// Matrix transpose of the last two dimensions.
    pub fn t(&self) -> Result<Var> {
        let y = self.value().t()?;
        Ok(Var::from_op("t", y, &[self], |g| Ok(vec![Some(g.t()?)])))
    }
    /// Remove a size-1 dimension.
    pub fn squeeze(&self, dim: impl Dim) -> Result<Var> {
        let d = dim.to_index(self.rank(), "squeeze")?;
        let y = self.value().squeeze(d)?;
        Ok(Var::from_op("squeeze", y, &[self], move |g| {
            Ok(vec![Some(g.unsqueeze(d)?)])
        }))
    }
    /// Remove every size-1 dimension.
    pub fn squeeze_all(&self) -> Result<Var> {
        let y = self.value().squeeze_all()?;
        let s = self.shape().clone();
        Ok(Var::from_op("squeeze_all", y, &[self], move |g| {
            Ok(vec![Some(g.reshape(s.clone())?)])
        }))
    }
    /// Insert a size-1 dimension.
    pub fn unsqueeze(&self, dim: impl Dim) -> Result<Var> {
        let d = dim.to_index_plus_one(self.rank(), "unsqueeze")?;
        let y = self.value().unsqueeze(d)?;
        Ok(Var::from_op("unsqueeze", y, &[self], move |g| {
            Ok(vec![Some(g.squeeze(d)?)])
        }))
    }
    /// `start..start+len` along `dim`.
    pub fn narrow(&self, dim: impl Dim, start: usize, len: usize) -> Result<Var> {
        let d = dim.to_index(self.rank(), "narrow")?;
        let y = self.value().narrow(d, start, len)?;
        let dims = self.dims().to_vec();
        Ok(Var::from_op("narrow", y, &[self], move |g| {
            Ok(vec![Some(pad_along(g, d, start, &dims)?)])
        }))
    }
    /// Elements in `range` along `dim`.
    pub fn slice(&self, dim: impl Dim, range: std::ops::Range<usize>) -> Result<Var> {
        self.narrow(dim, range.start, range.end.saturating_sub(range.start))
    }
    /// Merge dimensions `start..=end`.
    pub fn flatten(&self, start: impl Dim, end: impl Dim) -> Result<Var> {
        let y = self.value().flatten(start, end)?;
        self.reshape(y.shape().clone())
    }
    /// Flatten to one dimension.
    pub fn flatten_all(&self) -> Result<Var> {
        self.reshape([self.value().elem_count()])
    }
    /// Broadcast to `shape` (a view); the gradient is summed back.
    pub fn broadcast_to(&self, shape: impl Into<Shape>) -> Result<Var> {
        let y = self.value().broadcast_to(shape)?;
        let s = self.shape().clone();
        Ok(Var::from_op("broadcast_to", y, &[self], move |g| {
            Ok(vec![Some(sum_to_shape(g, &s)?)])
        }))
    }
    /// A contiguous copy (identity for gradients).
    pub fn contiguous(&self) -> Result<Var> {
        let y = self.value().contiguous()?;
        Ok(Var::from_op("contiguous", y, &[self], |g| {
            Ok(vec![Some(g.clone())])
        }))
    }
    /// Concatenate along `dim`.
    pub fn cat(vars: &[Var], dim: impl Dim) -> Result<Var> {
        let values: Vec<Tensor> = vars.iter().map(|v| v.value().clone()).collect();
        let y = Tensor::cat(&values, dim)?;
        let d = dim.to_index(values[0].rank(), "cat")?;
        let sizes: Vec<usize> = values.iter().map(|t| t.dims()[d]).collect();
        let refs: Vec<&Var> = vars.iter().collect();
        Ok(Var::from_op("cat", y, &refs, move |g| {
            Ok(g.split_sizes(&sizes, d)?.into_iter().map(Some).collect())
        }))
    }
    /// Stack along a new dimension.
    pub fn stack(vars: &[Var], dim: impl Dim) -> Result<Var> {
        let first = vars
            .first()
            .ok_or_else(|| kiln_tensor::Error::invalid("stack", "needs at least one tensor"))?;
        let d = dim.to_index_plus_one(first.rank(), "stack")?;
        let lifted = vars.iter().map(|v| v.unsqueeze(d)).collect::<Result<Vec<_>>>()?;
        Var::cat(&lifted, d)
    }
    /// Split into pieces of the given sizes along `dim`.
    pub fn split_sizes(&self, sizes: &[usize], dim: impl Dim) -> Result<Vec<Var>> {
        let d = dim.to_index(self.rank(), "split")?;
        // Validate through the tensor op so the error names the shapes.
        self.value().split_sizes(sizes, d)?;
        let mut start = 0;
        sizes
            .iter()
            .map(|&len| {
                let v = self.narrow(d, start, len);
                start += len;
                v
            })
            .collect()
    }
    /// Split into pieces of `size` along `dim` (the last may be smaller).
    pub fn split(&self, size: usize, dim: impl Dim) -> Result<Vec<Var>> {
        let d = dim.to_index(self.rank(), "split")?;
        let sizes: Vec<usize> = self.value().split(size, d)?.iter().map(|t| t.dims()[d]).collect();
        self.split_sizes(&sizes, d)
    }
    /// Split into `chunks` pieces along `dim`.
    pub fn chunk(&self, chunks: usize, dim: impl Dim) -> Result<Vec<Var>> {
        let d = dim.to_index(self.rank(), "chunk")?;
        let sizes: Vec<usize> = self
            .value()
            .chunk(chunks, d)?
            .iter()
            .map(|t| t.dims()[d])
            .collect();
        self.split_sizes(&sizes, d)
    }
}

/// Place `g` at `start` along `d` inside zeros of shape `dims` (the adjoint of narrow).
pub(crate) fn pad_along(g: &Tensor, d: usize, start: usize, dims: &[usize]) -> kiln_tensor::Result<Tensor> {
    let len = g.dims()[d];
    let zeros = |n: usize| {
        let mut zd = dims.to_vec();
        zd[d] = n;
        Tensor::zeros(zd, g.dtype(), g.device())
    };
    let after = dims[d] - start - len;
    let mut parts = Vec::with_capacity(3);
    if start > 0 {
        parts.push(zeros(start)?);
    }
    parts.push(g.clone());
    if after > 0 {
        parts.push(zeros(after)?);
    }
    Tensor::cat(&parts, d)
}
