//! Matrix multiplication in all of `torch.matmul`'s forms.

use crate::{Param, Result, Var};

use super::sum_to_shape;

impl Var {
    /// `torch.matmul`: 1-D operands are lifted to matrices (and the added dimension removed
    /// after), batch dimensions broadcast and their gradients are summed back.
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        // Lift 1-D operands with differentiable views so the core only sees rank >= 2.
        let a = if self.rank() == 1 {
            self.unsqueeze(0)?
        } else {
            self.clone()
        };
        let b = if rhs.rank() == 1 {
            rhs.unsqueeze(1)?
        } else {
            rhs.clone()
        };
        let y = a.value().matmul(b.value())?;
        let (av, bv) = (a.value().clone(), b.value().clone());
        // Skip the product for an operand that takes no gradient (e.g. the input batch).
        let (need_a, need_b) = (a.requires_grad(), b.requires_grad());
        let out = Var::from_op("matmul", y, &[&a, &b], move |g| {
            let ga = match need_a {
                true => Some(sum_to_shape(&g.matmul(&bv.t()?)?, av.shape())?),
                false => None,
            };
            let gb = match need_b {
                true => Some(sum_to_shape(&av.t()?.matmul(g)?, bv.shape())?),
                false => None,
            };
            Ok(vec![ga, gb])
        });
        let out = if rhs.rank() == 1 { out.squeeze(-1)? } else { out };
        if self.rank() == 1 {
            out.squeeze(if rhs.rank() == 1 { -1 } else { -2 })
        } else {
            Ok(out)
        }
    }
}

impl Var {
    /// `self Wᵀ (+ b)` for a `[rows, in]` input and a Linear layer's `[out, in]` weight `W`
    /// (and `[out]` bias): when nothing records a graph and the weight keeps a packed copy
    /// ([`Param::set_keep_packed`]), the product uses it; otherwise it is
    /// `self.matmul_bias(&W.var().t()?, &b.var())`. Both give the same values.
    pub fn matmul_param_t(&self, weight: &Param, bias: Option<&Param>) -> Result<Var> {
        let (w, b) = (weight.var(), bias.map(Param::var));
        let inputs: Vec<&Var> = std::iter::once(self).chain(Some(&w)).chain(b.as_ref()).collect();
        if !Var::records(&inputs) {
            if let Some(packed) = weight.packed_transpose()? {
                let y = self.value().matmul_packed(&packed, b.as_ref().map(Var::value))?;
                return Ok(Var::constant(y));
            }
        }
        let wt = w.t()?;
        match &b {
            Some(b) => self.matmul_bias(&wt, b),
            None => self.matmul(&wt),
        }
    }

    /// `self @ rhs + bias` for matrices `self` `[m, k]` and `rhs` `[k, n]` and a bias `[n]`
    /// (`torch.addmm`), in one GEMM that starts from the bias rows ([`kiln_tensor::Tensor::matmul_bias`]).
    /// Gradients: `g rhsᵀ`, `selfᵀ g`, and the column sums of `g` for the bias.
    pub fn matmul_bias(&self, rhs: &Var, bias: &Var) -> Result<Var> {
        let y = self.value().matmul_bias(rhs.value(), bias.value())?;
        let (av, bv) = (self.value().clone(), rhs.value().clone());
        let need = [self.requires_grad(), rhs.requires_grad(), bias.requires_grad()];
        Ok(Var::from_op("matmul_bias", y, &[self, rhs, bias], move |g| {
            let ga = match need[0] {
                true => Some(g.matmul(&bv.t()?)?),
                false => None,
            };
            let gb = match need[1] {
                true => Some(av.t()?.matmul(g)?),
                false => None,
            };
            let gbias = match need[2] {
                true => Some(g.sum([0], false)?),
                false => None,
            };
            Ok(vec![ga, gb, gbias])
        }))
    }
}
