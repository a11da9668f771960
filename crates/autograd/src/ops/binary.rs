//! Broadcasting binary ops, `where` and `masked_fill`, with gradients summed back to each
//! operand's shape.

use kiln_tensor::ops::binary::CmpOp;
use kiln_tensor::Tensor;

use super::sum_to_shape;
use crate::{Result, Var};

impl Var {
    /// Record a binary op given the two local gradient maps `(g → ga, g → gb)` before un-broadcasting.
    fn binary_with(
        &self,
        rhs: &Var,
        op: &'static str,
        y: Tensor,
        grads: impl Fn(&Tensor) -> kiln_tensor::Result<(Tensor, Tensor)> + Send + Sync + 'static,
    ) -> Var {
        let (sa, sb) = (self.shape().clone(), rhs.shape().clone());
        Var::from_op(op, y, &[self, rhs], move |g| {
            let (ga, gb) = grads(g)?;
            Ok(vec![Some(sum_to_shape(&ga, &sa)?), Some(sum_to_shape(&gb, &sb)?)])
        })
    }

    /// `a + b` with broadcasting.
    pub fn add(&self, rhs: &Var) -> Result<Var> {
        let y = self.value().add(rhs.value())?;
        Ok(self.binary_with(rhs, "add", y, |g| Ok((g.clone(), g.clone()))))
    }
    /// `a - b` with broadcasting.
    pub fn sub(&self, rhs: &Var) -> Result<Var> {
        let y = self.value().sub(rhs.value())?;
        Ok(self.binary_with(rhs, "sub", y, |g| Ok((g.clone(), g.neg()?))))
    }
    /// `a * b` with broadcasting.
    pub fn mul(&self, rhs: &Var) -> Result<Var> {
        let y = self.value().mul(rhs.value())?;
        let (a, b) = (self.value().clone(), rhs.value().clone());
        Ok(self.binary_with(rhs, "mul", y, move |g| Ok((g.mul(&b)?, g.mul(&a)?))))
    }
    /// `a / b` with broadcasting.
    pub fn div(&self, rhs: &Var) -> Result<Var> {
        let y = self.value().div(rhs.value())?;
        let (b, yc) = (rhs.value().clone(), y.clone());
        // d/da = 1/b; d/db = -a/b² = -y/b
        Ok(self.binary_with(rhs, "div", y, move |g| {
            let ga = g.div(&b)?;
            Ok((ga.clone(), ga.mul(&yc)?.neg()?))
        }))
    }
    /// `a ^ b` with broadcasting (the gradient for `b` needs `a > 0`).
    pub fn pow(&self, rhs: &Var) -> Result<Var> {
        let y = self.value().pow(rhs.value())?;
        let (a, b, yc) = (self.value().clone(), rhs.value().clone(), y.clone());
        Ok(self.binary_with(rhs, "pow", y, move |g| {
            let ga = g.mul(&b)?.mul(&a.pow(&b.add_scalar(-1.0)?)?)?;
            let gb = g.mul(&yc)?.mul(&a.log()?)?;
            Ok((ga, gb))
        }))
    }
    /// Element-wise maximum (ties split the gradient evenly, as PyTorch).
    pub fn maximum(&self, rhs: &Var) -> Result<Var> {
        self.extremum(rhs, CmpOp::Gt, "maximum")
    }
    /// Element-wise minimum (ties split the gradient evenly, as PyTorch).
    pub fn minimum(&self, rhs: &Var) -> Result<Var> {
        self.extremum(rhs, CmpOp::Lt, "minimum")
    }
    fn extremum(&self, rhs: &Var, wins: CmpOp, op: &'static str) -> Result<Var> {
        let (a, b) = (self.value().clone(), rhs.value().clone());
        let y = if wins == CmpOp::Gt {
            a.maximum(&b)?
        } else {
            a.minimum(&b)?
        };
        Ok(self.binary_with(rhs, op, y, move |g| {
            let dt = g.dtype();
            let win = a.cmp(&b, wins)?.to_dtype(dt)?;
            let tie = a.eq(&b)?.to_dtype(dt)?.mul_scalar(0.5)?;
            let wa = win.add(&tie)?;
            let wb = wa.affine(-1.0, 1.0)?;
            Ok((g.mul(&wa)?, g.mul(&wb)?))
        }))
    }

    /// `torch.where(cond, a, b)`: `cond` is a constant mask (non-zero = take `a`).
    pub fn where_cond(cond: &Tensor, a: &Var, b: &Var) -> Result<Var> {
        let y = cond.where_cond(a.value(), b.value())?;
        let c = cond.clone();
        let (sa, sb) = (a.shape().clone(), b.shape().clone());
        Ok(Var::from_op("where", y, &[a, b], move |g| {
            let zero = Tensor::zeros([1], g.dtype(), g.device())?;
            let ga = c.where_cond(g, &zero)?;
            let gb = c.where_cond(&zero, g)?;
            Ok(vec![Some(sum_to_shape(&ga, &sa)?), Some(sum_to_shape(&gb, &sb)?)])
        }))
    }

    /// Fill with `value` where `mask` (broadcast to this shape) is non-zero; no gradient flows there.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Var> {
        let y = self.value().masked_fill(mask, value)?;
        let m = mask.clone();
        Ok(Var::from_op("masked_fill", y, &[self], move |g| {
            Ok(vec![Some(g.masked_fill(&m, 0.0)?)])
        }))
    }
}
