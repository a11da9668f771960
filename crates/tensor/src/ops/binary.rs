//! Element-wise binary operations with NumPy broadcasting, comparisons and `where`.

use crate::backend::{DeviceStorage, ElementMap};
use crate::{DType, Layout, Result, Shape, Tensor, WithDType};

/// An arithmetic function of two tensors of the same dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `a ^ b` (floats only)
    Pow,
    /// Element-wise maximum.
    Maximum,
    /// Element-wise minimum.
    Minimum,
}

impl BinaryOp {
    /// The op's name for error messages.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
        }
    }
    #[inline(always)]
    fn eval<T: WithDType>(self, a: T, b: T) -> T {
        match self {
            BinaryOp::Add => a.add(b),
            BinaryOp::Sub => a.sub(b),
            BinaryOp::Mul => a.mul(b),
            BinaryOp::Div => a.div(b),
            BinaryOp::Pow => T::from_f64(a.to_f64().powf(b.to_f64())),
            // NaN propagates, as in torch.maximum.
            BinaryOp::Maximum => {
                if is_nan(a) || a >= b {
                    a
                } else {
                    b
                }
            }
            BinaryOp::Minimum => {
                if is_nan(a) || a <= b {
                    a
                } else {
                    b
                }
            }
        }
    }
}

/// NaN test for any element type (integers are never NaN).
#[inline(always)]
pub(crate) fn is_nan<T: PartialOrd>(x: T) -> bool {
    x.partial_cmp(&x).is_none()
}

/// A comparison producing a `u8` mask (1 = true).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `a == b`
    Eq,
    /// `a != b`
    Ne,
    /// `a < b`
    Lt,
    /// `a <= b`
    Le,
    /// `a > b`
    Gt,
    /// `a >= b`
    Ge,
}

impl CmpOp {
    #[inline(always)]
    fn eval<T: PartialOrd>(self, a: T, b: T) -> u8 {
        (match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }) as u8
    }
}

/// Walk `N` layouts of the same shape in lockstep, in blocks along the innermost dimension:
/// `f(starts, len, strides)`.
#[inline(always)]
pub(crate) fn zip_blocks<const N: usize>(
    layouts: [&Layout; N],
    mut f: impl FnMut([usize; N], usize, [usize; N]),
) {
    let dims = layouts[0].dims();
    let n: usize = dims.iter().product();
    if n == 0 {
        return;
    }
    if dims.is_empty() {
        f(layouts.map(|l| l.offset()), 1, [0; N]);
        return;
    }
    let rank = dims.len();
    let inner = dims[rank - 1];
    let inner_strides = layouts.map(|l| l.strides()[rank - 1]);
    let mut idx = vec![0usize; rank - 1];
    let mut pos = layouts.map(|l| l.offset());
    loop {
        f(pos, inner, inner_strides);
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            for k in 0..N {
                pos[k] += layouts[k].strides()[d];
            }
            if idx[d] < dims[d] {
                break;
            }
            for k in 0..N {
                pos[k] -= layouts[k].strides()[d] * dims[d];
            }
            idx[d] = 0;
        }
    }
}

/// Run `op` with the `match` hoisted out of the element loop, so the common ops get their own
/// tight (vectorisable) loops instead of a branch per element.
fn binary_kernel<T: WithDType>(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    let name = op.name();
    match op {
        BinaryOp::Add => broadcast_map::<T, T>(a, b, name, |x, y| x.add(y)),
        BinaryOp::Sub => broadcast_map::<T, T>(a, b, name, |x, y| x.sub(y)),
        BinaryOp::Mul => broadcast_map::<T, T>(a, b, name, |x, y| x.mul(y)),
        BinaryOp::Div => broadcast_map::<T, T>(a, b, name, |x, y| x.div(y)),
        _ => broadcast_map::<T, T>(a, b, name, |x, y| op.eval(x, y)),
    }
}

/// Broadcast `a` and `b` and apply `f` element-wise, producing a contiguous tensor.
fn broadcast_map<T: WithDType, U: WithDType>(
    a: &Tensor,
    b: &Tensor,
    op: &'static str,
    f: impl Fn(T, T) -> U + Sync,
) -> Result<Tensor> {
    let shape = a.shape().broadcast_with(b.shape(), op)?;
    let (da, db) = (a.storage_slice::<T>()?, b.storage_slice::<T>()?);
    let (la, lb) = (a.layout().broadcast_as(&shape)?, b.layout().broadcast_as(&shape)?);
    let n = shape.elem_count();
    if let (Some(ra), Some(rb)) = (la.contiguous_range(), lb.contiguous_range()) {
        let (sa, sb) = (&da[ra], &db[rb]);
        let out: Vec<U> = super::map_slices(sa, sb, f);
        return Tensor::from_vec(out, shape);
    }
    let mut out = Vec::with_capacity(n);
    // One thread; the blocks' inner loops are compiled for the machine's widest vectors.
    crate::simd::dispatch(|| {
        zip_blocks([&la, &lb], |[pa, pb], len, [sa, sb]| match (sa, sb) {
            (1, 1) => out.extend(
                da[pa..pa + len]
                    .iter()
                    .zip(&db[pb..pb + len])
                    .map(|(&x, &y)| f(x, y)),
            ),
            (1, 0) => {
                let y = db[pb];
                out.extend(da[pa..pa + len].iter().map(|&x| f(x, y)))
            }
            (0, 1) => {
                let x = da[pa];
                out.extend(db[pb..pb + len].iter().map(|&y| f(x, y)))
            }
            _ => out.extend((0..len).map(|i| f(da[pa + i * sa], db[pb + i * sb]))),
        });
    });
    Tensor::from_vec(out, shape)
}

impl Tensor {
    /// Apply a [`BinaryOp`] with NumPy broadcasting. Both operands must share a dtype.
    pub fn binary(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        self.check_same_dtype(rhs, op.name())?;
        if op == BinaryOp::Pow && !self.dtype().is_float() {
            self.check_float("pow")?;
        }
        if let (Some(a), Some(b)) = (self.cuda(), rhs.cuda()) {
            let shape = self.shape().broadcast_with(rhs.shape(), op.name())?;
            let (la, lb) = (
                self.layout().broadcast_as(&shape)?,
                rhs.layout().broadcast_as(&shape)?,
            );
            return Ok(Tensor::from_cuda_contiguous(
                a.binary(&la, b, &lb, &shape, op)?,
                shape,
            ));
        }
        match self.dtype() {
            DType::F16 | DType::BF16 if op == BinaryOp::Pow => self
                .to_dtype(DType::F32)?
                .binary(&rhs.to_dtype(DType::F32)?, op)?
                .to_dtype(self.dtype()),
            dtype => crate::with_dtype!(dtype, T => binary_kernel::<T>(self, rhs, op)),
        }
    }

    /// The ReLU backward pass (`torch.ops.aten.threshold_backward` at 0): `self` (the gradient)
    /// where `input > 0`, else 0, in one pass. Same dtype for both; broadcasting as in [`Tensor::binary`].
    pub fn relu_backward(&self, input: &Tensor) -> Result<Tensor> {
        self.check_same_dtype(input, "relu_backward")?;
        if self.cuda().is_some() {
            let positive = input.cmp_scalar(0.0, CmpOp::Gt)?;
            return positive.where_cond(self, &self.zeros_like()?);
        }
        crate::with_dtype!(self.dtype(), T => broadcast_map::<T, T>(self, input, "relu_backward", |g, x| {
            if x > T::ZERO { g } else { T::ZERO }
        }))
    }
    /// `self + rhs` with broadcasting.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add)
    }
    /// `self - rhs` with broadcasting.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub)
    }
    /// `self * rhs` with broadcasting.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul)
    }
    /// `self / rhs` with broadcasting.
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Div)
    }
    /// `self ^ rhs` with broadcasting (floats).
    pub fn pow(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Pow)
    }
    /// Element-wise maximum with broadcasting.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Maximum)
    }
    /// Element-wise minimum with broadcasting.
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Minimum)
    }

    /// Compare with broadcasting, giving a `u8` mask.
    pub fn cmp(&self, rhs: &Tensor, op: CmpOp) -> Result<Tensor> {
        self.check_same_dtype(rhs, "cmp")?;
        if let (Some(a), Some(b)) = (self.cuda(), rhs.cuda()) {
            let shape = self.shape().broadcast_with(rhs.shape(), "cmp")?;
            let (la, lb) = (
                self.layout().broadcast_as(&shape)?,
                rhs.layout().broadcast_as(&shape)?,
            );
            return Ok(Tensor::from_cuda_contiguous(
                a.cmp(&la, b, &lb, &shape, op)?,
                shape,
            ));
        }
        crate::with_dtype!(self.dtype(), T => broadcast_map::<T, u8>(self, rhs, "cmp", |a, b| op.eval(a, b)))
    }
    /// `self == rhs` as a mask.
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Eq)
    }
    /// `self != rhs` as a mask.
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Ne)
    }
    /// `self < rhs` as a mask.
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Lt)
    }
    /// `self <= rhs` as a mask.
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Le)
    }
    /// `self > rhs` as a mask.
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Gt)
    }
    /// `self >= rhs` as a mask.
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Ge)
    }
    /// Compare every element with a scalar, giving a `u8` mask.
    pub fn cmp_scalar(&self, value: f64, op: CmpOp) -> Result<Tensor> {
        if self.cuda().is_some() {
            return self.map_on_device(ElementMap::CmpScalar(op, value));
        }
        crate::with_dtype!(self.dtype(), T => {
            let v = T::from_f64(value);
            super::map_elements::<T, u8>(self, move |a| op.eval(a, v))
        })
    }

    /// Pick from `on_true` where `self` (a mask of any dtype; non-zero = true) holds, else from
    /// `on_false`; all three broadcast together (`torch.where(cond, a, b)`).
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        on_true.check_same_dtype(on_false, "where")?;
        if self.device() != on_true.device() {
            return Err(crate::Error::DeviceMismatch {
                op: "where",
                lhs: self.device(),
                rhs: on_true.device(),
            });
        }
        let shape = self
            .shape()
            .broadcast_with(on_true.shape(), "where")?
            .broadcast_with(on_false.shape(), "where")?;
        let mask = self.to_dtype(DType::U8)?;
        if let (Some(m), Some(a), Some(b)) = (mask.cuda(), on_true.cuda(), on_false.cuda()) {
            let lm = mask.layout().broadcast_as(&shape)?;
            let (la, lb) = (
                on_true.layout().broadcast_as(&shape)?,
                on_false.layout().broadcast_as(&shape)?,
            );
            return Ok(Tensor::from_cuda_contiguous(
                m.where_cond(&lm, (a, &la), (b, &lb), &shape)?,
                shape,
            ));
        }
        crate::with_dtype!(on_true.dtype(), T => where_kernel::<T>(&mask, on_true, on_false, shape))
    }
}

fn where_kernel<T: WithDType>(mask: &Tensor, a: &Tensor, b: &Tensor, shape: Shape) -> Result<Tensor> {
    let (dm, da, db) = (
        mask.storage_slice::<u8>()?,
        a.storage_slice::<T>()?,
        b.storage_slice::<T>()?,
    );
    let lm = mask.layout().broadcast_as(&shape)?;
    let la = a.layout().broadcast_as(&shape)?;
    let lb = b.layout().broadcast_as(&shape)?;
    let mut out = Vec::with_capacity(shape.elem_count());
    zip_blocks([&lm, &la, &lb], |[pm, pa, pb], len, [sm, sa, sb]| {
        out.extend((0..len).map(|i| {
            if dm[pm + i * sm] != 0 {
                da[pa + i * sa]
            } else {
                db[pb + i * sb]
            }
        }));
    });
    Tensor::from_vec(out, shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn broadcast_add_and_compare() {
        let a = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], [2, 3]).unwrap();
        let row = Tensor::from_vec(vec![10f32, 20., 30.], [3]).unwrap();
        let col = Tensor::from_vec(vec![100f32, 200.], [2, 1]).unwrap();
        assert_eq!(
            a.add(&row).unwrap().to_vec::<f32>().unwrap(),
            vec![11., 22., 33., 14., 25., 36.]
        );
        assert_eq!(
            a.mul(&col).unwrap().to_vec::<f32>().unwrap(),
            vec![100., 200., 300., 800., 1000., 1200.]
        );
        assert_eq!(a.t().unwrap().sub(&col.t().unwrap()).unwrap().dims(), &[3, 2]);
        assert_eq!(
            a.gt(&row.affine(0.0, 3.5).unwrap())
                .unwrap()
                .to_vec::<u8>()
                .unwrap(),
            vec![0, 0, 0, 1, 1, 1]
        );
        assert_eq!(
            a.maximum(&row.affine(0.0, 3.5).unwrap())
                .unwrap()
                .to_vec::<f32>()
                .unwrap(),
            vec![3.5, 3.5, 3.5, 4., 5., 6.]
        );
        let two = Tensor::from_vec(vec![2f32], [1]).unwrap();
        assert_eq!(
            a.pow(&two).unwrap().to_vec::<f32>().unwrap(),
            vec![1., 4., 9., 16., 25., 36.]
        );
        assert_eq!(
            a.div(&two)
                .unwrap()
                .minimum(&two)
                .unwrap()
                .to_vec::<f32>()
                .unwrap(),
            vec![0.5, 1., 1.5, 2., 2., 2.]
        );
    }

    #[test]
    fn mismatches_are_errors_naming_both_shapes() {
        let a = Tensor::zeros([2, 3], DType::F32, crate::Device::Cpu).unwrap();
        let b = Tensor::zeros([4], DType::F32, crate::Device::Cpu).unwrap();
        let msg = a.add(&b).unwrap_err().to_string();
        assert!(
            msg.contains("add") && msg.contains("[2, 3]") && msg.contains("[4]"),
            "{msg}"
        );
        let c = Tensor::zeros([3], DType::F64, crate::Device::Cpu).unwrap();
        assert!(matches!(a.add(&c).unwrap_err(), Error::DTypeMismatch { .. }));
    }

    #[test]
    fn where_selects_with_broadcast() {
        let m = Tensor::from_vec(vec![1u8, 0, 1], [3]).unwrap();
        let a = Tensor::from_vec(vec![1i64, 2, 3, 4, 5, 6], [2, 3]).unwrap();
        let b = Tensor::from_vec(vec![0i64], [1]).unwrap();
        assert_eq!(
            m.where_cond(&a, &b).unwrap().to_vec::<i64>().unwrap(),
            vec![1, 0, 3, 4, 0, 6]
        );
    }

    #[test]
    fn relu_backward_passes_the_gradient_where_the_input_is_positive() {
        let g = Tensor::from_vec(vec![1f32, 2., 3., 4., 5.], [5]).unwrap();
        let x = Tensor::from_vec(vec![-1f32, 0., 0.5, f32::NAN, 7.], [5]).unwrap();
        assert_eq!(
            g.relu_backward(&x).unwrap().to_vec::<f32>().unwrap(),
            vec![0., 0., 3., 0., 5.]
        );
        let x64 = x.to_dtype(DType::F64).unwrap();
        assert!(matches!(
            g.relu_backward(&x64).unwrap_err(),
            Error::DTypeMismatch { .. }
        ));
    }
}
