//! The AVX-512 micro-kernel: a 12 x 32 tile of `C` in 24 zmm accumulators; per k, two
//! 16-float loads of `B` and twelve broadcasts of `A` feed 24 FMAs.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{MR, NR};

/// `C[0..12, 0..32] (+)= Σ_p A[:, p] ⊗ B[p]` over `kc` steps. `A[r, p]` is read at
/// `a + r * a_rs + p * a_ks` (in place for row-major or transposed operands, or a packed panel
/// with strides 1 and 12), `b` is a packed `B` panel (32 floats per k, 64-byte aligned) and `c`
/// row-major with leading dimension `ldc`. The sum over p runs in ascending order and is added
/// to `C` last.
///
/// # Safety
/// The CPU supports AVX-512F; `a` reaches 12 rows by `kc` steps at its strides, `b` holds
/// `32 * kc` floats, and `c` a 12 x 32 window at stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kernel(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_ks: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    // SAFETY: the caller's contract (see above).
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        // Four row pointers, three rows apart: rows 3q, 3q+1, 3q+2 are then `base`,
        // `base + a_rs` and `base + 2 a_rs`, which x86 addresses directly (scaled index), so a
        // k step costs four pointer bumps instead of a chain of twelve address additions.
        let mut base = [a, a.add(3 * a_rs), a.add(6 * a_rs), a.add(9 * a_rs)];
        let mut b = b;
        for _ in 0..kc {
            let b0 = _mm512_load_ps(b);
            let b1 = _mm512_load_ps(b.add(16));
            for (q, bp) in base.iter().enumerate() {
                for j in 0..3 {
                    let av = _mm512_set1_ps(*bp.add(j * a_rs));
                    let row = &mut acc[3 * q + j];
                    row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                    row[1] = _mm512_fmadd_ps(av, b1, row[1]);
                }
            }
            for bp in base.iter_mut() {
                *bp = bp.add(a_ks);
            }
            b = b.add(NR);
        }
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

/// Portable stand-in so the crate builds off x86-64 ([`super::available`] is false there, so
/// this is never called).
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kernel(
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
