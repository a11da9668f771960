//! [`TransformerEncoderLayer`] and [`TransformerDecoderLayer`] as PyTorch's
//! `nn.TransformerEncoderLayer` / `nn.TransformerDecoderLayer` with `batch_first=True`: attention,
//! a feed-forward block with ReLU or GELU, dropout, and post-LN (default) or pre-LN (`norm_first`).

use kiln_autograd::{Param, Var};
use kiln_tensor::Tensor;

use crate::layers::{Activation, AttentionConfig, Dropout, LayerNorm, Linear, MultiHeadAttention};
use crate::{Error, Module, Result, Scope};

/// Constructor arguments of the transformer layers, with PyTorch's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct TransformerConfig {
    /// Model width.
    pub d_model: usize,
    /// Attention heads.
    pub nhead: usize,
    /// Hidden width of the feed-forward block (default 2048).
    pub dim_feedforward: usize,
    /// Dropout probability after attention, inside and after the feed-forward block and on the
    /// attention weights, in training mode only (default 0.1).
    pub dropout: f64,
    /// The feed-forward activation (default ReLU; PyTorch offers ReLU and GELU, any
    /// [`Activation`] works).
    pub activation: Activation,
    /// LayerNorm epsilon (default 1e-5).
    pub layer_norm_eps: f64,
    /// Pre-LN (`true`: normalise before each block) or post-LN (`false`, the default: normalise
    /// after each residual sum).
    pub norm_first: bool,
}

impl TransformerConfig {
    /// PyTorch's defaults for `d_model` and `nhead`.
    pub fn new(d_model: usize, nhead: usize) -> TransformerConfig {
        TransformerConfig {
            d_model,
            nhead,
            dim_feedforward: 2048,
            dropout: 0.1,
            activation: Activation::Relu,
            layer_norm_eps: 1e-5,
            norm_first: false,
        }
    }
    /// Set [`TransformerConfig::dim_feedforward`].
    pub fn dim_feedforward(mut self, n: usize) -> Self {
        self.dim_feedforward = n;
        self
    }
    /// Set [`TransformerConfig::dropout`].
    pub fn dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }
    /// Set [`TransformerConfig::activation`].
    pub fn activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }
    /// Set [`TransformerConfig::layer_norm_eps`].
    pub fn layer_norm_eps(mut self, eps: f64) -> Self {
        self.layer_norm_eps = eps;
        self
    }
    /// Set [`TransformerConfig::norm_first`].
    pub fn norm_first(mut self, on: bool) -> Self {
        self.norm_first = on;
        self
    }

    fn attention(&self) -> AttentionConfig {
        AttentionConfig::new(self.d_model, self.nhead).dropout(self.dropout)
    }
}

/// The feed-forward block `linear2(dropout(act(linear1(x))))`.
struct FeedForward {
    linear1: Linear,
    linear2: Linear,
    dropout: Dropout,
    activation: Activation,
}

impl FeedForward {
    fn new(scope: &Scope, cfg: &TransformerConfig) -> Result<FeedForward> {
        if cfg.dim_feedforward == 0 {
            return Err(Error::invalid("Transformer layer", "dim_feedforward must be > 0"));
        }
        Ok(FeedForward {
            linear1: Linear::new(scope.sub("linear1"), cfg.d_model, cfg.dim_feedforward)?,
            linear2: Linear::new(scope.sub("linear2"), cfg.dim_feedforward, cfg.d_model)?,
            dropout: Dropout::new(cfg.dropout, scope.next_seed())?,
            activation: cfg.activation,
        })
    }
    fn forward(&self, x: &Var) -> Result<Var> {
        let h = self.activation.apply(&self.linear1.forward(x)?)?;
        self.linear2.forward(&self.dropout.forward(&h)?)
    }
}

fn check_input(x: &Var, d_model: usize, op: &'static str, what: &str) -> Result<()> {
    if x.rank() != 3 || x.dims()[2] != d_model {
        return Err(Error::invalid(
            op,
            format!("{what} must be [B, T, d_model = {d_model}], got {:?}", x.shape()),
        ));
    }
    Ok(())
}

/// `nn.TransformerEncoderLayer(batch_first=True)`: self-attention and a feed-forward block,
/// each with dropout and a residual connection.
///
/// ```text
/// post-LN: x = norm1(x + dropout1(self_attn(x)));   x = norm2(x + dropout2(ff(x)))
/// pre-LN:  x = x + dropout1(self_attn(norm1(x)));   x = x + dropout2(ff(norm2(x)))
/// ff(x) = linear2(dropout(activation(linear1(x))))
/// ```
///
/// Parameters: `self_attn.{q,k,v,out}_proj.{weight,bias}` (see [`MultiHeadAttention`]),
/// `linear1.*` `[F, D]`, `linear2.*` `[D, F]`, `norm1.*`, `norm2.*`.
pub struct TransformerEncoderLayer {
    self_attn: MultiHeadAttention,
    ff: FeedForward,
    norm1: LayerNorm,
    norm2: LayerNorm,
    dropout1: Dropout,
    dropout2: Dropout,
    cfg: TransformerConfig,
}

impl TransformerEncoderLayer {
    /// A layer with parameters from `scope`.
    pub fn new(scope: Scope, cfg: TransformerConfig) -> Result<TransformerEncoderLayer> {
        let self_attn = MultiHeadAttention::new(scope.sub("self_attn"), cfg.attention())?;
        let ff = FeedForward::new(&scope, &cfg)?;
        Ok(TransformerEncoderLayer {
            self_attn,
            ff,
            norm1: LayerNorm::new(scope.sub("norm1"), cfg.d_model, cfg.layer_norm_eps)?,
            norm2: LayerNorm::new(scope.sub("norm2"), cfg.d_model, cfg.layer_norm_eps)?,
            dropout1: Dropout::new(cfg.dropout, scope.next_seed())?,
            dropout2: Dropout::new(cfg.dropout, scope.next_seed())?,
            cfg,
        })
    }
    /// The configuration.
    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }
    /// The self-attention block.
    pub fn self_attn(&self) -> &MultiHeadAttention {
        &self.self_attn
    }

    /// Apply to `src` `[B, T, D]` with an optional `src_mask` and `src_key_padding_mask` (as
    /// [`MultiHeadAttention::forward`]'s masks) and an optional causal mask.
    pub fn forward_masked(
        &self,
        src: &Var,
        src_mask: Option<&Tensor>,
        src_key_padding_mask: Option<&Tensor>,
        is_causal: bool,
    ) -> Result<Var> {
        check_input(src, self.cfg.d_model, "TransformerEncoderLayer", "src")?;
        let sa = |x: &Var| -> Result<Var> {
            let (y, _) = self
                .self_attn
                .forward(x, x, x, src_mask, src_key_padding_mask, is_causal, false)?;
            self.dropout1.forward(&y)
        };
        let ff = |x: &Var| self.dropout2.forward(&self.ff.forward(x)?);
        if self.cfg.norm_first {
            let x = src.add(&sa(&self.norm1.forward(src)?)?)?;
            Ok(x.add(&ff(&self.norm2.forward(&x)?)?)?)
        } else {
            let x = self.norm1.forward(&src.add(&sa(src)?)?)?;
            self.norm2.forward(&x.add(&ff(&x)?)?)
        }
    }
}

impl Module for TransformerEncoderLayer {
    /// The layer without masks.
    fn forward(&self, x: &Var) -> Result<Var> {
        self.forward_masked(x, None, None, false)
    }
    fn parameters(&self) -> Vec<Param> {
        let mut p = self.self_attn.parameters();
        p.extend(self.ff.linear1.parameters());
        p.extend(self.ff.linear2.parameters());
        p.extend(self.norm1.parameters());
        p.extend(self.norm2.parameters());
        p
    }
    fn set_training(&self, training: bool) {
        self.self_attn.set_training(training);
        for d in [&self.ff.dropout, &self.dropout1, &self.dropout2] {
            d.set_training(training);
        }
    }
}

/// The masks of [`TransformerDecoderLayer::forward_with_memory`], as the arguments of
/// `nn.TransformerDecoderLayer.forward` (see [`MultiHeadAttention::forward`] for their forms).
#[derive(Clone, Copy, Debug, Default)]
pub struct DecoderMasks<'a> {
    /// Self-attention mask `[Tt, Tt]` (or a per-head / 4-D form).
    pub tgt_mask: Option<&'a Tensor>,
    /// Cross-attention mask `[Tt, Tm]` (or a per-head / 4-D form).
    pub memory_mask: Option<&'a Tensor>,
    /// Padding of the target `[B, Tt]`.
    pub tgt_key_padding_mask: Option<&'a Tensor>,
    /// Padding of the memory `[B, Tm]`.
    pub memory_key_padding_mask: Option<&'a Tensor>,
    /// Add a causal mask to the self-attention (the usual decoder setting).
    pub tgt_is_causal: bool,
    /// Add a causal mask to the cross-attention.
    pub memory_is_causal: bool,
}

/// `nn.TransformerDecoderLayer(batch_first=True)`: self-attention, cross-attention over the
/// encoder's memory, and a feed-forward block, each with dropout and a residual connection.
///
/// ```text
/// post-LN: x = norm1(x + sa(x));    x = norm2(x + mha(x, mem));    x = norm3(x + ff(x))
/// pre-LN:  x = x + sa(norm1(x));    x = x + mha(norm2(x), mem);    x = x + ff(norm3(x))
/// ```
///
/// Parameters: `self_attn.*`, `multihead_attn.*` (see [`MultiHeadAttention`]), `linear1.*`,
/// `linear2.*`, `norm1.*`, `norm2.*`, `norm3.*`.
pub struct TransformerDecoderLayer {
    self_attn: MultiHeadAttention,
    multihead_attn: MultiHeadAttention,
    ff: FeedForward,
    norm1: LayerNorm,
    norm2: LayerNorm,
    norm3: LayerNorm,
    dropout1: Dropout,
    dropout2: Dropout,
    dropout3: Dropout,
    cfg: TransformerConfig,
}

impl TransformerDecoderLayer {
    /// A layer with parameters from `scope`.
    pub fn new(scope: Scope, cfg: TransformerConfig) -> Result<TransformerDecoderLayer> {
        let self_attn = MultiHeadAttention::new(scope.sub("self_attn"), cfg.attention())?;
        let multihead_attn = MultiHeadAttention::new(scope.sub("multihead_attn"), cfg.attention())?;
        let ff = FeedForward::new(&scope, &cfg)?;
        let norm = |n: &str| LayerNorm::new(scope.sub(n), cfg.d_model, cfg.layer_norm_eps);
        Ok(TransformerDecoderLayer {
            self_attn,
            multihead_attn,
            ff,
            norm1: norm("norm1")?,
            norm2: norm("norm2")?,
            norm3: norm("norm3")?,
            dropout1: Dropout::new(cfg.dropout, scope.next_seed())?,
            dropout2: Dropout::new(cfg.dropout, scope.next_seed())?,
            dropout3: Dropout::new(cfg.dropout, scope.next_seed())?,
            cfg,
        })
    }
    /// The configuration.
    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }
    /// The self-attention block.
    pub fn self_attn(&self) -> &MultiHeadAttention {
        &self.self_attn
    }
    /// The cross-attention block.
    pub fn multihead_attn(&self) -> &MultiHeadAttention {
        &self.multihead_attn
    }

    /// Apply to `tgt` `[B, Tt, D]` attending over `memory` `[B, Tm, D]`.
    pub fn forward_with_memory(&self, tgt: &Var, memory: &Var, masks: &DecoderMasks<'_>) -> Result<Var> {
        const OP: &str = "TransformerDecoderLayer";
        check_input(tgt, self.cfg.d_model, OP, "tgt")?;
        check_input(memory, self.cfg.d_model, OP, "memory")?;
        if memory.dims()[0] != tgt.dims()[0] {
            return Err(Error::invalid(
                OP,
                format!(
                    "tgt {:?} and memory {:?} must have the same batch size",
                    tgt.shape(),
                    memory.shape()
                ),
            ));
        }
        let sa = |x: &Var| -> Result<Var> {
            let (y, _) = self.self_attn.forward(
                x,
                x,
                x,
                masks.tgt_mask,
                masks.tgt_key_padding_mask,
                masks.tgt_is_causal,
                false,
            )?;
            self.dropout1.forward(&y)
        };
        let mha = |x: &Var| -> Result<Var> {
            let (y, _) = self.multihead_attn.forward(
                x,
                memory,
                memory,
                masks.memory_mask,
                masks.memory_key_padding_mask,
                masks.memory_is_causal,
                false,
            )?;
            self.dropout2.forward(&y)
        };
        let ff = |x: &Var| self.dropout3.forward(&self.ff.forward(x)?);
        if self.cfg.norm_first {
            let x = tgt.add(&sa(&self.norm1.forward(tgt)?)?)?;
            let x = x.add(&mha(&self.norm2.forward(&x)?)?)?;
            Ok(x.add(&ff(&self.norm3.forward(&x)?)?)?)
        } else {
            let x = self.norm1.forward(&tgt.add(&sa(tgt)?)?)?;
            let x = self.norm2.forward(&x.add(&mha(&x)?)?)?;
            self.norm3.forward(&x.add(&ff(&x)?)?)
        }
    }
}

impl Module for TransformerDecoderLayer {
    /// A decoder layer needs the encoder's memory: this always returns an error pointing to
    /// [`TransformerDecoderLayer::forward_with_memory`].
    fn forward(&self, _x: &Var) -> Result<Var> {
        Err(Error::invalid(
            "TransformerDecoderLayer",
            "needs the encoder memory: call forward_with_memory(tgt, memory, masks)",
        ))
    }
    fn parameters(&self) -> Vec<Param> {
        let mut p = self.self_attn.parameters();
        p.extend(self.multihead_attn.parameters());
        p.extend(self.ff.linear1.parameters());
        p.extend(self.ff.linear2.parameters());
        for n in [&self.norm1, &self.norm2, &self.norm3] {
            p.extend(n.parameters());
        }
        p
    }
    fn set_training(&self, training: bool) {
        self.self_attn.set_training(training);
        self.multihead_attn.set_training(training);
        for d in [&self.ff.dropout, &self.dropout1, &self.dropout2, &self.dropout3] {
            d.set_training(training);
        }
    }
}
