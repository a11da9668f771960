//! One post-LN encoder layer (`encoder.layer.{i}`): self-attention, then the exact-GELU MLP
//! (`intermediate.dense`, `output.dense`) and `output.LayerNorm` over the residual.

use kiln_autograd::Var;
use kiln_nn::Scope;
use kiln_tensor::Tensor;
use kiln_zoo::Result;

use crate::attention::SelfAttention;
use crate::config::BertConfig;
use crate::layers::{Dense, Norm};

/// `encoder.layer.{i}`.
pub(crate) struct BertLayer {
    attention: SelfAttention,
    intermediate: Dense,
    output: Dense,
    norm: Norm,
}

impl BertLayer {
    /// The layer's parameters under `scope` (`encoder.layer.{i}.`).
    pub(crate) fn new(scope: Scope, cfg: &BertConfig) -> Result<BertLayer> {
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        let out = scope.sub("output");
        Ok(BertLayer {
            attention: SelfAttention::new(scope.sub("attention"), cfg)?,
            intermediate: Dense::new(scope.sub("intermediate").sub("dense"), d, f)?,
            output: Dense::new(out.sub("dense"), f, d)?,
            norm: Norm::new(out.sub("LayerNorm"), d, cfg.layer_norm_eps)?,
        })
    }

    /// `x` `[B·L, D]` → the layer's output `[B·L, D]`; `bias` is the attention mask
    /// ([`mask_bias`](crate::attention::mask_bias)).
    pub(crate) fn forward(&self, x: &Var, bias: &Tensor, batch: usize, len: usize) -> Result<Var> {
        let a = self.attention.forward(x, bias, batch, len)?;
        let h = self.intermediate.forward(&a)?.gelu()?;
        self.norm.forward(&self.output.forward(&h)?.add(&a)?)
    }
}
