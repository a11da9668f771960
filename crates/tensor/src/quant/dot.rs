//! Dot products of one quantized weight row with activation rows: integer products per block
//! (portable code here, SIMD in `x86.rs`) or, for checks, f32 against dequantized blocks.

use super::activations::{ActRow, QK};
use super::formats::{dequantize_block, f16_at, q4k_scale_min, QuantFormat};

/// `out[i · m + j] = row i of w · acts[j]` for a tile of weight rows `w` (`row_bytes` each,
/// whole blocks of `format`) and `m = acts.len()` activation rows, on the widest kernel this
/// machine has.
pub(crate) fn dot_tile(
    format: QuantFormat,
    w: &[u8],
    row_bytes: usize,
    acts: &[ActRow<'_>],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if super::x86::dot_tile(format, w, row_bytes, acts, out) {
        return;
    }
    for (row, o) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(acts.len())) {
        for (o, a) in o.iter_mut().zip(acts) {
            *o = dot_portable(format, row, a);
        }
    }
}

/// Σ over one 32-block of 4-bit codes (low nibbles first, then high) times activation codes.
#[inline(always)]
fn nibble_dot(qs: &[u8], a: &[i8]) -> i32 {
    let mut s = 0i32;
    for j in 0..16 {
        s += (qs[j] & 0xF) as i32 * a[j] as i32 + (qs[j] >> 4) as i32 * a[j + 16] as i32;
    }
    s
}

/// The portable integer kernel: one weight row against one activation row.
pub(crate) fn dot_portable(format: QuantFormat, w: &[u8], a: &ActRow<'_>) -> f32 {
    let bb = format.block_bytes();
    let mut acc = 0f32;
    match format {
        QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
            let off = if format == QuantFormat::Q4_1 { 4 } else { 2 };
            for (b, blk) in w.chunks_exact(bb).enumerate() {
                let d = f16_at(blk, 0);
                let isum = nibble_dot(&blk[off..off + 16], &a.qs[b * QK..(b + 1) * QK]);
                acc += d * a.scale(b) * isum as f32;
                acc += if off == 4 {
                    f16_at(blk, 2) * a.scaled_sum(b)
                } else {
                    -8.0 * d * a.scaled_sum(b)
                };
            }
        }
        QuantFormat::Q8_0 => {
            for (b, blk) in w.chunks_exact(bb).enumerate() {
                let isum: i32 = blk[2..34]
                    .iter()
                    .zip(&a.qs[b * QK..(b + 1) * QK])
                    .map(|(&q, &x)| q as i8 as i32 * x as i32)
                    .sum();
                acc += f16_at(blk, 0) * a.scale(b) * isum as f32;
            }
        }
        QuantFormat::Q4K => {
            for (sb, blk) in w.chunks_exact(bb).enumerate() {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let (scales, qs) = (&blk[4..16], &blk[16..144]);
                for j in 0..8 {
                    let (sc, m) = q4k_scale_min(j, scales);
                    let ab = sb * 8 + j;
                    let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
                    let act = &a.qs[ab * QK..(ab + 1) * QK];
                    let shift = 4 * (j % 2);
                    let isum: i32 = q
                        .iter()
                        .zip(act)
                        .map(|(&q, &x)| ((q >> shift) & 0xF) as i32 * x as i32)
                        .sum();
                    acc += d * sc as f32 * a.scale(ab) * isum as f32;
                    acc -= dmin * m as f32 * a.scaled_sum(ab);
                }
            }
        }
        QuantFormat::Q6K => {
            for (sb, blk) in w.chunks_exact(bb).enumerate() {
                let d = f16_at(blk, 208);
                let mut q = [0i8; 256];
                for half in 0..2 {
                    let ql = &blk[64 * half..64 * half + 64];
                    let qh = &blk[128 + 32 * half..128 + 32 * half + 32];
                    let o = &mut q[128 * half..128 * half + 128];
                    for l in 0..32 {
                        o[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                        o[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                        o[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                        o[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                    }
                }
                // Sub-block s (16 weights) has scale byte s; activation block = 2 sub-blocks.
                for s in 0..16 {
                    let ab = sb * 8 + s / 2;
                    let act = &a.qs[sb * 256 + 16 * s..sb * 256 + 16 * s + 16];
                    let isum: i32 = q[16 * s..16 * s + 16]
                        .iter()
                        .zip(act)
                        .map(|(&q, &x)| q as i32 * x as i32)
                        .sum();
                    acc += d * (blk[192 + s] as i8) as f32 * a.scale(ab) * isum as f32;
                }
            }
        }
    }
    acc
}

#[inline(always)]
fn dot_f32_kernel(format: QuantFormat, w: &[u8], x: &[f32]) -> f32 {
    let mut buf = [0f32; 256];
    let (bl, bb) = (format.block_len(), format.block_bytes());
    let mut lanes = [0f32; 16];
    for (blk, xb) in w.chunks_exact(bb).zip(x.chunks_exact(bl)) {
        dequantize_block(format, blk, &mut buf[..bl]);
        for (wc, xc) in buf[..bl].chunks_exact(16).zip(xb.chunks_exact(16)) {
            for l in 0..16 {
                lanes[l] += wc[l] * xc[l];
            }
        }
    }
    lanes.iter().sum()
}

crate::multiversion!(
    /// `w · x` with f32 activations against the dequantized blocks (16 lanes, then summed).
    pub(crate) fn dot_f32[](format: QuantFormat, w: &[u8], x: &[f32]) -> f32 = dot_f32_kernel[]
);
