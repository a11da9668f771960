//! Gradient clipping (`torch.nn.utils.clip_grad_norm_` / `clip_grad_value_`) and a helper for
//! gradient accumulation over micro-batches.

use kiln_autograd::{Gradients, Param};
use kiln_tensor::{DType, FloatDType, Tensor};

use crate::{Error, Result};

/// The distinct parameters of `params` (tied weights counted once) with a gradient in `grads`.
fn with_grads(params: &[Param], grads: &Gradients) -> Vec<(Param, Tensor)> {
    let mut out: Vec<(Param, Tensor)> = Vec::new();
    for p in params {
        if out.iter().any(|(q, _)| q.same_as(p)) {
            continue;
        }
        if let Some(g) = p.grad(grads) {
            out.push((p.clone(), g));
        }
    }
    out
}

/// The global L2 norm of the gradients of `params` (those that have one in `grads`; a parameter
/// listed twice counts once), computed in f64.
pub fn grad_norm(params: &[Param], grads: &Gradients) -> Result<f64> {
    let mut sum_sq = 0.0f64;
    for (_, g) in with_grads(params, grads) {
        sum_sq += sum_of_squares(&g)?;
    }
    Ok(sum_sq.sqrt())
}

/// `Σ x²` over a tensor in f64: f32 and f64 in one vectorised pass without a converted copy.
fn sum_of_squares(g: &Tensor) -> Result<f64> {
    Ok(match g.dtype() {
        // On a device: the device's own ops (sum in f64 inside its reduction).
        _ if g.device() != kiln_tensor::Device::Cpu => {
            g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?
        }
        DType::F32 => squares_mv(&g.contiguous_slice::<f32>()?),
        DType::F64 => squares_mv(&g.contiguous_slice::<f64>()?),
        _ => g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?,
    })
}

/// `Σ x²` in f64 over eight interleaved partial sums (a fixed order for a given length).
#[inline(always)]
fn squares<F: FloatDType>(xs: &[F]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&x| x.to_f64() * x.to_f64()).sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x.to_f64() * x.to_f64();
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

kiln_tensor::multiversion! {
    /// [`squares`] for this machine's widest vectors.
    fn squares_mv[F: FloatDType](xs: &[F]) -> f64 = squares[F]
}

/// Clip the gradients of `params` in place by their global L2 norm, as
/// `torch.nn.utils.clip_grad_norm_`: with `norm` the L2 norm of all the gradients together and
/// `coef = max_norm / (norm + 1e-6)`, every gradient is multiplied by `coef` when `coef < 1`
/// (that is, when `norm` exceeds `max_norm`, up to the 1e-6). Returns `norm`, the norm before
/// clipping. Parameters without a gradient are skipped; a non-finite norm is returned as is
/// and, as in PyTorch, scales the gradients by its (zero or NaN) coefficient.
pub fn clip_grad_norm(params: &[Param], grads: &mut Gradients, max_norm: f64) -> Result<f64> {
    if max_norm.is_nan() || max_norm < 0.0 {
        return Err(Error::config(
            "clip_grad_norm",
            "max_norm",
            max_norm,
            "must be >= 0",
        ));
    }
    let norm = grad_norm(params, grads)?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 || coef.is_nan() {
        for (p, g) in with_grads(params, grads) {
            grads.insert(&p.var(), g.mul_scalar(coef)?);
        }
    }
    Ok(norm)
}

/// Clamp every gradient element of `params` into `[-clip, clip]` in place
/// (`torch.nn.utils.clip_grad_value_`). Parameters without a gradient are skipped.
pub fn clip_grad_value(params: &[Param], grads: &mut Gradients, clip: f64) -> Result<()> {
    if clip.is_nan() || clip < 0.0 {
        return Err(Error::config("clip_grad_value", "clip", clip, "must be >= 0"));
    }
    for (p, g) in with_grads(params, grads) {
        grads.insert(&p.var(), g.clamp(-clip, clip)?);
    }
    Ok(())
}

/// Gradient accumulation: add the gradients of several micro-batches, then take their average.
///
/// Gradients are keyed by the parameters' current leaves, which stay the same until the
/// optimizer changes the values, so all micro-batches of one step must be run between two
/// optimizer steps (the usual loop).
///
/// ```
/// use kiln_autograd::{Param, Var};
/// use kiln_optim::{GradAccumulator, Optimizer, Sgd, SgdConfig};
/// use kiln_tensor::Tensor;
///
/// let w = Param::new("w", Tensor::from_vec(vec![1.0f32], [1])?);
/// let mut opt = Sgd::from_params(vec![w.clone()], SgdConfig { lr: 0.1, ..Default::default() })?;
/// let mut acc = GradAccumulator::new();
/// for x in [1.0f32, 3.0] {
///     // One micro-batch: loss = x * w, gradient x.
///     let x = Var::constant(Tensor::from_vec(vec![x], [1])?);
///     acc.add(w.var().mul(&x)?.sum_all()?.backward()?)?;
/// }
/// opt.step(&acc.finish()?)?; // the mean gradient, 2
/// assert!((w.value().to_vec::<f32>()?[0] - 0.8).abs() < 1e-6);
/// # Ok::<(), kiln_optim::Error>(())
/// ```
#[derive(Default, Clone)]
pub struct GradAccumulator {
    sum: Gradients,
    count: usize,
}

impl GradAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one micro-batch's gradients.
    pub fn add(&mut self, grads: Gradients) -> Result<()> {
        self.sum.accumulate(grads)?;
        self.count += 1;
        Ok(())
    }

    /// How many micro-batches were added.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The sum of the gradients added so far.
    pub fn sum(&self) -> &Gradients {
        &self.sum
    }

    /// The average of the gradients added (the sum divided by [`GradAccumulator::count`]); empty
    /// when nothing was added.
    pub fn finish(self) -> Result<Gradients> {
        let mut g = self.sum;
        if self.count > 1 {
            g.scale(1.0 / self.count as f64)?;
        }
        Ok(g)
    }
}
