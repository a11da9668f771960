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
    for i in 0..m {
        for p in 0..k {
            a[i * k2 + p] = rounded(lhs[l.offset + i * l.row_stride + p * l.col_stride]);
        }
    }
    for p in 0..k {
        for j in 0..n {
            b[p * n + j] = rounded(rhs[r.offset + p * r.row_stride + j * r.col_stride]);
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
