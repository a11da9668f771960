//! The two building blocks of every BERT layer, on plain tensors (inference: no autograd):
//! [`Dense`] (`nn.Linear`, weight `[out, in]`) and [`Norm`] (`nn.LayerNorm`).

use kiln_autograd::Param;
use kiln_nn::{Init, Scope};
use kiln_tensor::Tensor;
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

    /// `x` `[N, in]` → `[N, out]`: one GEMM over the transposed view of the weight (no copy).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.value().t()?)?.add(&self.bias.value())?)
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
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (y, _, _) = x.layer_norm_forward(&self.weight.value(), &self.bias.value(), self.eps)?;
        Ok(y)
    }
}
