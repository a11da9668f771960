//! Adam (`torch.optim.Adam`, weight decay as an L2 term) and AdamW (`torch.optim.AdamW`,
//! decoupled weight decay), with optional AMSGrad.

use std::mem::MaybeUninit;

use kiln_autograd::Param;
use kiln_tensor::{DType, FloatDType, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{check_non_negative, check_unit_interval};
use crate::optimizer::{impl_optimizer, ops, Core, Hyper, Rule};
use crate::{ParamGroup, Result};

/// Hyperparameters of [`Adam`]; `Default` is PyTorch's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    /// Learning rate (default `1e-3`).
    pub lr: f64,
    /// Decay rates of the first and second moment estimates (default `(0.9, 0.999)`), each in `[0, 1)`.
    pub betas: (f64, f64),
    /// Added to the denominator (default `1e-8`).
    pub eps: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Use the maximum of past second moments (AMSGrad; default false).
    pub amsgrad: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
        }
    }
}

/// Hyperparameters of [`AdamW`]; `Default` is PyTorch's (as Adam's, but weight decay `1e-2`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Learning rate (default `1e-3`).
    pub lr: f64,
    /// Decay rates of the first and second moment estimates (default `(0.9, 0.999)`), each in `[0, 1)`.
    pub betas: (f64, f64),
    /// Added to the denominator (default `1e-8`).
    pub eps: f64,
    /// Decoupled weight decay: `p -= lr * weight_decay * p` before each update (default `1e-2`).
    pub weight_decay: f64,
    /// Use the maximum of past second moments (AMSGrad; default false).
    pub amsgrad: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
            amsgrad: false,
        }
    }
}

fn validate(name: &'static str, lr: f64, betas: (f64, f64), eps: f64, weight_decay: f64) -> Result<()> {
    check_non_negative(name, "lr", lr)?;
    check_unit_interval(name, "betas.0", betas.0)?;
    check_unit_interval(name, "betas.1", betas.1)?;
    check_non_negative(name, "eps", eps)?;
    check_non_negative(name, "weight_decay", weight_decay)
}

impl AdamConfig {
    /// Check every field; an [`Error::InvalidConfig`](crate::Error::InvalidConfig) names the first bad one.
    pub fn validate(&self) -> Result<()> {
        validate(Adam::NAME, self.lr, self.betas, self.eps, self.weight_decay)
    }
}

impl AdamWConfig {
    /// Check every field; an [`Error::InvalidConfig`](crate::Error::InvalidConfig) names the first bad one.
    pub fn validate(&self) -> Result<()> {
        validate(AdamW::NAME, self.lr, self.betas, self.eps, self.weight_decay)
    }
}

struct AdamRule {
    betas: (f64, f64),
    eps: f64,
    amsgrad: bool,
    decoupled: bool,
}

/// The scalars of one Adam update, as the composed formula uses them.
struct AdamScalars {
    decay: Option<f64>,
    decoupled: bool,
    b1: f64,
    b2: f64,
    bc2_sqrt: f64,
    eps: f64,
    step_size: f64,
}

/// Parameters of at least this many elements are updated on rayon threads.
const PARALLEL_ELEMS: usize = 1 << 15;
/// Elements per parallel task.
const PARALLEL_CHUNK: usize = 1 << 13;

/// Adam's update in one pass over `p`, `g`, `m`, `v` (the common case: no AMSGrad, one float dtype),
/// with the composed formula's operations in the same order, so the results are the same bits.
/// [`fused_update`]'s constants in the parameter's dtype.
struct AdamConsts<F> {
    b1: F,
    one_b1: F,
    b2: F,
    one_b2: F,
    bc2: F,
    eps: F,
    neg_step: F,
    /// `1 - lr * wd` for decoupled decay.
    keep: Option<F>,
    /// `wd` for L2 decay added to the gradient.
    wd: Option<F>,
}

/// The element loop of [`fused_update`] (inlined into the dispatcher's wide code).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn adam_pass<F: FloatDType>(
    k: &AdamConsts<F>,
    ps: &[F],
    gs: &[F],
    ms: &[F],
    vs: &[F],
    np: &mut [MaybeUninit<F>],
    nm: &mut [MaybeUninit<F>],
    nv: &mut [MaybeUninit<F>],
) {
    let n = ps.len();
    let (gs, ms, vs) = (&gs[..n], &ms[..n], &vs[..n]);
    let (np, nm, nv) = (&mut np[..n], &mut nm[..n], &mut nv[..n]);
    for i in 0..n {
        let (mut pi, mut gi) = (ps[i], gs[i]);
        if let Some(keep) = k.keep {
            pi = pi * keep + F::zero();
        }
        if let Some(w) = k.wd {
            gi = gi + pi * w;
        }
        let mi = ms[i] * k.b1 + gi * k.one_b1;
        let vi = vs[i] * k.b2 + (gi * gi) * k.one_b2;
        let denom = (vi.sqrt() / k.bc2) * F::one() + k.eps;
        np[i].write(pi + (mi / denom) * k.neg_step);
        nm[i].write(mi);
        nv[i].write(vi);
    }
}

kiln_tensor::multiversion! {
    /// [`adam_pass`] for this machine's widest vectors.
    fn adam_pass_mv[F: FloatDType](k: &AdamConsts<F>, ps: &[F], gs: &[F], ms: &[F], vs: &[F], np: &mut [MaybeUninit<F>], nm: &mut [MaybeUninit<F>], nv: &mut [MaybeUninit<F>]) = adam_pass[F]
}

fn fused_update<F: FloatDType>(
    s: &AdamScalars,
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
) -> Result<[Tensor; 3]> {
    let c = |x: f64| <F as kiln_tensor::WithDType>::from_f64(x);
    let (ps, gs) = (p.contiguous_slice::<F>()?, g.contiguous_slice::<F>()?);
    let (ms, vs) = (m.contiguous_slice::<F>()?, v.contiguous_slice::<F>()?);
    let n = ps.len();
    let (mut np, mut nm, mut nv) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (b1, one_b1, b2, one_b2) = (c(s.b1), c(1.0 - s.b1), c(s.b2), c(1.0 - s.b2));
    let (bc2, eps, neg_step) = (c(s.bc2_sqrt), c(s.eps), c(-s.step_size));
    let (keep, wd) = match s.decay {
        Some(d) if s.decoupled => (Some(c(1.0 - d)), None),
        Some(d) => (None, Some(c(d))),
        None => (None, None),
    };
    // One pass, vectorised for the machine's widest registers.
    let k = AdamConsts {
        b1,
        one_b1,
        b2,
        one_b2,
        bc2,
        eps,
        neg_step,
        keep,
        wd,
    };
    let (dp, dm, dv) = (
        &mut np.spare_capacity_mut()[..n],
        &mut nm.spare_capacity_mut()[..n],
        &mut nv.spare_capacity_mut()[..n],
    );
    if n >= PARALLEL_ELEMS {
        // Chunks of one fixed size: every element gets the same arithmetic whatever the threads.
        dp.par_chunks_mut(PARALLEL_CHUNK)
            .zip(dm.par_chunks_mut(PARALLEL_CHUNK))
            .zip(dv.par_chunks_mut(PARALLEL_CHUNK))
            .enumerate()
            .for_each(|(c, ((p, m), v))| {
                let r = c * PARALLEL_CHUNK..c * PARALLEL_CHUNK + p.len();
                let (ps, gs, ms, vs) = (&ps[r.clone()], &gs[r.clone()], &ms[r.clone()], &vs[r]);
                adam_pass_mv(&k, ps, gs, ms, vs, p, m, v);
            });
    } else {
        adam_pass_mv(&k, &ps, &gs, &ms, &vs, dp, dm, dv);
    }
    // SAFETY: adam_pass wrote every one of the n elements of the three vectors.
    unsafe {
        np.set_len(n);
        nm.set_len(n);
        nv.set_len(n);
    }
    let shape = p.shape().clone();
    Ok([
        Tensor::from_vec(np, shape.clone())?,
        Tensor::from_vec(nm, shape.clone())?,
        Tensor::from_vec(nv, shape)?,
    ])
}

impl AdamRule {
    fn update(&self, h: Hyper, p: &Tensor, g: &Tensor, bufs: &mut [Tensor]) -> Result<Tensor> {
        let (b1, b2) = self.betas;
        let dtype = p.dtype();
        let same = [g, &bufs[0], &bufs[1]]
            .iter()
            .all(|t| t.dtype() == dtype && t.shape() == p.shape());
        // The fused pass reads host memory; on a device the update below runs the device's ops.
        let host = p.device() == kiln_tensor::Device::Cpu;
        if !self.amsgrad && same && host && matches!(dtype, DType::F32 | DType::F64) {
            let t = h.step as f64;
            let s = AdamScalars {
                decay: (h.weight_decay != 0.0).then_some(if self.decoupled {
                    h.lr * h.weight_decay
                } else {
                    h.weight_decay
                }),
                decoupled: self.decoupled,
                b1,
                b2,
                bc2_sqrt: (1.0 - b2.powf(t)).sqrt(),
                eps: self.eps,
                step_size: h.lr / (1.0 - b1.powf(t)),
            };
            let [np, m, v] = if dtype == DType::F32 {
                fused_update::<f32>(&s, p, g, &bufs[0], &bufs[1])?
            } else {
                fused_update::<f64>(&s, p, g, &bufs[0], &bufs[1])?
            };
            bufs[0] = m;
            bufs[1] = v;
            return Ok(np);
        }
        let mut p = p.clone();
        let mut g = g.clone();
        if h.weight_decay != 0.0 {
            if self.decoupled {
                p = p.mul_scalar(1.0 - h.lr * h.weight_decay)?;
            } else {
                g = ops::axpy(&g, h.weight_decay, &p)?;
            }
        }
        let m = ops::lin(&bufs[0], b1, &g, 1.0 - b1)?;
        let v = ops::lin(&bufs[1], b2, &g.sqr()?, 1.0 - b2)?;
        let t = h.step as f64;
        let bias_correction1 = 1.0 - b1.powf(t);
        let bias_correction2 = 1.0 - b2.powf(t);
        let step_size = h.lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.sqrt();
        let v_hat = if self.amsgrad {
            let v_max = bufs[2].maximum(&v)?;
            bufs[2] = v_max.clone();
            v_max
        } else {
            v.clone()
        };
        let denom = ops::div_scalar(&v_hat.sqrt()?, bias_correction2_sqrt)?.add_scalar(self.eps)?;
        let new_p = ops::axpy(&p, -step_size, &m.div(&denom)?)?;
        bufs[0] = m;
        bufs[1] = v;
        Ok(new_p)
    }

    fn buffers(&self) -> Vec<&'static str> {
        let mut b = vec!["exp_avg", "exp_avg_sq"];
        if self.amsgrad {
            b.push("max_exp_avg_sq");
        }
        b
    }
}

/// [`Adam`]'s rule (L2 weight decay).
struct AdamL2(AdamRule);
/// [`AdamW`]'s rule (decoupled weight decay).
struct AdamDecoupled(AdamRule);

impl Rule for AdamL2 {
    const NAME: &'static str = "Adam";
    fn buffers(&self) -> Vec<&'static str> {
        self.0.buffers()
    }
    fn update(&self, h: Hyper, p: &Tensor, g: &Tensor, bufs: &mut [Tensor]) -> Result<Tensor> {
        self.0.update(h, p, g, bufs)
    }
}

impl Rule for AdamDecoupled {
    const NAME: &'static str = "AdamW";
    fn buffers(&self) -> Vec<&'static str> {
        self.0.buffers()
    }
    fn update(&self, h: Hyper, p: &Tensor, g: &Tensor, bufs: &mut [Tensor]) -> Result<Tensor> {
        self.0.update(h, p, g, bufs)
    }
}

/// Adam exactly as `torch.optim.Adam`. With gradient `g`, parameter `p`, at the parameter's
/// `t`-th update (`m`, `v`, `v_max` start at 0):
///
/// ```text
/// if weight_decay != 0:  g = g + weight_decay * p
/// m = beta1 * m + (1 - beta1) * g
/// v = beta2 * v + (1 - beta2) * g * g
/// step_size = lr / (1 - beta1^t)
/// if amsgrad:  v_max = max(v_max, v);  denom = sqrt(v_max) / sqrt(1 - beta2^t) + eps
/// else:        denom = sqrt(v) / sqrt(1 - beta2^t) + eps
/// p = p - step_size * m / denom
/// ```
///
/// State: `{name}.exp_avg`, `{name}.exp_avg_sq`, and `{name}.max_exp_avg_sq` with AMSGrad.
pub struct Adam {
    cfg: AdamConfig,
    core: Core<AdamL2>,
}

impl Adam {
    /// The name used in errors.
    pub const NAME: &'static str = "Adam";

    /// Adam over parameter groups (a group's `None` hyperparameters take `cfg`'s values).
    pub fn new(groups: Vec<ParamGroup>, cfg: AdamConfig) -> Result<Adam> {
        cfg.validate()?;
        let rule = AdamL2(AdamRule {
            betas: cfg.betas,
            eps: cfg.eps,
            amsgrad: cfg.amsgrad,
            decoupled: false,
        });
        let core = Core::new(rule, groups, cfg.lr, cfg.weight_decay)?;
        Ok(Adam { cfg, core })
    }

    /// Adam over one group holding `params`.
    pub fn from_params(params: Vec<Param>, cfg: AdamConfig) -> Result<Adam> {
        Self::new(vec![ParamGroup::new(params)], cfg)
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }
}

/// AdamW exactly as `torch.optim.AdamW`: Adam without the L2 term, with the parameter first
/// decayed as `p = p * (1 - lr * weight_decay)` (decoupled weight decay), then updated with the
/// decayed `p` exactly as [`Adam`] (same state keys).
pub struct AdamW {
    cfg: AdamWConfig,
    core: Core<AdamDecoupled>,
}

impl AdamW {
    /// The name used in errors.
    pub const NAME: &'static str = "AdamW";

    /// AdamW over parameter groups (a group's `None` hyperparameters take `cfg`'s values; use
    /// [`ParamGroup::split_decay`] to exempt biases and norm weights from decay).
    pub fn new(groups: Vec<ParamGroup>, cfg: AdamWConfig) -> Result<AdamW> {
        cfg.validate()?;
        let rule = AdamDecoupled(AdamRule {
            betas: cfg.betas,
            eps: cfg.eps,
            amsgrad: cfg.amsgrad,
            decoupled: true,
        });
        let core = Core::new(rule, groups, cfg.lr, cfg.weight_decay)?;
        Ok(AdamW { cfg, core })
    }

    /// AdamW over one group holding `params`.
    pub fn from_params(params: Vec<Param>, cfg: AdamWConfig) -> Result<AdamW> {
        Self::new(vec![ParamGroup::new(params)], cfg)
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }
}

impl_optimizer!(Adam);
impl_optimizer!(AdamW);
