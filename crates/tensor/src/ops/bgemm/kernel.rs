//! The 12 x 32 micro-kernels of the bf16 GEMM: AVX-512 BF16 dot products, and the same
//! arithmetic in f32 instructions for every other CPU.

use super::{MR, NR};

/// `C[0..12, 0..32] (+)= Σ_q A[:, q] · B[q]` over `kc` packed pairs: `a` holds 12 `u32` pairs
/// per q, `b` 32, `c` is row-major with leading dimension `ldc`. The sum over q runs in order
/// and is added to `C` last.
///
/// # Safety
/// `c` reaches a 12 x 32 window at stride `ldc`; `a` holds `12 * kc` and `b` `32 * kc` values.
pub(super) unsafe fn tile(kc: usize, a: &[u32], b: &[u32], c: *mut f32, ldc: usize, add: bool) {
    debug_assert!(a.len() >= MR * kc && b.len() >= NR * kc);
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_bf16_dot() {
        // SAFETY: the CPU has the features (checked above); the caller's contract covers c.
        return unsafe { avx512_bf16(kc, a.as_ptr(), b.as_ptr(), c, ldc, add) };
    }
    // SAFETY: the caller's contract.
    unsafe { portable(kc, a, b, c, ldc, add) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn avx512_bf16(kc: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, add: bool) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract (see `tile`); `__m512i` and `__m512bh` are both 64 bytes.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for q in 0..kc {
            let bq = b.add(q * NR);
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bq.cast::<__m512i>()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bq.add(16).cast::<__m512i>()));
            let aq = a.add(q * MR);
            for (r, row) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*aq.add(r) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], av, b0);
                row[1] = _mm512_dpbf16_ps(row[1], av, b1);
            }
        }
        crate::ops::sgemm::store_tile(&acc, c, ldc, add);
    }
}

/// One row of `C` for the small-product path: `row[j] = Σ_q A pair q · B pair (q, j)`, pairs in
/// order from zero, `a` the row's `2 kp` rounded values, `pairs` the rows of `B` paired
/// (`[kp, n]`, one `u32` per pair and column). The same additions as `small`'s f32 loop.
///
/// # Safety
/// The CPU must have AVX-512 BF16 ([`crate::simd::has_bf16_dot`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn row_avx512_bf16(a: &[f32], pairs: &[u32], n: usize, row: &mut [f32]) {
    use std::arch::x86_64::*;
    let kp = a.len() / 2;
    assert!(pairs.len() >= kp * n && row.len() >= n);
    // SAFETY: the caller's contract for the features; every load and store is masked to the
    // columns below n (a masked-off lane is never touched), inside `pairs` and `row`.
    unsafe {
        for j0 in (0..n).step_by(64) {
            let left = n - j0;
            let masks: [__mmask16; 4] = std::array::from_fn(|c| {
                let lanes = left.saturating_sub(16 * c).min(16);
                ((1u32 << lanes) - 1) as __mmask16
            });
            let mut acc = [_mm512_setzero_ps(); 4];
            for q in 0..kp {
                let pair = (a[2 * q].to_bits() >> 16) | (a[2 * q + 1].to_bits() & 0xffff_0000);
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
                let bq = pairs.as_ptr().wrapping_add(q * n + j0);
                for (c, acc) in acc.iter_mut().enumerate() {
                    let bv = _mm512_maskz_loadu_epi32(masks[c], bq.wrapping_add(16 * c).cast::<i32>());
                    *acc = _mm512_dpbf16_ps(*acc, av, std::mem::transmute::<__m512i, __m512bh>(bv));
                }
            }
            for (c, acc) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(row.as_mut_ptr().wrapping_add(j0 + 16 * c), masks[c], *acc);
            }
        }
    }
}

/// [`tile`] in f32 instructions: per pair, the odd product then the even one, each addition
/// rounded, as `vdpbf16ps` does.
///
/// # Safety
/// As [`tile`].
pub(super) unsafe fn portable(kc: usize, a: &[u32], b: &[u32], c: *mut f32, ldc: usize, add: bool) {
    let mut acc = [[0f32; NR]; MR];
    portable_sums(kc, a, b, &mut acc);
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: the caller's contract: row r of the window holds 32 floats.
        let cr = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), NR) };
        for (x, &v) in cr.iter_mut().zip(row) {
            *x = if add { *x + v } else { v };
        }
    }
}

crate::multiversion! {
    /// The accumulators of [`portable`], vectorised for the best instruction set.
    fn portable_sums[](kc: usize, a: &[u32], b: &[u32], acc: &mut [[f32; NR]; MR]) = portable_sums_kernel[]
}

#[inline(always)]
fn portable_sums_kernel(kc: usize, a: &[u32], b: &[u32], acc: &mut [[f32; NR]; MR]) {
    for (aq, bq) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        let mut even = [0f32; NR];
        let mut odd = [0f32; NR];
        for ((e, o), &v) in even.iter_mut().zip(odd.iter_mut()).zip(bq) {
            *e = f32::from_bits(v << 16);
            *o = f32::from_bits(v & 0xffff_0000);
        }
        for (row, &v) in acc.iter_mut().zip(aq) {
            let (ae, ao) = (f32::from_bits(v << 16), f32::from_bits(v & 0xffff_0000));
            for ((x, &be), &bo) in row.iter_mut().zip(&even).zip(&odd) {
                *x = (*x + ao * bo) + ae * be;
            }
        }
    }
}
