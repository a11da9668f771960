//! LLM.int8()-style 8-bit weights: each output row scaled by its absolute maximum
//! (`q = round(127 · w / max|w_row|)`), products with the activations quantized per row to 8 bits
//! and summed in integers; with an outlier threshold, the input features whose activations exceed
//! it are left out of the integer product and added in f32 against the dequantized weights (the
//! mixed-precision decomposition of LLM.int8(), taken per row rather than per batch).

use crate::{Error, Result};

/// A `[rows, cols]` matrix of 8-bit codes with a scale per row.
#[derive(Clone, Debug)]
pub struct Int8Matrix {
    rows: usize,
    cols: usize,
    codes: Vec<i8>,
    /// `max|w_row|` per row.
    row_absmax: Vec<f32>,
    /// Activation magnitude above which an input feature goes through f32.
    threshold: Option<f32>,
}

impl Int8Matrix {
    /// Quantizes `w` (`rows × cols`, row-major) per row; `threshold` enables the outlier
    /// decomposition (LLM.int8() uses 6.0).
    pub fn quantize(w: &[f32], rows: usize, cols: usize, threshold: Option<f32>) -> Result<Int8Matrix> {
        if rows.checked_mul(cols) != Some(w.len()) || w.is_empty() {
            return Err(Error::InvalidArgument {
                op: "Int8Matrix::quantize",
                reason: format!("{} values are not a non-empty {rows} × {cols} matrix", w.len()),
            });
        }
        if let Some(bad) = w.iter().find(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument {
                op: "Int8Matrix::quantize",
                reason: format!("the weights hold a non-finite value ({bad})"),
            });
        }
        if threshold.is_some_and(|t| t.is_nan() || t <= 0.0) {
            return Err(Error::InvalidArgument {
                op: "Int8Matrix::quantize",
                reason: format!("the outlier threshold must be positive, got {threshold:?}"),
            });
        }
        let mut codes = vec![0i8; w.len()];
        let mut row_absmax = Vec::with_capacity(rows);
        for (row, q) in w.chunks_exact(cols).zip(codes.chunks_exact_mut(cols)) {
            let m = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let inv = if m > 0.0 { 127.0 / m } else { 0.0 };
            for (q, &v) in q.iter_mut().zip(row) {
                *q = (v * inv).round() as i8;
            }
            row_absmax.push(m);
        }
        Ok(Int8Matrix {
            rows,
            cols,
            codes,
            row_absmax,
            threshold,
        })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The codes, row-major.
    pub fn codes(&self) -> &[i8] {
        &self.codes
    }

    /// `max|w_row|` per row.
    pub fn row_absmax(&self) -> &[f32] {
        &self.row_absmax
    }

    /// Bytes stored: a code per weight and an f32 per row.
    pub fn size_bytes(&self) -> usize {
        self.codes.len() + 4 * self.row_absmax.len()
    }

    /// Weight `(r, c)` dequantized.
    fn weight(&self, r: usize, c: usize) -> f32 {
        self.codes[r * self.cols + c] as f32 * (self.row_absmax[r] / 127.0)
    }

    /// Row `r` dequantized into `out`.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        for (c, o) in out.iter_mut().enumerate() {
            *o = self.weight(r, c);
        }
    }

    /// `out = x Wᵀ` for `m` rows of `x`; the outlier features (when a threshold is set) in f32.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        let (n, k) = (self.rows, self.cols);
        if m.checked_mul(k) != Some(x.len()) || m.checked_mul(n) != Some(out.len()) {
            return Err(Error::InvalidArgument {
                op: "Int8Matrix::matmul",
                reason: format!(
                    "{} inputs and {} outputs do not fit {m} rows against a [{n}, {k}] matrix",
                    x.len(),
                    out.len()
                ),
            });
        }
        // Outlier features per input row (LLM.int8() takes them per batch; per row, a row's
        // result does not depend on the other rows of the batch).
        let outliers: Vec<Vec<usize>> = (0..m)
            .map(|i| match self.threshold {
                Some(t) => (0..k).filter(|&c| x[i * k + c].abs() > t).collect(),
                None => Vec::new(),
            })
            .collect();
        // Activations quantized per row over the regular features.
        let mut xq = vec![0i8; m * k];
        let mut x_absmax = vec![0f32; m];
        for i in 0..m {
            let row = &x[i * k..(i + 1) * k];
            let regular = |c: &usize| !outliers[i].contains(c);
            let amax = (0..k).filter(regular).fold(0f32, |a, c| a.max(row[c].abs()));
            let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            for c in (0..k).filter(regular) {
                xq[i * k + c] = (row[c] * inv).round().clamp(-127.0, 127.0) as i8;
            }
            x_absmax[i] = amax;
        }
        use rayon::prelude::*;
        let mut by_row = vec![0f32; n * m];
        by_row.par_chunks_mut(m).enumerate().for_each(|(r, o)| {
            let w = &self.codes[r * k..(r + 1) * k];
            for (i, o) in o.iter_mut().enumerate() {
                let isum = int_dot(w, &xq[i * k..(i + 1) * k]);
                let mut v = isum as f32 * (x_absmax[i] / 127.0) * (self.row_absmax[r] / 127.0);
                for &c in &outliers[i] {
                    v += x[i * k + c] * self.weight(r, c);
                }
                *o = v;
            }
        });
        super::matrix::scatter_rows(&by_row, m, out);
        Ok(())
    }
}

#[inline(always)]
fn int_dot_kernel(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

crate::multiversion!(
    /// Σ a·b over i8 codes in i32, vectorised for this machine.
    fn int_dot[](a: &[i8], b: &[i8]) -> i32 = int_dot_kernel[]
);
