//! Position encodings: fixed sinusoidal ([`SinusoidalPositionalEncoding`]), learned
//! ([`LearnedPositionalEmbedding`]) and rotary ([`RotaryEmbedding`], RoPE).

use kiln_autograd::{Param, Var};
use kiln_tensor::{DType, Device, Tensor};

use crate::layers::Embedding;
use crate::{Error, Module, Result, Scope};

/// The sinusoidal table of "Attention is all you need" for positions `start..start + len`:
/// `[len, dim]` with `PE[pos, 2i] = sin(pos / 10000^(2i/dim))` and
/// `PE[pos, 2i+1] = cos(pos / 10000^(2i/dim))` (computed in f64, then cast to `dtype`).
pub fn sinusoidal_table(
    start: usize,
    len: usize,
    dim: usize,
    dtype: DType,
    device: Device,
) -> Result<Tensor> {
    let mut v = Vec::with_capacity(len * dim);
    for pos in start..start + len {
        for j in 0..dim {
            let even = (j - j % 2) as f64;
            let angle = pos as f64 / 10000f64.powf(even / dim as f64);
            v.push(if j % 2 == 0 { angle.sin() } else { angle.cos() });
        }
    }
    Ok(Tensor::from_vec(v, [len, dim])?
        .to_dtype(dtype)?
        .to_device(device)?)
}

/// Check `x` is `[..., T, dim]` and return `T`.
fn seq_len(x: &Var, dim: usize, op: &'static str) -> Result<usize> {
    let r = x.rank();
    if r < 2 || x.dims()[r - 1] != dim {
        return Err(Error::invalid(
            op,
            format!("input must be [..., T, {dim}], got {:?}", x.shape()),
        ));
    }
    Ok(x.dims()[r - 2])
}

/// Adds the fixed sinusoidal encoding ([`sinusoidal_table`]) to inputs `[..., T, dim]`. No
/// parameters, no length limit; scaling of the embeddings and dropout are left to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinusoidalPositionalEncoding {
    dim: usize,
}

impl SinusoidalPositionalEncoding {
    /// An encoding of width `dim`.
    pub fn new(dim: usize) -> SinusoidalPositionalEncoding {
        SinusoidalPositionalEncoding { dim }
    }
    /// `x + PE[offset..offset + T]` for `x` `[..., T, dim]` (`offset` for cached decoding).
    pub fn forward_with_offset(&self, x: &Var, offset: usize) -> Result<Var> {
        let t = seq_len(x, self.dim, "SinusoidalPositionalEncoding")?;
        let pe = sinusoidal_table(offset, t, self.dim, x.dtype(), x.value().device())?;
        Ok(x.add(&Var::constant(pe))?)
    }
}

impl Module for SinusoidalPositionalEncoding {
    /// `x + PE[0..T]`.
    fn forward(&self, x: &Var) -> Result<Var> {
        self.forward_with_offset(x, 0)
    }
    fn parameters(&self) -> Vec<Param> {
        Vec::new()
    }
}

/// A learned absolute position embedding (GPT-2's `wpe`, BERT's `position_embeddings`): an
/// [`Embedding`] over positions `0..max_positions` whose parameter is `weight`
/// `[max_positions, dim]`, initialised N(0, 1) as `nn.Embedding`.
pub struct LearnedPositionalEmbedding {
    table: Embedding,
    max_positions: usize,
    dim: usize,
}

impl LearnedPositionalEmbedding {
    /// A table of `max_positions` vectors of width `dim`, named `weight` in `scope`.
    pub fn new(scope: Scope, max_positions: usize, dim: usize) -> Result<LearnedPositionalEmbedding> {
        Ok(LearnedPositionalEmbedding {
            table: Embedding::new(scope, max_positions, dim, None)?,
            max_positions,
            dim,
        })
    }
    /// The table parameter.
    pub fn weight(&self) -> &Param {
        self.table.weight()
    }
    /// The embeddings of positions `offset..offset + len`: `[len, dim]`.
    pub fn positions(&self, offset: usize, len: usize) -> Result<Var> {
        if offset + len > self.max_positions {
            return Err(Error::invalid(
                "LearnedPositionalEmbedding",
                format!(
                    "positions {offset}..{} exceed max_positions = {}",
                    offset + len,
                    self.max_positions
                ),
            ));
        }
        let ids = Tensor::arange(offset as f64, (offset + len) as f64, 1.0, DType::I64, Device::Cpu)?
            .to_device(self.table.weight().value().device())?;
        self.table.lookup(&ids)
    }
    /// `x + P[offset..offset + T]` for `x` `[..., T, dim]`.
    pub fn forward_with_offset(&self, x: &Var, offset: usize) -> Result<Var> {
        let t = seq_len(x, self.dim, "LearnedPositionalEmbedding")?;
        Ok(x.add(&self.positions(offset, t)?)?)
    }
}

impl Module for LearnedPositionalEmbedding {
    /// `x + P[0..T]`.
    fn forward(&self, x: &Var) -> Result<Var> {
        self.forward_with_offset(x, 0)
    }
    fn parameters(&self) -> Vec<Param> {
        self.table.parameters()
    }
}

/// Rotary position embedding (RoPE) in the Llama / Hugging Face convention: frequencies
/// `inv_freq[i] = theta^(-2i/dim)` for `i < dim/2`, angles `pos * inv_freq` repeated over both
/// halves, and `rope(x) = x * cos + rotate_half(x) * sin` with
/// `rotate_half([x1, x2]) = [-x2, x1]` (halves of the last dimension, not interleaved pairs).
///
/// Applied to queries and keys `[B, H, T, dim]` (any `[..., T, dim]`) after the head split; the
/// position offset places a KV-cached decoding step at its absolute position. No parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RotaryEmbedding {
    dim: usize,
    theta: f64,
}

impl RotaryEmbedding {
    /// RoPE over a head dimension `dim` (even) with base `theta` (10000 for Llama 1/2).
    pub fn new(dim: usize, theta: f64) -> Result<RotaryEmbedding> {
        if dim == 0 || !dim.is_multiple_of(2) || theta.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            return Err(Error::invalid(
                "RotaryEmbedding",
                format!("dim must be even and > 0 and theta > 0, got dim = {dim}, theta = {theta}"),
            ));
        }
        Ok(RotaryEmbedding { dim, theta })
    }
    /// The head dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// `(cos, sin)` tables `[len, dim]` for positions `offset..offset + len` (computed in f64).
    pub fn cos_sin(
        &self,
        offset: usize,
        len: usize,
        dtype: DType,
        device: Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| self.theta.powf(-((2 * i) as f64) / self.dim as f64))
            .collect();
        let (mut cos, mut sin) = (
            Vec::with_capacity(len * self.dim),
            Vec::with_capacity(len * self.dim),
        );
        for pos in offset..offset + len {
            for j in 0..self.dim {
                let a = pos as f64 * inv_freq[j % half];
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let make = |v: Vec<f64>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, [len, self.dim])?
                .to_dtype(dtype)?
                .to_device(device)?)
        };
        Ok((make(cos)?, make(sin)?))
    }
    /// Rotate `x` `[..., T, dim]` whose first position is `offset`.
    pub fn apply(&self, x: &Var, offset: usize) -> Result<Var> {
        let t = seq_len(x, self.dim, "RotaryEmbedding")?;
        let (cos, sin) = self.cos_sin(offset, t, x.dtype(), x.value().device())?;
        let half = self.dim / 2;
        let x1 = x.narrow(-1, 0, half)?;
        let x2 = x.narrow(-1, half, half)?;
        let rotated = Var::cat(&[x2.neg()?, x1], -1)?;
        Ok(x.mul(&Var::constant(cos))?
            .add(&rotated.mul(&Var::constant(sin))?)?)
    }
}
