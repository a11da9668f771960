//! `GroupNorm`: normalisation over groups of channels, independent of the batch.

use kiln_autograd::{Param, Var};

use crate::{Error, Init, Module, Result, Scope};

/// `nn.GroupNorm(num_groups, num_channels, eps, affine)`: the `C` channels of an `[N, C, *]` input
/// are split into `num_groups` groups; each (sample, group) is normalised with its own mean and
/// biased variance, then (with `affine`) scaled by `weight` `[C]` (ones) and shifted by `bias` `[C]`
/// (zeros) per channel. Behaves the same in training and eval. PyTorch's default eps is `1e-5`.
pub struct GroupNorm {
    num_groups: usize,
    num_channels: usize,
    eps: f64,
    weight: Option<Param>,
    bias: Option<Param>,
}

impl GroupNorm {
    /// `num_groups` must be positive and divide `num_channels`.
    pub fn new(
        scope: Scope,
        num_groups: usize,
        num_channels: usize,
        eps: f64,
        affine: bool,
    ) -> Result<GroupNorm> {
        if num_groups == 0 || num_channels == 0 || !num_channels.is_multiple_of(num_groups) {
            return Err(Error::invalid(
                "GroupNorm",
                format!(
                    "num_channels ({num_channels}) must be a positive multiple of num_groups ({num_groups})"
                ),
            ));
        }
        if eps.is_nan() || eps < 0.0 {
            return Err(Error::invalid(
                "GroupNorm",
                format!("eps must be >= 0, got {eps}"),
            ));
        }
        let (weight, bias) = if affine {
            (
                Some(scope.param("weight", [num_channels], Init::Ones)?),
                Some(scope.param("bias", [num_channels], Init::Zeros)?),
            )
        } else {
            (None, None)
        };
        Ok(GroupNorm {
            num_groups,
            num_channels,
            eps,
            weight,
            bias,
        })
    }
    /// The number of groups.
    pub fn num_groups(&self) -> usize {
        self.num_groups
    }
    /// The number of channels.
    pub fn num_channels(&self) -> usize {
        self.num_channels
    }
    /// The per-channel scale `[C]` (`None` without affine).
    pub fn weight(&self) -> Option<&Param> {
        self.weight.as_ref()
    }
    /// The per-channel shift `[C]` (`None` without affine).
    pub fn bias(&self) -> Option<&Param> {
        self.bias.as_ref()
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Var) -> Result<Var> {
        if x.rank() < 2 || x.dims()[1] != self.num_channels {
            return Err(Error::invalid(
                "GroupNorm",
                format!(
                    "expected an input [N, C, *] with C = {}, got shape {:?}",
                    self.num_channels,
                    x.shape()
                ),
            ));
        }
        let n = x.dims()[0];
        let per_group = x.value().elem_count() / n.max(1) / self.num_groups;
        if n == 0 || per_group == 0 {
            return Ok(x.clone());
        }
        let g = x.reshape([n, self.num_groups, per_group])?;
        let mean = g.mean(2, true)?;
        let var = g.var(2, 0, true)?;
        let xhat = g
            .sub(&mean)?
            .mul(&var.add_scalar(self.eps)?.rsqrt()?)?
            .reshape(x.shape().clone())?;
        match (&self.weight, &self.bias) {
            (Some(w), Some(b)) => {
                let mut bshape = vec![1usize; x.rank()];
                bshape[1] = self.num_channels;
                Ok(xhat
                    .mul(&w.var().reshape(bshape.clone())?)?
                    .add(&b.var().reshape(bshape)?)?)
            }
            _ => Ok(xhat),
        }
    }
    fn parameters(&self) -> Vec<Param> {
        self.weight.iter().chain(&self.bias).cloned().collect()
    }
}
