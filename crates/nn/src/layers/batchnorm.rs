//! `BatchNorm1d` and `BatchNorm2d` with PyTorch's semantics, parameter and buffer names.
//!
//! In training the input is normalised with the batch statistics (mean and biased variance over
//! every dimension but the channels), computed with differentiable [`Var`] ops so gradients flow
//! through them; the running statistics are then updated on plain tensors (no gradient) as
//! `running = (1 - momentum) * running + momentum * batch`, with the *unbiased* batch variance, and
//! `num_batches_tracked` counts the updates. In eval mode the running statistics are used.

use std::sync::atomic::{AtomicBool, Ordering};

use kiln_autograd::{Param, Var};
use kiln_tensor::{DType, Tensor};

use crate::{Error, Init, Module, Result, Scope};

/// Options of [`BatchNorm1d`] and [`BatchNorm2d`]; `Default` is PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance before the square root (default `1e-5`).
    pub eps: f64,
    /// Weight of the batch statistic in the running average (default `Some(0.1)`); `None` is a
    /// cumulative average (`1 / num_batches_tracked`), as PyTorch's `momentum=None`.
    pub momentum: Option<f64>,
    /// Learnable per-channel `weight` (ones) and `bias` (zeros) (default true).
    pub affine: bool,
    /// Keep `running_mean`, `running_var` and `num_batches_tracked` buffers and use them in eval
    /// mode (default true); without them batch statistics are used in both modes.
    pub track_running_stats: bool,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig {
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            track_running_stats: true,
        }
    }
}

/// The running statistics of a batch norm layer.
struct RunningStats {
    mean: Param,
    var: Param,
    num_batches_tracked: Param,
}

/// What `BatchNorm1d` and `BatchNorm2d` share: everything but the accepted input ranks.
struct BatchNorm {
    op: &'static str,
    num_features: usize,
    cfg: BatchNormConfig,
    weight: Option<Param>,
    bias: Option<Param>,
    stats: Option<RunningStats>,
    training: AtomicBool,
}

impl BatchNorm {
    fn new(op: &'static str, scope: Scope, num_features: usize, cfg: BatchNormConfig) -> Result<BatchNorm> {
        if num_features == 0 {
            return Err(Error::invalid(op, "num_features must be positive"));
        }
        if cfg.eps.is_nan() || cfg.eps < 0.0 {
            return Err(Error::invalid(op, format!("eps must be >= 0, got {}", cfg.eps)));
        }
        if let Some(m) = cfg.momentum {
            if !(0.0..=1.0).contains(&m) {
                return Err(Error::invalid(op, format!("momentum must be in [0, 1], got {m}")));
            }
        }
        let (weight, bias) = if cfg.affine {
            (
                Some(scope.param("weight", [num_features], Init::Ones)?),
                Some(scope.param("bias", [num_features], Init::Zeros)?),
            )
        } else {
            (None, None)
        };
        let stats = if cfg.track_running_stats {
            let mean = scope.buffer("running_mean", [num_features], Init::Zeros)?;
            let var = scope.buffer("running_var", [num_features], Init::Ones)?;
            // A scope makes tensors of its own dtype; PyTorch's counter is an i64 scalar.
            let num_batches_tracked = scope.buffer("num_batches_tracked", [], Init::Zeros)?;
            num_batches_tracked.set_value(num_batches_tracked.value().to_dtype(DType::I64)?);
            Some(RunningStats {
                mean,
                var,
                num_batches_tracked,
            })
        } else {
            None
        };
        Ok(BatchNorm {
            op,
            num_features,
            cfg,
            weight,
            bias,
            stats,
            training: AtomicBool::new(true),
        })
    }

    fn parameters(&self) -> Vec<Param> {
        let mut v: Vec<Param> = self.weight.iter().chain(&self.bias).cloned().collect();
        if let Some(s) = &self.stats {
            v.extend([s.mean.clone(), s.var.clone(), s.num_batches_tracked.clone()]);
        }
        v
    }

    /// Normalise `x` (whose channels are dimension 1) over every other dimension.
    fn forward(&self, x: &Var) -> Result<Var> {
        let c = self.num_features;
        let axes: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
        // Per-channel tensors broadcast as [1, C, 1, ...].
        let mut bshape = vec![1usize; x.rank()];
        bshape[1] = c;
        let training = self.training.load(Ordering::Relaxed);
        let xhat = match (&self.stats, training) {
            (Some(s), false) => {
                let mean = s.mean.value().reshape(bshape.clone())?;
                let inv_std = s
                    .var
                    .value()
                    .add_scalar(self.cfg.eps)?
                    .rsqrt()?
                    .reshape(bshape.clone())?;
                x.sub(&Var::constant(mean))?.mul(&Var::constant(inv_std))?
            }
            (stats, _) => {
                let n: usize = axes.iter().map(|&a| x.dims()[a]).product();
                if training && n <= 1 {
                    return Err(Error::invalid(
                        self.op,
                        format!(
                            "expected more than 1 value per channel when training, got input shape {:?}",
                            x.shape()
                        ),
                    ));
                }
                // Batch statistics: one fused node for normalisation and the affine map.
                let affine = match (&self.weight, &self.bias) {
                    (Some(w), Some(b)) => Some((w.var(), b.var())),
                    _ => None,
                };
                let (y, mean, var) =
                    x.batch_norm_train(affine.as_ref().map(|(w, b)| (w, b)), self.cfg.eps)?;
                if let (Some(s), true) = (stats, training) {
                    self.update_running(s, &mean, &var, n)?;
                }
                return Ok(y);
            }
        };
        match (&self.weight, &self.bias) {
            (Some(w), Some(b)) => Ok(xhat
                .mul(&w.var().reshape(bshape.clone())?)?
                .add(&b.var().reshape(bshape)?)?),
            _ => Ok(xhat),
        }
    }

    /// `running = (1 - f) * running + f * batch` with the unbiased batch variance; no gradient.
    fn update_running(&self, s: &RunningStats, mean: &Tensor, biased_var: &Tensor, n: usize) -> Result<()> {
        let c = self.num_features;
        let count = s.num_batches_tracked.value();
        let tracked = count.to_dtype(DType::I64)?.to_scalar::<i64>()? + 1;
        let f = self.cfg.momentum.unwrap_or(1.0 / tracked as f64);
        let rm = s.mean.value();
        let rv = s.var.value();
        let mean = mean.reshape([c])?.to_dtype(rm.dtype())?;
        let unbiased = biased_var
            .reshape([c])?
            .mul_scalar(n as f64 / (n - 1) as f64)?
            .to_dtype(rv.dtype())?;
        let new_mean = rm.mul_scalar(1.0 - f)?.add(&mean.mul_scalar(f)?)?;
        let new_var = rv.mul_scalar(1.0 - f)?.add(&unbiased.mul_scalar(f)?)?;
        let new_count = Tensor::scalar(tracked)
            .to_dtype(count.dtype())?
            .to_device(count.device())?;
        s.mean.set_value(new_mean);
        s.var.set_value(new_var);
        s.num_batches_tracked.set_value(new_count);
        Ok(())
    }
}

macro_rules! batch_norm_layer {
    ($(#[$doc:meta])* $name:ident, $op:literal, $ranks:expr, $expected:literal) => {
        $(#[$doc])*
        pub struct $name(BatchNorm);

        impl $name {
            /// A layer over `num_features` channels with PyTorch's defaults (eps `1e-5`, momentum
            /// 0.1, affine, tracking running statistics).
            pub fn new(scope: Scope, num_features: usize) -> Result<$name> {
                Self::with_config(scope, num_features, BatchNormConfig::default())
            }
            /// A layer over `num_features` channels with explicit options.
            pub fn with_config(scope: Scope, num_features: usize, cfg: BatchNormConfig) -> Result<$name> {
                Ok($name(BatchNorm::new($op, scope, num_features, cfg)?))
            }
            /// The number of channels.
            pub fn num_features(&self) -> usize {
                self.0.num_features
            }
            /// The options.
            pub fn config(&self) -> &BatchNormConfig {
                &self.0.cfg
            }
            /// The per-channel scale `[C]` (`None` without affine).
            pub fn weight(&self) -> Option<&Param> {
                self.0.weight.as_ref()
            }
            /// The per-channel shift `[C]` (`None` without affine).
            pub fn bias(&self) -> Option<&Param> {
                self.0.bias.as_ref()
            }
            /// The buffer `running_mean` `[C]` (`None` without running statistics).
            pub fn running_mean(&self) -> Option<&Param> {
                self.0.stats.as_ref().map(|s| &s.mean)
            }
            /// The buffer `running_var` `[C]` (`None` without running statistics).
            pub fn running_var(&self) -> Option<&Param> {
                self.0.stats.as_ref().map(|s| &s.var)
            }
            /// The buffer `num_batches_tracked`, an `i64` scalar (`None` without running statistics).
            pub fn num_batches_tracked(&self) -> Option<&Param> {
                self.0.stats.as_ref().map(|s| &s.num_batches_tracked)
            }
            /// Whether the layer is in training mode (the default).
            pub fn is_training(&self) -> bool {
                self.0.training.load(Ordering::Relaxed)
            }
        }

        impl Module for $name {
            fn forward(&self, x: &Var) -> Result<Var> {
                if !$ranks.contains(&x.rank()) || x.dims()[1] != self.0.num_features {
                    return Err(Error::invalid(
                        $op,
                        format!(
                            "expected input {} with C = {}, got shape {:?}",
                            $expected,
                            self.0.num_features,
                            x.shape()
                        ),
                    ));
                }
                self.0.forward(x)
            }
            fn parameters(&self) -> Vec<Param> {
                self.0.parameters()
            }
            fn set_training(&self, training: bool) {
                self.0.training.store(training, Ordering::Relaxed);
            }
        }
    };
}

batch_norm_layer!(
    /// `nn.BatchNorm1d(C)`: normalises `[N, C]` or `[N, C, L]` inputs per channel (over `N`, or
    /// `N` and `L`). Parameters `weight`, `bias`; buffers `running_mean`, `running_var`,
    /// `num_batches_tracked` (an `i64` scalar), all saved in the state dict as PyTorch does.
    /// Buffers do not require grad, so optimizers leave them alone.
    BatchNorm1d,
    "BatchNorm1d",
    [2usize, 3],
    "[N, C] or [N, C, L]"
);

batch_norm_layer!(
    /// `nn.BatchNorm2d(C)`: normalises `[N, C, H, W]` inputs per channel (over `N`, `H`, `W`).
    /// Parameters `weight`, `bias`; buffers `running_mean`, `running_var`, `num_batches_tracked`
    /// (an `i64` scalar), all saved in the state dict as PyTorch does. Buffers do not require
    /// grad, so optimizers leave them alone.
    ///
    /// ```
    /// use kiln_nn::{layers::BatchNorm2d, Module, Scope};
    /// use kiln_tensor::{DType, Device};
    /// let bn = BatchNorm2d::new(Scope::init(0, DType::F32, Device::Cpu).sub("bn1"), 16)?;
    /// let names: Vec<String> = bn.parameters().iter().map(|p| p.name().to_string()).collect();
    /// assert_eq!(names, ["bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
    ///                    "bn1.num_batches_tracked"]);
    /// # Ok::<(), kiln_nn::Error>(())
    /// ```
    BatchNorm2d,
    "BatchNorm2d",
    [4usize],
    "[N, C, H, W]"
);
