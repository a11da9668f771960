//! The AVX-512 micro-kernel: a 12 x 32 tile of `C` in 24 zmm accumulators; per k, two
//! 16-float loads of `B` and twelve broadcasts of `A` feed 24 FMAs.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{MR, NR};

/// `C[0..R, 0..32] (+)= Σ_p A[:, p] ⊗ B[p]` over `kc` steps, for `R` = 12 rows (the full tile)
/// or 8 or 4 (the last rows of a product, which would otherwise waste a 12-row tile).
/// `A[r, p]` is read at `a + r * a_rs + p * a_ks` (in place for row-major or transposed
/// operands, or a packed panel with strides 1 and 12), `b` is a packed `B` panel (32 floats per
/// k, 64-byte aligned) and `c` row-major with leading dimension `ldc`. The sum over p runs in
/// ascending order and is added to `C` last.
///
/// # Safety
/// The CPU supports AVX-512F; `a` reaches `R` rows by `kc` steps at its strides, `b` holds
/// `32 * kc` floats, and `c` an `R` x 32 window at stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kernel<const R: usize>(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_ks: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    // SAFETY: the caller's contract (see above). A unit stride known at compile time lets the
    // unrolled k steps address A at constant displacements instead of computing each address.
    unsafe {
        if a_rs == 1 && a_ks == MR {
            body::<R, 1, MR>(kc, a, a_rs, a_ks, b, c, ldc, add)
        } else if a_ks == 1 {
            body::<R, 0, 1>(kc, a, a_rs, a_ks, b, c, ldc, add)
        } else if a_rs == 1 {
            body::<R, 1, 0>(kc, a, a_rs, a_ks, b, c, ldc, add)
        } else {
            body::<R, 0, 0>(kc, a, a_rs, a_ks, b, c, ldc, add)
        }
    }
}

/// Steps of k per iteration of the unrolled loop.
const UNROLL: usize = 4;

/// [`kernel`] with the row stride `RS` and k stride `KS` of `A` fixed when non-zero.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn body<const R: usize, const RS: usize, const KS: usize>(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_ks: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    let rs = if RS == 0 { a_rs } else { RS };
    let ks = if KS == 0 { a_ks } else { KS };
    // SAFETY: the caller's contract (see `kernel`).
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        // Four row pointers, three rows apart: rows 3q, 3q+1, 3q+2 are then `base`,
        // `base + rs` and `base + 2 rs`, which x86 addresses directly (scaled index). Those
        // past `R` rows are never read.
        let mut base = [
            a,
            a.wrapping_add(3 * rs),
            a.wrapping_add(6 * rs),
            a.wrapping_add(9 * rs),
        ];
        let mut b = b;
        for _ in 0..kc / UNROLL {
            for u in 0..UNROLL {
                step(&mut acc, &base, b, u * NR, u * ks, rs);
            }
            for bp in base.iter_mut() {
                *bp = bp.wrapping_add(UNROLL * ks);
            }
            b = b.add(UNROLL * NR);
        }
        for _ in 0..kc % UNROLL {
            step(&mut acc, &base, b, 0, 0, rs);
            for bp in base.iter_mut() {
                *bp = bp.wrapping_add(ks);
            }
            b = b.add(NR);
        }
        store_rows(&acc, c, ldc, add);
    }
}

/// Writes (or with `add`, adds) 12 rows of two 16-float accumulators to `c` at stride `ldc`.
///
/// # Safety
/// The CPU supports AVX-512F (the caller is compiled for it); `c` reaches 12 rows of 32 floats.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn store_tile(acc: &[[__m512; 2]; MR], c: *mut f32, ldc: usize, add: bool) {
    // SAFETY: the caller's contract.
    unsafe { store_rows(acc, c, ldc, add) }
}

/// [`store_tile`] for `R` rows.
///
/// # Safety
/// As [`store_tile`], for `R` rows.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_rows<const R: usize>(acc: &[[__m512; 2]; R], c: *mut f32, ldc: usize, add: bool) {
    // SAFETY: the caller's contract.
    unsafe {
        for (r, row) in acc.iter().enumerate() {
            let cr = c.add(r * ldc);
            if add {
                _mm512_storeu_ps(cr, _mm512_add_ps(_mm512_loadu_ps(cr), row[0]));
                _mm512_storeu_ps(cr.add(16), _mm512_add_ps(_mm512_loadu_ps(cr.add(16)), row[1]));
            } else {
                _mm512_storeu_ps(cr, row[0]);
                _mm512_storeu_ps(cr.add(16), row[1]);
            }
        }
    }
}

/// One k step of [`body`]: `acc[r] += A[r, k] ⊗ B[k]` with `B[k]` at `b + b_off` and row `3q + j`
/// of `A` at `base[q] + j * rs + a_off`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn step<const R: usize>(
    acc: &mut [[__m512; 2]; R],
    base: &[*const f32; 4],
    b: *const f32,
    b_off: usize,
    a_off: usize,
    rs: usize,
) {
    // SAFETY: `body`'s pointers stay inside the caller's panels (see `kernel`).
    unsafe {
        let b0 = _mm512_load_ps(b.add(b_off));
        let b1 = _mm512_load_ps(b.add(b_off + 16));
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*base[r / 3].add(r % 3 * rs + a_off));
            row[0] = _mm512_fmadd_ps(av, b0, row[0]);
            row[1] = _mm512_fmadd_ps(av, b1, row[1]);
        }
    }
}

/// Portable stand-in so the crate builds off x86-64 ([`super::available`] is false there, so
/// this is never called).
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kernel<const R: usize>(
    _: usize,
    _: *const f32,
    _: usize,
    _: usize,
    _: *const f32,
    _: *mut f32,
    _: usize,
    _: bool,
) {
    unreachable!("the AVX-512 GEMM runs only on x86-64")
}
