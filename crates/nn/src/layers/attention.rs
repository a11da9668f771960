//! [`MultiHeadAttention`]: `nn.MultiheadAttention` semantics, batch-first, with separate
//! `q_proj` / `k_proj` / `v_proj` / `out_proj` projections.

use std::collections::HashMap;

use kiln_autograd::{Param, Var};
use kiln_tensor::ops::binary::CmpOp;
use kiln_tensor::{DType, Tensor};

use crate::layers::{Dropout, Linear};
use crate::{Error, Init, Module, Result, Scope};

/// Constructor arguments of [`MultiHeadAttention`], as those of `nn.MultiheadAttention`.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionConfig {
    /// Model width `E` (queries and output).
    pub embed_dim: usize,
    /// Number of heads; must divide `embed_dim`.
    pub num_heads: usize,
    /// Features of the keys (default `embed_dim`).
    pub kdim: usize,
    /// Features of the values (default `embed_dim`).
    pub vdim: usize,
    /// Whether the four projections have biases (default true).
    pub bias: bool,
    /// Dropout probability on the attention weights, in training mode only (default 0).
    pub dropout: f64,
    /// Return attention weights averaged over heads `[B, Tq, Tk]` (default true, as PyTorch's
    /// `average_attn_weights`) instead of per head `[B, H, Tq, Tk]`.
    pub average_attn_weights: bool,
}

impl AttentionConfig {
    /// `embed_dim` split over `num_heads`, keys and values of width `embed_dim`, biases, no dropout.
    pub fn new(embed_dim: usize, num_heads: usize) -> AttentionConfig {
        AttentionConfig {
            embed_dim,
            num_heads,
            kdim: embed_dim,
            vdim: embed_dim,
            bias: true,
            dropout: 0.0,
            average_attn_weights: true,
        }
    }
    /// Set [`AttentionConfig::kdim`] and [`AttentionConfig::vdim`].
    pub fn kv_dims(mut self, kdim: usize, vdim: usize) -> Self {
        self.kdim = kdim;
        self.vdim = vdim;
        self
    }
    /// Set [`AttentionConfig::bias`].
    pub fn bias(mut self, on: bool) -> Self {
        self.bias = on;
        self
    }
    /// Set [`AttentionConfig::dropout`].
    pub fn dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }
    /// Set [`AttentionConfig::average_attn_weights`].
    pub fn average_attn_weights(mut self, on: bool) -> Self {
        self.average_attn_weights = on;
        self
    }
}

/// Multi-head scaled dot-product attention over batch-first `[B, T, E]` inputs:
/// `softmax(Q Kᵀ / √d_head + mask) V` per head, heads concatenated, then `out_proj`.
///
/// Parameters (each a [`Linear`]): `q_proj.weight` `[E, E]`, `k_proj.weight` `[E, kdim]`,
/// `v_proj.weight` `[E, vdim]`, `out_proj.weight` `[E, E]`, and `*.bias` `[E]` each when biased.
/// PyTorch's packed `in_proj_weight` `[3E, E]` is the row-wise concatenation of the `q`, `k` and
/// `v` weights, `in_proj_bias` likewise; [`split_packed_attention_weights`] converts a PyTorch
/// state dict. Initialisation follows PyTorch: Xavier-uniform input projections (over the packed
/// `[3E, E]` shape when `kdim = vdim = E`), zero biases, `out_proj.weight` as a `Linear`.
///
/// ```
/// use kiln_nn::layers::{AttentionConfig, MultiHeadAttention};
/// use kiln_nn::{Scope, Var};
/// use kiln_tensor::{DType, Device, Tensor};
/// let mha = MultiHeadAttention::new(Scope::init(0, DType::F32, Device::Cpu), AttentionConfig::new(8, 2))?;
/// let x = Var::constant(Tensor::ones([2, 5, 8], DType::F32, Device::Cpu)?);
/// let (y, w) = mha.forward(&x, &x, &x, None, None, true, true)?;
/// assert_eq!((y.dims(), w.unwrap().dims()), (&[2, 5, 8][..], &[2, 5, 5][..]));
/// # Ok::<(), kiln_nn::Error>(())
/// ```
pub struct MultiHeadAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    cfg: AttentionConfig,
    head_dim: usize,
    dropout: Option<Dropout>,
}

/// A Linear whose weight is created first with `init` (a later `Linear::with_bias` on the same
/// scope reuses it) and whose bias starts at zero.
fn projection(scope: Scope, input: usize, output: usize, bias: bool, init: Option<Init>) -> Result<Linear> {
    if let Some(init) = init {
        scope.param("weight", [output, input], init)?;
    }
    if bias {
        scope.param("bias", [output], Init::Zeros)?;
    }
    Linear::with_bias(scope, input, output, bias)
}

impl MultiHeadAttention {
    /// Attention with parameters from `scope` (see the type's documentation for the names).
    pub fn new(scope: Scope, cfg: AttentionConfig) -> Result<MultiHeadAttention> {
        const OP: &str = "MultiHeadAttention";
        let (e, h) = (cfg.embed_dim, cfg.num_heads);
        if e == 0 || h == 0 || e % h != 0 || cfg.kdim == 0 || cfg.vdim == 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "embed_dim ({e}) must be a positive multiple of num_heads ({h}); kdim ({}) and vdim ({}) must be > 0",
                    cfg.kdim, cfg.vdim
                ),
            ));
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            return Err(Error::invalid(
                OP,
                format!("dropout must be in [0, 1), got {}", cfg.dropout),
            ));
        }
        let packed = cfg.kdim == e && cfg.vdim == e;
        let in_init = |fan_in: usize| {
            if packed {
                // xavier_uniform_ over the packed [3E, E] in_proj_weight.
                let bound = (6.0 / (e + 3 * e) as f64).sqrt();
                Init::Uniform {
                    lo: -bound,
                    hi: bound,
                }
            } else {
                let bound = (6.0 / (e + fan_in) as f64).sqrt();
                Init::Uniform {
                    lo: -bound,
                    hi: bound,
                }
            }
        };
        let q_proj = projection(scope.sub("q_proj"), e, e, cfg.bias, Some(in_init(e)))?;
        let k_proj = projection(
            scope.sub("k_proj"),
            cfg.kdim,
            e,
            cfg.bias,
            Some(in_init(cfg.kdim)),
        )?;
        let v_proj = projection(
            scope.sub("v_proj"),
            cfg.vdim,
            e,
            cfg.bias,
            Some(in_init(cfg.vdim)),
        )?;
        let out_proj = projection(scope.sub("out_proj"), e, e, cfg.bias, None)?;
        let dropout = if cfg.dropout > 0.0 {
            Some(Dropout::new(cfg.dropout, scope.next_seed())?)
        } else {
            None
        };
        Ok(MultiHeadAttention {
            q_proj,
            k_proj,
            v_proj,
            out_proj,
            head_dim: e / h,
            cfg,
            dropout,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AttentionConfig {
        &self.cfg
    }
    /// The query projection.
    pub fn q_proj(&self) -> &Linear {
        &self.q_proj
    }
    /// The key projection.
    pub fn k_proj(&self) -> &Linear {
        &self.k_proj
    }
    /// The value projection.
    pub fn v_proj(&self) -> &Linear {
        &self.v_proj
    }
    /// The output projection.
    pub fn out_proj(&self) -> &Linear {
        &self.out_proj
    }

    /// Attend from `q` `[B, Tq, E]` over keys `k` `[B, Tk, kdim]` and values `v` `[B, Tk, vdim]`.
    ///
    /// Masks follow PyTorch: an integer (`u8`, `u32`, `i64`) mask is boolean, non-zero = the
    /// position is **not** attended (its score becomes `-inf`); a float mask is added to the
    /// scores. `attn_mask` is `[Tq, Tk]`, `[B * H, Tq, Tk]` or 4-D broadcastable to
    /// `[B, H, Tq, Tk]`; `key_padding_mask` is `[B, Tk]`. `causal` additionally masks every key
    /// after the query's position (`j > i`, the upper triangle, aligned top-left as
    /// `scaled_dot_product_attention(is_causal=True)`). A query that can attend to nothing gets
    /// NaN, as in PyTorch.
    ///
    /// Returns the output `[B, Tq, E]` and, when `need_weights`, the attention weights (after
    /// dropout, as PyTorch), averaged over heads `[B, Tq, Tk]` or per head `[B, H, Tq, Tk]` as
    /// [`AttentionConfig::average_attn_weights`] says.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        q: &Var,
        k: &Var,
        v: &Var,
        attn_mask: Option<&Tensor>,
        key_padding_mask: Option<&Tensor>,
        causal: bool,
        need_weights: bool,
    ) -> Result<(Var, Option<Var>)> {
        const OP: &str = "MultiHeadAttention";
        let (e, h, dh) = (self.cfg.embed_dim, self.cfg.num_heads, self.head_dim);
        let shape_err = || {
            Error::invalid(
                OP,
                format!(
                    "expected q [B, Tq, {e}], k [B, Tk, {}], v [B, Tk, {}]; got q {:?}, k {:?}, v {:?}",
                    self.cfg.kdim,
                    self.cfg.vdim,
                    q.shape(),
                    k.shape(),
                    v.shape()
                ),
            )
        };
        let (&[b, tq, qe], &[bk, tk, ke], &[bv, tv, ve]) = (q.dims(), k.dims(), v.dims()) else {
            return Err(shape_err());
        };
        if qe != e || ke != self.cfg.kdim || ve != self.cfg.vdim || bk != b || bv != b || tv != tk {
            return Err(shape_err());
        }
        let heads =
            |x: Var, t: usize| -> Result<Var> { Ok(x.reshape([b, t, h, dh])?.permute(&[0, 2, 1, 3])?) };
        let qh = heads(self.q_proj.forward(q)?, tq)?.mul_scalar(1.0 / (dh as f64).sqrt())?;
        let kh = heads(self.k_proj.forward(k)?, tk)?;
        let vh = heads(self.v_proj.forward(v)?, tk)?;
        let mut scores = qh.matmul(&kh.t()?)?; // [B, H, Tq, Tk]
        let (blocked, additive) = combine_masks(attn_mask, key_padding_mask, causal, [b, h, tq, tk])?;
        if let Some(m) = blocked {
            scores = scores.masked_fill(&m, f64::NEG_INFINITY)?;
        }
        if let Some(a) = additive {
            scores = scores.add(&Var::constant(a.to_dtype(scores.dtype())?))?;
        }
        let mut attn = scores.softmax(-1)?;
        if let Some(d) = &self.dropout {
            attn = d.forward(&attn)?;
        }
        let out = attn.matmul(&vh)?.permute(&[0, 2, 1, 3])?.reshape([b, tq, e])?;
        let out = self.out_proj.forward(&out)?;
        let weights = match (need_weights, self.cfg.average_attn_weights) {
            (false, _) => None,
            (true, true) => Some(attn.mean(1, false)?),
            (true, false) => Some(attn),
        };
        Ok((out, weights))
    }
}

/// Bring a mask to rank 4, broadcastable to `[B, H, Tq, Tk]`, or say why it is not.
fn attn_mask_4d(m: &Tensor, [b, h, tq, tk]: [usize; 4]) -> Result<Tensor> {
    let d = m.dims();
    let ok4 =
        |d: &[usize]| d.len() == 4 && d.iter().zip([b, h, tq, tk]).all(|(&x, full)| x == full || x == 1);
    let m4 = match d.len() {
        2 if d == [tq, tk] => m.reshape([1, 1, tq, tk])?,
        3 if d == [b * h, tq, tk] => m.reshape([b, h, tq, tk])?,
        4 if ok4(d) => m.clone(),
        _ => {
            return Err(Error::invalid(
                "MultiHeadAttention",
                format!(
                    "attn_mask {:?} must be [Tq, Tk] = [{tq}, {tk}], [B*H, Tq, Tk] = [{}, {tq}, {tk}] or broadcastable to [B, H, Tq, Tk] = [{b}, {h}, {tq}, {tk}]",
                    m.shape(),
                    b * h
                ),
            ))
        }
    };
    Ok(m4)
}

/// Split the masks into one boolean "blocked" mask (`u8`, broadcastable to `[B, H, Tq, Tk]`) and
/// one additive float mask.
fn combine_masks(
    attn_mask: Option<&Tensor>,
    key_padding_mask: Option<&Tensor>,
    causal: bool,
    full: [usize; 4],
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let [b, _, tq, tk] = full;
    let mut pieces = Vec::new();
    if let Some(m) = attn_mask {
        pieces.push(attn_mask_4d(m, full)?);
    }
    if let Some(m) = key_padding_mask {
        if m.dims() != [b, tk] {
            return Err(Error::invalid(
                "MultiHeadAttention",
                format!("key_padding_mask {:?} must be [B, Tk] = [{b}, {tk}]", m.shape()),
            ));
        }
        pieces.push(m.reshape([b, 1, 1, tk])?);
    }
    if causal {
        pieces.push(causal_mask(tq, tk)?.reshape([1, 1, tq, tk])?);
    }
    let (mut blocked, mut additive): (Option<Tensor>, Option<Tensor>) = (None, None);
    for m in pieces {
        if m.dtype().is_float() {
            let m = m.to_dtype(DType::F64)?;
            additive = Some(match additive {
                None => m,
                Some(a) => a.add(&m)?,
            });
        } else {
            let m = m.cmp_scalar(0.0, CmpOp::Ne)?;
            blocked = Some(match blocked {
                None => m,
                Some(a) => a.maximum(&m)?,
            });
        }
    }
    Ok((blocked, additive))
}

/// The causal mask `[Tq, Tk]` (`u8`, 1 where key `j > i`, the query's position), as
/// `torch.ones(Tq, Tk).triu(1).bool()`.
pub fn causal_mask(tq: usize, tk: usize) -> Result<Tensor> {
    let v: Vec<u8> = (0..tq)
        .flat_map(|i| (0..tk).map(move |j| u8::from(j > i)))
        .collect();
    Ok(Tensor::from_vec(v, [tq, tk])?)
}

impl Module for MultiHeadAttention {
    /// Self-attention of `x` `[B, T, E]` without masks (call as `Module::forward(&mha, &x)`; the
    /// inherent `forward` takes queries, keys, values and masks).
    fn forward(&self, x: &Var) -> Result<Var> {
        Ok(MultiHeadAttention::forward(self, x, x, x, None, None, false, false)?.0)
    }
    fn parameters(&self) -> Vec<Param> {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.out_proj]
            .into_iter()
            .flat_map(|l| l.parameters())
            .collect()
    }
    fn set_training(&self, training: bool) {
        if let Some(d) = &self.dropout {
            d.set_training(training);
        }
    }
}

/// Rewrite a PyTorch state dict's `nn.MultiheadAttention` entries into [`MultiHeadAttention`]'s
/// names, in place: every `P.in_proj_weight` `[3E, E]` becomes `P.q_proj.weight`,
/// `P.k_proj.weight`, `P.v_proj.weight` (`[E, E]` each), `P.in_proj_bias` `[3E]` the three
/// `*.bias`, and `P.q_proj_weight` / `P.k_proj_weight` / `P.v_proj_weight` (PyTorch's names when
/// `kdim` or `vdim` differ from `E`) become `P.q_proj.weight`, .... `out_proj.*` already match.
/// Returns how many entries were converted.
pub fn split_packed_attention_weights(weights: &mut HashMap<String, Tensor>) -> Result<usize> {
    let keys: Vec<String> = weights.keys().cloned().collect();
    let mut converted = 0;
    for key in keys {
        if let Some(prefix) = key.strip_suffix("in_proj_weight") {
            let Some(t) = weights.remove(&key) else { continue };
            let parts = split3(&t, &key)?;
            for (name, part) in ["q_proj", "k_proj", "v_proj"].iter().zip(parts) {
                weights.insert(format!("{prefix}{name}.weight"), part);
            }
            converted += 1;
        } else if let Some(prefix) = key.strip_suffix("in_proj_bias") {
            let Some(t) = weights.remove(&key) else { continue };
            let parts = split3(&t, &key)?;
            for (name, part) in ["q_proj", "k_proj", "v_proj"].iter().zip(parts) {
                weights.insert(format!("{prefix}{name}.bias"), part);
            }
            converted += 1;
        } else {
            for name in ["q_proj", "k_proj", "v_proj"] {
                if let Some(prefix) = key.strip_suffix(&format!("{name}_weight")) {
                    if let Some(t) = weights.remove(&key) {
                        weights.insert(format!("{prefix}{name}.weight"), t);
                        converted += 1;
                    }
                }
            }
        }
    }
    Ok(converted)
}

fn split3(t: &Tensor, key: &str) -> Result<Vec<Tensor>> {
    let rows = t.dims().first().copied().unwrap_or(0);
    if rows == 0 || rows % 3 != 0 {
        return Err(Error::invalid(
            "split_packed_attention_weights",
            format!("{key} has shape {:?}; its first dimension must be 3E", t.shape()),
        ));
    }
    t.chunk(3, 0)?.into_iter().map(|p| Ok(p.contiguous()?)).collect()
}
