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
    let k2 = k.div_ceil(2) * 2;
    let mut buf = SCRATCH.with(|s| s.take());
    buf.clear();
    buf.resize(m * k2 + k2 * n + n, 0.0);
    let (a, rest) = buf.split_at_mut(m * k2);
    let (b, row) = rest.split_at_mut(k2 * n);
    // Each operand is read along its unit-stride dimension when it has one.
    if l.col_stride == 1 || l.row_stride != 1 {
        for i in 0..m {
            let at = l.offset + i * l.row_stride;
            round_run(&mut a[i * k2..i * k2 + k], 1, lhs, at, l.col_stride);
        }
    } else {
        for p in 0..k {
            round_run(
                &mut a[p..p + (m - 1) * k2 + 1],
                k2,
                lhs,
                l.offset + p * l.col_stride,
                1,
            );
        }
    }
    if r.col_stride == 1 || r.row_stride != 1 {
        for p in 0..k {
            round_run(
                &mut b[p * n..(p + 1) * n],
                1,
                rhs,
                r.offset + p * r.row_stride,
                r.col_stride,
            );
        }
    } else {
        for j in 0..n {
            round_run(
                &mut b[j..j + (k - 1) * n + 1],
                n,
                rhs,
                r.offset + j * r.col_stride,
                1,
            );
        }
    }
    for i in 0..m {
        row.fill(0.0);
        row_sums(&a[i * k2..(i + 1) * k2], b, row);
        let out = &mut dst[i * n..(i + 1) * n];
        for (o, &v) in out.iter_mut().zip(row.iter()) {
            *o = if accumulate { *o + v } else { v };
        }
    }
    SCRATCH.with(|s| s.set(buf));
}

crate::multiversion! {
    /// `dst[t * dst_stride] = bf16(src[start + t * src_stride])` for as many `t` as `dst` holds
    /// (every `dst_stride`-th element of `dst`, from the first).
    fn round_run[](dst: &mut [f32], dst_stride: usize, src: &[f32], start: usize, src_stride: usize) = round_run_kernel[]
}

#[inline(always)]
fn round_run_kernel(dst: &mut [f32], dst_stride: usize, src: &[f32], start: usize, src_stride: usize) {
    let len = dst.len().div_ceil(dst_stride);
    if src_stride != 1 {
        for (t, d) in dst.iter_mut().step_by(dst_stride).enumerate() {
            *d = rounded(src[start + t * src_stride]);
        }
        return;
    }
    let src = &src[start..start + len];
    if dst_stride == 1 {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = rounded(x);
        }
        return;
    }
    // Round a block in vector registers, then scatter it.
    const BLOCK: usize = 64;
    let mut tmp = [0f32; BLOCK];
    for (c, chunk) in src.chunks(BLOCK).enumerate() {
        for (t, &x) in tmp.iter_mut().zip(chunk) {
            *t = rounded(x);
        }
        for (t, &v) in tmp[..chunk.len()].iter().enumerate() {
            dst[(c * BLOCK + t) * dst_stride] = v;
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
