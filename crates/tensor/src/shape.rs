//! [`Shape`], dimension arguments ([`Dim`], [`Dims`]) and NumPy broadcasting rules.

use crate::{Error, Result};

/// The size of each dimension of a tensor, outermost first.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Shape {
    /// A shape from its dimension sizes.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }
    /// The dimension sizes.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    /// Total number of elements (1 for a scalar).
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }
    /// Row-major (C-order) strides for this shape.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.0.len()];
        let mut acc = 1;
        for (s, &d) in strides.iter_mut().zip(&self.0).rev() {
            *s = acc;
            acc *= d;
        }
        strides
    }
    /// Consume into the dimension sizes.
    pub fn into_dims(self) -> Vec<usize> {
        self.0
    }

    /// The shape two operands broadcast to under NumPy's rules: align from the right; sizes must be
    /// equal or one of them 1.
    pub fn broadcast_with(&self, other: &Shape, op: &'static str) -> Result<Shape> {
        let (a, b) = (self.dims(), other.dims());
        let rank = a.len().max(b.len());
        let mut out = vec![0; rank];
        for i in 0..rank {
            let da = if i < rank - a.len() {
                1
            } else {
                a[i - (rank - a.len())]
            };
            let db = if i < rank - b.len() {
                1
            } else {
                b[i - (rank - b.len())]
            };
            out[i] = if da == db || db == 1 {
                da
            } else if da == 1 {
                db
            } else {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: self.clone(),
                    rhs: other.clone(),
                    reason: format!(
                        "dimension {i} of the broadcast result: sizes {da} and {db} must be equal or one of them 1"
                    ),
                });
            };
        }
        Ok(Shape(out))
    }
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}
impl From<&Vec<usize>> for Shape {
    fn from(v: &Vec<usize>) -> Self {
        Shape(v.clone())
    }
}
impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}
impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}
impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(vec![])
    }
}
impl From<usize> for Shape {
    fn from(d: usize) -> Self {
        Shape(vec![d])
    }
}
impl From<(usize, usize)> for Shape {
    fn from(d: (usize, usize)) -> Self {
        Shape(vec![d.0, d.1])
    }
}
impl From<(usize, usize, usize)> for Shape {
    fn from(d: (usize, usize, usize)) -> Self {
        Shape(vec![d.0, d.1, d.2])
    }
}
impl From<(usize, usize, usize, usize)> for Shape {
    fn from(d: (usize, usize, usize, usize)) -> Self {
        Shape(vec![d.0, d.1, d.2, d.3])
    }
}

/// A dimension argument: a `usize`, or a signed integer where negatives count from the end (as in
/// PyTorch: `-1` is the last dimension).
pub trait Dim: Copy {
    /// Resolve to an index in `0..rank`.
    fn to_index(self, rank: usize, op: &'static str) -> Result<usize>;
    /// Resolve for an insertion point (`0..=rank`), as `unsqueeze` and `stack` need.
    fn to_index_plus_one(self, rank: usize, op: &'static str) -> Result<usize>;
}

fn resolve_signed(d: i64, rank: usize, op: &'static str) -> Result<usize> {
    let r = rank as i64;
    let idx = if d < 0 { d + r } else { d };
    if idx < 0 || idx >= r {
        return Err(Error::DimOutOfRange { op, dim: d, rank });
    }
    Ok(idx as usize)
}

macro_rules! signed_dim {
    ($t:ty) => {
        impl Dim for $t {
            fn to_index(self, rank: usize, op: &'static str) -> Result<usize> {
                resolve_signed(self as i64, rank, op)
            }
            fn to_index_plus_one(self, rank: usize, op: &'static str) -> Result<usize> {
                resolve_signed(self as i64, rank + 1, op)
            }
        }
    };
}
signed_dim!(i32);
signed_dim!(i64);
signed_dim!(isize);

impl Dim for usize {
    fn to_index(self, rank: usize, op: &'static str) -> Result<usize> {
        resolve_signed(self as i64, rank, op)
    }
    fn to_index_plus_one(self, rank: usize, op: &'static str) -> Result<usize> {
        resolve_signed(self as i64, rank + 1, op)
    }
}

/// A set of dimensions: one [`Dim`], or a slice, array or `Vec` of them.
pub trait Dims {
    /// Resolve to sorted, deduplicated indices in `0..rank`.
    fn to_indices(&self, rank: usize, op: &'static str) -> Result<Vec<usize>>;
}

fn sorted_unique(mut v: Vec<usize>, op: &'static str) -> Result<Vec<usize>> {
    v.sort_unstable();
    let n = v.len();
    v.dedup();
    if v.len() != n {
        return Err(Error::invalid(op, "a dimension is listed twice"));
    }
    Ok(v)
}

impl<D: Dim> Dims for D {
    fn to_indices(&self, rank: usize, op: &'static str) -> Result<Vec<usize>> {
        Ok(vec![self.to_index(rank, op)?])
    }
}
impl<D: Dim> Dims for &[D] {
    fn to_indices(&self, rank: usize, op: &'static str) -> Result<Vec<usize>> {
        sorted_unique(
            self.iter().map(|d| d.to_index(rank, op)).collect::<Result<_>>()?,
            op,
        )
    }
}
impl<D: Dim, const N: usize> Dims for [D; N] {
    fn to_indices(&self, rank: usize, op: &'static str) -> Result<Vec<usize>> {
        self.as_slice().to_indices(rank, op)
    }
}
impl<D: Dim> Dims for Vec<D> {
    fn to_indices(&self, rank: usize, op: &'static str) -> Result<Vec<usize>> {
        self.as_slice().to_indices(rank, op)
    }
}

/// All dimensions of a tensor (for full reductions).
#[derive(Clone, Copy, Debug)]
pub struct AllDims;

impl Dims for AllDims {
    fn to_indices(&self, rank: usize, _op: &'static str) -> Result<Vec<usize>> {
        Ok((0..rank).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_follows_numpy() {
        let a = Shape::from([8, 1, 6, 1]);
        let b = Shape::from([7, 1, 5]);
        assert_eq!(a.broadcast_with(&b, "t").unwrap().dims(), &[8, 7, 6, 5]);
        assert!(Shape::from([3]).broadcast_with(&Shape::from([4]), "t").is_err());
    }

    #[test]
    fn negative_dims_count_from_end() {
        assert_eq!((-1i32).to_index(3, "t").unwrap(), 2);
        assert!((3usize).to_index(3, "t").is_err());
        assert_eq!([-1i32, 0].to_indices(3, "t").unwrap(), vec![0, 2]);
    }
}
