//! bf16 products too small for packing to pay (the f32 path's own threshold,
//! `sgemm::worthwhile`): a convolution's per-image product, a few rows of a classifier. Both
//! operands are rounded into a reused per-thread buffer (`A` row-major, `B` row-major with its
//! rows paired), then each row of `C` takes, per pair of k, the odd product then the even one,
//! as the packed kernels do, in f32 instructions vectorised over the row.

use std::cell::Cell;

use super::bf16_bits;
use crate::ops::MatRef;

thread_local! {
    /// The rounded operands and one output row, kept between products.
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// `x` rounded to bf16, as an f32.
#[inline(always)]
fn rounded(x: f32) -> f32 {
    f32::from_bits(bf16_bits(x) << 16)
}

/// `dst[m, n] (+)= bf16(lhs) @ bf16(rhs)` on the calling thread; bounds checked by the caller.
#[allow(clippy::too_many_arguments)]
pub(super) fn small(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    lhs: &[f32],
    l: MatRef,
    rhs: &[f32],
    r: MatRef,
    accumulate: bool,
) {
    let native = crate::simd::has_bf16_dot();
    small_with(m, n, k, dst, lhs, l, rhs, r, accumulate, native);
}

/// [`small`] on `vdpbf16ps` (`native`, where the CPU has it) or in f32 instructions: the same
/// bits either way.
#[allow(clippy::too_many_arguments)]
pub(super) fn small_with(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    lhs: &[f32],
    l: MatRef,
    rhs: &[f32],
    r: MatRef,
    accumulate: bool,
    native: bool,
) {
    let k2 = k.div_ceil(2) * 2;
    let mut buf = SCRATCH.with(|s| s.take());
    buf.clear();
    buf.resize(m * k2 + k2 * n + n, 0.0);
    let (a, rest) = buf.split_at_mut(m * k2);
    let (b, row) = rest.split_at_mut(k2 * n);
    // Each operand is read along its unit-stride dimension when it has one; a transposed one
    // goes through square tiles, so neither side walks memory at a large stride.
    if l.col_stride == 1 || l.row_stride != 1 {
        for i in 0..m {
            let at = l.offset + i * l.row_stride;
            round_run(&mut a[i * k2..i * k2 + k], lhs, at, l.col_stride);
        }
    } else {
        round_transposed(a, k2, [m, k], lhs, l.offset, l.col_stride);
    }
    if r.col_stride == 1 || r.row_stride != 1 {
        for p in 0..k {
            round_run(
                &mut b[p * n..(p + 1) * n],
                rhs,
                r.offset + p * r.row_stride,
                r.col_stride,
            );
        }
    } else {
        round_transposed(b, n, [k, n], rhs, r.offset, r.col_stride);
    }
    let mut pairs = PAIRS.with(|p| p.take());
    if native {
        pairs.clear();
        pairs.resize(k2 / 2 * n, 0);
        pair_rows(b, n, &mut pairs);
    }
    for i in 0..m {
        let ai = &a[i * k2..(i + 1) * k2];
        #[cfg(target_arch = "x86_64")]
        if native {
            // SAFETY: `native` is only set where the CPU has AVX-512 BF16 (or by a test that
            // checked it); `pairs` holds k2 / 2 rows of n.
            unsafe { super::kernel::row_avx512_bf16(ai, &pairs, n, row) };
        } else {
            row.fill(0.0);
            row_sums(ai, b, row);
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            row.fill(0.0);
            row_sums(ai, b, row);
        }
        let out = &mut dst[i * n..(i + 1) * n];
        for (o, &v) in out.iter_mut().zip(row.iter()) {
            *o = if accumulate { *o + v } else { v };
        }
    }
    PAIRS.with(|p| p.set(pairs));
    SCRATCH.with(|s| s.set(buf));
}

thread_local! {
    /// The rows of `B` paired for `vdpbf16ps`, kept between products.
    static PAIRS: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

crate::multiversion! {
    /// `pairs[q · n + j]`: the bf16 of `b[2q, j]` in the low half, of `b[2q + 1, j]` in the high
    /// half (`b` already rounded, `[2 · kp, n]`).
    fn pair_rows[](b: &[f32], n: usize, pairs: &mut [u32]) = pair_rows_kernel[]
}

#[inline(always)]
fn pair_rows_kernel(b: &[f32], n: usize, pairs: &mut [u32]) {
    for (q, out) in pairs.chunks_exact_mut(n).enumerate() {
        let (even, odd) = (
            &b[2 * q * n..(2 * q + 1) * n],
            &b[(2 * q + 1) * n..(2 * q + 2) * n],
        );
        for ((p, &e), &o) in out.iter_mut().zip(even).zip(odd) {
            *p = (e.to_bits() >> 16) | (o.to_bits() & 0xffff_0000);
        }
    }
}

crate::multiversion! {
    /// `dst[t] = bf16(src[start + t * src_stride])` for every `t` of `dst`.
    fn round_run[](dst: &mut [f32], src: &[f32], start: usize, src_stride: usize) = round_run_kernel[]
}

#[inline(always)]
fn round_run_kernel(dst: &mut [f32], src: &[f32], start: usize, src_stride: usize) {
    if src_stride != 1 {
        for (t, d) in dst.iter_mut().enumerate() {
            *d = rounded(src[start + t * src_stride]);
        }
        return;
    }
    let len = dst.len();
    for (d, &x) in dst.iter_mut().zip(&src[start..start + len]) {
        *d = rounded(x);
    }
}

/// Side of the square tiles of [`round_transposed`].
const TILE: usize = 16;

crate::multiversion! {
    /// `dst[r · dst_stride + c] = bf16(src[start + c · src_stride + r])` for `r < rows`,
    /// `c < cols`: an operand whose columns are contiguous, rounded into row-major storage one
    /// 16 x 16 tile at a time (a whole-column pass would store at a stride of a full row, often
    /// a multiple of 4 KiB, which lands every store of a column in one cache set).
    fn round_transposed[](dst: &mut [f32], dst_stride: usize, shape: [usize; 2], src: &[f32], start: usize, src_stride: usize) = round_transposed_kernel[]
}

#[inline(always)]
fn round_transposed_kernel(
    dst: &mut [f32],
    dst_stride: usize,
    [rows, cols]: [usize; 2],
    src: &[f32],
    start: usize,
    src_stride: usize,
) {
    let mut tile = [[0f32; TILE]; TILE];
    for r0 in (0..rows).step_by(TILE) {
        let rn = TILE.min(rows - r0);
        for c0 in (0..cols).step_by(TILE) {
            let cn = TILE.min(cols - c0);
            for c in 0..cn {
                let column = &src[start + (c0 + c) * src_stride + r0..][..rn];
                for (t, &x) in tile.iter_mut().zip(column) {
                    t[c] = rounded(x);
                }
            }
            for (r, t) in tile.iter().enumerate().take(rn) {
                dst[(r0 + r) * dst_stride + c0..][..cn].copy_from_slice(&t[..cn]);
            }
        }
    }
}

crate::multiversion! {
    /// One row of [`small`]'s product into `row`.
    fn row_sums[](a: &[f32], b: &[f32], row: &mut [f32]) = row_sums_kernel[]
}

#[inline(always)]
fn row_sums_kernel(a: &[f32], b: &[f32], row: &mut [f32]) {
    let n = row.len();
    for (q, pair) in a.chunks_exact(2).enumerate() {
        let (ae, ao) = (pair[0], pair[1]);
        let be = &b[2 * q * n..(2 * q + 1) * n];
        let bo = &b[(2 * q + 1) * n..(2 * q + 2) * n];
        for ((x, &e), &o) in row.iter_mut().zip(be).zip(bo) {
            *x = (*x + ao * o) + ae * e;
        }
    }
}
