//! # kiln-optim
//!
//! Optimizers, learning-rate schedules and gradient clipping for kiln, numerically matching
//! PyTorch's `torch.optim`:
//!
//! - [`Sgd`] (momentum, dampening, Nesterov), [`Adam`] / [`AdamW`] (AMSGrad optional),
//!   [`RmsProp`] (centered, momentum), [`Adagrad`] (lr decay). Each takes [`ParamGroup`]s (or
//!   plain parameters via `from_params`) and a serde-serialisable config whose `Default` is
//!   PyTorch's defaults.
//! - The [`Optimizer`] trait: `step(&grads)`, the learning rate, and the state as named tensors
//!   (`{param_name}.exp_avg`, ..., `__step`) saved and loaded as safetensors.
//! - [`Schedule`]s ([`LrSchedule`]): constant, step, multi-step, exponential, linear warm-up,
//!   cosine, warm-up + cosine, one-cycle — pure functions of the step count.
//! - [`clip_grad_norm`], [`clip_grad_value`] and [`GradAccumulator`].
//!
//! ```
//! use kiln_autograd::Param;
//! use kiln_optim::{AdamW, AdamWConfig, LrSchedule, Optimizer, ParamGroup, Schedule};
//! use kiln_tensor::Tensor;
//!
//! // Minimise sum((w - 3)^2).
//! let w = Param::new("w", Tensor::from_vec(vec![0.0f32, 1.0], [2])?);
//! let mut opt = AdamW::new(ParamGroup::split_decay(vec![w.clone()], 0.01), AdamWConfig::default())?;
//! let schedule = Schedule::warmup_cosine(0.1, 10, 200, 0.001);
//! let target = Tensor::full(3.0, [2], kiln_tensor::DType::F32, kiln_tensor::Device::Cpu)?;
//! for _ in 0..200 {
//!     let diff = w.var().sub(&kiln_autograd::Var::constant(target.clone()))?;
//!     let grads = diff.mul(&diff)?.sum_all()?.backward()?;
//!     schedule.apply(&mut opt);
//!     opt.step(&grads)?;
//! }
//! assert!(w.value().to_vec::<f32>()?.iter().all(|v| (v - 3.0).abs() < 0.05));
//! # Ok::<(), kiln_optim::Error>(())
//! ```

mod adagrad;
mod adam;
mod clip;
mod error;
mod optimizer;
mod rmsprop;
mod schedule;
mod sgd;

pub use adagrad::{Adagrad, AdagradConfig};
pub use adam::{Adam, AdamConfig, AdamW, AdamWConfig};
pub use clip::{clip_grad_norm, clip_grad_value, grad_norm, GradAccumulator};
pub use error::{Error, Result};
pub use optimizer::{Optimizer, ParamGroup, STEP_KEY};
pub use rmsprop::{RmsProp, RmsPropConfig};
pub use schedule::{LrSchedule, Schedule};
pub use sgd::{Sgd, SgdConfig};
