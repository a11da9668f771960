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
//! flushed to zero when packing, as the instruction would. Packing rounds whole unit-stride runs
//! (vectorised) into per-thread buffers kept between products; tiles of `C` are shared out over
//! rayon on sgemm's [`Grid`] and `K` is walked in blocks added in order, so results do not depend
//! on the thread count.

mod kernel;
mod small;

use rayon::prelude::*;

use std::cell::Cell;
use std::ops::Range;

use super::sgemm::{store_partial_tile, Grid, SharedDst, MR, NR};
use super::MatRef;

/// Pairs of k per block: a 12-row `A` panel block (6 KiB) stays in L1 while `B` panels stream.
const KP: usize = 128;
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
    // Reused between products on this thread: every element is written by `pack`.
    let (mut a_buf, mut b_buf) = PANELS.with(|p| p.take());
    let a = sized(&mut a_buf, mp * kp * MR);
    let b = sized(&mut b_buf, np * kp * NR);
    let par = threads && m * k + k * n >= PARALLEL_PACK;
    let a_lines = Lines {
        data: lhs,
        offset: l.offset,
        line_stride: l.row_stride,
        k_stride: l.col_stride,
    };
    let b_lines = Lines {
        data: rhs,
        offset: r.offset,
        line_stride: r.col_stride,
        k_stride: r.row_stride,
    };
    if par {
        // Both operands in one fork-join.
        rayon::join(
            || pack(a, MR, m, k, a_lines, true),
            || pack(b, NR, n, k, b_lines, true),
        );
    } else {
        pack(a, MR, m, k, a_lines, false);
        pack(b, NR, n, k, b_lines, false);
    }
    // The f32 path's split of C: at least two tiles per thread, columns in bands.
    let workers = if threads { rayon::current_num_threads() } else { 1 };
    let grid = Grid::new(mp, np, workers);
    let out = SharedDst(dst.as_mut_ptr());
    let (a, b) = (&a[..], &b[..]);
    let task = move |t: usize| {
        let [rows, cols] = grid.tile(t);
        // SAFETY: the grid's tiles cover disjoint rows and columns of C; the packed panels
        // hold kp pairs for every padded row and column.
        unsafe { run_tile(out, [m, n, kp], a, b, rows, cols, accumulate) };
    };
    if threads && grid.tiles() > 1 {
        (0..grid.tiles()).into_par_iter().for_each(task);
    } else {
        (0..grid.tiles()).for_each(task);
    }
    // Panels of ordinary products are kept; a huge product's memory goes back.
    if a_buf.len() + b_buf.len() <= KEEP_PANELS {
        PANELS.with(|p| p.set((a_buf, b_buf)));
    }
}

/// The most packed values (16 MiB) a thread keeps between products.
const KEEP_PANELS: usize = 1 << 22;

thread_local! {
    /// The packed panels of `A` and `B`, kept between products on this thread.
    static PANELS: Cell<(Vec<u32>, Vec<u32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// The first `len` elements of `buf`, growing it (zeroed) when it is shorter.
fn sized(buf: &mut Vec<u32>, len: usize) -> &mut [u32] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

/// An operand as packing reads it: element `(line, p)` (a row of `A` or a column of `B`, and
/// its k) at `data[offset + line * line_stride + p * k_stride]`.
#[derive(Clone, Copy)]
struct Lines<'a> {
    data: &'a [f32],
    offset: usize,
    line_stride: usize,
    k_stride: usize,
}

impl Lines<'_> {
    fn at(&self, line: usize, p: usize) -> f32 {
        self.data[self.offset + line * self.line_stride + p * self.k_stride]
    }
}

/// Packs an operand into panels of `width` lines (rows of `A` or columns of `B`), each panel
/// storing, for every pair of k, one `u32` per line: the bf16 of element `2q` in the low half,
/// of `2q + 1` in the high half. Lines and ks past the edge are zero.
/// The two unit-stride layouts round whole runs at a time, so the loops vectorise.
fn pack(out: &mut [u32], width: usize, lines: usize, k: usize, src: Lines<'_>, par: bool) {
    let kp = k.div_ceil(2);
    let panel = |(ip, dst): (usize, &mut [u32])| {
        let first = ip * width;
        pack_panel(dst, width, first, width.min(lines - first), k, src);
    };
    if par {
        out.par_chunks_mut(kp * width).enumerate().for_each(panel);
    } else {
        out.chunks_mut(kp * width).enumerate().for_each(panel);
    }
}

crate::multiversion! {
    /// One panel of [`pack`]: lines `first..first + count` into `dst`, vectorised for the best
    /// instruction set.
    fn pack_panel[](dst: &mut [u32], width: usize, first: usize, count: usize, k: usize, src: Lines<'_>) = pack_panel_kernel[]
}

/// Pairs of k rounded per chunk when lines run along k.
const CHUNK: usize = 16;

#[inline(always)]
fn pack_panel_kernel(dst: &mut [u32], width: usize, first: usize, count: usize, k: usize, src: Lines<'_>) {
    let kp = k.div_ceil(2);
    let pair = |even: f32, odd: f32| bf16_bits(even) | (bf16_bits(odd) << 16);
    if src.line_stride == 1 {
        // The panel's lines side by side: each pair of k is two runs, rounded lane by lane.
        let run = |p: usize| &src.data[src.offset + first + p * src.k_stride..][..count];
        for q in 0..kp {
            let d = &mut dst[q * width..q * width + count];
            if 2 * q + 1 < k {
                for ((d, &e), &o) in d.iter_mut().zip(run(2 * q)).zip(run(2 * q + 1)) {
                    *d = pair(e, o);
                }
            } else {
                for (d, &e) in d.iter_mut().zip(run(2 * q)) {
                    *d = bf16_bits(e);
                }
            }
        }
    } else if src.k_stride == 1 && width <= NR {
        // Each line contiguous along k: a chunk of pairs rounded per line, then written out
        // pair by pair across the lines, so the stores run in order.
        let mut chunk = [0u32; NR * CHUNK];
        for q0 in (0..kp).step_by(CHUNK) {
            let qn = CHUNK.min(kp - q0);
            // Whole pairs in this chunk (the last pair of an odd k has no partner).
            let whole = qn.min(k / 2 - q0.min(k / 2));
            for line in 0..count {
                let run = &src.data[src.offset + (first + line) * src.line_stride + 2 * q0..];
                let c = &mut chunk[line * CHUNK..line * CHUNK + qn];
                for (pr, two) in c[..whole].iter_mut().zip(run.chunks_exact(2)) {
                    *pr = pair(two[0], two[1]);
                }
                if whole < qn {
                    c[whole] = bf16_bits(run[2 * whole]);
                }
            }
            for q in 0..qn {
                let d = &mut dst[(q0 + q) * width..(q0 + q) * width + count];
                for (line, d) in d.iter_mut().enumerate() {
                    *d = chunk[line * CHUNK + q];
                }
            }
        }
    } else {
        for line in 0..count {
            let i = first + line;
            for q in 0..kp {
                let odd = if 2 * q + 1 < k { src.at(i, 2 * q + 1) } else { 0.0 };
                dst[q * width + line] = pair(src.at(i, 2 * q), odd);
            }
        }
    }
    if count < width {
        for q in 0..kp {
            dst[q * width + count..(q + 1) * width].fill(0);
        }
    }
}

/// One task: the `C` tile of row panels `rows` and column panels `cols`, over all pairs in
/// blocks of [`KP`].
///
/// # Safety
/// `out` points to a row-major `m x n` matrix no other thread writes in this tile; `a` and `b`
/// are packed by [`pack`] for these sizes.
unsafe fn run_tile(
    out: SharedDst,
    [m, n, kp]: [usize; 3],
    a: &[u32],
    b: &[u32],
    rows: Range<usize>,
    cols: Range<usize>,
    accumulate: bool,
) {
    let mut edge = [0f32; MR * NR];
    let mut q0 = 0;
    while q0 < kp {
        let kc = KP.min(kp - q0);
        let add = accumulate || q0 > 0;
        for ip in rows.clone() {
            let ap = &a[(ip * kp + q0) * MR..][..kc * MR];
            let (i, rows) = (ip * MR, MR.min(m - ip * MR));
            for jp in cols.clone() {
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
    fn packing_gives_the_same_bits_for_every_operand_layout() {
        // Odd k (a lone last pair), ragged panels, more than one block of pairs.
        let (m, n, k) = (29, 45, 2 * KP + 37);
        let (a, b) = (data(m * k, 7), data(k * n, 8));
        let product = |lhs: &[f32], l: MatRef, rhs: &[f32], r: MatRef| {
            let mut c = vec![0f32; m * n];
            bgemm(m, n, k, &mut c, lhs, l, rhs, r, false, true);
            c
        };
        let want = product(&a, MatRef::strided(k, 1), &b, MatRef::strided(n, 1));
        // A column-major (its rows side by side), B column-major (each column along k).
        let at: Vec<f32> = (0..k * m).map(|x| a[(x % m) * k + x / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
        let got = product(&at, MatRef::strided(1, m), &bt, MatRef::strided(1, k));
        assert_eq!(got, want, "transposed operands");
        // Neither stride 1: every other element of twice-as-wide storage, at an offset.
        let spread = |v: &[f32]| -> Vec<f32> {
            std::iter::once(9.0)
                .chain(v.iter().flat_map(|&x| [x, -7.0]))
                .collect()
        };
        let l = MatRef {
            offset: 1,
            row_stride: 2 * k,
            col_stride: 2,
        };
        let r = MatRef {
            offset: 1,
            row_stride: 2 * n,
            col_stride: 2,
        };
        assert_eq!(product(&spread(&a), l, &spread(&b), r), want, "strided operands");
    }

    #[test]
    fn the_small_path_gives_the_same_bits_on_vdpbf16ps() {
        if !crate::simd::has_bf16_dot() {
            eprintln!("skipped: this CPU has no AVX-512 BF16 (only the f32-instruction path runs)");
            return;
        }
        // Odd k, a ragged last chunk of columns, and one past a whole chunk.
        for (m, n, k) in [(5, 70, 33), (3, 64, 8), (7, 129, 300), (1, 1, 1)] {
            let (a, b) = (data(m * k, 11), data(k * n, 12));
            let (l, r) = (MatRef::strided(k, 1), MatRef::strided(n, 1));
            let run = |native: bool| {
                let mut c = vec![0.25f32; m * n];
                small::small_with(m, n, k, &mut c, &a, l, &b, r, true, native);
                c
            };
            assert_eq!(run(true), run(false), "{m}x{n}x{k}");
        }
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
