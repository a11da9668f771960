//! NF4 (QLoRA's 4-bit NormalFloat) as bitsandbytes stores it: the flattened weights in blocks of
//! 64, each scaled by its absolute maximum and rounded to the nearest of 16 NormalFloat values,
//! two codes a byte (first in the high nibble); optionally the block maxima "double quantized":
//! their mean subtracted and the rest stored as 8-bit codes of bitsandbytes' signed dynamic map
//! in blocks of 256, each with an f32 absolute maximum.

use crate::{Error, Result};

/// The 16 NormalFloat values (bitsandbytes' `NF4` table).
pub const NF4_CODEBOOK: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Weights per NF4 block.
pub const NF4_BLOCK: usize = 64;
/// Block maxima per block of the double quantization.
pub const DOUBLE_QUANT_BLOCK: usize = 256;

/// The code of a value in [-1, 1]: the nearest NormalFloat (halfway values go up, as in
/// bitsandbytes' decision tree, which compares against the midpoints with `>`).
pub fn nf4_code(x: f32) -> u8 {
    let mut code = 0u8;
    for i in 0..15 {
        let mid = (NF4_CODEBOOK[i] + NF4_CODEBOOK[i + 1]) * 0.5;
        if x > mid {
            code = i as u8 + 1;
        }
    }
    code
}

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map(signed=True)`: 7 exponent
/// levels of 10^(i-6) times the midpoints of `linspace(0.1, 1, 2^i + 1)`, both signs, 0 and 1),
/// sorted, computed in f64 and rounded to f32.
pub fn dynamic_map() -> [f32; 256] {
    let mut data: Vec<f64> = Vec::with_capacity(256);
    for i in 0..7 {
        let n = (1usize << i) + 1;
        let bounds: Vec<f64> = (0..n).map(|k| 0.1 + 0.9 * k as f64 / (n - 1) as f64).collect();
        let scale = 10f64.powi(i - 6);
        for w in bounds.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            data.push(-scale * mean);
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f64::total_cmp);
    let mut map = [0f32; 256];
    for (m, d) in map.iter_mut().zip(&data) {
        *m = *d as f32;
    }
    map
}

/// The index of the entry of the sorted `map` nearest to `x` (the lower one on a tie).
fn nearest(map: &[f32], x: f32) -> u8 {
    let i = map.partition_point(|&m| m < x);
    if i == 0 {
        return 0;
    }
    if i == map.len() {
        return (map.len() - 1) as u8;
    }
    if (x - map[i - 1]) <= (map[i] - x) {
        (i - 1) as u8
    } else {
        i as u8
    }
}

/// The block maxima of an NF4 matrix: f32, or double quantized.
#[derive(Clone, Debug)]
pub enum Nf4Scales {
    /// One f32 per block of 64.
    F32(Vec<f32>),
    /// 8-bit dynamic-map codes per block of 64, an f32 maximum per 256 codes, and the mean that
    /// was subtracted.
    Double {
        /// One code per NF4 block.
        codes: Vec<u8>,
        /// One maximum per block of 256 codes.
        maxima: Vec<f32>,
        /// The mean of the original block maxima.
        offset: f32,
    },
}

/// A `[rows, cols]` matrix in NF4.
#[derive(Clone, Debug)]
pub struct Nf4Matrix {
    rows: usize,
    cols: usize,
    /// Two codes a byte, first in the high nibble (the last byte padded with a zero code).
    codes: Vec<u8>,
    scales: Nf4Scales,
    /// The block maxima as used (dequantized when double quantized).
    absmax: Vec<f32>,
}

impl Nf4Matrix {
    /// Quantizes `w` (`rows × cols` values, row-major), with double quantization of the block
    /// maxima when `double_quant`.
    pub fn quantize(w: &[f32], rows: usize, cols: usize, double_quant: bool) -> Result<Nf4Matrix> {
        if rows.checked_mul(cols) != Some(w.len()) || w.is_empty() {
            return Err(Error::InvalidArgument {
                op: "Nf4Matrix::quantize",
                reason: format!("{} values are not a non-empty {rows} × {cols} matrix", w.len()),
            });
        }
        if let Some(bad) = w.iter().find(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument {
                op: "Nf4Matrix::quantize",
                reason: format!("the weights hold a non-finite value ({bad})"),
            });
        }
        let absmax: Vec<f32> = w
            .chunks(NF4_BLOCK)
            .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())))
            .collect();
        let mut codes = vec![0u8; w.len().div_ceil(2)];
        for (b, block) in w.chunks(NF4_BLOCK).enumerate() {
            let inv = if absmax[b] > 0.0 { 1.0 / absmax[b] } else { 0.0 };
            for (j, &v) in block.iter().enumerate() {
                let e = b * NF4_BLOCK + j;
                let q = nf4_code(v * inv);
                codes[e / 2] |= if e.is_multiple_of(2) { q << 4 } else { q };
            }
        }
        let (scales, used) = if double_quant {
            let offset = (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len() as f64) as f32;
            let map = dynamic_map();
            let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
            let mut dq_codes = Vec::with_capacity(centred.len());
            let mut maxima = Vec::new();
            let mut used = Vec::with_capacity(centred.len());
            for block in centred.chunks(DOUBLE_QUANT_BLOCK) {
                let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let inv = if m > 0.0 { 1.0 / m } else { 0.0 };
                for &v in block {
                    let q = nearest(&map, v * inv);
                    dq_codes.push(q);
                    used.push(map[q as usize] * m + offset);
                }
                maxima.push(m);
            }
            (
                Nf4Scales::Double {
                    codes: dq_codes,
                    maxima,
                    offset,
                },
                used,
            )
        } else {
            (Nf4Scales::F32(absmax.clone()), absmax)
        };
        Ok(Nf4Matrix {
            rows,
            cols,
            codes,
            scales,
            absmax: used,
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

    /// The packed codes.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// The stored block maxima.
    pub fn scales(&self) -> &Nf4Scales {
        &self.scales
    }

    /// Bytes stored: codes, and the block maxima in their stored form.
    pub fn size_bytes(&self) -> usize {
        self.codes.len()
            + match &self.scales {
                Nf4Scales::F32(s) => 4 * s.len(),
                Nf4Scales::Double { codes, maxima, .. } => codes.len() + 4 * maxima.len() + 4,
            }
    }

    /// Stored bits per weight.
    pub fn bits_per_weight(&self) -> f64 {
        self.size_bytes() as f64 * 8.0 / (self.rows * self.cols) as f64
    }

    /// Dequantizes elements `start..start + out.len()` of the flattened matrix.
    pub fn dequantize_range(&self, start: usize, out: &mut [f32]) {
        let value = |e: usize| {
            let byte = self.codes[e / 2];
            let q = if e.is_multiple_of(2) {
                byte >> 4
            } else {
                byte & 0xF
            };
            NF4_CODEBOOK[q as usize] * self.absmax[e / NF4_BLOCK]
        };
        // Whole bytes (two codes) within whole blocks on the fast path; the odd ends one by one.
        let mut e = start;
        let end = start + out.len();
        let mut o = 0;
        if !e.is_multiple_of(2) && e < end {
            out[o] = value(e);
            (e, o) = (e + 1, o + 1);
        }
        while e + 2 <= end {
            let block_end = ((e / NF4_BLOCK + 1) * NF4_BLOCK).min(end) & !1;
            let scale = self.absmax[e / NF4_BLOCK];
            for (byte, pair) in self.codes[e / 2..block_end / 2]
                .iter()
                .zip(out[o..o + (block_end - e)].chunks_exact_mut(2))
            {
                pair[0] = NF4_CODEBOOK[(byte >> 4) as usize] * scale;
                pair[1] = NF4_CODEBOOK[(byte & 0xF) as usize] * scale;
            }
            o += block_end - e;
            e = block_end;
        }
        if e < end {
            out[o] = value(e);
        }
    }

    /// The whole matrix as f32 values, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_range(0, &mut out);
        out
    }
}
