//! Shape operations. Everything except `cat`/`stack` (and `reshape`/`contiguous` of
//! non-viewable data) returns a view that shares storage.

use crate::backend::DeviceStorage;
use crate::layout::gather_contiguous;
use crate::{Dim, Error, Layout, Result, Shape, Tensor, WithDType};

impl Tensor {
    /// A tensor with the same elements in row-major order and a new shape. A view when the
    /// memory allows it (as `torch.reshape`), a copy otherwise. One dimension may be given as
    /// `usize::MAX` to be inferred... use [`Tensor::reshape_infer`] for `-1` style shapes.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.shape().clone(),
                rhs: shape,
                reason: "element counts differ".into(),
            });
        }
        match self.layout().reshape_view(&shape) {
            Some(l) => Ok(self.with_layout(l)),
            None => self.contiguous()?.reshape(shape),
        }
    }

    /// Reshape with at most one `-1` entry inferred from the element count.
    pub fn reshape_infer(&self, dims: &[i64]) -> Result<Tensor> {
        let known: i64 = dims.iter().filter(|&&d| d != -1).product();
        let n_infer = dims.iter().filter(|&&d| d == -1).count();
        if n_infer > 1
            || dims.iter().any(|&d| d < -1)
            || (n_infer == 1 && (known == 0 || self.elem_count() as i64 % known != 0))
        {
            return Err(Error::invalid(
                "reshape",
                format!("cannot reshape {:?} into {dims:?}", self.shape()),
            ));
        }
        let shape: Vec<usize> = dims
            .iter()
            .map(|&d| {
                if d == -1 {
                    (self.elem_count() as i64 / known) as usize
                } else {
                    d as usize
                }
            })
            .collect();
        self.reshape(shape)
    }

    /// Reorder dimensions: `perm[i]` is the source dimension of output dimension `i`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        Ok(self.with_layout(self.layout().permute(perm)?))
    }

    /// Swap two dimensions.
    pub fn transpose(&self, d0: impl Dim, d1: impl Dim) -> Result<Tensor> {
        let rank = self.rank();
        let (a, b) = (d0.to_index(rank, "transpose")?, d1.to_index(rank, "transpose")?);
        let mut perm: Vec<usize> = (0..rank).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Transpose of the last two dimensions (the matrix transpose of a batch).
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::InvalidShape {
                op: "t",
                shape: self.shape().clone(),
                reason: "needs at least 2 dimensions".into(),
            });
        }
        self.transpose(-2, -1)
    }

    /// Remove dimension `dim`, which must have size 1.
    pub fn squeeze(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.to_index(self.rank(), "squeeze")?;
        if self.dims()[d] != 1 {
            return Err(Error::InvalidShape {
                op: "squeeze",
                shape: self.shape().clone(),
                reason: format!("dimension {d} has size {}, not 1", self.dims()[d]),
            });
        }
        let mut dims = self.dims().to_vec();
        let mut strides = self.strides().to_vec();
        dims.remove(d);
        strides.remove(d);
        Ok(self.with_layout(Layout::new(Shape::new(dims), strides, self.layout().offset())))
    }

    /// Remove every size-1 dimension.
    pub fn squeeze_all(&self) -> Result<Tensor> {
        let (dims, strides): (Vec<usize>, Vec<usize>) = self
            .dims()
            .iter()
            .zip(self.strides())
            .filter(|(&d, _)| d != 1)
            .map(|(&d, &s)| (d, s))
            .unzip();
        Ok(self.with_layout(Layout::new(Shape::new(dims), strides, self.layout().offset())))
    }

    /// Insert a size-1 dimension at `dim` (`-1` appends).
    pub fn unsqueeze(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.to_index_plus_one(self.rank(), "unsqueeze")?;
        let mut dims = self.dims().to_vec();
        let mut strides = self.strides().to_vec();
        let stride = if d < dims.len() { dims[d] * strides[d] } else { 1 };
        dims.insert(d, 1);
        strides.insert(d, stride);
        Ok(self.with_layout(Layout::new(Shape::new(dims), strides, self.layout().offset())))
    }

    /// Elements `start..start+len` along `dim` (a view).
    pub fn narrow(&self, dim: impl Dim, start: usize, len: usize) -> Result<Tensor> {
        let d = dim.to_index(self.rank(), "narrow")?;
        Ok(self.with_layout(self.layout().narrow(d, start, len)?))
    }

    /// Elements in `range` along `dim` (a view), like Python's `x[..., a:b]`.
    pub fn slice(&self, dim: impl Dim, range: std::ops::Range<usize>) -> Result<Tensor> {
        if range.start > range.end {
            return Err(Error::invalid("slice", format!("empty-reversed range {range:?}")));
        }
        self.narrow(dim, range.start, range.end - range.start)
    }

    /// Merge dimensions `start..=end` into one.
    pub fn flatten(&self, start: impl Dim, end: impl Dim) -> Result<Tensor> {
        if self.rank() == 0 {
            return self.reshape([1]);
        }
        let (s, e) = (
            start.to_index(self.rank(), "flatten")?,
            end.to_index(self.rank(), "flatten")?,
        );
        if s > e {
            return Err(Error::invalid(
                "flatten",
                format!("start dim {s} is after end dim {e}"),
            ));
        }
        let d = self.dims();
        let mut dims = d[..s].to_vec();
        dims.push(d[s..=e].iter().product());
        dims.extend_from_slice(&d[e + 1..]);
        self.reshape(dims)
    }

    /// Flatten to one dimension.
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape([self.elem_count()])
    }

    /// Stretch size-1 dimensions (and add leading ones) to `shape`: a view with stride 0.
    pub fn broadcast_to(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        Ok(self.with_layout(self.layout().broadcast_as(&shape.into())?))
    }

    /// A row-major copy, or `self` when already contiguous.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        if let Some(s) = self.cuda() {
            return Ok(Tensor::from_cuda_contiguous(
                s.copy_strided(self.layout())?,
                self.shape().clone(),
            ));
        }
        crate::with_dtype!(self.dtype(), T => {
            Tensor::from_vec(gather_contiguous(self.storage_slice::<T>()?, self.layout()), self.shape().clone())
        })
    }

    /// Concatenate tensors along an existing dimension.
    pub fn cat(tensors: &[Tensor], dim: impl Dim) -> Result<Tensor> {
        let first = tensors
            .first()
            .ok_or_else(|| Error::invalid("cat", "needs at least one tensor"))?;
        let d = dim.to_index(first.rank(), "cat")?;
        let mut out_dims = first.dims().to_vec();
        out_dims[d] = 0;
        for t in tensors {
            first.check_same_dtype(t, "cat")?;
            let same = t.rank() == first.rank()
                && t.dims()
                    .iter()
                    .zip(first.dims())
                    .enumerate()
                    .all(|(i, (a, b))| i == d || a == b);
            if !same {
                return Err(Error::ShapeMismatch {
                    op: "cat",
                    lhs: first.shape().clone(),
                    rhs: t.shape().clone(),
                    reason: format!("all dimensions but {d} must match"),
                });
            }
            out_dims[d] += t.dims()[d];
        }
        if let Some(s) = first.cuda() {
            let rest: Vec<_> = tensors[1..]
                .iter()
                .map(|t| t.cuda().map(|c| (c, t.layout())))
                .collect::<Option<_>>()
                .ok_or_else(|| Error::invalid("cat", "internal: operands left the device"))?;
            let shape = Shape::new(out_dims);
            return Ok(Tensor::from_cuda_contiguous(
                s.cat(first.layout(), &rest, d, &shape)?,
                shape,
            ));
        }
        crate::with_dtype!(first.dtype(), T => cat_kernel::<T>(tensors, d, out_dims))
    }

    /// Join tensors of equal shape along a new dimension.
    pub fn stack(tensors: &[Tensor], dim: impl Dim) -> Result<Tensor> {
        let first = tensors
            .first()
            .ok_or_else(|| Error::invalid("stack", "needs at least one tensor"))?;
        let d = dim.to_index_plus_one(first.rank(), "stack")?;
        for t in tensors {
            if t.shape() != first.shape() {
                return Err(Error::ShapeMismatch {
                    op: "stack",
                    lhs: first.shape().clone(),
                    rhs: t.shape().clone(),
                    reason: "all tensors must have the same shape".into(),
                });
            }
        }
        let expanded = tensors
            .iter()
            .map(|t| t.unsqueeze(d))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&expanded, d)
    }

    /// Split along `dim` into pieces of the given sizes (views), which must add up to the size.
    pub fn split_sizes(&self, sizes: &[usize], dim: impl Dim) -> Result<Vec<Tensor>> {
        let d = dim.to_index(self.rank(), "split")?;
        if sizes.iter().sum::<usize>() != self.dims()[d] {
            return Err(Error::invalid(
                "split",
                format!(
                    "sizes {sizes:?} do not add up to dimension {d} of {:?}",
                    self.shape()
                ),
            ));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&len| {
                let t = self.narrow(d, start, len);
                start += len;
                t
            })
            .collect()
    }

    /// Split along `dim` into pieces of `size` elements (the last may be smaller), as `torch.split`.
    pub fn split(&self, size: usize, dim: impl Dim) -> Result<Vec<Tensor>> {
        let d = dim.to_index(self.rank(), "split")?;
        if size == 0 {
            return Err(Error::invalid("split", "split size must be positive"));
        }
        let n = self.dims()[d];
        let sizes: Vec<usize> = (0..n).step_by(size).map(|s| size.min(n - s)).collect();
        self.split_sizes(&sizes, d)
    }

    /// Split along `dim` into `chunks` pieces of `ceil(n / chunks)` elements, as `torch.chunk`.
    pub fn chunk(&self, chunks: usize, dim: impl Dim) -> Result<Vec<Tensor>> {
        let d = dim.to_index(self.rank(), "chunk")?;
        if chunks == 0 {
            return Err(Error::invalid("chunk", "number of chunks must be positive"));
        }
        let n = self.dims()[d];
        self.split(n.div_ceil(chunks).max(1), d)
    }
}

fn cat_kernel<T: WithDType>(tensors: &[Tensor], d: usize, out_dims: Vec<usize>) -> Result<Tensor> {
    let outer: usize = out_dims[..d].iter().product();
    let total: usize = out_dims.iter().product();
    let mut out = Vec::with_capacity(total);
    let parts = tensors
        .iter()
        .map(|t| {
            let inner = t.dims()[d..].iter().product::<usize>();
            Ok((t.contiguous_slice::<T>()?, inner))
        })
        .collect::<Result<Vec<_>>>()?;
    for o in 0..outer {
        for (data, inner) in &parts {
            out.extend_from_slice(&data[o * inner..(o + 1) * inner]);
        }
    }
    Tensor::from_vec(out, out_dims)
}

#[cfg(test)]
mod tests {
    use crate::Tensor;

    fn t23() -> Tensor {
        Tensor::from_vec((0..6).map(|x| x as f32).collect(), [2, 3]).unwrap()
    }

    #[test]
    fn views_share_storage() {
        let a = t23();
        let b = a.transpose(0, 1).unwrap();
        assert!(b.same_storage(&a));
        assert_eq!(b.to_vec::<f32>().unwrap(), vec![0., 3., 1., 4., 2., 5.]);
        let c = a.narrow(1, 1, 2).unwrap();
        assert!(c.same_storage(&a));
        assert_eq!(c.to_vec::<f32>().unwrap(), vec![1., 2., 4., 5.]);
        let u = a.unsqueeze(0).unwrap();
        assert_eq!(u.dims(), &[1, 2, 3]);
        assert_eq!(u.squeeze(0).unwrap().dims(), &[2, 3]);
        let bc = Tensor::from_vec(vec![1f32, 2.], [2, 1])
            .unwrap()
            .broadcast_to([2, 3])
            .unwrap();
        assert_eq!(bc.to_vec::<f32>().unwrap(), vec![1., 1., 1., 2., 2., 2.]);
    }

    #[test]
    fn reshape_of_transposed_copies() {
        let b = t23().t().unwrap().reshape([6]).unwrap();
        assert_eq!(b.to_vec::<f32>().unwrap(), vec![0., 3., 1., 4., 2., 5.]);
        assert!(t23().reshape([4]).is_err());
        assert_eq!(t23().reshape_infer(&[-1, 2]).unwrap().dims(), &[3, 2]);
        assert_eq!(t23().flatten(0, 1).unwrap().dims(), &[6]);
    }

    #[test]
    fn cat_stack_split_chunk() {
        let a = t23();
        let c = Tensor::cat(&[a.clone(), a.clone()], 1).unwrap();
        assert_eq!(c.dims(), &[2, 6]);
        assert_eq!(
            c.to_vec::<f32>().unwrap(),
            vec![0., 1., 2., 0., 1., 2., 3., 4., 5., 3., 4., 5.]
        );
        let s = Tensor::stack(&[a.clone(), a.clone()], 0).unwrap();
        assert_eq!(s.dims(), &[2, 2, 3]);
        let parts = a.split(2, 1).unwrap();
        assert_eq!(parts[0].to_vec::<f32>().unwrap(), vec![0., 1., 3., 4.]);
        assert_eq!(parts[1].to_vec::<f32>().unwrap(), vec![2., 5.]);
        assert_eq!(a.chunk(3, 1).unwrap().len(), 3);
        assert!(Tensor::cat(
            &[
                a.clone(),
                Tensor::zeros([3, 3], crate::DType::F32, crate::Device::Cpu).unwrap()
            ],
            1
        )
        .is_err());
    }
}
