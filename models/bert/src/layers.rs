//! The two building blocks of every BERT layer, on autograd variables (the same code trains and
//! infers; inference runs it under `no_grad`): [`Dense`] (`nn.Linear`, weight `[out, in]`) and
//! [`Norm`] (`nn.LayerNorm`).

use kiln_autograd::{Param, Var};
use kiln_nn::{Init, Scope};
use kiln_zoo::Result;

/// Standard deviation of BERT's initial weights (`initializer_range`).
pub(crate) const INIT_STD: f64 = 0.02;

/// `y = x Wᵀ + b` with `weight` `[out, in]` and `bias` `[out]`, as Hugging Face stores them.
pub(crate) struct Dense {
    pub(crate) weight: Param,
    pub(crate) bias: Param,
}

impl Dense {
    /// `scope.weight` `[output, input]` (normal, std 0.02) and `scope.bias` `[output]` (zeros).
    pub(crate) fn new(scope: Scope, input: usize, output: usize) -> Result<Dense> {
        Ok(Dense {
            weight: scope.param(
                "weight",
                [output, input],
                Init::Normal {
                    mean: 0.0,
                    std: INIT_STD,
                },
            )?,
            bias: scope.param("bias", [output], Init::Zeros)?,
        })
    }

    /// `x` `[N, in]` → `[N, out]`: one GEMM over the transposed view of the weight (no copy), or
    /// its packed copy at inference when the weight keeps one.
    pub(crate) fn forward(&self, x: &Var) -> Result<Var> {
        Ok(x.matmul_param_t(&self.weight, Some(&self.bias))?)
    }
}

/// LayerNorm over the last dimension: `weight` (ones) and `bias` (zeros) of `[dim]`.
pub(crate) struct Norm {
    pub(crate) weight: Param,
    pub(crate) bias: Param,
    pub(crate) eps: f64,
}

impl Norm {
    /// `scope.weight` and `scope.bias` of `[dim]`.
    pub(crate) fn new(scope: Scope, dim: usize, eps: f64) -> Result<Norm> {
        Ok(Norm {
            weight: scope.param("weight", [dim], Init::Ones)?,
            bias: scope.param("bias", [dim], Init::Zeros)?,
            eps,
        })
    }

    /// The normalised rows of `x`.
    pub(crate) fn forward(&self, x: &Var) -> Result<Var> {
        Ok(x.layer_norm(&self.weight.var(), &self.bias.var(), self.eps)?)
    }
}
