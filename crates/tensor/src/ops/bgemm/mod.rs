//! f32 products in bf16 arithmetic ([`crate::MatmulPrecision::Bf16`]): both operands rounded to
//! bf16 and packed as k-pairs, products accumulated in f32.
//!
//! AVX-512 BF16's `vdpbf16ps` adds, per f32 lane, the products of one pair of bf16 values from
//! each operand: first the odd element's product, then the even one's, each addition rounded to
//! nearest even (the products of two bf16 values are exact in f32). `A` is packed into 12-row
//! panels of pairs (one `u32` per row and pair, broadcast by the kernel) and `B` into 32-column
//! panels (32 `u32` per pair, two vectors), so a 12 x 32 tile of `C` takes 24 dot products per
//! pair of k. CPUs without the instruction run [`kernel::portable`], the same additions in the
//! same order in f32 instructions: the two paths give the same bits (tested) except where a sum
//! falls below f32's normal range, which the instruction flushes to zero. Subnormal inputs are
//! flushed to zero when packing, as the instruction would. Tiles of `C` are shared out over
//! rayon and `K` is walked in blocks added in order, so results do not depend on the thread count.

mod kernel;
mod small;

use rayon::prelude::*;

use super::sgemm::{store_partial_tile, SharedDst, MR, NR};
use super::MatRef;

/// Pairs of k per block: a 12-row `A` panel block (6 KiB) stays in L1 while `B` panels stream.
const KP: usize = 128;
/// Micro-panels of `A` per task tile.
const TILE_MR: usize = 8;
/// Micro-panels of `B` per task tile.
const TILE_NR: usize = 4;
/// Packed elements below which one thread packs.
const PARALLEL_PACK: usize = 1 << 15;

/// `x` rounded to bf16 (nearest even; subnormals to a signed zero, NaN kept quiet), as the low
/// 16 bits.
#[inline(always)]
pub(crate) fn bf16_bits(x: f32) -> u32 {
    // Every case computed, then selected: the loops that round whole rows vectorise.
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let signed_zero = (bits >> 16) & 0x8000;
    let quiet_nan = (bits >> 16) | 0x40;
    if bits & 0x7f80_0000 == 0 {
        signed_zero
    } else if x.is_nan() {
        quiet_nan
    } else {
        rounded
    }
}

/// `dst[m, n] (+)= bf16(lhs[m, k]) @ bf16(rhs[k, n])` with f32 accumulation, `dst` row-major
/// (leading dimension `n`). The caller has checked bounds and that `m, n, k > 0`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    lhs: &[f32],
    l: MatRef,
    rhs: &[f32],
    r: MatRef,
    accumulate: bool,
    threads: bool,
) {
    if !super::sgemm::worthwhile(m, n, k) {
        return small::small(m, n, k, dst, lhs, l, rhs, r, accumulate);
    }
    let (kp, mp, np) = (k.div_ceil(2), m.div_ceil(MR), n.div_ceil(NR));
    let mut a = vec![0u32; mp * kp * MR];
    let mut b = vec![0u32; np * kp * NR];
    let par = threads && m * k + k * n >= PARALLEL_PACK;
    pack(
        &mut a,
        MR,
        m,
        k,
        |i, p| lhs[l.offset + i * l.row_stride + p * l.col_stride],
        par,
    );
    pack(
        &mut b,
        NR,
        n,
        k,
        |j, p| rhs[r.offset + p * r.row_stride + j * r.col_stride],
        par,
    );
    let (tiles_m, tiles_n) = (mp.div_ceil(TILE_MR), np.div_ceil(TILE_NR));
    let out = SharedDst(dst.as_mut_ptr());
    let (a, b) = (&a[..], &b[..]);
    let task = move |t: usize| {
        let (tm, tn) = (t / tiles_n, t % tiles_n);
        // SAFETY: tile (tm, tn) covers rows and columns no other task touches; the packed
        // panels hold kp pairs for every padded row and column.
        unsafe { run_tile(out, [m, n, kp], a, b, tm, tn, accumulate) };
    };
    if threads {
        (0..tiles_m * tiles_n).into_par_iter().for_each(task);
    } else {
        (0..tiles_m * tiles_n).for_each(task);
    }
}

/// Packs an operand into panels of `width` lines (rows of `A` or columns of `B`), each panel
/// storing, for every pair of k, one `u32` per line: the bf16 of element `2q` in the low half,
/// of `2q + 1` in the high half. Lines and ks past the edge are zero.
fn pack(
    out: &mut [u32],
    width: usize,
    lines: usize,
    k: usize,
    at: impl Fn(usize, usize) -> f32 + Sync,
    par: bool,
) {
    let kp = k.div_ceil(2);
    let panel = |(ip, dst): (usize, &mut [u32])| {
        for line in 0..width.min(lines - ip * width) {
            let i = ip * width + line;
            for q in 0..kp {
                let even = bf16_bits(at(i, 2 * q));
                let odd = if 2 * q + 1 < k {
                    bf16_bits(at(i, 2 * q + 1))
                } else {
                    0
                };
                dst[q * width + line] = even | (odd << 16);
            }
        }
    };
    if par {
        out.par_chunks_mut(kp * width).enumerate().for_each(panel);
    } else {
        out.chunks_mut(kp * width).enumerate().for_each(panel);
    }
}

/// One task: the `C` tile of micro-panel rows `[tm * TILE_MR, ..)` and columns
/// `[tn * TILE_NR, ..)`, over all pairs in blocks of [`KP`].
///
/// # Safety
/// `out` points to a row-major `m x n` matrix no other thread writes in this tile; `a` and `b`
/// are packed by [`pack`] for these sizes.
unsafe fn run_tile(
    out: SharedDst,
    [m, n, kp]: [usize; 3],
    a: &[u32],
    b: &[u32],
    tm: usize,
    tn: usize,
    accumulate: bool,
) {
    let (mp, np) = (m.div_ceil(MR), n.div_ceil(NR));
    let (ip0, ip1) = (tm * TILE_MR, ((tm + 1) * TILE_MR).min(mp));
    let (jp0, jp1) = (tn * TILE_NR, ((tn + 1) * TILE_NR).min(np));
    let mut edge = [0f32; MR * NR];
    let mut q0 = 0;
    while q0 < kp {
        let kc = KP.min(kp - q0);
        let add = accumulate || q0 > 0;
        for ip in ip0..ip1 {
            let ap = &a[(ip * kp + q0) * MR..][..kc * MR];
            let (i, rows) = (ip * MR, MR.min(m - ip * MR));
            for jp in jp0..jp1 {
                let bp = &b[(jp * kp + q0) * NR..][..kc * NR];
                let (j, cols) = (jp * NR, NR.min(n - jp * NR));
                // SAFETY: (i, j) lies in C (the caller's contract); a full tile is 12 x 32.
                unsafe {
                    let c = out.0.add(i * n + j);
                    if rows == MR && cols == NR {
                        kernel::tile(kc, ap, bp, c, n, add);
                    } else {
                        // Partial tile: compute the padded tile aside, then add the valid part.
                        kernel::tile(kc, ap, bp, edge.as_mut_ptr(), NR, false);
                        store_partial_tile(&edge, c, n, rows, cols, add);
                    }
                }
            }
        }
        q0 += kc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(x: f32) -> f32 {
        f32::from_bits(bf16_bits(x) << 16)
    }

    #[test]
    fn rounds_to_nearest_even_and_flushes_subnormals() {
        // bf16 keeps 7 bits after the point: one step at 1.0 is 4/512.
        assert_eq!(round(1.0 + 2.0 / 512.0), 1.0, "halfway rounds to even (down)");
        assert_eq!(
            round(1.0 + 6.0 / 512.0),
            1.0 + 8.0 / 512.0,
            "halfway rounds to even (up)"
        );
        assert_eq!(round(1.0 + 3.0 / 512.0), 1.0 + 4.0 / 512.0);
        assert_eq!(round(1.0 + 1.0 / 512.0), 1.0);
        assert_eq!(round(-2.5), -2.5);
        assert_eq!(round(1e-40).to_bits(), 0);
        assert_eq!(round(-1e-40).to_bits(), 0x8000_0000);
        assert!(round(f32::NAN).is_nan());
        assert_eq!(round(f32::MAX), f32::INFINITY, "rounds past the largest bf16");
        assert_eq!(round(half::bf16::MAX.to_f32()), half::bf16::MAX.to_f32());
    }

    /// The product in f64 of the bf16-rounded operands (every product exact, sums nearly so).
    fn reference(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for p in 0..k {
                let av = round(a[i * k + p]) as f64;
                for j in 0..n {
                    c[i * n + j] += av * round(b[p * n + j]) as f64;
                }
            }
        }
        c
    }

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 7919) % 1009) as f32 / 317.0 - 1.5)
            .collect()
    }

    fn check(m: usize, n: usize, k: usize, transpose_b: bool) {
        let (a, b) = (data(m * k, 1), data(k * n, 2));
        let l = MatRef::strided(k, 1);
        let (b_store, r) = if transpose_b {
            let t: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
            (t, MatRef::strided(1, k))
        } else {
            (b.clone(), MatRef::strided(n, 1))
        };
        let want = reference(m, n, k, &a, &b);
        let mut got = vec![f32::NAN; m * n];
        bgemm(m, n, k, &mut got, &a, l, &b_store, r, false, true);
        for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 1e-5 * (k as f64 + w.abs()),
                "{m}x{n}x{k} at {idx}: {g} vs {w}"
            );
        }
        let mut serial = vec![f32::NAN; m * n];
        bgemm(m, n, k, &mut serial, &a, l, &b_store, r, false, false);
        assert_eq!(serial, got, "one thread gives the same bits as many");
        let mut onto = vec![1.0f32; m * n];
        bgemm(m, n, k, &mut onto, &a, l, &b_store, r, true, true);
        for (o, g) in onto.iter().zip(&got) {
            assert!(
                (o - (g + 1.0)).abs() <= 1e-5 * (1.0 + g.abs()),
                "accumulating: {o} vs {g} + 1"
            );
        }
    }

    #[test]
    fn matches_the_rounded_product_on_full_and_ragged_tiles() {
        check(1, 1, 1, false);
        check(13, 33, 7, false);
        check(24, 64, 16, true);
        check(100, 70, 301, false);
        check(37, 45, 260, true);
        check(200, 130, 600, false);
        // Past the small-product path: packed panels, ragged edges.
        check(61, 97, 70, false);
        check(48, 32, 32, true);
    }

    #[test]
    fn the_small_and_packed_paths_give_the_same_bits_within_one_block() {
        // Up to 2 * KP deep both sum the pairs of each output in one ascending chain.
        let (m, n, k) = (50, 40, 2 * KP - 3);
        let (a, b) = (data(m * k, 5), data(k * n, 6));
        let l = MatRef::strided(k, 1);
        let r = MatRef::strided(n, 1);
        let mut packed = vec![0f32; m * n];
        bgemm(m, n, k, &mut packed, &a, l, &b, r, false, true);
        let mut direct = vec![0f32; m * n];
        small::small(m, n, k, &mut direct, &a, l, &b, r, false);
        assert_eq!(packed, direct);
        // Both operands stored transposed (read along their unit strides): the same bits.
        let at: Vec<f32> = (0..k * m).map(|x| a[(x % m) * k + x / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
        let mut transposed = vec![0f32; m * n];
        let (lt, rt) = (MatRef::strided(1, m), MatRef::strided(1, k));
        small::small(m, n, k, &mut transposed, &at, lt, &bt, rt, false);
        assert_eq!(transposed, direct);
    }

    #[test]
    fn the_native_and_portable_kernels_give_the_same_bits() {
        if !crate::simd::has_bf16_dot() {
            eprintln!("skipped: this CPU has no AVX-512 BF16 (only the portable kernel runs)");
            return;
        }
        let kc = 97;
        let a: Vec<u32> = data(kc * MR * 2, 3)
            .chunks(2)
            .map(|p| bf16_bits(p[0] * 40.0) | (bf16_bits(p[1] * 0.01) << 16))
            .collect();
        let b: Vec<u32> = data(kc * NR * 2, 4)
            .chunks(2)
            .map(|p| bf16_bits(p[0] * 3.0) | (bf16_bits(p[1] * 1e3) << 16))
            .collect();
        let mut hw = [0.5f32; MR * NR];
        let mut sw = hw;
        // SAFETY: both buffers are 12 x 32 with leading dimension 32; a and b hold kc pairs.
        unsafe {
            kernel::tile(kc, &a, &b, hw.as_mut_ptr(), NR, true);
            kernel::portable(kc, &a, &b, sw.as_mut_ptr(), NR, true);
        }
        assert_eq!(hw, sw);
    }
}
