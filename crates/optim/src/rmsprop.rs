//! RMSprop (`torch.optim.RMSprop`): centered or not, with optional momentum.

use kiln_autograd::Param;
use kiln_tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::check_non_negative;
use crate::optimizer::{impl_optimizer, ops, Core, Hyper, Rule};
use crate::{ParamGroup, Result};

/// Hyperparameters of [`RmsProp`]; `Default` is PyTorch's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RmsPropConfig {
    /// Learning rate (default `1e-2`).
    pub lr: f64,
    /// Smoothing constant of the squared-gradient average (default `0.99`).
    pub alpha: f64,
    /// Added to the denominator (default `1e-8`).
    pub eps: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Momentum factor (default 0).
    pub momentum: f64,
    /// Normalise by the estimated variance of the gradient instead of its second moment (default false).
    pub centered: bool,
}

impl Default for RmsPropConfig {
    fn default() -> Self {
        RmsPropConfig {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
        }
    }
}

impl RmsPropConfig {
    /// Check every field; an [`Error::InvalidConfig`](crate::Error::InvalidConfig) names the first bad one.
    pub fn validate(&self) -> Result<()> {
        check_non_negative(RmsProp::NAME, "lr", self.lr)?;
        check_non_negative(RmsProp::NAME, "alpha", self.alpha)?;
        check_non_negative(RmsProp::NAME, "eps", self.eps)?;
        check_non_negative(RmsProp::NAME, "weight_decay", self.weight_decay)?;
        check_non_negative(RmsProp::NAME, "momentum", self.momentum)
    }
}

struct RmsPropRule {
    alpha: f64,
    eps: f64,
    momentum: f64,
    centered: bool,
}

impl RmsPropRule {
    fn momentum_index(&self) -> Option<usize> {
        (self.momentum > 0.0).then_some(1)
    }
    fn grad_avg_index(&self) -> Option<usize> {
        self.centered.then_some(if self.momentum > 0.0 { 2 } else { 1 })
    }
}

impl Rule for RmsPropRule {
    const NAME: &'static str = "RMSprop";

    fn buffers(&self) -> Vec<&'static str> {
        let mut b = vec!["square_avg"];
        if self.momentum > 0.0 {
            b.push("momentum_buffer");
        }
        if self.centered {
            b.push("grad_avg");
        }
        b
    }

    fn update(&self, h: Hyper, p: &Tensor, g: &Tensor, bufs: &mut [Tensor]) -> Result<Tensor> {
        let a = self.alpha;
        let mut g = g.clone();
        if h.weight_decay != 0.0 {
            g = ops::axpy(&g, h.weight_decay, p)?;
        }
        let square_avg = ops::lin(&bufs[0], a, &g.sqr()?, 1.0 - a)?;
        let avg = match self.grad_avg_index() {
            Some(i) => {
                let grad_avg = ops::lin(&bufs[i], a, &g, 1.0 - a)?;
                let avg = square_avg.sub(&grad_avg.sqr()?)?.sqrt()?;
                bufs[i] = grad_avg;
                avg
            }
            None => square_avg.sqrt()?,
        }
        .add_scalar(self.eps)?;
        bufs[0] = square_avg;
        match self.momentum_index() {
            Some(i) => {
                let buf = bufs[i].mul_scalar(self.momentum)?.add(&g.div(&avg)?)?;
                let new_p = ops::axpy(p, -h.lr, &buf)?;
                bufs[i] = buf;
                Ok(new_p)
            }
            None => ops::axpy(p, -h.lr, &g.div(&avg)?),
        }
    }
}

/// RMSprop exactly as `torch.optim.RMSprop`. With gradient `g`, parameter `p` (all state starts
/// at 0):
///
/// ```text
/// if weight_decay != 0:  g = g + weight_decay * p
/// v = alpha * v + (1 - alpha) * g * g
/// if centered:  g_avg = alpha * g_avg + (1 - alpha) * g;  denom = sqrt(v - g_avg * g_avg) + eps
/// else:         denom = sqrt(v) + eps
/// if momentum > 0:  b = momentum * b + g / denom;  p = p - lr * b
/// else:             p = p - lr * g / denom
/// ```
///
/// State: `{name}.square_avg`, `{name}.momentum_buffer` (momentum > 0), `{name}.grad_avg` (centered).
pub struct RmsProp {
    cfg: RmsPropConfig,
    core: Core<RmsPropRule>,
}

impl RmsProp {
    /// The name used in errors.
    pub const NAME: &'static str = "RMSprop";

    /// RMSprop over parameter groups (a group's `None` hyperparameters take `cfg`'s values).
    pub fn new(groups: Vec<ParamGroup>, cfg: RmsPropConfig) -> Result<RmsProp> {
        cfg.validate()?;
        let rule = RmsPropRule {
            alpha: cfg.alpha,
            eps: cfg.eps,
            momentum: cfg.momentum,
            centered: cfg.centered,
        };
        let core = Core::new(rule, groups, cfg.lr, cfg.weight_decay)?;
        Ok(RmsProp { cfg, core })
    }

    /// RMSprop over one group holding `params`.
    pub fn from_params(params: Vec<Param>, cfg: RmsPropConfig) -> Result<RmsProp> {
        Self::new(vec![ParamGroup::new(params)], cfg)
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &RmsPropConfig {
        &self.cfg
    }
}

impl_optimizer!(RmsProp);
