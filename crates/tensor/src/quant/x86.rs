//! x86-64 kernels of the quantized dot products: AVX-512 VNNI (two 32-blocks per 512-bit
//! `vpdpbusd`) and AVX2 (`vpmaddubsw`), for the 32-block formats Q4_0, Q4_1 and Q8_0. Each block's
//! integer sums are converted to f32 and scaled into per-lane accumulators, summed at the end.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::activations::{ActRow, QK};
use super::formats::QuantFormat;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Vnni512,
    Avx2,
    None,
}

fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let f = |s| match s {
            "avx512f" => is_x86_feature_detected!("avx512f"),
            "avx512bw" => is_x86_feature_detected!("avx512bw"),
            "avx512dq" => is_x86_feature_detected!("avx512dq"),
            "avx512vl" => is_x86_feature_detected!("avx512vl"),
            "avx512vnni" => is_x86_feature_detected!("avx512vnni"),
            "avx2" => is_x86_feature_detected!("avx2"),
            "fma" => is_x86_feature_detected!("fma"),
            "f16c" => is_x86_feature_detected!("f16c"),
            _ => false,
        };
        let base = ["avx2", "fma", "f16c"].iter().all(|s| f(s));
        if base
            && ["avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vnni"]
                .iter()
                .all(|s| f(s))
        {
            Level::Vnni512
        } else if base {
            Level::Avx2
        } else {
            Level::None
        }
    })
}

/// Runs the SIMD kernel for `format` when this machine has one; false when the caller must use
/// the portable kernel.
pub(super) fn dot_rows(format: QuantFormat, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) -> bool {
    let kind = match format {
        QuantFormat::Q4_0 => Kind::Q4_0,
        QuantFormat::Q4_1 => Kind::Q4_1,
        QuantFormat::Q8_0 => Kind::Q8_0,
        QuantFormat::Q4K | QuantFormat::Q6K => return false,
    };
    let bb = format.block_bytes();
    assert!(w.len().is_multiple_of(bb) && out.len() == acts.len());
    for a in acts {
        assert!(a.qs.len() == w.len() / bb * QK && a.scales.len() == w.len() / bb);
    }
    match level() {
        Level::Vnni512 => {
            for (acts, out) in acts.chunks(4).zip(out.chunks_mut(4)) {
                // SAFETY: `level()` checked every feature the kernels enable; the asserts above
                // bound every load (each block of `w` and each 32 codes of the activations).
                unsafe {
                    match acts.len() {
                        1 => vnni512::<1>(kind, w, acts, out),
                        2 => vnni512::<2>(kind, w, acts, out),
                        3 => vnni512::<3>(kind, w, acts, out),
                        _ => vnni512::<4>(kind, w, acts, out),
                    }
                }
            }
            true
        }
        Level::Avx2 => {
            for (a, o) in acts.iter().zip(out.iter_mut()) {
                // SAFETY: as above.
                *o = unsafe { avx2(kind, w, a) };
            }
            true
        }
        Level::None => false,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl Kind {
    const fn block_bytes(self) -> usize {
        match self {
            Kind::Q4_0 => 18,
            Kind::Q4_1 => 20,
            Kind::Q8_0 => 34,
        }
    }
}

/// The f16 at `p` as f32.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees two readable bytes at `p`; F16C is enabled by the callers.
    unsafe {
        let bits = (p as *const u16).read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

/// The 32 weight codes of one block as bytes in activation order: unsigned nibbles (Q4) or
/// signed bytes (Q8_0).
#[inline(always)]
unsafe fn block_codes(kind: Kind, p: *const u8) -> __m256i {
    // SAFETY: `p` points at a whole block of `kind` (caller).
    unsafe {
        match kind {
            Kind::Q8_0 => _mm256_loadu_si256(p.add(2) as *const __m256i),
            Kind::Q4_0 | Kind::Q4_1 => {
                let off = if kind == Kind::Q4_1 { 4 } else { 2 };
                let q = _mm_loadu_si128(p.add(off) as *const __m128i);
                let m = _mm_set1_epi8(0x0F);
                let lo = _mm_and_si128(q, m);
                let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m);
                _mm256_set_m128i(hi, lo)
            }
        }
    }
}

/// The offset term of one block: Q4_1's `m · d_a Σq_a`, Q4_0's `-8 d · d_a Σq_a`.
#[inline(always)]
unsafe fn block_offset(kind: Kind, p: *const u8, scaled_sum: f32) -> f32 {
    // SAFETY: `p` points at a whole block (caller).
    unsafe {
        match kind {
            Kind::Q4_1 => f16_at(p.add(2)) * scaled_sum,
            Kind::Q4_0 => -8.0 * f16_at(p) * scaled_sum,
            Kind::Q8_0 => 0.0,
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn vnni512<const R: usize>(kind: Kind, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    let bb = kind.block_bytes();
    let nb = w.len() / bb;
    let mut acc = [_mm512_setzero_ps(); R];
    let mut extra = [0f32; R];
    let zero = _mm512_setzero_si512();
    let mut b = 0;
    // SAFETY (whole body): blocks b and b + 1 lie inside `w` and the activations hold 32 codes
    // per block (checked by `dot_rows`).
    unsafe {
        while b + 2 <= nb {
            let p0 = w.as_ptr().add(b * bb);
            let p1 = p0.add(bb);
            let (c0, c1) = (block_codes(kind, p0), block_codes(kind, p1));
            let codes = _mm512_inserti64x4(_mm512_castsi256_si512(c0), c1, 1);
            // Q8_0 is signed × signed: |w| against the activations with w's sign.
            let (wv, neg) = if kind == Kind::Q8_0 {
                (_mm512_abs_epi8(codes), _mm512_movepi8_mask(codes))
            } else {
                (codes, 0)
            };
            let (d0, d1) = (f16_at(p0), f16_at(p1));
            for r in 0..R {
                let a = &acts[r];
                let mut av = _mm512_loadu_si512(a.qs.as_ptr().add(b * QK) as *const _);
                if kind == Kind::Q8_0 {
                    av = _mm512_mask_sub_epi8(av, neg, zero, av);
                }
                let dot = _mm512_dpbusd_epi32(zero, wv, av);
                let scale = _mm512_insertf32x8(
                    _mm512_set1_ps(d0 * a.scales[b]),
                    _mm256_set1_ps(d1 * a.scales[b + 1]),
                    1,
                );
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[r]);
                extra[r] +=
                    block_offset(kind, p0, a.scaled_sums[b]) + block_offset(kind, p1, a.scaled_sums[b + 1]);
            }
            b += 2;
        }
        if b < nb {
            let p = w.as_ptr().add(b * bb);
            let codes = block_codes(kind, p);
            let (wv, neg) = if kind == Kind::Q8_0 {
                (_mm256_abs_epi8(codes), _mm256_movepi8_mask(codes))
            } else {
                (codes, 0)
            };
            let d = f16_at(p);
            for r in 0..R {
                let a = &acts[r];
                let mut av = _mm256_loadu_si256(a.qs.as_ptr().add(b * QK) as *const __m256i);
                if kind == Kind::Q8_0 {
                    av = _mm256_mask_sub_epi8(av, neg, _mm256_setzero_si256(), av);
                }
                let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wv, av);
                let part = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d * a.scales[b]));
                acc[r] = _mm512_add_ps(acc[r], _mm512_zextps256_ps512(part));
                extra[r] += block_offset(kind, p, a.scaled_sums[b]);
            }
        }
    }
    for r in 0..R {
        out[r] = _mm512_reduce_add_ps(acc[r]) + extra[r];
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2(kind: Kind, w: &[u8], a: &ActRow<'_>) -> f32 {
    let bb = kind.block_bytes();
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut extra = 0f32;
    // SAFETY (whole body): as in `vnni512`, one block at a time.
    unsafe {
        for b in 0..w.len() / bb {
            let p = w.as_ptr().add(b * bb);
            let codes = block_codes(kind, p);
            let av = _mm256_loadu_si256(a.qs.as_ptr().add(b * QK) as *const __m256i);
            let (wv, av) = if kind == Kind::Q8_0 {
                (_mm256_abs_epi8(codes), _mm256_sign_epi8(av, codes))
            } else {
                (codes, av)
            };
            // u8 × i8 pairs fit i16 (at most 2 · 128 · 127), then pairs of i16 into i32.
            let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, av), ones);
            acc = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(dot),
                _mm256_set1_ps(f16_at(p) * a.scales[b]),
                acc,
            );
            extra += block_offset(kind, p, a.scaled_sums[b]);
        }
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s) + extra
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dot::dot_portable;
    use crate::quant::QuantizedActivations;

    /// The AVX2 kernel is the one a machine without AVX-512 VNNI runs: check it here too.
    #[test]
    fn the_avx2_kernel_agrees_with_the_portable_kernel() {
        if level() == Level::None {
            eprintln!("skipped: this CPU has no AVX2 + FMA + F16C");
            return;
        }
        let cols = 32 * 5;
        let x: Vec<f32> = (0..cols).map(|i| ((i * 53 % 97) as f32 - 48.0) / 17.0).collect();
        let acts = QuantizedActivations::quantize(&x, 1, cols).unwrap();
        for (kind, format) in [
            (Kind::Q4_0, QuantFormat::Q4_0),
            (Kind::Q4_1, QuantFormat::Q4_1),
            (Kind::Q8_0, QuantFormat::Q8_0),
        ] {
            let mut w: Vec<u8> = (0..5 * format.block_bytes())
                .map(|i| (i * 29 % 251) as u8)
                .collect();
            for blk in w.chunks_exact_mut(format.block_bytes()) {
                blk[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
                if format == QuantFormat::Q4_1 {
                    blk[2..4].copy_from_slice(&half::f16::from_f32(-0.02).to_le_bytes());
                }
            }
            // SAFETY: `level()` is not `None`, so AVX2, FMA and F16C are present.
            let got = unsafe { avx2(kind, &w, &acts.row(0)) };
            let want = dot_portable(format, &w, &acts.row(0));
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{format}: {got} vs {want}"
            );
        }
    }
}
