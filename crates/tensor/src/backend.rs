//! The device seam: what a non-CPU storage must provide.
//!
//! The CPU kernels are the ops' own code (`ops/*`), written over host slices. Every op family
//! checks once, at its entry point, whether its operands live on another device and, if so,
//! hands the work to that device's storage through this trait (the one `match` per op family;
//! see `docs/ARCHITECTURE.md`). Views (reshape, transpose, narrow, broadcast) only change the
//! [`Layout`] and never reach a backend. An op with no device method here reads host memory and
//! fails on a device tensor with [`Error::UnsupportedDevice`](crate::Error::UnsupportedDevice).
//!
//! Builds without the `cuda` feature implement the trait with an uninhabited type, so the
//! dispatch carries no `#[cfg]` and compiles away.

use crate::ops::binary::{BinaryOp, CmpOp};
use crate::ops::unary::UnaryOp;
use crate::storage::CpuStorage;
use crate::{DType, Device, Layout, Result, Shape};

/// An element-wise map of one tensor, beyond the float [`UnaryOp`]s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ElementMap {
    /// A float function; `Affine` and `Clamp` also take integers (computed in f64, converted
    /// back saturating, as on the CPU).
    Unary(UnaryOp),
    /// `-x` (any dtype; wrapping for unsigned integers).
    Neg,
    /// `|x|` (any dtype).
    Abs,
    /// `x <op> value` as a `u8` mask.
    CmpScalar(CmpOp, f64),
}

/// A reduction of each contiguous row to one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowReduce {
    /// Sum (floats accumulate in at least f32; the CPU uses f64).
    Sum,
    /// Maximum (NaN wins, as on the CPU).
    Max,
    /// Minimum (NaN wins).
    Min,
    /// Index (i64) of the first maximum.
    ArgMax,
    /// Index (i64) of the first minimum.
    ArgMin,
}

/// The geometry of a 2-D convolution: input `[n, c, h, w]`, output `[n, co, oh, ow]`, kernel
/// `kh x kw`, strides, paddings, dilations and groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct ConvGeometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub dh: usize,
    pub dw: usize,
    pub groups: usize,
}

/// A storage on a device other than the host. Methods take the operands' layouts; results are
/// contiguous storages of the output shape.
pub trait DeviceStorage: Sized {
    /// The device the elements live on.
    fn device(&self) -> Device;
    /// The element type.
    fn dtype(&self) -> DType;
    /// Bytes held on the device.
    fn byte_len(&self) -> usize;
    /// Copy host elements to `device`.
    fn upload(cpu: &CpuStorage, device: Device) -> Result<Self>;
    /// Copy every element (the whole buffer, ignoring any layout) back to the host.
    fn download(&self) -> Result<CpuStorage>;
    /// A row-major copy of the elements `layout` selects.
    fn copy_strided(&self, layout: &Layout) -> Result<Self>;
    /// Concatenate `self` (seen through `layout`) and `rest` along `dim` into `out_shape`.
    fn cat(&self, layout: &Layout, rest: &[(&Self, &Layout)], dim: usize, out_shape: &Shape) -> Result<Self>;
    /// An element-wise map.
    fn map(&self, layout: &Layout, op: ElementMap) -> Result<Self>;
    /// `lhs <op> rhs`, both broadcast (by their layouts) to `shape`.
    fn binary(
        &self,
        lhs: &Layout,
        rhs: &Self,
        rhs_layout: &Layout,
        shape: &Shape,
        op: BinaryOp,
    ) -> Result<Self>;
    /// `lhs <op> rhs` as a `u8` mask, both broadcast to `shape`.
    fn cmp(&self, lhs: &Layout, rhs: &Self, rhs_layout: &Layout, shape: &Shape, op: CmpOp) -> Result<Self>;
    /// `where(self != 0, on_true, on_false)` with `self` a `u8` mask; all broadcast to `shape`.
    fn where_cond(
        &self,
        mask: &Layout,
        on_true: (&Self, &Layout),
        on_false: (&Self, &Layout),
        shape: &Shape,
    ) -> Result<Self>;
    /// Every element converted to `dtype`, with the CPU's rounding rules.
    fn cast(&self, layout: &Layout, dtype: DType) -> Result<Self>;
    /// Reduce each of the `rows` contiguous rows of length `len` (the elements `layout` selects,
    /// in row-major order) to one value.
    fn reduce_rows(&self, layout: &Layout, rows: usize, len: usize, op: RowReduce) -> Result<Self>;
    /// Softmax (or log-softmax) of each contiguous row of length `len`.
    fn softmax_rows(&self, layout: &Layout, len: usize, log: bool) -> Result<Self>;
    /// `batch` matrix products `[m, k] x [k, n]`; the layouts are `[batch.., m, k]` and
    /// `[batch.., k, n]`, already broadcast over the batch.
    fn matmul(&self, lhs: &Layout, rhs: &Self, rhs_layout: &Layout, mnk: [usize; 3]) -> Result<Self>;
    /// `torch.gather`: element `i` of the output (row-major over the index's shape) is the
    /// element of `self` that `src` (the input walked at the index's shape, the gathered
    /// dimension pinned at 0) reaches, plus `ids[i] * stride_d` (ids already bounds-checked).
    fn gather(&self, src: &Layout, ids: &[i64], stride_d: usize) -> Result<Self>;
    /// Unfold the image `[n, c, h, w]` (seen through `layout`) into convolution columns
    /// `[n, groups, c / groups * kh * kw, oh * ow]`, zeros where a tap falls in the padding.
    fn im2col(&self, layout: &Layout, geom: &ConvGeometry) -> Result<Self>;
    /// The adjoint of [`DeviceStorage::im2col`]: contiguous columns back to `[n, c, h, w]`,
    /// summing the taps that land on the same pixel.
    fn col2im(&self, geom: &ConvGeometry) -> Result<Self>;
    /// Max pooling of `[n, c, h, w]` (through `layout`; `geom` without dilation or groups): the
    /// maxima `[n, c, oh, ow]` and their flat `y * w + x` positions as i64.
    fn max_pool2d(&self, layout: &Layout, geom: &ConvGeometry) -> Result<(Self, Self)>;
    /// The max-pool gradient: `self` (the output gradient, `planes x out_hw` elements through
    /// `layout`) added at `indices` (checked to be below `in_hw`) into `planes x in_hw` zeros.
    fn max_pool2d_backward(
        &self,
        layout: &Layout,
        indices: (&Self, &Layout),
        planes: usize,
        out_hw: usize,
        in_hw: usize,
    ) -> Result<Self>;
    /// Rows of `self` (the elements `layout` selects, viewed as `[outer, size, inner]`) picked by
    /// `ids` (each already checked to be below `size`): output `[outer, ids.len(), inner]`.
    fn index_select(&self, layout: &Layout, ids: &[i64], outer_size_inner: [usize; 3]) -> Result<Self>;
}
