//! `gradcheck`: compare backward's gradients with central finite differences, in f64.

use kiln_tensor::{DType, Tensor, TensorRng};

use crate::{Error, Result, Var};

/// Settings for [`gradcheck`].
#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    /// Finite-difference step.
    pub eps: f64,
    /// Allowed absolute error...
    pub atol: f64,
    /// ...plus this much relative to the numeric gradient.
    pub rtol: f64,
    /// Seed of the random projection that reduces a non-scalar output to a scalar.
    pub seed: u64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-6,
            atol: 1e-5,
            rtol: 1e-3,
            seed: 0,
        }
    }
}

/// Check the gradients of `f` at `inputs` (converted to f64) against central finite differences.
///
/// A non-scalar output is reduced with a fixed random projection `sum(f(x) · r)`, so every
/// element of the Jacobian contributes. Returns the largest absolute error seen, or
/// [`Error::GradcheckFailed`] naming the first element out of tolerance.
///
/// ```
/// use kiln_autograd::{gradcheck, GradcheckOptions, Var};
/// use kiln_tensor::Tensor;
/// let x = Tensor::from_vec(vec![0.3f64, -1.2, 2.0], [3])?;
/// gradcheck(|v| v[0].tanh()?.mul(&v[0]), &[x], GradcheckOptions::default())?;
/// # Ok::<(), kiln_autograd::Error>(())
/// ```
pub fn gradcheck(
    f: impl Fn(&[Var]) -> Result<Var>,
    inputs: &[Tensor],
    opts: GradcheckOptions,
) -> Result<f64> {
    let inputs: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_dtype(DType::F64))
        .collect::<kiln_tensor::Result<_>>()?;
    let vars: Vec<Var> = inputs.iter().map(|t| Var::parameter(t.clone())).collect();
    let out = f(&vars)?;
    let proj = Tensor::randn(
        out.shape().clone(),
        0.0,
        1.0,
        DType::F64,
        out.value().device(),
        &mut TensorRng::new(opts.seed),
    )?;
    let scalar = |o: &Var| -> Result<f64> {
        Ok(o.value()
            .to_dtype(DType::F64)?
            .mul(&proj)?
            .sum_all()?
            .to_scalar::<f64>()?)
    };
    let loss = Var::constant(proj.clone())
        .mul(&out.to_dtype(DType::F64)?)?
        .sum_all()?;
    let grads = loss.backward()?;
    let mut worst = 0f64;
    for (i, x) in inputs.iter().enumerate() {
        let analytic = grads.require(&vars[i])?.to_vec::<f64>()?;
        let base = x.to_vec::<f64>()?;
        for (j, &a) in analytic.iter().enumerate() {
            let eval_at = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[j] += delta;
                let xs: Vec<Var> = inputs
                    .iter()
                    .enumerate()
                    .map(|(k, t)| {
                        if k == i {
                            Ok(Var::constant(
                                Tensor::from_vec(v.clone(), t.shape().clone())?.to_device(t.device())?,
                            ))
                        } else {
                            Ok(Var::constant(t.clone()))
                        }
                    })
                    .collect::<Result<_>>()?;
                scalar(&f(&xs)?)
            };
            let numeric = (eval_at(opts.eps)? - eval_at(-opts.eps)?) / (2.0 * opts.eps);
            let err = (a - numeric).abs();
            let tol = opts.atol + opts.rtol * numeric.abs();
            if err.is_nan() || err > tol {
                return Err(Error::GradcheckFailed {
                    input: i,
                    index: j,
                    analytic: a,
                    numeric,
                    tol,
                });
            }
            worst = worst.max(err);
        }
    }
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_backward_formula_is_caught() {
        // Claims d/dx x³ = 2x: gradcheck must reject it.
        let wrong_cube = |v: &[Var]| -> Result<Var> {
            let x = v[0].value().clone();
            let y = x.powf(3.0)?;
            Ok(Var::from_op("wrong_cube", y, &[&v[0]], move |g| {
                Ok(vec![Some(g.mul(&x.mul_scalar(2.0)?)?)])
            }))
        };
        let x = Tensor::from_vec(vec![0.7f64, -1.3], [2]).unwrap();
        assert!(matches!(
            gradcheck(wrong_cube, std::slice::from_ref(&x), GradcheckOptions::default()),
            Err(Error::GradcheckFailed { .. })
        ));
        let right = gradcheck(|v| v[0].powf(3.0), &[x], GradcheckOptions::default()).unwrap();
        assert!(right < 1e-6);
    }
}
