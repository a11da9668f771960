//! Indexing ops with PyTorch semantics: `index_select`, `gather`, `scatter_add`, `index_add`,
//! `masked_fill`, `one_hot` and `embedding`.
//!
//! Index tensors may be `i64` or `u32`. Indices must lie in `0..size` (negative indices are not
//! wrapped, as in PyTorch); any other value is an [`Error::IndexOutOfRange`], never a panic.

use super::binary::{zip_blocks, CmpOp};
use crate::backend::DeviceStorage;
use crate::{DType, Dim, Error, Layout, Result, Shape, Tensor, WithDType};

/// Error unless `index` has an index dtype (`i64` or `u32`).
fn check_index_dtype(index: &Tensor, op: &'static str) -> Result<()> {
    match index.dtype() {
        DType::I64 | DType::U32 => Ok(()),
        dtype => Err(Error::UnsupportedDType {
            op,
            dtype,
            expected: "an index dtype (i64 or u32)",
        }),
    }
}

/// The entries of `index` in row-major order, checked to lie in `0..size` (`dim` and `size` name
/// the indexed dimension in the error).
fn checked_indices(index: &Tensor, size: usize, dim: usize, op: &'static str) -> Result<Vec<usize>> {
    check_index_dtype(index, op)?;
    // Indices are checked on the host (a device tensor's are copied back first).
    let index = &index.to_device(crate::Device::Cpu)?;
    let check = |i: i64| -> Result<usize> {
        if i < 0 || i as u64 >= size as u64 {
            return Err(Error::IndexOutOfRange {
                op,
                index: i,
                dim,
                size,
            });
        }
        Ok(i as usize)
    };
    match index.dtype() {
        DType::U32 => index
            .contiguous_slice::<u32>()?
            .iter()
            .map(|&i| check(i as i64))
            .collect(),
        _ => index
            .contiguous_slice::<i64>()?
            .iter()
            .map(|&i| check(i))
            .collect(),
    }
}

/// `dims` viewed as `[outer, dims[d], inner]`.
fn split_at_dim(dims: &[usize], d: usize) -> (usize, usize, usize) {
    (
        dims[..d].iter().product(),
        dims[d],
        dims[d + 1..].iter().product(),
    )
}

/// Copy rows of `inner` elements: for every `o < outer` and every `k`, row `idx[k]` of block `o`
/// of `src` (a `[outer, size, inner]` array) becomes row `k` of block `o` of the output.
fn select_rows<T: WithDType>(src: &[T], outer: usize, size: usize, inner: usize, idx: &[usize]) -> Vec<T> {
    let n = idx.len();
    let mut out = vec![T::ZERO; outer * n * inner];
    if out.is_empty() {
        return out;
    }
    let copy_block = |o: usize, block: &mut [T]| {
        let base = o * size * inner;
        for (row, &i) in block.chunks_exact_mut(inner).zip(idx) {
            row.copy_from_slice(&src[base + i * inner..base + (i + 1) * inner]);
        }
    };
    if out.len() >= super::PARALLEL_THRESHOLD && outer > 1 {
        use rayon::prelude::*;
        out.par_chunks_mut(n * inner)
            .enumerate()
            .for_each(|(o, block)| copy_block(o, block));
    } else if out.len() >= super::PARALLEL_THRESHOLD {
        use rayon::prelude::*;
        let rows_per_task = (super::PARALLEL_CHUNK / inner).max(1);
        out.par_chunks_mut(rows_per_task * inner)
            .zip(idx.par_chunks(rows_per_task))
            .for_each(|(chunk, ids)| {
                for (row, &i) in chunk.chunks_exact_mut(inner).zip(ids) {
                    row.copy_from_slice(&src[i * inner..(i + 1) * inner]);
                }
            });
    } else {
        for (o, block) in out.chunks_exact_mut(n * inner).enumerate() {
            copy_block(o, block);
        }
    }
    out
}

/// `strides` with entry `d` set to 0 (the indexed dimension's position comes from the index).
fn zero_stride(strides: &[usize], d: usize) -> Vec<usize> {
    let mut s = strides.to_vec();
    s[d] = 0;
    s
}

/// Error unless `index` has the rank of `target` and fits inside it (every dimension of `index`
/// no larger than `target`'s, except `skip`, the scattered/gathered dimension, when given).
fn check_fits(
    index: &Tensor,
    target: &Tensor,
    skip: Option<usize>,
    op: &'static str,
    what: &str,
) -> Result<()> {
    if index.rank() != target.rank() {
        return Err(Error::ShapeMismatch {
            op,
            lhs: index.shape().clone(),
            rhs: target.shape().clone(),
            reason: format!("index must have the same number of dimensions as {what}"),
        });
    }
    for (i, (&a, &b)) in index.dims().iter().zip(target.dims()).enumerate() {
        if Some(i) != skip && a > b {
            return Err(Error::ShapeMismatch {
                op,
                lhs: index.shape().clone(),
                rhs: target.shape().clone(),
                reason: format!("index dimension {i} (size {a}) is larger than that of {what} (size {b})"),
            });
        }
    }
    Ok(())
}

impl Tensor {
    /// Select the entries `indices` (a 1-D `i64`/`u32` tensor, or a scalar) along `dim`, as
    /// `torch.index_select`: the result has `self`'s shape with `dims[dim] = indices.len()`.
    pub fn index_select(&self, dim: impl Dim, indices: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_select";
        let d = dim.to_index(self.rank(), OP)?;
        if indices.rank() > 1 {
            return Err(Error::InvalidShape {
                op: OP,
                shape: indices.shape().clone(),
                reason: "indices must be a 1-D tensor".into(),
            });
        }
        let (outer, size, inner) = split_at_dim(self.dims(), d);
        let idx = checked_indices(indices, size, d, OP)?;
        let mut dims = self.dims().to_vec();
        dims[d] = idx.len();
        if let Some(s) = self.cuda() {
            let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
            let out = s.index_select(self.layout(), &ids, [outer, size, inner])?;
            return Ok(Tensor::from_cuda_contiguous(out, dims));
        }
        crate::with_dtype!(self.dtype(), T => {
            let src = self.contiguous_slice::<T>()?;
            Tensor::from_vec(select_rows(&src, outer, size, inner, &idx), dims)
        })
    }

    /// Gather values along `dim` at positions given by `index`, as `torch.gather`:
    /// `out[i][j][k] = self[index[i][j][k]][j][k]` for `dim = 0`. `index` has `self`'s rank and no
    /// dimension larger than `self`'s (except `dim`); the result has `index`'s shape.
    pub fn gather(&self, dim: impl Dim, index: &Tensor) -> Result<Tensor> {
        const OP: &str = "gather";
        let d = dim.to_index(self.rank(), OP)?;
        check_fits(index, self, Some(d), OP, "the input")?;
        let idx = checked_indices(index, self.dims()[d], d, OP)?;
        let shape = index.shape().clone();
        // Walk the input as if it had the index's shape, with the gathered dimension pinned at 0;
        // each index entry then adds `idx * stride_d`.
        let src_layout = Layout::new(
            shape.clone(),
            zero_stride(self.strides(), d),
            self.layout().offset(),
        );
        let idx_layout = Layout::contiguous(shape.clone());
        let stride_d = self.strides()[d];
        if let Some(s) = self.cuda() {
            let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
            return Ok(Tensor::from_cuda_contiguous(
                s.gather(&src_layout, &ids, stride_d)?,
                shape,
            ));
        }
        crate::with_dtype!(self.dtype(), T => {
            let data = self.storage_slice::<T>()?;
            let mut out = Vec::with_capacity(shape.elem_count());
            zip_blocks([&src_layout, &idx_layout], |[ps, pi], len, [ss, si]| {
                out.extend((0..len).map(|k| data[ps + k * ss + idx[pi + k * si] * stride_d]));
            });
            Tensor::from_vec(out, shape)
        })
    }

    /// `self` with the values of `src` added at the positions `index` gives along `dim`, as
    /// `torch.Tensor.scatter_add` (out of place): for `dim = 0`,
    /// `out[index[i][j][k]][j][k] += src[i][j][k]`. Repeated indices accumulate. `index`, `src`
    /// and `self` have one rank; `index` is no larger than `src` in any dimension nor than `self`
    /// outside `dim`.
    pub fn scatter_add(&self, dim: impl Dim, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        const OP: &str = "scatter_add";
        let d = dim.to_index(self.rank(), OP)?;
        self.check_same_dtype(src, OP)?;
        check_fits(index, src, None, OP, "src")?;
        check_fits(index, self, Some(d), OP, "the input")?;
        let idx = checked_indices(index, self.dims()[d], d, OP)?;
        let shape = index.shape().clone();
        let out_strides = self.shape().contiguous_strides();
        let stride_d = out_strides[d];
        let out_layout = Layout::new(shape.clone(), zero_stride(&out_strides, d), 0);
        let idx_layout = Layout::contiguous(shape.clone());
        let src_layout = Layout::new(shape, src.strides().to_vec(), src.layout().offset());
        crate::with_dtype!(self.dtype(), T => {
            let mut out = self.to_vec::<T>()?;
            let sdata = src.storage_slice::<T>()?;
            zip_blocks(
                [&out_layout, &idx_layout, &src_layout],
                |[po, pi, ps], len, [so, si, ss]| {
                    for k in 0..len {
                        let o = po + k * so + idx[pi + k * si] * stride_d;
                        out[o] = out[o].add(sdata[ps + k * ss]);
                    }
                },
            );
            Tensor::from_vec(out, self.shape().clone())
        })
    }

    /// `self` with slice `k` of `src` along `dim` added to slice `index[k]`, as
    /// `torch.Tensor.index_add` (out of place). `index` is 1-D; `src` has `self`'s shape except
    /// `dims[dim] = index.len()`. Repeated indices accumulate.
    pub fn index_add(&self, dim: impl Dim, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_add";
        let d = dim.to_index(self.rank(), OP)?;
        self.check_same_dtype(src, OP)?;
        if index.rank() > 1 {
            return Err(Error::InvalidShape {
                op: OP,
                shape: index.shape().clone(),
                reason: "index must be a 1-D tensor".into(),
            });
        }
        let (outer, size, inner) = split_at_dim(self.dims(), d);
        let idx = checked_indices(index, size, d, OP)?;
        let mut expected = self.dims().to_vec();
        expected[d] = idx.len();
        if src.dims() != expected.as_slice() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: src.shape().clone(),
                reason: format!(
                    "src must have shape {:?} (the input's, with dimension {d} of the index's length {})",
                    Shape::new(expected),
                    idx.len()
                ),
            });
        }
        let n = idx.len();
        crate::with_dtype!(self.dtype(), T => {
            let mut out = self.to_vec::<T>()?;
            let s = src.contiguous_slice::<T>()?;
            if inner > 0 {
                for o in 0..outer {
                    for (k, &i) in idx.iter().enumerate() {
                        let dst = &mut out[(o * size + i) * inner..(o * size + i + 1) * inner];
                        let row = &s[(o * n + k) * inner..(o * n + k + 1) * inner];
                        for (a, &b) in dst.iter_mut().zip(row) {
                            *a = a.add(b);
                        }
                    }
                }
            }
            Tensor::from_vec(out, self.shape().clone())
        })
    }

    /// `self` with `value` (converted to its dtype) wherever `mask` is non-zero, as
    /// `torch.Tensor.masked_fill`. `mask` (any dtype; `u8` is the fast path) broadcasts to `self`.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        const OP: &str = "masked_fill";
        let b = mask.shape().broadcast_with(self.shape(), OP)?;
        if &b != self.shape() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: mask.shape().clone(),
                reason: "the mask must broadcast to the input's shape".into(),
            });
        }
        let mask = match mask.dtype() {
            DType::U8 => mask.clone(),
            _ => mask.cmp_scalar(0.0, CmpOp::Ne)?,
        };
        if self.cuda().is_some() {
            return mask.where_cond(&self.full_like(value)?, self);
        }
        let shape = self.shape().clone();
        let lm = mask.layout().broadcast_as(&shape)?;
        crate::with_dtype!(self.dtype(), T => {
            let v = T::from_f64(value);
            let (data, m) = (self.storage_slice::<T>()?, mask.storage_slice::<u8>()?);
            let mut out = Vec::with_capacity(shape.elem_count());
            zip_blocks([self.layout(), &lm], |[px, pm], len, [sx, sm]| {
                out.extend((0..len).map(|k| if m[pm + k * sm] != 0 { v } else { data[px + k * sx] }));
            });
            Tensor::from_vec(out, shape)
        })
    }

    /// One-hot encoding of an integer tensor, as `torch.nn.functional.one_hot`: the result has
    /// `self`'s shape plus a last dimension of `num_classes`, dtype `i64`. Every value must lie in
    /// `0..num_classes`.
    pub fn one_hot(&self, num_classes: usize) -> Result<Tensor> {
        self.one_hot_dtype(num_classes, DType::I64)
    }

    /// [`Tensor::one_hot`] with the result in `dtype`.
    pub fn one_hot_dtype(&self, num_classes: usize, dtype: DType) -> Result<Tensor> {
        const OP: &str = "one_hot";
        let classes = match self.dtype() {
            DType::U8 => checked_indices(&self.to_dtype(DType::I64)?, num_classes, self.rank(), OP)?,
            DType::U32 | DType::I64 => checked_indices(self, num_classes, self.rank(), OP)?,
            dtype => {
                return Err(Error::UnsupportedDType {
                    op: OP,
                    dtype,
                    expected: "an integer dtype (u8, u32, i64)",
                })
            }
        };
        let mut dims = self.dims().to_vec();
        dims.push(num_classes);
        crate::with_dtype!(dtype, T => {
            let mut out = vec![T::ZERO; classes.len() * num_classes];
            for (row, &c) in classes.iter().enumerate() {
                out[row * num_classes + c] = T::ONE;
            }
            Tensor::from_vec(out, dims)
        })?
        .to_device(self.device())
    }

    /// Look up rows of `weight` (`[V, D]`, any dtype) for every id in `ids` (`i64`/`u32`, any
    /// shape): the result has shape `ids.shape + [D]`. An id outside `0..V` is an
    /// [`Error::IndexOutOfRange`] naming the id and `V`.
    pub fn embedding(ids: &Tensor, weight: &Tensor) -> Result<Tensor> {
        const OP: &str = "embedding";
        let [v, dim] = weight.dims2(OP)?;
        let idx = checked_indices(ids, v, 0, OP)?;
        let mut dims = ids.dims().to_vec();
        dims.push(dim);
        if let Some(s) = weight.cuda() {
            let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
            let out = s.index_select(weight.layout(), &ids, [1, v, dim])?;
            return Ok(Tensor::from_cuda_contiguous(out, dims));
        }
        crate::with_dtype!(weight.dtype(), T => {
            let w = weight.contiguous_slice::<T>()?;
            Tensor::from_vec(select_rows(&w, 1, v, dim, &idx), dims)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Device, Error, Tensor};

    fn t34() -> Tensor {
        Tensor::from_vec((0..12).map(|x| x as f32).collect(), [3, 4]).unwrap()
    }
    fn ids(v: &[i64], shape: &[usize]) -> Tensor {
        Tensor::from_slice(v, shape).unwrap()
    }

    #[test]
    fn index_select_rows_and_columns() {
        let a = t34();
        let r = a.index_select(0, &ids(&[2, 0, 2], &[3])).unwrap();
        assert_eq!(r.dims(), &[3, 4]);
        assert_eq!(
            r.to_vec::<f32>().unwrap(),
            vec![8., 9., 10., 11., 0., 1., 2., 3., 8., 9., 10., 11.]
        );
        let idx = Tensor::from_vec(vec![3u32, 1], [2]).unwrap();
        let c = a.index_select(-1, &idx).unwrap();
        assert_eq!(c.dims(), &[3, 2]);
        assert_eq!(c.to_vec::<f32>().unwrap(), vec![3., 1., 7., 5., 11., 9.]);
        // Non-contiguous input, integer dtype.
        let b = Tensor::from_vec((0..6i64).collect(), [2, 3])
            .unwrap()
            .t()
            .unwrap();
        let s = b.index_select(1, &ids(&[1], &[1])).unwrap();
        assert_eq!(s.to_vec::<i64>().unwrap(), vec![3, 4, 5]);
        // Empty selection.
        let e = a.index_select(0, &ids(&[], &[0])).unwrap();
        assert_eq!(e.dims(), &[0, 4]);
    }

    #[test]
    fn index_select_errors() {
        let a = t34();
        let e = a.index_select(0, &ids(&[0, 3], &[2])).unwrap_err();
        assert!(
            matches!(
                e,
                Error::IndexOutOfRange {
                    index: 3,
                    dim: 0,
                    size: 3,
                    ..
                }
            ),
            "{e}"
        );
        let e = a.index_select(1, &ids(&[-1], &[1])).unwrap_err();
        assert!(matches!(e, Error::IndexOutOfRange { index: -1, .. }), "{e}");
        let e = a.index_select(0, &ids(&[0, 1], &[1, 2])).unwrap_err();
        assert!(matches!(e, Error::InvalidShape { .. }), "{e}");
        let f = Tensor::from_vec(vec![0f32], [1]).unwrap();
        assert!(matches!(
            a.index_select(0, &f).unwrap_err(),
            Error::UnsupportedDType { .. }
        ));
        assert!(matches!(
            a.index_select(2, &ids(&[0], &[1])).unwrap_err(),
            Error::DimOutOfRange { .. }
        ));
    }

    #[test]
    fn gather_matches_torch() {
        // torch.gather(torch.tensor([[1,2],[3,4]]), 1, torch.tensor([[0,0],[1,0]])) == [[1,1],[4,3]]
        let a = Tensor::from_vec(vec![1i64, 2, 3, 4], [2, 2]).unwrap();
        let g = a.gather(1, &ids(&[0, 0, 1, 0], &[2, 2])).unwrap();
        assert_eq!(g.to_vec::<i64>().unwrap(), vec![1, 1, 4, 3]);
        // dim 0, index smaller than the input in the other dimension.
        let b = t34();
        let g = b.gather(0, &ids(&[2, 0, 1, 1, 0, 2], &[2, 3])).unwrap();
        assert_eq!(g.dims(), &[2, 3]);
        assert_eq!(g.to_vec::<f32>().unwrap(), vec![8., 1., 6., 4., 1., 10.]);
        // Transposed input: gather along the last dim of a view.
        let bt = b.t().unwrap(); // [4, 3], bt[i][j] = b[j][i]
        let idx = Tensor::from_vec(vec![3u32, 0, 1, 2], [2, 2]).unwrap();
        let g = bt.gather(0, &idx).unwrap();
        // out[0][0] = bt[3][0] = 3, out[0][1] = bt[0][1] = 4, out[1][0] = bt[1][0] = 1, out[1][1] = bt[2][1] = 6
        assert_eq!(g.to_vec::<f32>().unwrap(), vec![3., 4., 1., 6.]);
    }

    #[test]
    fn gather_errors() {
        let a = t34();
        let e = a.gather(1, &ids(&[0, 4], &[1, 2])).unwrap_err();
        assert!(
            matches!(
                e,
                Error::IndexOutOfRange {
                    index: 4,
                    dim: 1,
                    size: 4,
                    ..
                }
            ),
            "{e}"
        );
        let e = a.gather(1, &ids(&[0, 1], &[2])).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { op: "gather", .. }), "{e}");
        let e = a.gather(1, &ids(&[0; 8], &[4, 2])).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("[4, 2]") && msg.contains("[3, 4]"), "{msg}");
    }

    #[test]
    fn scatter_add_matches_torch() {
        // torch.zeros(3, 4).scatter_add(0, tensor([[0,1,2,0],[2,2,0,1]]), ones(2,4))
        let z = Tensor::zeros([3, 4], DType::F32, Device::Cpu).unwrap();
        let src = Tensor::ones([2, 4], DType::F32, Device::Cpu).unwrap();
        let idx = ids(&[0, 1, 2, 0, 2, 2, 0, 1], &[2, 4]);
        let out = z.scatter_add(0, &idx, &src).unwrap();
        assert_eq!(
            out.to_vec::<f32>().unwrap(),
            vec![1., 0., 1., 1., 0., 1., 0., 1., 1., 1., 1., 0.]
        );
        // Along dim 1 with duplicates, src larger than index, non-contiguous src.
        let base = Tensor::from_vec(vec![10i64, 20, 30, 40, 50, 60], [2, 3]).unwrap();
        let src = Tensor::from_vec((1..=6i64).collect(), [3, 2])
            .unwrap()
            .t()
            .unwrap(); // [[1,3,5],[2,4,6]]
        let idx = Tensor::from_vec(vec![2u32, 2, 0, 1], [2, 2]).unwrap();
        let out = base.scatter_add(1, &idx, &src).unwrap();
        // row 0: += src[0][0]=1 at 2, src[0][1]=3 at 2 -> [10,20,34]; row 1: 2 at 0, 4 at 1 -> [42,54,60]
        assert_eq!(out.to_vec::<i64>().unwrap(), vec![10, 20, 34, 42, 54, 60]);
        // The input is untouched.
        assert_eq!(base.to_vec::<i64>().unwrap(), vec![10, 20, 30, 40, 50, 60]);
    }

    #[test]
    fn scatter_add_errors() {
        let z = Tensor::zeros([3, 4], DType::F32, Device::Cpu).unwrap();
        let src = Tensor::ones([2, 4], DType::F32, Device::Cpu).unwrap();
        let e = z.scatter_add(0, &ids(&[0, 0, 0, 3], &[1, 4]), &src).unwrap_err();
        assert!(
            matches!(
                e,
                Error::IndexOutOfRange {
                    index: 3,
                    size: 3,
                    ..
                }
            ),
            "{e}"
        );
        let e = z.scatter_add(0, &ids(&[0; 12], &[3, 4]), &src).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
        let src64 = Tensor::ones([2, 4], DType::F64, Device::Cpu).unwrap();
        let e = z.scatter_add(0, &ids(&[0; 8], &[2, 4]), &src64).unwrap_err();
        assert!(matches!(e, Error::DTypeMismatch { .. }), "{e}");
    }

    #[test]
    fn index_add_matches_torch() {
        // torch.ones(5, 3).index_add(0, tensor([0, 4, 2, 0]), arange(12).view(4, 3))
        let x = Tensor::ones([5, 3], DType::F32, Device::Cpu).unwrap();
        let src = Tensor::from_vec((0..12).map(|v| v as f32).collect(), [4, 3]).unwrap();
        let out = x.index_add(0, &ids(&[0, 4, 2, 0], &[4]), &src).unwrap();
        assert_eq!(
            out.to_vec2::<f32>().unwrap(),
            vec![
                vec![10., 12., 14.],
                vec![1., 1., 1.],
                vec![7., 8., 9.],
                vec![1., 1., 1.],
                vec![4., 5., 6.]
            ]
        );
        // Along the last dim.
        let x = Tensor::zeros([2, 3], DType::I64, Device::Cpu).unwrap();
        let src = Tensor::from_vec(vec![1i64, 2, 3, 4], [2, 2]).unwrap();
        let out = x
            .index_add(1, &Tensor::from_vec(vec![2u32, 2], [2]).unwrap(), &src)
            .unwrap();
        assert_eq!(out.to_vec::<i64>().unwrap(), vec![0, 0, 3, 0, 0, 7]);
        // Errors.
        let e = x.index_add(1, &ids(&[3, 0], &[2]), &src).unwrap_err();
        assert!(matches!(e, Error::IndexOutOfRange { index: 3, .. }), "{e}");
        let e = x.index_add(1, &ids(&[0], &[1]), &src).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { op: "index_add", .. }), "{e}");
    }

    #[test]
    fn masked_fill_broadcasts() {
        let a = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], [2, 3]).unwrap();
        let m = Tensor::from_vec(vec![1u8, 0, 1], [3]).unwrap();
        assert_eq!(
            a.masked_fill(&m, -1.0).unwrap().to_vec::<f32>().unwrap(),
            vec![-1., 2., -1., -1., 5., -1.]
        );
        // Float mask on a transposed view; non-zero fills.
        let m = Tensor::from_vec(vec![0f32, 0.5], [2, 1]).unwrap();
        let out = a
            .t()
            .unwrap()
            .masked_fill(&m.t().unwrap(), f64::NEG_INFINITY)
            .unwrap();
        assert_eq!(out.dims(), &[3, 2]);
        assert_eq!(
            out.to_vec::<f32>().unwrap(),
            vec![
                1.,
                f32::NEG_INFINITY,
                2.,
                f32::NEG_INFINITY,
                3.,
                f32::NEG_INFINITY
            ]
        );
        // The mask must not enlarge the input.
        let big = Tensor::ones([4, 2, 3], DType::U8, Device::Cpu).unwrap();
        let e = a.masked_fill(&big, 0.0).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ShapeMismatch {
                    op: "masked_fill",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn one_hot_encodes() {
        let x = ids(&[0, 2, 1], &[3]);
        let h = x.one_hot(3).unwrap();
        assert_eq!((h.dtype(), h.dims()), (DType::I64, &[3usize, 3][..]));
        assert_eq!(h.to_vec::<i64>().unwrap(), vec![1, 0, 0, 0, 0, 1, 0, 1, 0]);
        let x = Tensor::from_vec(vec![1u8, 0], [2, 1]).unwrap();
        let h = x.one_hot_dtype(2, DType::F32).unwrap();
        assert_eq!(h.dims(), &[2, 1, 2]);
        assert_eq!(h.to_vec::<f32>().unwrap(), vec![0., 1., 1., 0.]);
        let e = ids(&[0, 3], &[2]).one_hot(3).unwrap_err();
        assert!(
            matches!(
                e,
                Error::IndexOutOfRange {
                    index: 3,
                    size: 3,
                    ..
                }
            ),
            "{e}"
        );
        let e = Tensor::from_vec(vec![5u8], [1]).unwrap().one_hot(3).unwrap_err();
        assert!(matches!(e, Error::IndexOutOfRange { index: 5, .. }), "{e}");
        assert!(ids(&[-1], &[1]).one_hot(3).is_err());
        assert!(matches!(
            Tensor::from_vec(vec![0f32], [1]).unwrap().one_hot(3).unwrap_err(),
            Error::UnsupportedDType { .. }
        ));
    }

    #[test]
    fn embedding_looks_up_rows() {
        let w = Tensor::from_vec((0..8).map(|v| v as f32).collect(), [4, 2]).unwrap();
        let e = Tensor::embedding(&ids(&[3, 0, 1, 3], &[2, 2]), &w).unwrap();
        assert_eq!(e.dims(), &[2, 2, 2]);
        assert_eq!(e.to_vec::<f32>().unwrap(), vec![6., 7., 0., 1., 2., 3., 6., 7.]);
        let u = Tensor::from_vec(vec![2u32], [1]).unwrap();
        assert_eq!(
            Tensor::embedding(&u, &w.t().unwrap().contiguous().unwrap().t().unwrap())
                .unwrap()
                .to_vec::<f32>()
                .unwrap(),
            vec![4., 5.]
        );
        let msg = Tensor::embedding(&ids(&[1, 7], &[2]), &w)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("embedding") && msg.contains('7') && msg.contains('4'),
            "{msg}"
        );
        assert!(matches!(
            Tensor::embedding(&ids(&[0], &[1]), &w.flatten_all().unwrap()).unwrap_err(),
            Error::InvalidShape { .. }
        ));
    }

    #[test]
    fn large_selects_take_the_parallel_path() {
        let v = 300;
        let d = 256;
        let w = Tensor::from_vec((0..v * d).map(|x| x as f32).collect(), [v, d]).unwrap();
        let id: Vec<i64> = (0..400).map(|i| (i * 7 % v) as i64).collect();
        let e = Tensor::embedding(&ids(&id, &[400]), &w).unwrap();
        let got = e.to_vec::<f32>().unwrap();
        for (k, &i) in id.iter().enumerate() {
            assert_eq!(got[k * d], (i as usize * d) as f32);
            assert_eq!(got[k * d + d - 1], (i as usize * d + d - 1) as f32);
        }
        let w3 = w.reshape([2, v / 2, d]).unwrap();
        let rev: Vec<i64> = (0..150).rev().collect();
        let s = w3.index_select(1, &ids(&rev, &[150])).unwrap();
        assert_eq!(s.dims(), &[2, 150, d]);
        let got = s.to_vec::<f32>().unwrap();
        assert_eq!(got[0], (149 * d) as f32);
        assert_eq!(got[150 * d], (299 * d) as f32);
        assert_eq!(got[2 * 150 * d - 1], (150 * d + d - 1) as f32);
    }
}
