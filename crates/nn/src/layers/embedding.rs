//! `Embedding`: a lookup table of vectors.

use kiln_autograd::{Param, Var};
use kiln_tensor::Tensor;

use crate::{Error, Init, Module, Result, Scope};

/// `nn.Embedding(num, dim, padding_idx)`: `weight` `[num, dim]` initialised N(0, 1), the
/// `padding_idx` row initialised to zero and never updated (its gradient is zero).
pub struct Embedding {
    weight: Param,
    padding_idx: Option<usize>,
}

impl Embedding {
    /// A table of `num` vectors of size `dim`.
    pub fn new(scope: Scope, num: usize, dim: usize, padding_idx: Option<usize>) -> Result<Embedding> {
        if let Some(p) = padding_idx {
            if p >= num {
                return Err(Error::invalid(
                    "Embedding",
                    format!("padding_idx {p} must be < num_embeddings {num}"),
                ));
            }
        }
        let weight = scope.param("weight", [num, dim], Init::Normal { mean: 0.0, std: 1.0 })?;
        if let Some(p) = padding_idx {
            // Zero the padding row of a fresh table; loaded weights already carry it.
            let w = weight.value();
            let mask = Tensor::arange(0.0, num as f64, 1.0, kiln_tensor::DType::I64, w.device())?
                .cmp_scalar(p as f64, kiln_tensor::ops::binary::CmpOp::Eq)?
                .unsqueeze(1)?;
            weight.set_value(w.masked_fill(&mask, 0.0)?);
        }
        Ok(Embedding { weight, padding_idx })
    }
    /// The table.
    pub fn weight(&self) -> &Param {
        &self.weight
    }
    /// Look up integer ids of any shape: result `ids.shape + [dim]`. As in PyTorch, the padding
    /// row is returned as stored (zero when freshly initialised, whatever a loaded table holds)
    /// and only its gradient is blocked.
    pub fn lookup(&self, ids: &Tensor) -> Result<Var> {
        Ok(Var::embedding_padded(ids, &self.weight.var(), self.padding_idx)?)
    }
}

impl Module for Embedding {
    /// The input's value holds the ids (no gradient flows into ids).
    fn forward(&self, x: &Var) -> Result<Var> {
        self.lookup(x.value())
    }
    fn parameters(&self) -> Vec<Param> {
        vec![self.weight.clone()]
    }
}
