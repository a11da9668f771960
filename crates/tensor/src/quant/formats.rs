//! The block formats of ggml (the GGUF tensor types kiln reads) and their dequantization, written
//! from ggml's reference formulas (`dequantize_row_*` in `ggml-quants.c`) so the values are
//! bit-exact: every product and sum below is one f32 operation in ggml's order, with no FMA.

use half::f16;

use crate::{Error, Result};

/// A block-quantized weight format. Each block stores `block_len()` weights in `block_bytes()`
/// bytes, little-endian, exactly as ggml lays them out in a GGUF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// 32 weights: f16 scale `d`, 16 bytes of 4-bit codes; `w = (q - 8) * d`.
    Q4_0,
    /// 32 weights: f16 scale `d`, f16 minimum `m`, 16 bytes of 4-bit codes; `w = q * d + m`.
    Q4_1,
    /// 32 weights: f16 scale `d`, 32 signed bytes; `w = q * d`.
    Q8_0,
    /// 256 weights in 8 sub-blocks of 32: f16 `d` and `dmin`, 12 bytes of 6-bit sub-block scales
    /// and minimums, 128 bytes of 4-bit codes; `w = d * sc * q - dmin * m`.
    Q4K,
    /// 256 weights in 16 sub-blocks of 16: 128 bytes of low 4 bits, 64 bytes of high 2 bits,
    /// 16 signed 8-bit sub-block scales, f16 `d`; `w = d * sc * (q - 32)`.
    Q6K,
}

impl QuantFormat {
    /// Every format, in ggml's type-id order.
    pub const ALL: [QuantFormat; 5] = [
        QuantFormat::Q4_0,
        QuantFormat::Q4_1,
        QuantFormat::Q8_0,
        QuantFormat::Q4K,
        QuantFormat::Q6K,
    ];

    /// Weights per block.
    pub const fn block_len(self) -> usize {
        match self {
            QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0 => 32,
            QuantFormat::Q4K | QuantFormat::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q4_1 => 20,
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q4K => 144,
            QuantFormat::Q6K => 210,
        }
    }

    /// ggml's name of the type (`Q4_1`, `Q4_K`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            QuantFormat::Q4_0 => "Q4_0",
            QuantFormat::Q4_1 => "Q4_1",
            QuantFormat::Q8_0 => "Q8_0",
            QuantFormat::Q4K => "Q4_K",
            QuantFormat::Q6K => "Q6_K",
        }
    }

    /// Stored bits per weight, scales included.
    pub fn bits_per_weight(self) -> f64 {
        self.block_bytes() as f64 * 8.0 / self.block_len() as f64
    }

    /// Bytes taken by `n` weights, or an error when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Result<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return Err(Error::InvalidArgument {
                op: "quant",
                reason: format!(
                    "{} weights are not a whole number of {} blocks of {}",
                    n,
                    self.name(),
                    self.block_len()
                ),
            });
        }
        (n / self.block_len())
            .checked_mul(self.block_bytes())
            .ok_or_else(|| Error::InvalidArgument {
                op: "quant",
                reason: format!("{n} weights of {} overflow the address space", self.name()),
            })
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The f16 at `b[at..at + 2]` as f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) of a Q4_K block's 12 scale bytes.
#[inline(always)]
pub(crate) fn q4k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Dequantizes one block into `out` (`format.block_len()` values).
pub(crate) fn dequantize_block(format: QuantFormat, b: &[u8], out: &mut [f32]) {
    match format {
        QuantFormat::Q4_0 => {
            let d = f16_at(b, 0);
            for j in 0..16 {
                let q = b[2 + j];
                out[j] = ((q & 0xF) as i32 - 8) as f32 * d;
                out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
        QuantFormat::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for j in 0..16 {
                let q = b[4 + j];
                out[j] = (q & 0xF) as f32 * d + m;
                out[j + 16] = (q >> 4) as f32 * d + m;
            }
        }
        QuantFormat::Q8_0 => {
            let d = f16_at(b, 0);
            for j in 0..32 {
                out[j] = b[2 + j] as i8 as f32 * d;
            }
        }
        QuantFormat::Q4K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let qs = &b[16..144];
            for chunk in 0..4 {
                let (sc1, m1) = q4k_scale_min(2 * chunk, scales);
                let (sc2, m2) = q4k_scale_min(2 * chunk + 1, scales);
                let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
                let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
                let q = &qs[32 * chunk..32 * chunk + 32];
                let o = &mut out[64 * chunk..64 * chunk + 64];
                for l in 0..32 {
                    o[l] = d1 * (q[l] & 0xF) as f32 - min1;
                    o[l + 32] = d2 * (q[l] >> 4) as f32 - min2;
                }
            }
        }
        QuantFormat::Q6K => {
            let d = f16_at(b, 208);
            for half in 0..2 {
                let ql = &b[64 * half..64 * half + 64];
                let qh = &b[128 + 32 * half..128 + 32 * half + 32];
                let sc = &b[192 + 8 * half..192 + 8 * half + 8];
                let o = &mut out[128 * half..128 * half + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    o[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    o[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    o[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    o[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
    }
}

/// Dequantizes `bytes` (whole blocks of `format`) into `out`, which must hold exactly the
/// blocks' weights.
pub fn dequantize(format: QuantFormat, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let need = format.bytes_for(out.len())?;
    if bytes.len() != need {
        return Err(Error::InvalidArgument {
            op: "dequantize",
            reason: format!(
                "{} weights of {format} take {need} bytes, got {}",
                out.len(),
                bytes.len()
            ),
        });
    }
    for (b, o) in bytes
        .chunks_exact(format.block_bytes())
        .zip(out.chunks_exact_mut(format.block_len()))
    {
        dequantize_block(format, b, o);
    }
    Ok(())
}
