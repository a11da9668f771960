//! x86-64 kernels of the quantized dot products, for Q4_0, Q4_1, Q8_0 and Q4_K (Q6_K stays portable):
//! AVX-512 VNNI (two blocks per 512-bit `vpdpbusd`) and AVX2 (`vpmaddubsw`). A call covers a
//! tile of weight rows, so the dispatch is paid once per tile. Each block's integer sums are
//! converted to f32 and scaled into per-lane accumulators; the blocks' offset terms (Q4_1's
//! minimum, Q4_0's −8) go to a second accumulator; both are summed at the end of a row.

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

/// Whether this machine runs the AVX-512 VNNI kernels.
pub(crate) fn has_vnni512() -> bool {
    level() == Level::Vnni512
}

/// How far ahead of the current block the weights are prefetched, in bytes. Far: the weights of
/// a GGUF file are a memory map of 4 KiB pages, and the hardware prefetchers stop at page
/// boundaries; SmolLM2 decode on one thread went 50 → 108 tokens/s (1 KiB ahead: 83).
const PREFETCH_AHEAD: usize = 8192;

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

/// Runs the SIMD kernel for `format` over a tile of weight rows when this machine has one;
/// false when the caller must use the portable kernel.
pub(super) fn dot_tile(
    format: QuantFormat,
    w: &[u8],
    row_bytes: usize,
    acts: &[ActRow<'_>],
    out: &mut [f32],
) -> bool {
    let kind = match format {
        QuantFormat::Q4_0 => Kind::Q4_0,
        QuantFormat::Q4_1 => Kind::Q4_1,
        QuantFormat::Q8_0 => Kind::Q8_0,
        QuantFormat::Q4K => return q4k_tile(w, row_bytes, acts, out),
        QuantFormat::Q6K => return false,
    };
    let m = acts.len();
    let blocks = row_bytes / kind.block_bytes();
    assert!(row_bytes == blocks * kind.block_bytes() && w.len().is_multiple_of(row_bytes.max(1)));
    assert!(out.len() == w.len() / row_bytes.max(1) * m);
    for a in acts {
        assert!(a.qs.len() == blocks * QK && a.meta.len() == 2 * blocks);
    }
    match level() {
        Level::Vnni512 => {
            for j0 in (0..m).step_by(4) {
                let acts = &acts[j0..(j0 + 4).min(m)];
                // SAFETY: `level()` checked every feature the kernel enables; the asserts above
                // bound every load (each block of `w`, 32 codes and 2 floats per activation block)
                // and every store (`out` holds rows × m values).
                unsafe {
                    match acts.len() {
                        1 => vnni512::<1>(kind, w, blocks, acts, out, m, j0),
                        2 => vnni512::<2>(kind, w, blocks, acts, out, m, j0),
                        3 => vnni512::<3>(kind, w, blocks, acts, out, m, j0),
                        _ => vnni512::<4>(kind, w, blocks, acts, out, m, j0),
                    }
                }
            }
            true
        }
        Level::Avx2 => {
            for (row, o) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(m)) {
                for (o, a) in o.iter_mut().zip(acts) {
                    // SAFETY: as above.
                    *o = unsafe { avx2(kind, row, a) };
                }
            }
            true
        }
        Level::None => false,
    }
}

/// Q4_K rows: each 32-weight sub-block is a Q4_1-like block with scale `d · sc` and minimum
/// `−dmin · m`, and two sub-blocks share 32 bytes of codes (low nibbles, then high).
fn q4k_tile(w: &[u8], row_bytes: usize, acts: &[ActRow<'_>], out: &mut [f32]) -> bool {
    let m = acts.len();
    let supers = row_bytes / 144;
    assert!(row_bytes == supers * 144 && w.len().is_multiple_of(row_bytes.max(1)));
    assert!(out.len() == w.len() / row_bytes.max(1) * m);
    for a in acts {
        assert!(a.qs.len() == supers * 256 && a.meta.len() == 2 * supers * 8);
    }
    let lvl = level();
    if lvl == Level::None {
        return false;
    }
    for (row, o) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(m)) {
        for (o, a) in o.iter_mut().zip(acts) {
            // SAFETY: `level()` checked the features; the asserts bound every load (144-byte
            // super-blocks of the row, 256 codes and 16 floats of activations per super-block).
            *o = unsafe {
                match lvl {
                    Level::Vnni512 => q4k_vnni512(row, a),
                    _ => q4k_avx2(row, a),
                }
            };
        }
    }
    true
}

/// `[d, dmin]` of a K-quant super-block at `p`, and its sub-block scales and minimums.
#[inline(always)]
unsafe fn q4k_header(p: *const u8) -> (f32, f32, [(f32, f32); 8]) {
    // SAFETY: `p` points at a whole 144-byte block (caller); F16C is enabled by the callers.
    unsafe {
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
        let mut lanes = [0f32; 4];
        _mm_storeu_ps(lanes.as_mut_ptr(), dm);
        let scales = std::slice::from_raw_parts(p.add(4), 12);
        let mut sm = [(0f32, 0f32); 8];
        for (j, v) in sm.iter_mut().enumerate() {
            let (sc, m) = super::formats::q4k_scale_min(j, scales);
            *v = (sc as f32, m as f32);
        }
        (lanes[0], lanes[1], sm)
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4k_vnni512(row: &[u8], a: &ActRow<'_>) -> f32 {
    let spread = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    let m0f = _mm256_set1_epi8(0x0F);
    let zero = _mm512_setzero_si512();
    let mut acc = _mm512_setzero_ps();
    let mut offs = _mm_setzero_ps();
    // SAFETY (whole body): each 144-byte super-block lies in `row`; activation block `ab` and
    // `ab + 1` hold 64 codes and 4 floats (checked by `q4k_tile`).
    unsafe {
        for (sb, blk) in row.chunks_exact(144).enumerate() {
            let p = blk.as_ptr();
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD) as *const i8);
            let (d, dmin, sm) = q4k_header(p);
            for c in 0..4 {
                let q = _mm256_loadu_si256(p.add(16 + 32 * c) as *const __m256i);
                let lo = _mm256_and_si256(q, m0f);
                let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m0f);
                let codes = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                let ((sc0, m0), (sc1, m1)) = (sm[2 * c], sm[2 * c + 1]);
                let wm = _mm_set_ps(-dmin * m1, d * sc1, -dmin * m0, d * sc0);
                let ab = sb * 8 + 2 * c;
                let av = _mm512_loadu_si512(a.qs.as_ptr().add(ab * QK) as *const _);
                let dot = _mm512_dpbusd_epi32(zero, codes, av);
                let prod = _mm_mul_ps(wm, _mm_loadu_ps(a.meta.as_ptr().add(2 * ab)));
                let scale = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(prod));
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc);
                offs = _mm_add_ps(offs, prod);
            }
        }
        let mut lanes = [0f32; 4];
        _mm_storeu_ps(lanes.as_mut_ptr(), offs);
        _mm512_reduce_add_ps(acc) + lanes[1] + lanes[3]
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_avx2(row: &[u8], a: &ActRow<'_>) -> f32 {
    let m0f = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut offs = 0f32;
    // SAFETY (whole body): as in `q4k_vnni512`.
    unsafe {
        for (sb, blk) in row.chunks_exact(144).enumerate() {
            let p = blk.as_ptr();
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD) as *const i8);
            let (d, dmin, sm) = q4k_header(p);
            for c in 0..4 {
                let q = _mm256_loadu_si256(p.add(16 + 32 * c) as *const __m256i);
                let halves = [
                    _mm256_and_si256(q, m0f),
                    _mm256_and_si256(_mm256_srli_epi16(q, 4), m0f),
                ];
                for (h, codes) in halves.into_iter().enumerate() {
                    let j = 2 * c + h;
                    let ab = sb * 8 + j;
                    let av = _mm256_loadu_si256(a.qs.as_ptr().add(ab * QK) as *const __m256i);
                    let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(codes, av), ones);
                    let (sc, m) = sm[j];
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d * sc * a.scale(ab)), acc);
                    offs -= dmin * m * a.scaled_sum(ab);
                }
            }
        }
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s) + offs
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

/// `[a, b, c, d]` of the weight side for two blocks, to multiply by an activation pair's
/// `[d_a0, s_0, d_a1, s_1]` (scale, scaled sum): `[d0, m0, d1, m1]` for Q4_1, `[d0, d0, d1, d1]`
/// for Q4_0 (its offset −8 · d · s is applied at the end), `[d0, 0, d1, 0]` for Q8_0.
#[inline(always)]
unsafe fn weight_meta(kind: Kind, p0: *const u8, p1: *const u8) -> __m128 {
    // SAFETY: `p0` and `p1` point at whole blocks (caller); F16C is enabled by the callers.
    unsafe {
        match kind {
            Kind::Q4_1 => {
                let (a, b) = (
                    (p0 as *const i32).read_unaligned(),
                    (p1 as *const i32).read_unaligned(),
                );
                _mm_cvtph_ps(_mm_set_epi32(0, 0, b, a))
            }
            Kind::Q4_0 | Kind::Q8_0 => {
                let (a, b) = (
                    (p0 as *const u16).read_unaligned() as i32,
                    (p1 as *const u16).read_unaligned() as i32,
                );
                let d = _mm_cvtph_ps(_mm_set_epi32(0, 0, b, a));
                if kind == Kind::Q4_0 {
                    _mm_moveldup_ps(d)
                } else {
                    d
                }
            }
        }
    }
}

/// The row's offset terms from the second accumulator (lanes 1 and 3 of each 4).
#[inline(always)]
fn finish_offsets(kind: Kind, lanes: [f32; 4]) -> f32 {
    match kind {
        Kind::Q4_1 => lanes[1] + lanes[3],
        Kind::Q4_0 => -8.0 * (lanes[1] + lanes[3]),
        Kind::Q8_0 => 0.0,
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn vnni512<const R: usize>(
    kind: Kind,
    w: &[u8],
    blocks: usize,
    acts: &[ActRow<'_>],
    out: &mut [f32],
    m: usize,
    j0: usize,
) {
    let bb = kind.block_bytes();
    let row_bytes = blocks * bb;
    let zero = _mm512_setzero_si512();
    // Lane i of the 16: block 0 for lanes 0..8, block 1 for 8..16.
    let spread = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    // SAFETY (whole body): blocks b and b + 1 lie inside each row of `w`, the activations hold
    // 32 codes and 2 floats per block, `out` holds rows × m values (checked by `dot_tile`).
    unsafe {
        for (row, o) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(m)) {
            let mut acc = [_mm512_setzero_ps(); R];
            let mut offs = [_mm_setzero_ps(); R];
            let base = row.as_ptr();
            let mut b = 0;
            while b + 2 <= blocks {
                let (p0, p1) = (base.add(b * bb), base.add((b + 1) * bb));
                // The weights stream from memory once: ask for them well ahead (a few rows'
                // worth), past what the out-of-order window would reach by itself. Prefetches
                // never fault, so running past the tile's end is harmless.
                _mm_prefetch::<_MM_HINT_T0>(p0.wrapping_add(PREFETCH_AHEAD) as *const i8);
                let (c0, c1) = (block_codes(kind, p0), block_codes(kind, p1));
                let codes = _mm512_inserti64x4(_mm512_castsi256_si512(c0), c1, 1);
                // Q8_0 is signed × signed: |w| against the activations with w's sign.
                let (wv, neg) = if kind == Kind::Q8_0 {
                    (_mm512_abs_epi8(codes), _mm512_movepi8_mask(codes))
                } else {
                    (codes, 0)
                };
                let wm = weight_meta(kind, p0, p1);
                for r in 0..R {
                    let a = &acts[r];
                    let mut av = _mm512_loadu_si512(a.qs.as_ptr().add(b * QK) as *const _);
                    if kind == Kind::Q8_0 {
                        av = _mm512_mask_sub_epi8(av, neg, zero, av);
                    }
                    let dot = _mm512_dpbusd_epi32(zero, wv, av);
                    let prod = _mm_mul_ps(wm, _mm_loadu_ps(a.meta.as_ptr().add(2 * b)));
                    let scale = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(prod));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[r]);
                    offs[r] = _mm_add_ps(offs[r], prod);
                }
                b += 2;
            }
            if b < blocks {
                // The last block alone: its pair partner contributes zeros.
                let p = base.add(b * bb);
                let codes = block_codes(kind, p);
                let (wv, neg) = if kind == Kind::Q8_0 {
                    (_mm256_abs_epi8(codes), _mm256_movepi8_mask(codes))
                } else {
                    (codes, 0)
                };
                let wm = _mm_and_ps(
                    weight_meta(kind, p, p),
                    _mm_castsi128_ps(_mm_set_epi32(0, 0, -1, -1)),
                );
                for r in 0..R {
                    let a = &acts[r];
                    let mut av = _mm256_loadu_si256(a.qs.as_ptr().add(b * QK) as *const __m256i);
                    if kind == Kind::Q8_0 {
                        av = _mm256_mask_sub_epi8(av, neg, _mm256_setzero_si256(), av);
                    }
                    let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wv, av);
                    let meta =
                        _mm_castsi128_ps(_mm_loadl_epi64(a.meta.as_ptr().add(2 * b) as *const __m128i));
                    let prod = _mm_mul_ps(wm, meta);
                    let part = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(_mm_cvtss_f32(prod)));
                    acc[r] = _mm512_add_ps(acc[r], _mm512_zextps256_ps512(part));
                    offs[r] = _mm_add_ps(offs[r], prod);
                }
            }
            for r in 0..R {
                let mut lanes = [0f32; 4];
                _mm_storeu_ps(lanes.as_mut_ptr(), offs[r]);
                o[j0 + r] = _mm512_reduce_add_ps(acc[r]) + finish_offsets(kind, lanes);
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2(kind: Kind, w: &[u8], a: &ActRow<'_>) -> f32 {
    let bb = kind.block_bytes();
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut offs = _mm_setzero_ps();
    // SAFETY (whole body): as in `vnni512`, one block at a time.
    unsafe {
        for b in 0..w.len() / bb {
            let p = w.as_ptr().add(b * bb);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD) as *const i8);
            let codes = block_codes(kind, p);
            let av = _mm256_loadu_si256(a.qs.as_ptr().add(b * QK) as *const __m256i);
            let (wv, av) = if kind == Kind::Q8_0 {
                (_mm256_abs_epi8(codes), _mm256_sign_epi8(av, codes))
            } else {
                (codes, av)
            };
            // u8 × i8 pairs fit i16 (at most 2 · 128 · 127), then pairs of i16 into i32.
            let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, av), ones);
            let meta = _mm_castsi128_ps(_mm_loadl_epi64(a.meta.as_ptr().add(2 * b) as *const __m128i));
            let prod = _mm_mul_ps(weight_meta(kind, p, p), meta);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(_mm_cvtss_f32(prod)), acc);
            offs = _mm_add_ps(offs, prod);
        }
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        let mut lanes = [0f32; 4];
        _mm_storeu_ps(lanes.as_mut_ptr(), offs);
        // Only lanes 0 and 1 are filled here (meta loaded as 2 floats): lane 3 stays 0.
        _mm_cvtss_f32(s) + finish_offsets(kind, lanes)
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
