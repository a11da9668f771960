//! [`Layout`]: how a tensor's logical indices map onto its storage (shape, strides, offset).
//!
//! Every view (transpose, permute, narrow, broadcast, unsqueeze...) is a new `Layout` over the same
//! storage; nothing is copied until a kernel needs contiguous data.

use crate::{Error, Result, Shape};

/// Shape, element strides and start offset of a view into storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    /// A row-major layout starting at `offset`.
    pub fn contiguous_with_offset(shape: Shape, offset: usize) -> Self {
        let strides = shape.contiguous_strides();
        Layout {
            shape,
            strides,
            offset,
        }
    }
    /// A row-major layout starting at 0.
    pub fn contiguous(shape: Shape) -> Self {
        Self::contiguous_with_offset(shape, 0)
    }
    /// A layout from explicit parts.
    pub fn new(shape: Shape, strides: Vec<usize>, offset: usize) -> Self {
        Layout {
            shape,
            strides,
            offset,
        }
    }
    /// The logical shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// The dimension sizes.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    /// Element strides per dimension (0 for broadcast dimensions).
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    /// Index of the first element in storage.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// Whether elements are laid out row-major without gaps (size-1 dimensions may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1;
        for (&d, &s) in self.dims().iter().zip(&self.strides).rev() {
            if d != 1 && s != acc {
                return false;
            }
            acc *= d;
        }
        true
    }
    /// The storage range `offset..offset+n` when contiguous.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        self.is_contiguous()
            .then(|| self.offset..self.offset + self.shape.elem_count())
    }
    /// Exclusive upper bound of the storage indices this layout touches.
    pub fn storage_extent(&self) -> usize {
        if self.shape.elem_count() == 0 {
            return self.offset;
        }
        self.offset
            + self
                .dims()
                .iter()
                .zip(&self.strides)
                .map(|(&d, &s)| (d - 1) * s)
                .sum::<usize>()
            + 1
    }

    /// Reorder dimensions.
    pub fn permute(&self, perm: &[usize]) -> Result<Layout> {
        let rank = self.shape.rank();
        let mut seen = vec![false; rank];
        if perm.len() != rank
            || perm
                .iter()
                .any(|&p| p >= rank || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::invalid(
                "permute",
                format!(
                    "{perm:?} is not a permutation of the {rank} dimensions of {:?}",
                    self.shape
                ),
            ));
        }
        Ok(Layout {
            shape: Shape::new(perm.iter().map(|&p| self.dims()[p]).collect::<Vec<_>>()),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        })
    }

    /// Restrict dimension `dim` to `start..start+len`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Layout> {
        let size = self.dims()[dim];
        if start + len > size {
            return Err(Error::IndexOutOfRange {
                op: "narrow",
                index: (start + len) as i64,
                dim,
                size,
            });
        }
        let mut dims = self.dims().to_vec();
        dims[dim] = len;
        Ok(Layout {
            shape: Shape::new(dims),
            strides: self.strides.clone(),
            offset: self.offset + start * self.strides[dim],
        })
    }

    /// View with size-1 (or missing leading) dimensions stretched to `target` with stride 0.
    pub fn broadcast_as(&self, target: &Shape) -> Result<Layout> {
        let (src, dst) = (self.dims(), target.dims());
        if src.len() > dst.len() {
            return Err(Error::ShapeMismatch {
                op: "broadcast_to",
                lhs: self.shape.clone(),
                rhs: target.clone(),
                reason: "the target has fewer dimensions than the source".into(),
            });
        }
        let lead = dst.len() - src.len();
        let mut strides = vec![0; dst.len()];
        for (i, &d) in dst.iter().enumerate() {
            if i < lead {
                continue;
            }
            let s = src[i - lead];
            if s == d {
                strides[i] = self.strides[i - lead];
            } else if s != 1 {
                return Err(Error::ShapeMismatch {
                    op: "broadcast_to",
                    lhs: self.shape.clone(),
                    rhs: target.clone(),
                    reason: format!("dimension {i}: size {s} cannot stretch to {d}"),
                });
            }
        }
        Ok(Layout {
            shape: target.clone(),
            strides,
            offset: self.offset,
        })
    }

    /// Strides for viewing this layout with `new_shape` without copying, if the memory allows it
    /// (the same rule as PyTorch's `view`). `None` means a copy is needed.
    pub fn reshape_view(&self, new_shape: &Shape) -> Option<Layout> {
        if self.is_contiguous() {
            return Some(Layout::contiguous_with_offset(new_shape.clone(), self.offset));
        }
        // Group old dims into runs that are contiguous among themselves, then map new dims onto runs.
        let old: Vec<(usize, usize)> = self
            .dims()
            .iter()
            .zip(&self.strides)
            .filter(|(&d, _)| d != 1)
            .map(|(&d, &s)| (d, s))
            .collect();
        let mut new_strides = vec![0; new_shape.rank()];
        let mut oi = 0;
        let mut ni = 0;
        let nd = new_shape.dims();
        while ni < nd.len() {
            if nd[ni] == 1 {
                new_strides[ni] = 1;
                ni += 1;
                continue;
            }
            if oi >= old.len() {
                return None;
            }
            // Take a run of old dims [oi, oj) whose product equals a run of new dims [ni, nj).
            let mut oj = oi + 1;
            let mut oprod = old[oi].0;
            let mut nj = ni + 1;
            let mut nprod = nd[ni];
            while oprod != nprod {
                if oprod < nprod {
                    if oj >= old.len() || old[oj - 1].1 != old[oj].0 * old[oj].1 {
                        return None;
                    }
                    oprod *= old[oj].0;
                    oj += 1;
                } else {
                    if nj >= nd.len() {
                        return None;
                    }
                    nprod *= nd[nj];
                    nj += 1;
                }
            }
            // The old run must itself be contiguous.
            for k in oi..oj - 1 {
                if old[k].1 != old[k + 1].0 * old[k + 1].1 {
                    return None;
                }
            }
            let mut stride = old[oj - 1].1;
            for k in (ni..nj).rev() {
                new_strides[k] = stride;
                stride *= nd[k];
            }
            oi = oj;
            ni = nj;
        }
        if oi != old.len() {
            return None;
        }
        Some(Layout {
            shape: new_shape.clone(),
            strides: new_strides,
            offset: self.offset,
        })
    }

    /// Visit the storage index of every element in row-major logical order, in blocks: `f(start,
    /// len, stride)` covers `start, start+stride, ... ` (`len` items). Blocks follow the innermost
    /// dimension so kernels get tight inner loops.
    pub fn for_each_block(&self, mut f: impl FnMut(usize, usize, usize)) {
        let dims = self.dims();
        let n = self.shape.elem_count();
        if n == 0 {
            return;
        }
        if self.is_contiguous() {
            f(self.offset, n, 1);
            return;
        }
        let rank = dims.len();
        let inner = dims[rank - 1];
        let inner_stride = self.strides[rank - 1];
        let outer_rank = rank - 1;
        let mut idx = vec![0usize; outer_rank];
        let mut pos = self.offset;
        loop {
            f(pos, inner, inner_stride);
            // Advance the outer multi-index like an odometer.
            let mut d = outer_rank;
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                idx[d] += 1;
                pos += self.strides[d];
                if idx[d] < dims[d] {
                    break;
                }
                pos -= self.strides[d] * dims[d];
                idx[d] = 0;
            }
        }
    }

    /// Storage indices of every element in row-major logical order.
    pub fn storage_indices(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.shape.elem_count());
        self.for_each_block(|start, len, stride| {
            out.extend((0..len).map(|i| start + i * stride));
        });
        out
    }
}

/// Copy the elements a layout selects out of `data` into a new row-major `Vec`.
pub fn gather_contiguous<T: Copy>(data: &[T], layout: &Layout) -> Vec<T> {
    if let Some(r) = layout.contiguous_range() {
        return data[r].to_vec();
    }
    let mut out = Vec::with_capacity(layout.shape().elem_count());
    layout.for_each_block(|start, len, stride| {
        if stride == 1 {
            out.extend_from_slice(&data[start..start + len]);
        } else if stride == 0 {
            out.extend(std::iter::repeat_n(data[start], len));
        } else {
            out.extend((0..len).map(|i| data[start + i * stride]));
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_layout_visits_column_major() {
        let l = Layout::contiguous(Shape::from([2, 3])).permute(&[1, 0]).unwrap();
        assert!(!l.is_contiguous());
        assert_eq!(l.storage_indices(), vec![0, 3, 1, 4, 2, 5]);
    }

    #[test]
    fn reshape_view_of_narrowed_rows_keeps_strides() {
        // [4, 6] narrowed on dim 1 to 4 columns; [4, 2, 2] is still a view.
        let l = Layout::contiguous(Shape::from([4, 6])).narrow(1, 1, 4).unwrap();
        let v = l.reshape_view(&Shape::from([4, 2, 2])).unwrap();
        assert_eq!(v.strides(), &[6, 2, 1]);
        // Flattening it is not.
        assert!(l.reshape_view(&Shape::from([16])).is_none());
    }
}
