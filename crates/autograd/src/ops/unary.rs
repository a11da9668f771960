//! Element-wise unary ops and their derivatives.

use kiln_tensor::{DType, Tensor};

use crate::{Result, Var};

impl Var {
    /// A unary op whose local derivative is `dfdx(x, y)` (element-wise), multiplied by the incoming gradient.
    fn unary_with(
        &self,
        op: &'static str,
        y: Tensor,
        dfdx: impl Fn(&Tensor, &Tensor) -> kiln_tensor::Result<Tensor> + Send + Sync + 'static,
    ) -> Var {
        let x = self.value().clone();
        let yc = y.clone();
        Var::from_op(op, y, &[self], move |g| Ok(vec![Some(g.mul(&dfdx(&x, &yc)?)?)]))
    }

    /// `-x`.
    pub fn neg(&self) -> Result<Var> {
        Ok(Var::from_op("neg", self.value().neg()?, &[self], |g| {
            Ok(vec![Some(g.neg()?)])
        }))
    }
    /// `|x|` (gradient `sign(x)`, 0 at 0).
    pub fn abs(&self) -> Result<Var> {
        let y = self.value().abs()?;
        Ok(self.unary_with("abs", y, |x, _| sign(x)))
    }
    /// `exp(x)`.
    pub fn exp(&self) -> Result<Var> {
        let y = self.value().exp()?;
        Ok(self.unary_with("exp", y, |_, y| Ok(y.clone())))
    }
    /// `ln(x)`.
    pub fn log(&self) -> Result<Var> {
        let y = self.value().log()?;
        Ok(self.unary_with("log", y, |x, _| x.recip()))
    }
    /// `sqrt(x)`.
    pub fn sqrt(&self) -> Result<Var> {
        let y = self.value().sqrt()?;
        Ok(self.unary_with("sqrt", y, |_, y| y.recip()?.mul_scalar(0.5)))
    }
    /// `1/sqrt(x)`.
    pub fn rsqrt(&self) -> Result<Var> {
        let y = self.value().rsqrt()?;
        // d/dx x^-1/2 = -1/2 x^-3/2 = -1/2 y^3
        Ok(self.unary_with("rsqrt", y, |_, y| y.powf(3.0)?.mul_scalar(-0.5)))
    }
    /// `sin(x)`.
    pub fn sin(&self) -> Result<Var> {
        let y = self.value().sin()?;
        Ok(self.unary_with("sin", y, |x, _| x.cos()))
    }
    /// `cos(x)`.
    pub fn cos(&self) -> Result<Var> {
        let y = self.value().cos()?;
        Ok(self.unary_with("cos", y, |x, _| x.sin()?.neg()))
    }
    /// `tanh(x)`.
    pub fn tanh(&self) -> Result<Var> {
        let y = self.value().tanh()?;
        Ok(self.unary_with("tanh", y, |_, y| y.sqr()?.affine(-1.0, 1.0)))
    }
    /// Logistic sigmoid.
    pub fn sigmoid(&self) -> Result<Var> {
        let y = self.value().sigmoid()?;
        Ok(self.unary_with("sigmoid", y, |_, y| y.mul(&y.affine(-1.0, 1.0)?)))
    }
    /// `max(x, 0)` (gradient 0 at 0, as PyTorch).
    pub fn relu(&self) -> Result<Var> {
        let y = self.value().relu()?;
        let x = self.value().clone();
        Ok(Var::from_op("relu", y, &[self], move |g| {
            Ok(vec![Some(g.relu_backward(&x)?)])
        }))
    }
    /// The error function (derivative `2/√π · exp(-x²)`).
    pub fn erf(&self) -> Result<Var> {
        let y = self.value().erf()?;
        Ok(self.unary_with("erf", y, |x, _| {
            x.sqr()?
                .neg()?
                .exp()?
                .mul_scalar(std::f64::consts::FRAC_2_SQRT_PI)
        }))
    }
    /// Exact GELU (one fused pass backward: `g · (Φ(x) + x φ(x))`).
    pub fn gelu(&self) -> Result<Var> {
        let y = self.value().gelu()?;
        let x = self.value().clone();
        Ok(Var::from_op("gelu", y, &[self], move |g| {
            Ok(vec![Some(x.gelu_backward(g)?)])
        }))
    }
    /// Tanh-approximate GELU (one fused pass backward).
    pub fn gelu_tanh(&self) -> Result<Var> {
        let y = self.value().gelu_tanh()?;
        let x = self.value().clone();
        Ok(Var::from_op("gelu_tanh", y, &[self], move |g| {
            Ok(vec![Some(x.gelu_tanh_backward(g)?)])
        }))
    }
    /// SiLU / swish: `x·sigmoid(x)`.
    pub fn silu(&self) -> Result<Var> {
        let y = self.value().silu()?;
        // d = s + x s (1 - s)
        Ok(self.unary_with("silu", y, |x, _| {
            let s = x.sigmoid()?;
            s.add(&x.mul(&s)?.mul(&s.affine(-1.0, 1.0)?)?)
        }))
    }
    /// `x^p` for a constant exponent.
    pub fn powf(&self, p: f64) -> Result<Var> {
        let y = self.value().powf(p)?;
        Ok(self.unary_with("powf", y, move |x, _| x.powf(p - 1.0)?.mul_scalar(p)))
    }
    /// `1/x`.
    pub fn recip(&self) -> Result<Var> {
        let y = self.value().recip()?;
        Ok(self.unary_with("recip", y, |_, y| y.sqr()?.neg()))
    }
    /// `x²`.
    pub fn sqr(&self) -> Result<Var> {
        let y = self.value().sqr()?;
        Ok(self.unary_with("sqr", y, |x, _| x.mul_scalar(2.0)))
    }
    /// `mul·x + add`.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Var> {
        let y = self.value().affine(mul, add)?;
        Ok(Var::from_op("affine", y, &[self], move |g| {
            Ok(vec![Some(g.mul_scalar(mul)?)])
        }))
    }
    /// `x + c`.
    pub fn add_scalar(&self, c: f64) -> Result<Var> {
        self.affine(1.0, c)
    }
    /// `x · c`.
    pub fn mul_scalar(&self, c: f64) -> Result<Var> {
        self.affine(c, 0.0)
    }
    /// Clamp into `[lo, hi]`; the gradient passes where `lo <= x <= hi`, as in PyTorch.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Var> {
        use kiln_tensor::ops::binary::CmpOp;
        let y = self.value().clamp(lo, hi)?;
        Ok(self.unary_with("clamp", y, move |x, _| {
            let inside = x.cmp_scalar(lo, CmpOp::Ge)?.mul(&x.cmp_scalar(hi, CmpOp::Le)?)?;
            inside.to_dtype(x.dtype())
        }))
    }
    /// Cast to another dtype; the gradient is cast back.
    pub fn to_dtype(&self, dtype: DType) -> Result<Var> {
        let from = self.dtype();
        let y = self.value().to_dtype(dtype)?;
        Ok(Var::from_op("to_dtype", y, &[self], move |g| {
            Ok(vec![Some(g.to_dtype(from)?)])
        }))
    }
}

/// `sign(x)` as a float tensor (0 at 0).
fn sign(x: &Tensor) -> kiln_tensor::Result<Tensor> {
    use kiln_tensor::ops::binary::CmpOp;
    let pos = x.cmp_scalar(0.0, CmpOp::Gt)?.to_dtype(x.dtype())?;
    let neg = x.cmp_scalar(0.0, CmpOp::Lt)?.to_dtype(x.dtype())?;
    pos.sub(&neg)
}
