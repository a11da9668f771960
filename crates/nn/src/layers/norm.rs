//! `LayerNorm` and `RmsNorm` over the last dimension.

use kiln_autograd::{Param, Var};

use crate::{Init, Module, Result, Scope};

/// `nn.LayerNorm(dim, eps)` with elementwise affine (`weight` ones, `bias` zeros).
pub struct LayerNorm {
    weight: Param,
    bias: Param,
    eps: f64,
}

impl LayerNorm {
    /// Normalise over a last dimension of size `dim`.
    pub fn new(scope: Scope, dim: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: scope.param("weight", [dim], Init::Ones)?,
            bias: scope.param("bias", [dim], Init::Zeros)?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Var) -> Result<Var> {
        Ok(x.layer_norm(&self.weight.var(), &self.bias.var(), self.eps)?)
    }
    fn parameters(&self) -> Vec<Param> {
        vec![self.weight.clone(), self.bias.clone()]
    }
}

/// `nn.RMSNorm(dim, eps)` (Llama's norm): `x / sqrt(mean(x²) + eps) * weight`.
pub struct RmsNorm {
    weight: Param,
    eps: f64,
}

impl RmsNorm {
    /// Normalise over a last dimension of size `dim`.
    pub fn new(scope: Scope, dim: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: scope.param("weight", [dim], Init::Ones)?,
            eps,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Var) -> Result<Var> {
        let ms = x.sqr()?.mean(-1, true)?;
        Ok(x.mul(&ms.add_scalar(self.eps)?.rsqrt()?)?
            .mul(&self.weight.var())?)
    }
    fn parameters(&self) -> Vec<Param> {
        vec![self.weight.clone()]
    }
}
