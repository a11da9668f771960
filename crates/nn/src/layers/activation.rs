//! Parameter-free layers: activations and `Flatten`.

use kiln_autograd::{Param, Var};

use crate::{Module, Result};

/// An element-wise activation (or softmax over the last dimension), as the torch.nn classes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `nn.ReLU`
    Relu,
    /// `nn.GELU()` (exact)
    Gelu,
    /// `nn.GELU(approximate="tanh")`
    GeluTanh,
    /// `nn.SiLU`
    Silu,
    /// `nn.Tanh`
    Tanh,
    /// `nn.Sigmoid`
    Sigmoid,
    /// `nn.Softmax(dim=-1)`
    Softmax,
    /// `nn.LogSoftmax(dim=-1)`
    LogSoftmax,
}

impl Activation {
    /// Apply to a value.
    pub fn apply(self, x: &Var) -> Result<Var> {
        Ok(match self {
            Activation::Relu => x.relu()?,
            Activation::Gelu => x.gelu()?,
            Activation::GeluTanh => x.gelu_tanh()?,
            Activation::Silu => x.silu()?,
            Activation::Tanh => x.tanh()?,
            Activation::Sigmoid => x.sigmoid()?,
            Activation::Softmax => x.softmax(-1)?,
            Activation::LogSoftmax => x.log_softmax(-1)?,
        })
    }
}

impl Module for Activation {
    fn forward(&self, x: &Var) -> Result<Var> {
        self.apply(x)
    }
    fn parameters(&self) -> Vec<Param> {
        Vec::new()
    }
}

/// `nn.Flatten()`: merge every dimension after the batch dimension.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flatten;

impl Module for Flatten {
    fn forward(&self, x: &Var) -> Result<Var> {
        if x.rank() <= 1 {
            return Ok(x.clone());
        }
        Ok(x.flatten(1, -1)?)
    }
    fn parameters(&self) -> Vec<Param> {
        Vec::new()
    }
}
