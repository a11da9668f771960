//! `Linear`: `y = x Wᵀ + b` over the last dimension.

use kiln_autograd::{Param, Var};

use crate::{Error, Init, Module, Result, Scope};

/// A fully connected layer, as `torch.nn.Linear`: `weight` is `[out, in]`, `bias` is `[out]`,
/// both initialised uniformly in `±1/sqrt(in)`.
pub struct Linear {
    weight: Param,
    bias: Option<Param>,
    in_features: usize,
}

impl Linear {
    /// A layer with bias.
    pub fn new(scope: Scope, in_features: usize, out_features: usize) -> Result<Linear> {
        Self::with_bias(scope, in_features, out_features, true)
    }

    /// A layer with or without bias.
    pub fn with_bias(scope: Scope, in_features: usize, out_features: usize, bias: bool) -> Result<Linear> {
        let weight = scope.param(
            "weight",
            [out_features, in_features],
            Init::KaimingUniform { a: 5f64.sqrt() },
        )?;
        let bound = 1.0 / (in_features.max(1) as f64).sqrt();
        let bias = if bias {
            Some(scope.param(
                "bias",
                [out_features],
                Init::Uniform {
                    lo: -bound,
                    hi: bound,
                },
            )?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            in_features,
        })
    }

    /// The weight parameter.
    pub fn weight(&self) -> &Param {
        &self.weight
    }
    /// The bias parameter, if any.
    pub fn bias(&self) -> Option<&Param> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Var) -> Result<Var> {
        let last = x.dims().last().copied().unwrap_or(0);
        if last != self.in_features {
            return Err(Error::invalid(
                "Linear",
                format!(
                    "input {:?} must end in in_features = {}",
                    x.shape(),
                    self.in_features
                ),
            ));
        }
        // Fold leading dimensions into rows so one GEMM does the work.
        let lead = &x.dims()[..x.rank() - 1];
        let rows: usize = lead.iter().product();
        let x2 = if x.rank() == 2 {
            x.clone()
        } else {
            x.reshape([rows, self.in_features])?
        };
        let y = x2.matmul_param_t(&self.weight, self.bias.as_ref())?;
        if x.rank() == 2 {
            Ok(y)
        } else {
            let mut dims = lead.to_vec();
            dims.push(y.dims()[1]);
            Ok(y.reshape(dims)?)
        }
    }
    fn parameters(&self) -> Vec<Param> {
        std::iter::once(self.weight.clone())
            .chain(self.bias.clone())
            .collect()
    }
}
