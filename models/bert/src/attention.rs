//! BERT's self-attention block (`attention.self.{query,key,value}`, `attention.output.dense`,
//! `attention.output.LayerNorm`): bidirectional attention with an additive mask over padding,
//! then the post-LN residual.

use kiln_autograd::Var;
use kiln_nn::Scope;
use kiln_tensor::Tensor;
use kiln_zoo::Result;

use crate::config::BertConfig;
use crate::layers::{Dense, Norm};

/// The additive mask of a padded batch: `[B, 1, 1, L]`, 0 on real tokens and `f32::MIN` on
/// padding (Hugging Face's `(1 - mask) * finfo.min`), so padded keys get probability exactly 0.
pub(crate) fn mask_bias(mask: &[u32], batch: usize, len: usize) -> Result<Tensor> {
    let bias: Vec<f32> = mask
        .iter()
        .map(|&m| if m == 0 { f32::MIN } else { 0.0 })
        .collect();
    Ok(Tensor::from_vec(bias, [batch, 1, 1, len])?)
}

/// `attention.*` of one encoder layer.
pub(crate) struct SelfAttention {
    query: Dense,
    key: Dense,
    value: Dense,
    output: Dense,
    norm: Norm,
    heads: usize,
}

impl SelfAttention {
    /// The block's parameters under `scope` (`attention.`).
    pub(crate) fn new(scope: Scope, cfg: &BertConfig) -> Result<SelfAttention> {
        let d = cfg.hidden_size;
        let s = scope.sub("self");
        let out = scope.sub("output");
        Ok(SelfAttention {
            query: Dense::new(s.sub("query"), d, d)?,
            key: Dense::new(s.sub("key"), d, d)?,
            value: Dense::new(s.sub("value"), d, d)?,
            output: Dense::new(out.sub("dense"), d, d)?,
            norm: Norm::new(out.sub("LayerNorm"), d, cfg.layer_norm_eps)?,
            heads: cfg.num_attention_heads,
        })
    }

    /// `x` `[B·L, D]` (rows of `batch` sequences of `len`) → `LayerNorm(x + attention(x))`.
    pub(crate) fn forward(&self, x: &Var, bias: &Tensor, batch: usize, len: usize) -> Result<Var> {
        let d = x.dims()[1];
        let (h, dh) = (self.heads, d / self.heads);
        // [B·L, D] → [B, H, L, dh] (and keys [B, H, dh, L]) as strided views.
        let split =
            |t: Var, perm: &[usize]| -> Result<Var> { Ok(t.reshape([batch, len, h, dh])?.permute(perm)?) };
        let q = split(self.query.forward(x)?, &[0, 2, 1, 3])?;
        let k = split(self.key.forward(x)?, &[0, 2, 3, 1])?;
        let v = split(self.value.forward(x)?, &[0, 2, 1, 3])?;
        let probs = q
            .matmul(&k)?
            .mul_scalar(1.0 / (dh as f64).sqrt())?
            .add(&Var::constant(bias.clone()))?
            .softmax(3usize)?;
        let ctx = probs
            .matmul(&v)?
            .permute(&[0, 2, 1, 3])?
            .contiguous()?
            .reshape([batch * len, d])?;
        self.norm.forward(&self.output.forward(&ctx)?.add(x)?)
    }
}
