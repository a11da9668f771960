//! [`QWeight`]: one entry point for every quantized weight matrix (ggml blocks, NF4, int8), and
//! [`QuantScheme`], how to quantize a dense matrix at load time.

use rayon::prelude::*;

use super::int8::Int8Matrix;
use super::matrix::{QMatrix, QuantPath};
use super::nf4::Nf4Matrix;
use crate::{Error, Result};

/// How to quantize a dense weight at load time (`--quantize`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuantScheme {
    /// NF4 in blocks of 64, optionally with double quantization of the block maxima.
    Nf4 {
        /// Quantize the block maxima too (8-bit, blocks of 256).
        double_quant: bool,
    },
    /// Per-row absmax int8, optionally with LLM.int8()'s outlier threshold.
    Int8 {
        /// Activation magnitude above which a feature goes through f32.
        threshold: Option<f32>,
    },
}

impl QuantScheme {
    /// Parses `nf4`, `nf4-dq` (double quantization), `int8`, `int8-outliers` (threshold 6.0).
    pub fn parse(s: &str) -> Result<QuantScheme> {
        Ok(match s {
            "nf4" => QuantScheme::Nf4 { double_quant: false },
            "nf4-dq" => QuantScheme::Nf4 { double_quant: true },
            "int8" => QuantScheme::Int8 { threshold: None },
            "int8-outliers" => QuantScheme::Int8 { threshold: Some(6.0) },
            other => {
                return Err(Error::InvalidArgument {
                    op: "quantize",
                    reason: format!("{other:?} is not a scheme; expected nf4, nf4-dq, int8 or int8-outliers"),
                })
            }
        })
    }

    /// Quantizes a dense `[rows, cols]` matrix.
    pub fn quantize(self, w: &[f32], rows: usize, cols: usize) -> Result<QWeight> {
        Ok(match self {
            QuantScheme::Nf4 { double_quant } => {
                QWeight::Nf4(Nf4Matrix::quantize(w, rows, cols, double_quant)?)
            }
            QuantScheme::Int8 { threshold } => QWeight::Int8(Int8Matrix::quantize(w, rows, cols, threshold)?),
        })
    }
}

/// A quantized `[rows, cols]` weight of a linear layer (`y = x Wᵀ`).
#[derive(Clone, Debug)]
pub enum QWeight {
    /// ggml blocks (GGUF), read in place.
    Blocks(QMatrix),
    /// NF4 (bitsandbytes/QLoRA).
    Nf4(Nf4Matrix),
    /// Per-row int8 (LLM.int8()).
    Int8(Int8Matrix),
}

impl QWeight {
    /// Output features.
    pub fn rows(&self) -> usize {
        match self {
            QWeight::Blocks(q) => q.rows(),
            QWeight::Nf4(q) => q.rows(),
            QWeight::Int8(q) => q.rows(),
        }
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        match self {
            QWeight::Blocks(q) => q.cols(),
            QWeight::Nf4(q) => q.cols(),
            QWeight::Int8(q) => q.cols(),
        }
    }

    /// Bytes stored.
    pub fn size_bytes(&self) -> usize {
        match self {
            QWeight::Blocks(q) => q.size_bytes(),
            QWeight::Nf4(q) => q.size_bytes(),
            QWeight::Int8(q) => q.size_bytes(),
        }
    }

    /// Row `r` dequantized into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        if r >= self.rows() || out.len() != self.cols() {
            return Err(Error::InvalidArgument {
                op: "QWeight::dequantize_row",
                reason: format!(
                    "row {r} into {} values of a [{}, {}] matrix",
                    out.len(),
                    self.rows(),
                    self.cols()
                ),
            });
        }
        match self {
            QWeight::Blocks(q) => q.dequantize_row(r, out)?,
            QWeight::Nf4(q) => q.dequantize_range(r * q.cols(), out),
            QWeight::Int8(q) => q.dequantize_row(r, out),
        }
        Ok(())
    }

    /// The whole matrix as f32, row-major.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let (n, k) = (self.rows(), self.cols());
        let mut out = vec![0f32; n * k];
        for (r, row) in out.chunks_exact_mut(k).enumerate() {
            self.dequantize_row(r, row)?;
        }
        Ok(out)
    }

    /// `out = x Wᵀ` for `m` rows of `x` (`path` applies to ggml blocks).
    pub fn matmul(&self, x: &[f32], m: usize, path: QuantPath, out: &mut [f32]) -> Result<()> {
        let (n, k) = (self.rows(), self.cols());
        match self {
            QWeight::Blocks(q) => q.matmul(x, m, path, out),
            QWeight::Int8(q) => q.matmul(x, m, out),
            QWeight::Nf4(q) => {
                if m.checked_mul(k) != Some(x.len()) || m.checked_mul(n) != Some(out.len()) {
                    return Err(Error::InvalidArgument {
                        op: "QWeight::matmul",
                        reason: format!(
                            "{} inputs and {} outputs do not fit {m} rows against a [{n}, {k}] matrix",
                            x.len(),
                            out.len()
                        ),
                    });
                }
                // Each weight row dequantized once (into one buffer per tile of rows), against
                // every input row.
                const TILE: usize = 32;
                let mut by_row = vec![0f32; n * m];
                by_row
                    .par_chunks_mut(TILE * m.max(1))
                    .enumerate()
                    .for_each(|(t, tile)| {
                        let mut w = vec![0f32; k];
                        for (j, o) in tile.chunks_exact_mut(m.max(1)).enumerate() {
                            q.dequantize_range((t * TILE + j) * k, &mut w);
                            for (i, o) in o.iter_mut().enumerate() {
                                *o = f32_dot(&w, &x[i * k..(i + 1) * k]);
                            }
                        }
                    });
                super::matrix::scatter_rows(&by_row, m, out);
                Ok(())
            }
        }
    }
}

#[inline(always)]
fn f32_dot_kernel(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

crate::multiversion!(
    /// Σ a·b in 16 lanes, vectorised for this machine.
    fn f32_dot[](a: &[f32], b: &[f32]) -> f32 = f32_dot_kernel[]
);
