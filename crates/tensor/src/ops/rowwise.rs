//! Row-independent f32 products for decoding: `out[r] = x[r] @ Wᵀ` for a handful of rows, with
//! the weight stored `[out, in]`.
//!
//! Decoding multiplies a few rows (one new token per sequence) by every weight matrix; the time
//! goes to streaming the weights from memory, so these kernels read each weight once for all rows.
//! Unlike a blocked GEMM, every output element is accumulated in one fixed order whatever the
//! number of rows and threads, so a sequence decoded inside a batch gets bit-for-bit the logits it
//! gets alone (the batching guarantee of kiln's generation). AVX-512 and AVX2+FMA variants are
//! chosen at run time; the portable loop is the fallback.

use rayon::prelude::*;

use crate::simd::{isa, Isa};

/// Output columns (weight rows) per task of [`matmul_rows_nk`].
const NK_CHUNK: usize = 64;
/// Multiply-adds below which one thread does everything.
const PARALLEL_WORK: usize = 1 << 17;

/// `Σ a_i b_i` over 64 independent lanes (four vector accumulators, so the FMAs do not wait on
/// each other), folded in a fixed order; the tail past a multiple of 64 is summed in order.
#[inline(always)]
fn dot64(a: &[f32], b: &[f32], fma: bool) -> f32 {
    let mut acc = [0f32; 64];
    let (ca, cb) = (a.chunks_exact(64), b.chunks_exact(64));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..64 {
            acc[l] = if fma {
                x[l].mul_add(y[l], acc[l])
            } else {
                acc[l] + x[l] * y[l]
            };
        }
    }
    let mut s = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    for w in [32, 16, 8, 4, 2, 1] {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    acc[0] + s
}

#[inline(always)]
fn nk_block(x: &[f32], m: usize, k: usize, w: &[f32], v0: usize, out: &mut [f32], fma: bool) {
    let width = out.len() / m;
    for j in 0..width {
        let wrow = &w[(v0 + j) * k..(v0 + j + 1) * k];
        for r in 0..m {
            out[r * width + j] = dot64(&x[r * k..(r + 1) * k], wrow, fma);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn nk_block_avx512(x: &[f32], m: usize, k: usize, w: &[f32], v0: usize, out: &mut [f32]) {
    nk_block(x, m, k, w, v0, out, true)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn nk_block_avx2(x: &[f32], m: usize, k: usize, w: &[f32], v0: usize, out: &mut [f32]) {
    nk_block(x, m, k, w, v0, out, true)
}

/// `out[m, n] = x[m, k] @ w[n, k]ᵀ`: every output a dot product of two contiguous rows (a tied
/// language-model head reading the embedding table), in a fixed order.
pub fn matmul_rows_nk(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    assert!(
        x.len() >= m * k && w.len() >= n * k && out.len() >= m * n,
        "matmul_rows_nk: operands too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    let isa = isa();
    let chunks: Vec<usize> = (0..n).step_by(NK_CHUNK).collect();
    let run = |v0: usize| -> Vec<f32> {
        let width = NK_CHUNK.min(n - v0);
        let mut block = vec![0f32; m * width];
        match isa {
            // SAFETY: the feature was detected on this machine.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { nk_block_avx512(x, m, k, w, v0, &mut block) },
            // SAFETY: the features were detected on this machine.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { nk_block_avx2(x, m, k, w, v0, &mut block) },
            _ => nk_block(x, m, k, w, v0, &mut block, false),
        }
        block
    };
    let blocks: Vec<Vec<f32>> = if m * k * n >= PARALLEL_WORK {
        chunks.par_iter().map(|&c| run(c)).collect()
    } else {
        chunks.iter().map(|&c| run(c)).collect()
    };
    for (&v0, block) in chunks.iter().zip(&blocks) {
        let width = NK_CHUNK.min(n - v0);
        for r in 0..m {
            out[r * n + v0..r * n + v0 + width].copy_from_slice(&block[r * width..(r + 1) * width]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, salt: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 31 + salt) % 97) as f32 / 48.0 - 1.0)
            .collect()
    }

    #[test]
    fn products_match_the_reference_and_do_not_depend_on_the_other_rows() {
        let (m, k, n) = (5, 70, 300);
        let x = data(m * k, 1);
        let w = data(k * n, 2);
        let want = crate::ops::gemm_f32_reference(m, n, k, &x, &w);
        let wt: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
        let mut out2 = vec![0f32; m * n];
        matmul_rows_nk(&x, m, k, &wt, n, &mut out2);
        for i in 0..m * n {
            assert!((out2[i] - want[i]).abs() < 1e-4, "{i}");
        }
        let mut alone = vec![0f32; n];
        matmul_rows_nk(&x[2 * k..3 * k], 1, k, &wt, n, &mut alone);
        assert_eq!(alone, out2[2 * n..3 * n]);
    }
}
