//! Q4_0 / Q4_1 / Q8_0 weights repacked 16 rows at a time for AVX-512 VNNI, so one `vpdpbusd` serves 16
//! weight rows against 4 broadcast activation codes (the layout idea of ggml's repacked
//! `q4_0x8` CPU kernels; the code is our own).
//!
//! The plain kernels (`x86.rs`) multiply one weight row by one activation row per instruction and
//! pay a conversion, a scale and a permutation per pair of blocks and row; here those costs are
//! paid once per block for 16 weight rows, so a product of several activation rows (batched
//! decoding, prompts) runs about twice as fast, and one row is faster too.
//!
//! Layout, per group of 16 weight rows, per 32-column block: 64-byte code vectors — vector `j`,
//! lane `r` = bytes `4j..4j + 4` of row `r`'s block codes — then the 16 scales `d` (f16). Q4_0 and
//! Q4_1 (320 bytes): four vectors whose low nibbles are elements `4j..4j + 4` and high nibbles
//! elements `16 + 4j..`, and after the scales the 16 minima `m` (zeros for Q4_0). Q8_0 (544
//! bytes): eight vectors of the signed codes plus 128 (unsigned, as `vpdpbusd` wants), the 128 ·
//! Σ activations taken back through the offset term. Each output is computed by the same
//! operations whatever the other activation rows, so a row's result does not depend on its batch.

use std::arch::x86_64::*;

use super::activations::{ActRow, QK};
use super::formats::QuantFormat;

/// Weight rows per packed group (the 16 int32 lanes of a 512-bit register).
pub(crate) const GROUP: usize = 16;
/// Bytes of one group's block.
fn group_block(format: QuantFormat) -> usize {
    match format {
        QuantFormat::Q8_0 => 544,
        _ => 320,
    }
}

/// Kernel variants (const generic of [`group_kernel`]).
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;
/// How far ahead the weight stream is prefetched.
const PREFETCH_AHEAD: usize = 4096;

/// Whether `format` has a packed kernel on this machine for a matrix of `rows` rows.
pub(crate) fn supported(format: QuantFormat, rows: usize) -> bool {
    matches!(format, QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0)
        && rows.is_multiple_of(GROUP)
        && rows > 0
        && super::x86::has_vnni512()
}

/// Repacks `rows × blocks` Q4_0, Q4_1 or Q8_0 blocks (ggml layout, row after row).
pub(crate) fn pack(format: QuantFormat, data: &[u8], rows: usize, blocks: usize) -> Vec<u8> {
    let (bb, gb) = (format.block_bytes(), group_block(format));
    let (codes_at, code_bytes) = match format {
        QuantFormat::Q4_1 => (4, 16),
        QuantFormat::Q8_0 => (2, 32),
        _ => (2, 16),
    };
    let vectors = code_bytes / 4;
    let scales_at = 64 * vectors;
    let mut out = vec![0u8; rows / GROUP * blocks * gb];
    for g in 0..rows / GROUP {
        for b in 0..blocks {
            let dst = &mut out[(g * blocks + b) * gb..(g * blocks + b + 1) * gb];
            for r in 0..GROUP {
                let src = &data[((g * GROUP + r) * blocks + b) * bb..][..bb];
                let qs = &src[codes_at..codes_at + code_bytes];
                for j in 0..vectors {
                    let lane = &mut dst[64 * j + 4 * r..64 * j + 4 * r + 4];
                    lane.copy_from_slice(&qs[4 * j..4 * j + 4]);
                    if format == QuantFormat::Q8_0 {
                        // i8 → u8 plus 128: flip the sign bit.
                        lane.iter_mut().for_each(|c| *c ^= 0x80);
                    }
                }
                dst[scales_at + 2 * r..scales_at + 2 * r + 2].copy_from_slice(&src[0..2]);
                if format == QuantFormat::Q4_1 {
                    dst[scales_at + 32 + 2 * r..scales_at + 32 + 2 * r + 2].copy_from_slice(&src[2..4]);
                }
            }
        }
    }
    out
}

/// `out[j · n + col0 + i] = weight row i · acts[j]` for the packed groups in `w` (whole groups
/// of `blocks` blocks, weight rows `col0..` of the product) and `m = acts.len()` activation rows:
/// each group's 16 results are one contiguous store into every output row, so a product writes
/// its `[m, n]` layout directly (no transposition pass, no temporary).
///
/// # Safety
/// `out` must point at `m · n` writable floats, and no other thread may write the columns
/// `col0..col0 + 16 · groups` while this runs.
pub(crate) unsafe fn dot_groups(
    format: QuantFormat,
    w: &[u8],
    blocks: usize,
    acts: &[ActRow<'_>],
    out: *mut f32,
    n: usize,
    col0: usize,
) {
    let m = acts.len();
    let group_bytes = blocks * group_block(format);
    assert!(w.len().is_multiple_of(group_bytes) && col0 + w.len() / group_bytes * GROUP <= n);
    for a in acts {
        assert!(a.qs.len() == blocks * QK && a.meta.len() == 2 * blocks);
    }
    assert!(super::x86::has_vnni512());
    for (g, gw) in w.chunks_exact(group_bytes).enumerate() {
        for j0 in (0..m).step_by(4) {
            let acts = &acts[j0..(j0 + 4).min(m)];
            let mut res = [[0f32; GROUP]; 4];
            // SAFETY: `has_vnni512` checked the features; the asserts above bound every load
            // (whole group blocks in `gw`, 32 codes and 2 floats per activation block).
            unsafe {
                match (format, acts.len()) {
                    (QuantFormat::Q4_0, 1) => group_kernel::<Q4_0, 1>(gw, blocks, acts, &mut res),
                    (QuantFormat::Q4_0, 2) => group_kernel::<Q4_0, 2>(gw, blocks, acts, &mut res),
                    (QuantFormat::Q4_0, 3) => group_kernel::<Q4_0, 3>(gw, blocks, acts, &mut res),
                    (QuantFormat::Q4_0, _) => group_kernel::<Q4_0, 4>(gw, blocks, acts, &mut res),
                    (QuantFormat::Q4_1, 1) => group_kernel::<Q4_1, 1>(gw, blocks, acts, &mut res),
                    (QuantFormat::Q4_1, 2) => group_kernel::<Q4_1, 2>(gw, blocks, acts, &mut res),
                    (QuantFormat::Q4_1, 3) => group_kernel::<Q4_1, 3>(gw, blocks, acts, &mut res),
                    (QuantFormat::Q4_1, _) => group_kernel::<Q4_1, 4>(gw, blocks, acts, &mut res),
                    (_, 1) => group_kernel::<Q8_0, 1>(gw, blocks, acts, &mut res),
                    (_, 2) => group_kernel::<Q8_0, 2>(gw, blocks, acts, &mut res),
                    (_, 3) => group_kernel::<Q8_0, 3>(gw, blocks, acts, &mut res),
                    (_, _) => group_kernel::<Q8_0, 4>(gw, blocks, acts, &mut res),
                }
            }
            for (r, row) in res.iter().enumerate().take(acts.len()) {
                // SAFETY: row `j0 + r < m`, columns `col0 + 16g .. + 16` inside this call's
                // columns (asserted above; the caller owns them).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        row.as_ptr(),
                        out.add((j0 + r) * n + col0 + g * GROUP),
                        GROUP,
                    );
                }
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn group_kernel<const KIND: u8, const R: usize>(
    w: &[u8],
    blocks: usize,
    acts: &[ActRow<'_>],
    res: &mut [[f32; GROUP]; 4],
) {
    let gb = if KIND == Q8_0 { 544 } else { 320 };
    let scales_at = if KIND == Q8_0 { 512 } else { 256 };
    let nib = _mm512_set1_epi8(0x0F);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); R];
    let mut off = [_mm512_setzero_ps(); R];
    // SAFETY (whole body): block `b` of the group lies in `w` and every activation row holds
    // 32 codes and 2 floats per block (checked by `dot_groups`).
    unsafe {
        for b in 0..blocks {
            let p = w.as_ptr().add(b * gb);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD + 64) as *const i8);
            // codes[k]: the weight bytes against activation word k (4 elements).
            let mut codes = [zero; 8];
            if KIND == Q8_0 {
                for (k, c) in codes.iter_mut().enumerate() {
                    *c = _mm512_loadu_si512(p.add(64 * k) as *const _);
                }
            } else {
                for j in 0..4 {
                    let v = _mm512_loadu_si512(p.add(64 * j) as *const _);
                    codes[j] = _mm512_and_si512(v, nib);
                    codes[4 + j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
                }
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(scales_at) as *const __m256i));
            let ow = if KIND == Q4_1 {
                _mm512_cvtph_ps(_mm256_loadu_si256(p.add(scales_at + 32) as *const __m256i))
            } else {
                dw
            };
            for r in 0..R {
                let a = acts[r].qs.as_ptr().add(b * QK) as *const i32;
                let word = |k: usize| _mm512_set1_epi32(a.add(k).read_unaligned());
                let mut i0 = _mm512_dpbusd_epi32(zero, codes[0], word(0));
                let mut i1 = _mm512_dpbusd_epi32(zero, codes[1], word(1));
                for k in (2..8).step_by(2) {
                    i0 = _mm512_dpbusd_epi32(i0, codes[k], word(k));
                    i1 = _mm512_dpbusd_epi32(i1, codes[k + 1], word(k + 1));
                }
                let meta = acts[r].meta.as_ptr().add(2 * b);
                let (da, sa) = (_mm512_set1_ps(*meta), _mm512_set1_ps(*meta.add(1)));
                let isum = _mm512_cvtepi32_ps(_mm512_add_epi32(i0, i1));
                acc[r] = _mm512_fmadd_ps(isum, _mm512_mul_ps(dw, da), acc[r]);
                off[r] = _mm512_fmadd_ps(ow, sa, off[r]);
            }
        }
        // Q4_1: + m·Σ(d_a q_a); Q4_0: codes offset by 8, − 8·d·Σ(d_a q_a); Q8_0: codes offset
        // by 128 here, − 128·d·Σ(d_a q_a).
        let shift = _mm512_set1_ps(if KIND == Q8_0 { 128.0 } else { 8.0 });
        for r in 0..R {
            let total = if KIND == Q4_1 {
                _mm512_add_ps(acc[r], off[r])
            } else {
                _mm512_fnmadd_ps(shift, off[r], acc[r])
            };
            _mm512_storeu_ps(res[r].as_mut_ptr(), total);
        }
    }
}
