//! Activations quantized per block of 32 to signed 8 bits, the other operand of the quantized
//! products (llama.cpp's Q8 activations).

use crate::{Error, Result};

/// Values per activation block.
pub(crate) const QK: usize = 32;

/// Rows of f32 activations quantized per block of 32: `x ≈ q * d` with `d = max|x| / 127`,
/// `q = round(x / d)` in `[-127, 127]`. Each block also keeps `d * Σq` (the term the formats
/// with an offset or a minimum need).
#[derive(Clone, Debug, Default)]
pub struct QuantizedActivations {
    rows: usize,
    cols: usize,
    qs: Vec<i8>,
    /// Per block: the scale `d`, then `d · Σq`.
    meta: Vec<f32>,
}

/// One quantized row: `cols` codes, a scale and a scaled sum per block.
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub qs: &'a [i8],
    /// Per block `[d, d · Σq]`.
    pub meta: &'a [f32],
}

impl ActRow<'_> {
    /// The scale of block `b`.
    #[inline(always)]
    pub fn scale(&self, b: usize) -> f32 {
        self.meta[2 * b]
    }

    /// `d · Σq` of block `b`.
    #[inline(always)]
    pub fn scaled_sum(&self, b: usize) -> f32 {
        self.meta[2 * b + 1]
    }
}

/// `x.round()` (halves away from zero) in operations that vectorise: `f32::round` is a libm
/// call per value, which took 30% of a prompt's time. `x - trunc(x)` is exact.
#[inline(always)]
fn round_half_away(x: f32) -> f32 {
    let t = x.trunc();
    if (x - t).abs() >= 0.5 {
        t + 1f32.copysign(x)
    } else {
        t
    }
}

#[inline(always)]
fn quantize_rows_kernel(x: &[f32], qs: &mut [i8], meta: &mut [f32]) {
    for (b, (xb, qb)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
        // Lane-wise maxima, then across lanes: the same value as a sequential fold (max is
        // exact), in vector operations.
        let mut lanes = [0f32; 8];
        for c in xb.chunks_exact(8) {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l = l.max(v.abs());
            }
        }
        let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
        // A block below the normal range quantizes to zeros (1/d would overflow), and codes stay
        // in [-127, 127] (the Q8_0 kernels negate them).
        let d = if amax / 127.0 >= f32::MIN_POSITIVE {
            amax / 127.0
        } else {
            0.0
        };
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut codes = [0i32; QK];
        for (q, &v) in codes.iter_mut().zip(xb) {
            // `as i32` saturates and maps NaN to 0 value by value (scalar code); NaN is mapped
            // to 0 and the value clamped first, so the unchecked conversion (one vector
            // instruction for the block) gives the same codes.
            let r = round_half_away(v * id);
            let r = if r.is_nan() { 0.0 } else { r.clamp(-127.0, 127.0) };
            // SAFETY: `r` is finite and within [-127, 127].
            *q = unsafe { r.to_int_unchecked::<i32>() };
        }
        for (q, &c) in qb.iter_mut().zip(&codes) {
            *q = c as i8;
        }
        let sum: i32 = codes.iter().sum();
        meta[2 * b] = d;
        meta[2 * b + 1] = d * sum as f32;
    }
}

crate::multiversion!(
    /// Quantizes whole blocks of `x`, compiled for the widest instruction set.
    fn quantize_rows[](x: &[f32], qs: &mut [i8], meta: &mut [f32]) = quantize_rows_kernel[]
);

/// [`quantize_rows_kernel`] in AVX-512 registers, a block of 32 values in two registers: the
/// same operations value by value (exact maximum, the same scale and reciprocal, halves rounded
/// away from zero, NaN to 0, clamped), so the same codes and metadata.
///
/// # Safety
/// The CPU supports AVX-512 F and BW; `x.len()` is a multiple of 32, `qs` holds `x.len()` codes
/// and `meta` two floats per block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_rows_avx512(x: &[f32], qs: &mut [i8], meta: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(x.len().is_multiple_of(QK) && qs.len() >= x.len() && meta.len() >= 2 * (x.len() / QK));
    let abs_mask = _mm512_set1_epi32(0x7FFF_FFFF);
    let sign_mask = _mm512_set1_epi32(i32::MIN);
    let (half, one, lim) = (_mm512_set1_ps(0.5), _mm512_set1_ps(1.0), _mm512_set1_ps(127.0));
    for (b, xb) in x.chunks_exact(QK).enumerate() {
        // SAFETY: block `b` is 32 floats of `x` and 32 codes of `qs` (asserted above).
        unsafe {
            let v = [_mm512_loadu_ps(xb.as_ptr()), _mm512_loadu_ps(xb.as_ptr().add(16))];
            let abs = v.map(|v| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_mask)));
            // `max(new, acc)` keeps `acc` when `new` is NaN, as `f32::max` ignores NaN.
            let amax =
                _mm512_reduce_max_ps(_mm512_max_ps(abs[1], _mm512_max_ps(abs[0], _mm512_setzero_ps())));
            let d = if amax / 127.0 >= f32::MIN_POSITIVE {
                amax / 127.0
            } else {
                0.0
            };
            let id = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            let mut sum = _mm512_setzero_si512();
            for (h, &vh) in v.iter().enumerate() {
                let y = _mm512_mul_ps(vh, id);
                let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
                let frac = _mm512_castsi512_ps(_mm512_and_si512(
                    _mm512_castps_si512(_mm512_sub_ps(y, t)),
                    abs_mask,
                ));
                let away = _mm512_castsi512_ps(_mm512_or_si512(
                    _mm512_and_si512(_mm512_castps_si512(y), sign_mask),
                    _mm512_castps_si512(one),
                ));
                let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, half);
                let r = _mm512_mask_add_ps(t, up, t, away);
                let r = _mm512_min_ps(_mm512_max_ps(r, _mm512_sub_ps(_mm512_setzero_ps(), lim)), lim);
                // NaN (from a NaN or infinite input) becomes code 0.
                let ordered = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(y, y);
                let codes = _mm512_maskz_cvttps_epi32(ordered, r);
                sum = _mm512_add_epi32(sum, codes);
                _mm_storeu_si128(
                    qs.as_mut_ptr().add(b * QK + 16 * h) as *mut __m128i,
                    _mm512_cvtepi32_epi8(codes),
                );
            }
            let total = _mm512_reduce_add_epi32(sum);
            meta[2 * b] = d;
            meta[2 * b + 1] = d * total as f32;
        }
    }
}

impl QuantizedActivations {
    /// An empty buffer, to be filled by [`QuantizedActivations::quantize_into`].
    pub fn new() -> QuantizedActivations {
        QuantizedActivations::default()
    }

    /// Quantizes `rows` rows of `cols` values (`cols` a multiple of 32).
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Result<QuantizedActivations> {
        let mut q = QuantizedActivations::new();
        q.quantize_into(x, rows, cols)?;
        Ok(q)
    }

    /// Quantizes into this buffer, reusing its memory.
    pub fn quantize_into(&mut self, x: &[f32], rows: usize, cols: usize) -> Result<()> {
        if !cols.is_multiple_of(QK) || rows.checked_mul(cols) != Some(x.len()) {
            return Err(Error::InvalidArgument {
                op: "quantize activations",
                reason: format!(
                    "{} values as {rows} rows of {cols}: need rows × cols values and cols a multiple of {QK}",
                    x.len()
                ),
            });
        }
        let blocks = rows * cols / QK;
        self.rows = rows;
        self.cols = cols;
        self.qs.resize(rows * cols, 0);
        self.meta.resize(2 * blocks, 0.0);
        #[cfg(target_arch = "x86_64")]
        if crate::simd::isa() == crate::simd::Isa::Avx512 {
            // SAFETY: AVX-512 F/BW are present (checked); `qs` holds `x.len()` codes and `meta`
            // two floats per block (resized above).
            unsafe { quantize_rows_avx512(x, &mut self.qs, &mut self.meta) };
            return Ok(());
        }
        quantize_rows(x, &mut self.qs, &mut self.meta);
        Ok(())
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r`.
    pub(crate) fn row(&self, r: usize) -> ActRow<'_> {
        let (c, b) = (self.cols, self.cols / QK);
        ActRow {
            qs: &self.qs[r * c..(r + 1) * c],
            meta: &self.meta[2 * r * b..2 * (r + 1) * b],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_halves_away_from_zero() {
        for x in [
            0.5f32,
            -0.5,
            1.5,
            -2.5,
            0.49999997,
            -0.49999997,
            126.5,
            3.0,
            -0.0,
            2.4999998,
        ] {
            assert_eq!(round_half_away(x), x.round(), "{x}");
        }
    }

    #[test]
    fn codes_reconstruct_the_values_within_half_a_step() {
        let x: Vec<f32> = (0..128).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        let q = QuantizedActivations::quantize(&x, 2, 64).unwrap();
        for r in 0..2 {
            let row = q.row(r);
            for (j, &v) in x[r * 64..(r + 1) * 64].iter().enumerate() {
                let d = row.scale(j / QK);
                assert!((row.qs[j] as f32 * d - v).abs() <= d * 0.5 + 1e-7);
            }
            for b in 0..2 {
                let s: i32 = row.qs[b * QK..(b + 1) * QK].iter().map(|&q| q as i32).sum();
                assert_eq!(row.scaled_sum(b), row.scale(b) * s as f32);
            }
        }
        assert!(QuantizedActivations::quantize(&x, 1, 100).is_err());
    }

    /// The AVX-512 path gives the portable kernel's codes and metadata bit for bit, ties at
    /// halves, subnormal, zero, NaN and infinite blocks included.
    #[test]
    fn the_avx512_path_matches_the_portable_kernel() {
        let mut x: Vec<f32> = (0..32 * 40)
            .map(|i| ((i as u64 * 2654435761 % 10007) as f32 - 5003.0) * 0.00037)
            .collect();
        // Block 1: values landing on halves of the step; 2: subnormal; 3: zeros; 4-5: a NaN
        // and an infinity among normal values.
        for (j, v) in x[32..64].iter_mut().enumerate() {
            *v = (j as f32 - 16.0) * 0.5 + if j == 0 { 127.0 } else { 0.0 };
        }
        x[64..96].fill(1e-40);
        x[96..128].fill(0.0);
        x[130] = f32::NAN;
        x[170] = f32::INFINITY;
        let mut want = (vec![0i8; x.len()], vec![0f32; 2 * x.len() / QK]);
        quantize_rows(&x, &mut want.0, &mut want.1);
        let got = QuantizedActivations::quantize(&x, 40, 32).unwrap();
        assert_eq!(got.qs, want.0);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got.meta), bits(&want.1));
    }

    #[test]
    fn an_all_zero_block_has_zero_codes() {
        let q = QuantizedActivations::quantize(&[0.0; 32], 1, 32).unwrap();
        assert!(q.row(0).qs.iter().all(|&c| c == 0));
        assert_eq!(q.row(0).scale(0), 0.0);
    }
}
