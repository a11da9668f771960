//! Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay
//! (`torch.optim.SGD`).

use kiln_autograd::Param;
use kiln_tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::check_non_negative;
use crate::optimizer::{impl_optimizer, ops, Core, Hyper, Rule};
use crate::{Error, ParamGroup, Result};

/// Hyperparameters of [`Sgd`]; `Default` is PyTorch's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    /// Learning rate (default `1e-3`).
    pub lr: f64,
    /// Momentum factor (default 0: plain SGD).
    pub momentum: f64,
    /// Dampening of the momentum (default 0).
    pub dampening: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Nesterov momentum (default false; needs `momentum > 0` and `dampening == 0`).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

impl SgdConfig {
    /// Check every field; an [`Error::InvalidConfig`] names the first bad one.
    pub fn validate(&self) -> Result<()> {
        check_non_negative(Sgd::NAME, "lr", self.lr)?;
        check_non_negative(Sgd::NAME, "momentum", self.momentum)?;
        check_non_negative(Sgd::NAME, "weight_decay", self.weight_decay)?;
        if !self.dampening.is_finite() {
            return Err(Error::config(
                Sgd::NAME,
                "dampening",
                self.dampening,
                "must be finite",
            ));
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::config(
                Sgd::NAME,
                "nesterov",
                format!(
                    "true (momentum = {}, dampening = {})",
                    self.momentum, self.dampening
                ),
                "Nesterov momentum needs momentum > 0 and dampening = 0",
            ));
        }
        Ok(())
    }
}

/// SGD exactly as `torch.optim.SGD`. With gradient `g`, parameter `p`, learning rate `lr`, at
/// the parameter's `t`-th update:
///
/// ```text
/// if weight_decay != 0:  g = g + weight_decay * p
/// if momentum != 0:
///     b = g                                        if t == 1
///     b = momentum * b + (1 - dampening) * g       otherwise
///     g = g + momentum * b   if nesterov   else   b
/// p = p - lr * g
/// ```
///
/// State: `{name}.momentum_buffer` (only when `momentum != 0`).
pub struct Sgd {
    cfg: SgdConfig,
    core: Core<SgdRule>,
}

struct SgdRule {
    momentum: f64,
    dampening: f64,
    nesterov: bool,
}

impl Rule for SgdRule {
    const NAME: &'static str = "SGD";

    fn buffers(&self) -> Vec<&'static str> {
        if self.momentum != 0.0 {
            vec!["momentum_buffer"]
        } else {
            vec![]
        }
    }

    fn update(&self, h: Hyper, p: &Tensor, g: &Tensor, bufs: &mut [Tensor]) -> Result<Tensor> {
        let mut d = g.clone();
        if h.weight_decay != 0.0 {
            d = ops::axpy(&d, h.weight_decay, p)?;
        }
        if self.momentum != 0.0 {
            let buf = if h.step == 1 {
                d.clone()
            } else {
                ops::lin(&bufs[0], self.momentum, &d, 1.0 - self.dampening)?
            };
            d = if self.nesterov {
                ops::axpy(&d, self.momentum, &buf)?
            } else {
                buf.clone()
            };
            bufs[0] = buf;
        }
        ops::axpy(p, -h.lr, &d)
    }
}

impl Sgd {
    /// The name used in errors.
    pub const NAME: &'static str = "SGD";

    /// SGD over parameter groups (a group's `None` hyperparameters take `cfg`'s values).
    pub fn new(groups: Vec<ParamGroup>, cfg: SgdConfig) -> Result<Sgd> {
        cfg.validate()?;
        let rule = SgdRule {
            momentum: cfg.momentum,
            dampening: cfg.dampening,
            nesterov: cfg.nesterov,
        };
        let core = Core::new(rule, groups, cfg.lr, cfg.weight_decay)?;
        Ok(Sgd { cfg, core })
    }

    /// SGD over one group holding `params`.
    pub fn from_params(params: Vec<Param>, cfg: SgdConfig) -> Result<Sgd> {
        Self::new(vec![ParamGroup::new(params)], cfg)
    }

    /// The configuration it was built with (its `lr` is the initial default, see
    /// [`Optimizer::lr`](crate::Optimizer::lr) for the current one).
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }
}

impl_optimizer!(Sgd);
