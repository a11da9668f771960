//! Learning-rate schedules as pure functions of the step: `lr = schedule.lr(step)`, where `step`
//! counts the optimizer steps already taken (PyTorch's `last_epoch` for a scheduler stepped once
//! per optimizer step). A training loop calls `opt.set_lr(schedule.lr(opt.step_count()))` before
//! each `opt.step(..)`, and resuming needs nothing but the restored step count.

use serde::{Deserialize, Serialize};

use crate::error::check_non_negative;
use crate::{Error, Optimizer, Result};

/// A learning rate as a function of the step (0 for the first optimizer step).
pub trait LrSchedule {
    /// The learning rate to use for the optimizer step that follows `step` completed steps.
    fn lr(&self, step: usize) -> f64;

    /// Set `opt`'s learning rate (every group's) for its next step, from its step count.
    fn apply(&self, opt: &mut dyn Optimizer) {
        opt.set_lr(self.lr(opt.step_count()));
    }
}

/// Any `Fn(step) -> lr` is a schedule.
impl<F: Fn(usize) -> f64> LrSchedule for F {
    fn lr(&self, step: usize) -> f64 {
        self(step)
    }
}

fn default_pct_start() -> f64 {
    0.3
}
fn default_div_factor() -> f64 {
    25.0
}
fn default_final_div_factor() -> f64 {
    1e4
}

/// The built-in schedules, serialisable (JSON: `{"kind": "cosine", "lr": 0.1, "t_max": 100,
/// "eta_min": 0.0}`). Each matches the PyTorch scheduler it names, in closed form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// `lr` at every step.
    Constant {
        /// The learning rate.
        lr: f64,
    },
    /// `lr * gamma^floor(step / step_size)` (`StepLR`).
    Step {
        /// The initial learning rate.
        lr: f64,
        /// Steps between decays (> 0).
        step_size: usize,
        /// Multiplicative decay.
        gamma: f64,
    },
    /// `lr * gamma^(number of milestones <= step)` (`MultiStepLR`).
    MultiStep {
        /// The initial learning rate.
        lr: f64,
        /// Steps at which the rate is multiplied by `gamma`.
        milestones: Vec<usize>,
        /// Multiplicative decay.
        gamma: f64,
    },
    /// `lr * gamma^step` (`ExponentialLR`).
    Exponential {
        /// The initial learning rate.
        lr: f64,
        /// Multiplicative decay per step.
        gamma: f64,
    },
    /// `lr * (start_factor + (1 - start_factor) * min(step, warmup_steps) / warmup_steps)`: a
    /// linear ramp from `lr * start_factor` to `lr`, then constant (`LinearLR` with `end_factor = 1`).
    LinearWarmup {
        /// The learning rate after warm-up.
        lr: f64,
        /// The fraction of `lr` at step 0, in `(0, 1]`.
        start_factor: f64,
        /// Length of the ramp.
        warmup_steps: usize,
    },
    /// `eta_min + (lr - eta_min) * (1 + cos(pi * step / t_max)) / 2`, PyTorch's closed form of
    /// `CosineAnnealingLR`: `lr` at 0, `eta_min` at `t_max`. Like PyTorch's closed form it is
    /// periodic past `t_max` (it rises again); use [`Schedule::WarmupCosine`] to hold the floor.
    Cosine {
        /// The initial learning rate.
        lr: f64,
        /// Half period: the step at which the rate reaches `eta_min` (> 0).
        t_max: usize,
        /// The floor.
        eta_min: f64,
    },
    /// The large-model recipe: `lr * step / warmup_steps` during warm-up (0 at step 0, as
    /// Hugging Face's `get_cosine_schedule_with_warmup`), then a half cosine from `lr` to
    /// `min_lr` over the remaining `total_steps - warmup_steps` steps, and `min_lr` after.
    WarmupCosine {
        /// The peak learning rate (reached at `warmup_steps`).
        lr: f64,
        /// Length of the linear warm-up.
        warmup_steps: usize,
        /// The step at which the rate reaches `min_lr` (>= `warmup_steps`).
        total_steps: usize,
        /// The floor.
        min_lr: f64,
    },
    /// PyTorch's `OneCycleLR` (two phases, cosine annealing): from `max_lr / div_factor` up to
    /// `max_lr` at step `pct_start * total_steps - 1`, then down to
    /// `max_lr / div_factor / final_div_factor` at step `total_steps - 1`, held after that
    /// (PyTorch errors past `total_steps`). Momentum cycling is not part of it.
    OneCycle {
        /// The peak learning rate.
        max_lr: f64,
        /// Length of the cycle (> 0).
        total_steps: usize,
        /// Fraction of the cycle spent increasing (default 0.3).
        #[serde(default = "default_pct_start")]
        pct_start: f64,
        /// `initial_lr = max_lr / div_factor` (default 25).
        #[serde(default = "default_div_factor")]
        div_factor: f64,
        /// `min_lr = initial_lr / final_div_factor` (default 1e4).
        #[serde(default = "default_final_div_factor")]
        final_div_factor: f64,
    },
}

/// `end + (start - end) / 2 * (cos(pi * pct) + 1)`, PyTorch's `_annealing_cos`.
fn annealing_cos(start: f64, end: f64, pct: f64) -> f64 {
    let cos_out = (std::f64::consts::PI * pct).cos() + 1.0;
    end + (start - end) / 2.0 * cos_out
}

impl Schedule {
    /// [`Schedule::OneCycle`] with PyTorch's defaults (pct_start 0.3, div_factor 25,
    /// final_div_factor 1e4).
    pub fn one_cycle(max_lr: f64, total_steps: usize) -> Schedule {
        Schedule::OneCycle {
            max_lr,
            total_steps,
            pct_start: default_pct_start(),
            div_factor: default_div_factor(),
            final_div_factor: default_final_div_factor(),
        }
    }

    /// [`Schedule::WarmupCosine`].
    pub fn warmup_cosine(lr: f64, warmup_steps: usize, total_steps: usize, min_lr: f64) -> Schedule {
        Schedule::WarmupCosine {
            lr,
            warmup_steps,
            total_steps,
            min_lr,
        }
    }

    /// Check the parameters (positive lengths, non-negative rates, fractions in range); an
    /// [`Error::InvalidConfig`] names the first bad field. [`LrSchedule::lr`] never panics, even
    /// on an invalid schedule.
    pub fn validate(&self) -> Result<()> {
        const N: &str = "Schedule";
        let positive = |field: &str, v: usize| {
            if v == 0 {
                Err(Error::config(N, field, v, "must be > 0"))
            } else {
                Ok(())
            }
        };
        let finite_non_negative = |field: &str, v: f64| {
            check_non_negative(N, field, v)?;
            if v.is_finite() {
                Ok(())
            } else {
                Err(Error::config(N, field, v, "must be finite"))
            }
        };
        match self {
            Schedule::Constant { lr } => finite_non_negative("lr", *lr),
            Schedule::Step { lr, step_size, gamma } => {
                finite_non_negative("lr", *lr)?;
                positive("step_size", *step_size)?;
                finite_non_negative("gamma", *gamma)
            }
            Schedule::MultiStep { lr, gamma, .. } | Schedule::Exponential { lr, gamma } => {
                finite_non_negative("lr", *lr)?;
                finite_non_negative("gamma", *gamma)
            }
            Schedule::LinearWarmup { lr, start_factor, .. } => {
                finite_non_negative("lr", *lr)?;
                if *start_factor > 0.0 && *start_factor <= 1.0 {
                    Ok(())
                } else {
                    Err(Error::config(
                        N,
                        "start_factor",
                        start_factor,
                        "must be in (0, 1]",
                    ))
                }
            }
            Schedule::Cosine { lr, t_max, eta_min } => {
                finite_non_negative("lr", *lr)?;
                positive("t_max", *t_max)?;
                finite_non_negative("eta_min", *eta_min)
            }
            Schedule::WarmupCosine {
                lr,
                warmup_steps,
                total_steps,
                min_lr,
            } => {
                finite_non_negative("lr", *lr)?;
                finite_non_negative("min_lr", *min_lr)?;
                if total_steps < warmup_steps {
                    return Err(Error::config(
                        N,
                        "total_steps",
                        total_steps,
                        format!("must be >= warmup_steps ({warmup_steps})"),
                    ));
                }
                Ok(())
            }
            Schedule::OneCycle {
                max_lr,
                total_steps,
                pct_start,
                div_factor,
                final_div_factor,
            } => {
                finite_non_negative("max_lr", *max_lr)?;
                positive("total_steps", *total_steps)?;
                if !(0.0..=1.0).contains(pct_start) {
                    return Err(Error::config(N, "pct_start", pct_start, "must be in [0, 1]"));
                }
                for (field, v) in [("div_factor", div_factor), ("final_div_factor", final_div_factor)] {
                    if !(*v > 0.0 && v.is_finite()) {
                        return Err(Error::config(N, field, v, "must be > 0 and finite"));
                    }
                }
                Ok(())
            }
        }
    }
}

impl LrSchedule for Schedule {
    fn lr(&self, step: usize) -> f64 {
        match *self {
            Schedule::Constant { lr } => lr,
            Schedule::Step { lr, step_size, gamma } => lr * gamma.powf((step / step_size.max(1)) as f64),
            Schedule::MultiStep {
                lr,
                ref milestones,
                gamma,
            } => lr * gamma.powf(milestones.iter().filter(|&&m| m <= step).count() as f64),
            Schedule::Exponential { lr, gamma } => lr * gamma.powf(step as f64),
            Schedule::LinearWarmup {
                lr,
                start_factor,
                warmup_steps,
            } => {
                if warmup_steps == 0 {
                    return lr;
                }
                let done = step.min(warmup_steps) as f64 / warmup_steps as f64;
                lr * (start_factor + (1.0 - start_factor) * done)
            }
            Schedule::Cosine { lr, t_max, eta_min } => {
                if t_max == 0 {
                    return eta_min;
                }
                let x = std::f64::consts::PI * step as f64 / t_max as f64;
                eta_min + (lr - eta_min) * (1.0 + x.cos()) / 2.0
            }
            Schedule::WarmupCosine {
                lr,
                warmup_steps,
                total_steps,
                min_lr,
            } => {
                if step < warmup_steps {
                    return lr * step as f64 / warmup_steps as f64;
                }
                let span = total_steps.saturating_sub(warmup_steps).max(1) as f64;
                let progress = ((step - warmup_steps) as f64 / span).min(1.0);
                min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            Schedule::OneCycle {
                max_lr,
                total_steps,
                pct_start,
                div_factor,
                final_div_factor,
            } => {
                let initial_lr = max_lr / div_factor;
                let min_lr = initial_lr / final_div_factor;
                let last = total_steps.saturating_sub(1) as f64;
                let step = (step as f64).min(last);
                let warm_end = pct_start * total_steps as f64 - 1.0;
                // Phase 1 up to `warm_end` (inclusive), phase 2 after it, as PyTorch.
                let (start_step, end_step, from, to) = if step <= warm_end {
                    (0.0, warm_end, initial_lr, max_lr)
                } else {
                    (warm_end, last, max_lr, min_lr)
                };
                let span = end_step - start_step;
                let pct = if span > 0.0 {
                    (step - start_step) / span
                } else {
                    1.0
                };
                annealing_cos(from, to, pct)
            }
        }
    }
}
