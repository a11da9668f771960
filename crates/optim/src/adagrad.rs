//! Adagrad (`torch.optim.Adagrad`) with learning-rate decay.

use kiln_autograd::Param;
use kiln_tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::check_non_negative;
use crate::optimizer::{impl_optimizer, ops, Core, Hyper, Rule};
use crate::{ParamGroup, Result};

/// Hyperparameters of [`Adagrad`]; `Default` is PyTorch's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdagradConfig {
    /// Learning rate (default `1e-2`).
    pub lr: f64,
    /// Learning-rate decay: the `t`-th update uses `lr / (1 + (t - 1) * lr_decay)` (default 0).
    pub lr_decay: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Starting value of the sum of squared gradients (default 0).
    pub initial_accumulator_value: f64,
    /// Added to the denominator (default `1e-10`).
    pub eps: f64,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        AdagradConfig {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
        }
    }
}

impl AdagradConfig {
    /// Check every field; an [`Error::InvalidConfig`](crate::Error::InvalidConfig) names the first bad one.
    pub fn validate(&self) -> Result<()> {
        check_non_negative(Adagrad::NAME, "lr", self.lr)?;
        check_non_negative(Adagrad::NAME, "lr_decay", self.lr_decay)?;
        check_non_negative(Adagrad::NAME, "weight_decay", self.weight_decay)?;
        check_non_negative(
            Adagrad::NAME,
            "initial_accumulator_value",
            self.initial_accumulator_value,
        )?;
        check_non_negative(Adagrad::NAME, "eps", self.eps)
    }
}

struct AdagradRule {
    lr_decay: f64,
    initial_accumulator_value: f64,
    eps: f64,
}

impl Rule for AdagradRule {
    const NAME: &'static str = "Adagrad";

    fn buffers(&self) -> Vec<&'static str> {
        vec!["sum"]
    }

    fn init(&self, value: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![value.full_like(self.initial_accumulator_value)?])
    }

    fn update(&self, h: Hyper, p: &Tensor, g: &Tensor, bufs: &mut [Tensor]) -> Result<Tensor> {
        let clr = h.lr / (1.0 + (h.step - 1) as f64 * self.lr_decay);
        let mut g = g.clone();
        if h.weight_decay != 0.0 {
            g = ops::axpy(&g, h.weight_decay, p)?;
        }
        let sum = bufs[0].add(&g.sqr()?)?;
        let std = sum.sqrt()?.add_scalar(self.eps)?;
        let new_p = ops::axpy(p, -clr, &g.div(&std)?)?;
        bufs[0] = sum;
        Ok(new_p)
    }
}

/// Adagrad exactly as `torch.optim.Adagrad`. With gradient `g`, parameter `p`, at the
/// parameter's `t`-th update (`s` starts at `initial_accumulator_value`):
///
/// ```text
/// clr = lr / (1 + (t - 1) * lr_decay)
/// if weight_decay != 0:  g = g + weight_decay * p
/// s = s + g * g
/// p = p - clr * g / (sqrt(s) + eps)
/// ```
///
/// State: `{name}.sum`.
pub struct Adagrad {
    cfg: AdagradConfig,
    core: Core<AdagradRule>,
}

impl Adagrad {
    /// The name used in errors.
    pub const NAME: &'static str = "Adagrad";

    /// Adagrad over parameter groups (a group's `None` hyperparameters take `cfg`'s values).
    pub fn new(groups: Vec<ParamGroup>, cfg: AdagradConfig) -> Result<Adagrad> {
        cfg.validate()?;
        let rule = AdagradRule {
            lr_decay: cfg.lr_decay,
            initial_accumulator_value: cfg.initial_accumulator_value,
            eps: cfg.eps,
        };
        let core = Core::new(rule, groups, cfg.lr, cfg.weight_decay)?;
        Ok(Adagrad { cfg, core })
    }

    /// Adagrad over one group holding `params`.
    pub fn from_params(params: Vec<Param>, cfg: AdagradConfig) -> Result<Adagrad> {
        Self::new(vec![ParamGroup::new(params)], cfg)
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &AdagradConfig {
        &self.cfg
    }
}

impl_optimizer!(Adagrad);
