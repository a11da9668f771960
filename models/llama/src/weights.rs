//! The weights of a Llama model in inference layout: each matrix either dense f32 (a parameter,
//! `[out, in]` as Hugging Face stores it) or quantized blocks that stay quantized
//! ([`QMatrix`]); norms as f32 vectors.

use std::borrow::Cow;
use std::cell::OnceCell;

use kiln_autograd::Param;
use kiln_tensor::ops::rowwise::matmul_rows_nk;
use kiln_tensor::quant::{QWeight, QuantPath, QuantScheme, QuantizedActivations};
use kiln_tensor::{DType, Tensor};
use kiln_zoo::Result;

/// A matrix of a linear layer (`y = x Wᵀ`, `W` of `[out, in]`).
pub enum Linear {
    /// Dense f32 weights (trainable parameter, or a dense tensor of a GGUF file).
    Dense(Param),
    /// Quantized weights: GGUF blocks, NF4 or int8 (inference only: autograd never sees them).
    Quant(QWeight),
}

/// A contiguous run of rows of a batch and how its dense products run: a single-token rows
/// segment through the row kernel, each prompt through GEMM. Quantized products treat every row
/// alike.
pub(crate) struct Segment {
    pub start: usize,
    pub rows: usize,
    pub rowwise: bool,
}

/// The input of the products that read the same rows (q/k/v, gate/up): the f32 rows, and their
/// 8-bit quantization, made once when a quantized product first needs it.
pub(crate) struct Input<'a> {
    pub x: &'a [f32],
    pub cols: usize,
    quantized: OnceCell<QuantizedActivations>,
}

impl<'a> Input<'a> {
    pub fn new(x: &'a [f32], cols: usize) -> Input<'a> {
        Input {
            x,
            cols,
            quantized: OnceCell::new(),
        }
    }

    fn quantized(&self) -> Result<&QuantizedActivations> {
        if let Some(q) = self.quantized.get() {
            return Ok(q);
        }
        let q = QuantizedActivations::quantize(self.x, self.x.len() / self.cols, self.cols)?;
        Ok(self.quantized.get_or_init(|| q))
    }
}

impl Linear {
    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Linear::Dense(p) => {
                let d = p.value().dims().to_vec();
                (d[0], d[1])
            }
            Linear::Quant(q) => (q.rows(), q.cols()),
        }
    }

    /// Bytes the weights take in memory.
    pub fn size_bytes(&self) -> usize {
        match self {
            Linear::Dense(p) => p.value().elem_count() * p.value().dtype().size_in_bytes(),
            Linear::Quant(q) => q.size_bytes(),
        }
    }

    fn dense(p: &Param) -> Result<Tensor> {
        Ok(p.value().to_dtype(DType::F32)?.contiguous()?)
    }

    /// `outs[i] = input linears[i]ᵀ` for matrices that read the same input: ggml blocks on the
    /// 8-bit activation path run as one product over all of them (one fork-join), anything else
    /// one [`Linear::apply`] at a time; the results are the same either way.
    pub(crate) fn apply_shared(
        linears: &[&Linear],
        input: &Input<'_>,
        segments: &[Segment],
        path: QuantPath,
        outs: &mut [&mut [f32]],
    ) -> Result<()> {
        let blocks: Option<Vec<&kiln_tensor::quant::QMatrix>> = linears
            .iter()
            .map(|l| match l {
                Linear::Quant(QWeight::Blocks(q)) => Some(q),
                _ => None,
            })
            .collect();
        match blocks {
            Some(mats) if path == QuantPath::Int8Activations => Ok(
                kiln_tensor::quant::QMatrix::matmul_quantized_many(&mats, input.quantized()?, outs)?,
            ),
            _ => {
                for (l, out) in linears.iter().zip(outs.iter_mut()) {
                    l.apply(input, segments, path, out)?;
                }
                Ok(())
            }
        }
    }

    /// `out = input Wᵀ` for every row of `input`.
    pub(crate) fn apply(
        &self,
        input: &Input<'_>,
        segments: &[Segment],
        path: QuantPath,
        out: &mut [f32],
    ) -> Result<()> {
        let (n, k) = self.dims();
        match self {
            Linear::Quant(QWeight::Blocks(q)) if path == QuantPath::Int8Activations => {
                q.matmul_quantized(input.quantized()?, out)?
            }
            Linear::Quant(q) => q.matmul(input.x, input.x.len() / k, path, out)?,
            Linear::Dense(p) => {
                let w = Self::dense(p)?;
                let ws: Cow<'_, [f32]> = w.contiguous_slice::<f32>()?;
                for s in segments {
                    let x = &input.x[s.start * k..(s.start + s.rows) * k];
                    let o = &mut out[s.start * n..(s.start + s.rows) * n];
                    if s.rowwise {
                        matmul_rows_nk(x, s.rows, k, &ws, n, o);
                    } else {
                        let y = Tensor::from_slice(x, [s.rows, k])?.matmul(&w.t()?)?;
                        o.copy_from_slice(&y.contiguous_slice::<f32>()?);
                    }
                }
            }
        }
        Ok(())
    }

    /// The weights as dense f32 values `[out, in]`.
    pub fn dense_values(&self) -> Result<Vec<f32>> {
        Ok(match self {
            Linear::Dense(p) => Self::dense(p)?.to_vec::<f32>()?,
            Linear::Quant(q) => q.dequantize()?,
        })
    }

    /// The layer quantized with `scheme` (from its dense values; GGUF blocks are dequantized
    /// first).
    pub fn quantized(&self, scheme: QuantScheme) -> Result<Linear> {
        let (n, k) = self.dims();
        Ok(Linear::Quant(scheme.quantize(&self.dense_values()?, n, k)?))
    }

    /// The layer as a dense f32 parameter named `name`.
    pub fn densified(&self, name: &str) -> Result<Linear> {
        let (n, k) = self.dims();
        Ok(Linear::Dense(Param::new(
            name,
            Tensor::from_vec(self.dense_values()?, [n, k])?,
        )))
    }

    /// Row `r` of the matrix (an embedding lookup) into `out`.
    pub fn row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        match self {
            Linear::Quant(q) => Ok(q.dequantize_row(r, out)?),
            Linear::Dense(p) => {
                let w = Self::dense(p)?;
                let k = out.len();
                out.copy_from_slice(&w.contiguous_slice::<f32>()?[r * k..(r + 1) * k]);
                Ok(())
            }
        }
    }
}

/// A vector of weights (a norm's scale): a parameter, or values read from a file.
pub enum Vector {
    /// A dense parameter (read at each use, so loaded values are seen).
    Param(Param),
    /// Fixed values.
    Owned(Vec<f32>),
}

impl Vector {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Vector::Param(p) => p.value().elem_count(),
            Vector::Owned(v) => v.len(),
        }
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32.
    pub fn values(&self) -> Result<Cow<'_, [f32]>> {
        Ok(match self {
            Vector::Param(p) => Cow::Owned(p.value().to_dtype(DType::F32)?.to_vec::<f32>()?),
            Vector::Owned(v) => Cow::Borrowed(v),
        })
    }
}

/// RMSNorm of each row of `x` into `out`: `x / sqrt(mean(x²) + eps) · weight`, statistics in
/// f64.
pub(crate) fn rms_norm(x: &[f32], weight: &[f32], eps: f64, out: &mut [f32]) {
    let d = weight.len();
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
        let r = (1.0 / (ms + eps).sqrt()) as f32;
        for ((o, &v), &w) in o.iter_mut().zip(row).zip(weight) {
            *o = v * r * w;
        }
    }
}
