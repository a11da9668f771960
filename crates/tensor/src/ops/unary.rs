//! Element-wise unary operations. Float ops run natively on f32/f64; f16/bf16 compute in f32
//! and round back, as PyTorch does on the CPU.

use crate::backend::{DeviceStorage, ElementMap};
use crate::fast_math::{fast_tanh, FastExp, SQRT_2_OVER_PI};
use crate::{DType, Error, FloatDType, Result, Tensor, WithDType};

/// An element-wise function of one float tensor. Backends implement the enum, not one
/// method per function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// `exp(x)`
    Exp,
    /// Natural logarithm.
    Log,
    /// Square root.
    Sqrt,
    /// `1 / sqrt(x)`
    Rsqrt,
    /// Sine.
    Sin,
    /// Cosine.
    Cos,
    /// Hyperbolic tangent.
    Tanh,
    /// `1 / (1 + exp(-x))`, computed without overflow.
    Sigmoid,
    /// `max(x, 0)`
    Relu,
    /// The error function.
    Erf,
    /// Exact GELU, `x * Φ(x)` with the error function.
    Gelu,
    /// GELU's tanh approximation (GPT-2's `gelu_new`).
    GeluTanh,
    /// `x * sigmoid(x)` (a.k.a. swish).
    Silu,
    /// `x^p` for a constant exponent.
    Powf(f64),
    /// `1 / x`
    Recip,
    /// `x * x`
    Sqr,
    /// `mul * x + add`
    Affine {
        /// Scale.
        mul: f64,
        /// Shift.
        add: f64,
    },
    /// `min(max(x, lo), hi)`
    Clamp {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
}

impl UnaryOp {
    /// The op's name, used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::Erf => "erf",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Silu => "silu",
            UnaryOp::Powf(_) => "powf",
            UnaryOp::Recip => "recip",
            UnaryOp::Sqr => "sqr",
            UnaryOp::Affine { .. } => "affine",
            UnaryOp::Clamp { .. } => "clamp",
        }
    }

    /// Evaluate on one value.
    #[inline(always)]
    pub fn eval<F: FastExp>(self, x: F) -> F {
        let c = |v: f64| F::from_f64(v);
        match self {
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => x.sqrt().recip(),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => sigmoid(x),
            UnaryOp::Relu => {
                if x > F::ZERO {
                    x
                } else {
                    F::ZERO
                }
            }
            UnaryOp::Erf => F::from_f64(libm::erf(x.to_f64())),
            UnaryOp::Gelu => crate::fast_math::gelu_erf(x),
            UnaryOp::GeluTanh => crate::fast_math::gelu_tanh(x),
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::Powf(p) => x.powf(c(p)),
            UnaryOp::Recip => x.recip(),
            UnaryOp::Sqr => x * x,
            UnaryOp::Affine { mul, add } => x * c(mul) + c(add),
            UnaryOp::Clamp { lo, hi } => x.max(c(lo)).min(c(hi)),
        }
    }
}

#[inline(always)]
fn sigmoid<F: FloatDType>(x: F) -> F {
    // Branch on sign so exp never overflows.
    if x >= F::ZERO {
        F::ONE / (F::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (F::ONE + e)
    }
}

/// A fused activation backward's kernel for one dtype: `(x, grad) -> grad_in`.
type BackwardKernel = fn(&Tensor, &Tensor) -> Result<Tensor>;

/// Checks and dtype dispatch of a fused activation backward: `x` and its output gradient `grad`
/// must agree in shape and dtype; f16/bf16 run the f32 kernel and round back.
fn activation_backward(
    op: &'static str,
    x: &Tensor,
    grad: &Tensor,
    f32_kernel: BackwardKernel,
    f64_kernel: BackwardKernel,
) -> Result<Tensor> {
    if x.shape() != grad.shape() || x.dtype() != grad.dtype() {
        return Err(Error::invalid(
            op,
            format!(
                "x {:?} {} and grad {:?} {} must match",
                x.shape(),
                x.dtype(),
                grad.shape(),
                grad.dtype()
            ),
        ));
    }
    match x.dtype() {
        DType::F32 => f32_kernel(x, grad),
        DType::F64 => f64_kernel(x, grad),
        DType::F16 | DType::BF16 => {
            f32_kernel(&x.to_dtype(DType::F32)?, &grad.to_dtype(DType::F32)?)?.to_dtype(x.dtype())
        }
        dtype => Err(Error::UnsupportedDType {
            op,
            dtype,
            expected: "a float dtype (f16, bf16, f32, f64)",
        }),
    }
}

/// Run `op` over every element with the `match` hoisted out of the loop, so each op gets its own
/// tight (vectorisable) loop instead of a branch per element.
fn unary_kernel<F: FastExp>(t: &Tensor, op: UnaryOp) -> Result<Tensor> {
    // The cheap, hot ops get a dedicated loop; the rest share one (their math dominates the branch).
    match op {
        UnaryOp::Relu => super::map_elements::<F, F>(t, |x| if x > F::ZERO { x } else { F::ZERO }),
        UnaryOp::Affine { mul, add } => {
            let (m, a) = (F::from_f64(mul), F::from_f64(add));
            super::map_elements::<F, F>(t, move |x| x * m + a)
        }
        UnaryOp::Sqr => super::map_elements::<F, F>(t, |x| x * x),
        UnaryOp::Sqrt => super::map_elements::<F, F>(t, |x| x.sqrt()),
        UnaryOp::Exp => super::map_elements::<F, F>(t, |x| x.exp()),
        UnaryOp::Recip => super::map_elements::<F, F>(t, |x| x.recip()),
        UnaryOp::GeluTanh => super::map_elements::<F, F>(t, |x| UnaryOp::GeluTanh.eval(x)),
        UnaryOp::Gelu => super::map_elements::<F, F>(t, crate::fast_math::gelu_erf),
        _ => super::map_elements::<F, F>(t, move |x| op.eval(x)),
    }
}

impl Tensor {
    /// Apply a float [`UnaryOp`] element-wise.
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        if self.cuda().is_some() {
            self.check_float(op.name())?;
            return self.map_on_device(ElementMap::Unary(op));
        }
        match self.dtype() {
            DType::F32 => unary_kernel::<f32>(self, op),
            DType::F64 => unary_kernel::<f64>(self, op),
            DType::F16 | DType::BF16 => self.to_dtype(DType::F32)?.unary(op)?.to_dtype(self.dtype()),
            dtype => Err(Error::UnsupportedDType {
                op: op.name(),
                dtype,
                expected: "a float dtype (f16, bf16, f32, f64)",
            }),
        }
    }

    /// `exp(x)`.
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }
    /// Natural logarithm.
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }
    /// Square root.
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }
    /// `1 / sqrt(x)`.
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Rsqrt)
    }
    /// Sine.
    pub fn sin(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sin)
    }
    /// Cosine.
    pub fn cos(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Cos)
    }
    /// Hyperbolic tangent.
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }
    /// Logistic sigmoid.
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }
    /// Rectified linear unit.
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }
    /// The error function.
    pub fn erf(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Erf)
    }
    /// Exact GELU (`erf` form), as `torch.nn.functional.gelu`.
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Gelu)
    }
    /// Tanh-approximate GELU, as `gelu(x, approximate="tanh")`.
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::GeluTanh)
    }
    /// The gradient of [`Tensor::gelu_tanh`] at `self` given the output gradient `grad` (same
    /// shape), in one pass: `g · (½(1 + t) + ½x(1 - t²)·c(1 + 3a x²))` with `t = tanh(c(x + a x³))`.
    pub fn gelu_tanh_backward(&self, grad: &Tensor) -> Result<Tensor> {
        const OP: &str = "gelu_tanh_backward";
        if self.cuda().is_some() {
            self.check_same_dtype(grad, OP)?;
            let (k, a) = (SQRT_2_OVER_PI, 0.044715);
            let x2 = self.sqr()?;
            let t = self.mul(&x2.affine(a, 1.0)?)?.affine(k, 0.0)?.tanh()?;
            let left = t.affine(0.5, 0.5)?;
            let right = self
                .mul(&t.sqr()?.affine(-1.0, 1.0)?)?
                .mul(&x2.affine(3.0 * a * k, k)?)?
                .affine(0.5, 0.0)?;
            return grad.mul(&left.add(&right)?);
        }
        fn kernel<F: FastExp>(x: &Tensor, g: &Tensor) -> Result<Tensor> {
            let (xs, gs) = (x.contiguous_slice::<F>()?, g.contiguous_slice::<F>()?);
            let c = |v: f64| F::from_f64(v);
            let (k, a) = (c(SQRT_2_OVER_PI), c(0.044715));
            let (half, one, three_a) = (c(0.5), F::ONE, c(3.0 * 0.044715));
            let f = |(&x, &g): (&F, &F)| {
                let x2 = x * x;
                let t = fast_tanh(k * (x + a * x2 * x));
                g * (half * (one + t) + half * x * (one - t * t) * k * (one + three_a * x2))
            };
            let out = super::map_slices(&xs, &gs, |x, g| f((&x, &g)));
            Tensor::from_vec(out, x.shape().clone())
        }
        activation_backward(OP, self, grad, kernel::<f32>, kernel::<f64>)
    }
    /// The gradient of [`Tensor::gelu`] at `self` given the output gradient `grad` (same shape),
    /// in one pass: `g · (Φ(x) + x φ(x))`.
    pub fn gelu_backward(&self, grad: &Tensor) -> Result<Tensor> {
        const OP: &str = "gelu_backward";
        if self.cuda().is_some() {
            // Φ(x) + x φ(x), from the device's erf and exp.
            self.check_same_dtype(grad, OP)?;
            let cdf = self
                .affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)?
                .erf()?
                .affine(0.5, 0.5)?;
            let inv_sqrt_2pi = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
            let pdf = self.sqr()?.affine(-0.5, 0.0)?.exp()?.affine(inv_sqrt_2pi, 0.0)?;
            return grad.mul(&cdf.add(&self.mul(&pdf)?)?);
        }
        fn kernel<F: FastExp>(x: &Tensor, g: &Tensor) -> Result<Tensor> {
            let (xs, gs) = (x.contiguous_slice::<F>()?, g.contiguous_slice::<F>()?);
            let out = super::map_slices(&xs, &gs, |x, g| g * crate::fast_math::gelu_erf_grad(x));
            Tensor::from_vec(out, x.shape().clone())
        }
        activation_backward(OP, self, grad, kernel::<f32>, kernel::<f64>)
    }
    /// SiLU / swish.
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu)
    }
    /// `x^p` for a constant `p`.
    pub fn powf(&self, p: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Powf(p))
    }
    /// `1 / x`.
    pub fn recip(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Recip)
    }
    /// `x * x`.
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqr)
    }
    /// Clamp into `[lo, hi]`.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Tensor> {
        if lo > hi {
            return Err(Error::invalid("clamp", format!("lo {lo} exceeds hi {hi}")));
        }
        if self.cuda().is_some() {
            return self.map_on_device(ElementMap::Unary(UnaryOp::Clamp { lo, hi }));
        }
        if self.dtype().is_int() {
            return crate::with_dtype!(self.dtype(), T => super::map_elements::<T, T>(self, |x| {
                let v = x.to_f64().clamp(lo, hi);
                T::from_f64(v)
            }));
        }
        self.unary(UnaryOp::Clamp { lo, hi })
    }
    /// `mul * x + add` (any dtype; integers compute in f64 and truncate).
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        if self.cuda().is_some() {
            return self.map_on_device(ElementMap::Unary(UnaryOp::Affine { mul, add }));
        }
        if self.dtype().is_int() {
            return crate::with_dtype!(self.dtype(), T => super::map_elements::<T, T>(self, |x| T::from_f64(x.to_f64() * mul + add)));
        }
        self.unary(UnaryOp::Affine { mul, add })
    }
    /// Negation (wrapping for unsigned integers).
    pub fn neg(&self) -> Result<Tensor> {
        if self.cuda().is_some() {
            return self.map_on_device(ElementMap::Neg);
        }
        crate::with_dtype!(self.dtype(), T => super::map_elements::<T, T>(self, |x| T::ZERO.sub(x)))
    }
    /// Absolute value.
    pub fn abs(&self) -> Result<Tensor> {
        if matches!(self.dtype(), DType::U8 | DType::U32) {
            return Ok(self.clone());
        }
        if self.cuda().is_some() {
            return self.map_on_device(ElementMap::Abs);
        }
        crate::with_dtype!(self.dtype(), T => super::map_elements::<T, T>(self, |x| if x.to_f64() < 0.0 { T::ZERO.sub(x) } else { x }))
    }
    /// Run an element-wise map on the device backend holding `self`.
    pub(crate) fn map_on_device(&self, op: ElementMap) -> Result<Tensor> {
        match self.cuda() {
            Some(s) => Ok(Tensor::from_cuda_contiguous(
                s.map(self.layout(), op)?,
                self.shape().clone(),
            )),
            None => Err(Error::invalid("map_on_device", "the tensor is in host memory")),
        }
    }
    /// `x + c` for a scalar.
    pub fn add_scalar(&self, c: f64) -> Result<Tensor> {
        self.affine(1.0, c)
    }
    /// `x * c` for a scalar.
    pub fn mul_scalar(&self, c: f64) -> Result<Tensor> {
        self.affine(c, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64], tol: f64) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn hand_checked_values() {
        let x = Tensor::from_vec(vec![-1.0f64, 0.0, 2.0], [3]).unwrap();
        close(
            &x.exp().unwrap().to_vec::<f64>().unwrap(),
            &[0.36787944117144233, 1.0, 7.38905609893065],
            1e-12,
        );
        close(&x.relu().unwrap().to_vec::<f64>().unwrap(), &[0.0, 0.0, 2.0], 0.0);
        close(
            &x.sigmoid().unwrap().to_vec::<f64>().unwrap(),
            &[0.2689414213699951, 0.5, 0.8807970779778823],
            1e-12,
        );
        // torch.nn.functional.gelu([-1, 0, 2]) = [-0.15865525, 0, 1.95449974]
        close(
            &x.gelu().unwrap().to_vec::<f64>().unwrap(),
            &[-0.15865525393145707, 0.0, 1.9544997361036416],
            1e-12,
        );
        // approximate="tanh": [-0.15880801, 0, 1.95459769]
        close(
            &x.gelu_tanh().unwrap().to_vec::<f64>().unwrap(),
            &[-0.15880800939172324, 0.0, 1.9545976940871754],
            1e-12,
        );
        close(
            &x.silu().unwrap().to_vec::<f64>().unwrap(),
            &[-0.2689414213699951, 0.0, 1.7615941559557646],
            1e-12,
        );
        close(
            &x.tanh().unwrap().to_vec::<f64>().unwrap(),
            &[-0.7615941559557649, 0.0, 0.9640275800758169],
            1e-12,
        );
        close(
            &x.clamp(-0.5, 1.0).unwrap().to_vec::<f64>().unwrap(),
            &[-0.5, 0.0, 1.0],
            0.0,
        );
        close(
            &x.affine(2.0, 1.0).unwrap().to_vec::<f64>().unwrap(),
            &[-1.0, 1.0, 5.0],
            0.0,
        );
        close(
            &x.neg().unwrap().abs().unwrap().to_vec::<f64>().unwrap(),
            &[1.0, 0.0, 2.0],
            0.0,
        );
        let p = Tensor::from_vec(vec![4.0f32, 9.0], [2]).unwrap();
        close(&p.sqrt().unwrap().to_f64_vec(), &[2.0, 3.0], 0.0);
        close(&p.rsqrt().unwrap().to_f64_vec(), &[0.5, 1.0 / 3.0], 1e-7);
        close(&p.powf(1.5).unwrap().to_f64_vec(), &[8.0, 27.0], 1e-5);
        close(&p.log().unwrap().to_f64_vec(), &[4f64.ln(), 9f64.ln()], 1e-6);
        let s = Tensor::from_vec(vec![0.0f64, std::f64::consts::FRAC_PI_2], [2]).unwrap();
        close(&s.sin().unwrap().to_f64_vec(), &[0.0, 1.0], 1e-15);
        close(&s.cos().unwrap().to_f64_vec(), &[1.0, 0.0], 1e-15);
    }

    #[test]
    fn f32_gelu_and_its_gradient_follow_the_f64_definition() {
        let xs: Vec<f64> = (0..4001).map(|i| -12.0 + i as f64 * 0.006).collect();
        let x64 = Tensor::from_vec(xs.clone(), [xs.len()]).unwrap();
        let x32 = x64.to_dtype(DType::F32).unwrap();
        let ones = |t: &Tensor| t.ones_like().unwrap();
        let want = x64.gelu().unwrap().to_f64_vec();
        let got = x32.gelu().unwrap().to_f64_vec();
        let want_g = x64.gelu_backward(&ones(&x64)).unwrap().to_f64_vec();
        let got_g = x32.gelu_backward(&ones(&x32)).unwrap().to_f64_vec();
        for (i, &x) in xs.iter().enumerate() {
            // f32 rounding of x itself moves gelu by up to |gelu'(x)| ulp(x) ≈ 1.1 |x| 6e-8.
            let tol = 4e-7 * (1.0 + x.abs());
            assert!(
                (got[i] - want[i]).abs() <= tol,
                "gelu({x}): {} vs {}",
                got[i],
                want[i]
            );
            assert!(
                (got_g[i] - want_g[i]).abs() <= tol,
                "gelu'({x}): {} vs {}",
                got_g[i],
                want_g[i]
            );
            // The f64 gradient against central differences of the f64 function.
            let h = 1e-5;
            let f = |v: f64| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2));
            let fd = (f(x + h) - f(x - h)) / (2.0 * h);
            assert!(
                (want_g[i] - fd).abs() <= 1e-8,
                "gelu'({x}): {} vs fd {fd}",
                want_g[i]
            );
        }
        // exact limits far out
        let far = Tensor::from_vec(vec![-30.0f32, 30.0], [2]).unwrap();
        assert_eq!(far.gelu().unwrap().to_vec::<f32>().unwrap(), vec![-0.0, 30.0]);
    }

    #[test]
    fn sigmoid_is_stable_at_extremes_and_half_precision_works() {
        let x = Tensor::from_vec(vec![-1000.0f32, 1000.0], [2]).unwrap();
        assert_eq!(x.sigmoid().unwrap().to_vec::<f32>().unwrap(), vec![0.0, 1.0]);
        let h = x.to_dtype(DType::BF16).unwrap().tanh().unwrap();
        assert_eq!(h.dtype(), DType::BF16);
        assert_eq!(h.to_f64_vec(), vec![-1.0, 1.0]);
    }

    #[test]
    fn integer_float_op_is_an_error() {
        let x = Tensor::from_vec(vec![1i64, 2], [2]).unwrap();
        let e = x.exp().unwrap_err();
        assert!(e.to_string().contains("exp"), "{e}");
        assert_eq!(x.neg().unwrap().to_vec::<i64>().unwrap(), vec![-1, -2]);
    }
}
