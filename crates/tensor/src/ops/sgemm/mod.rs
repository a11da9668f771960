//! kiln's own f32 GEMM for CPUs with AVX-512: packed `B` panels, a 12 x 32 register-tiled
//! micro-kernel, and a 2-D grid of C tiles shared out over rayon's threads.
//!
//! The `gemm` crate on stable Rust stops at AVX2 (8 lanes); on AVX-512 machines with two FMA
//! units that leaves half the arithmetic unused. This path packs `B` into 32-column panels
//! (zero-padded, so the micro-kernel never branches) and reads `A` in place at its strides (a
//! transformer's products have few columns, so packing `A` would cost about as much as the
//! arithmetic; only a ragged last 12-row panel is copied and padded). Every task computes one
//! tile of `C`, walking `K` in blocks of [`KC`]: it packs the block of `B` it needs into an
//! L2-sized buffer of its thread, then runs every row panel of the tile across it. Each output
//! element is summed in one fixed order (k ascending inside a block, blocks added to `C` in
//! order), so the result does not depend on the number of threads or on how tiles are shared out.

mod avx512;
mod pack;

#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::store_tile;

use rayon::prelude::*;

use super::MatRef;

/// Rows of `C` per micro-tile (broadcast `A` values per k).
pub(crate) const MR: usize = 12;
/// Columns of `C` per micro-tile (two 16-lane vectors).
pub(crate) const NR: usize = 32;
/// Depth of one pass over a tile: a 12-row `A` panel of this depth (12 KiB) stays in L1 while
/// the tile's packed `B` panels (32 KiB each, contiguous) stream past it from L2.
const KC: usize = 256;

/// Whether this machine runs the AVX-512 path.
pub(crate) fn available() -> bool {
    crate::simd::isa() == crate::simd::Isa::Avx512
}

/// Elements of a `B` small enough that packing it is a pass over cached memory (1 MiB of f32).
const CACHED_B: usize = 1 << 18;

/// Whether a product is big enough in every dimension for this path: packing `B` pays off only
/// when many rows of `A` reuse it, and a short depth spends the kernel on loading and storing `C`.
/// A `B` that fits in L2 (a convolution's per-image operands) is cheap to pack, so one full panel
/// of rows and a depth of 16 suffice; a large one (dense weights in batched decoding) is read
/// from memory, and its packed copy would double that traffic for few rows.
pub(crate) fn worthwhile(m: usize, n: usize, k: usize) -> bool {
    if k * n <= CACHED_B {
        m >= MR && n >= NR && k >= 16
    } else {
        m >= 4 * MR && n >= NR && k >= 32
    }
}

/// [`worthwhile`] for a `B` packed beforehand ([`PackedB`]): no packing to pay back, so one full
/// panel of rows is enough (a recurrent layer's batch of 32 against its hidden-to-hidden weight).
pub(crate) fn worthwhile_packed(m: usize, n: usize, k: usize) -> bool {
    m >= MR && n >= NR && k >= 32
}

/// A raw pointer to the destination that tasks on several threads write through, each to its own
/// disjoint tile.
#[derive(Clone, Copy)]
pub(crate) struct SharedDst(pub(crate) *mut f32);
// SAFETY: tasks write disjoint tiles of C (see [`Grid`]), and the caller's &mut outlives them.
unsafe impl Send for SharedDst {}
unsafe impl Sync for SharedDst {}

/// `dst[m, n] (+)= lhs[m, k] @ rhs[k, n]` with `dst` row-major (leading dimension `n`).
/// The caller has checked bounds, that `m, n, k > 0` and that [`available`] is true.
///
/// `B` is packed block by block inside the tasks ([`run_tile`]): each task packs the
/// `KC x` (its columns) block it is about to use into its thread's buffer, where it stays in L2
/// while every row panel of the task passes over it, so `B` is read from memory once and its
/// packed copy never leaves the cache (packing all of `B` up front wrote and re-read a copy as
/// large as `B`: a fifth of a GPT-2 forward).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
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
    run(
        [m, n, k],
        (dst, lhs, l),
        BSource::Strided(rhs, r),
        accumulate,
        threads,
    );
}

/// Where the tasks of a product find `B`.
#[derive(Clone, Copy)]
enum BSource<'a> {
    /// In place at these strides: each task packs the blocks it uses.
    Strided(&'a [f32], MatRef),
    /// Already packed ([`PackedB`]): panels of `NR * k` floats.
    Packed(&'a [f32]),
}

/// Shares the tiles of `C` out over the threads (see [`Grid`]); the ragged last panel of `A`
/// is padded once first, for every task to read.
fn run(
    [m, n, k]: [usize; 3],
    (dst, lhs, l): (&mut [f32], &[f32], MatRef),
    b: BSource,
    accumulate: bool,
    threads: bool,
) {
    let mut edge = pack::take_buffer(edge_floats(m, k));
    let a = a_panels(m, k, lhs, l, edge.floats());
    let (mp, np) = (m.div_ceil(MR), n.div_ceil(NR));
    let workers = if threads { rayon::current_num_threads() } else { 1 };
    let grid = Grid::new(mp, np, workers);
    let out = SharedDst(dst.as_mut_ptr());
    let task = move |t: usize| {
        // SAFETY: task t writes only its own tile of C (rows and columns of `grid.tile(t)`).
        unsafe { run_tile(out, [m, n, k], &a, b, grid.tile(t), accumulate) };
    };
    if grid.tiles() > 1 {
        (0..grid.tiles()).into_par_iter().for_each(task);
    } else {
        task(0);
    }
    pack::return_buffer(edge);
}

/// Column panels of one task's `B` block: 16 panels of 32 columns by [`KC`] (512 KiB), which
/// stay in a 1 MiB L2 (Zen 4; 2 MiB on recent Xeons) beside the `A` panels passing through.
const BLOCK_NP: usize = 16;

/// How [`run`] shares `C` out: `tiles_m` bands of row panels by `tiles_n` bands of column
/// panels. Every tile packs the `B` block of its columns itself, so splitting rows repeats
/// packing and splitting columns re-reads `A`; the split grows the side whose tiles are larger.
#[derive(Clone, Copy)]
pub(crate) struct Grid {
    mp: usize,
    np: usize,
    tiles_m: usize,
    tiles_n: usize,
}

impl Grid {
    /// The split for `mp` row panels and `np` column panels on `workers` threads: at least
    /// two tiles per thread (so a ragged tile does not leave a thread idle), columns in bands
    /// of at most [`BLOCK_NP`] panels. It changes only which task computes a tile, never the
    /// order of any sum, so results do not depend on `workers`.
    pub(crate) fn new(mp: usize, np: usize, workers: usize) -> Grid {
        let (mut tiles_m, mut tiles_n) = (1, np.div_ceil(BLOCK_NP));
        let want = if workers > 1 { 2 * workers } else { 1 };
        while tiles_m * tiles_n < want {
            let (rows, cols) = (mp.div_ceil(tiles_m), np.div_ceil(tiles_n));
            if cols >= 2 && (cols * NR >= rows * MR || rows < 2) {
                tiles_n += 1;
            } else if rows >= 2 {
                tiles_m += 1;
            } else {
                break;
            }
        }
        Grid {
            mp,
            np,
            tiles_m,
            tiles_n,
        }
    }

    /// Number of tiles.
    pub(crate) fn tiles(&self) -> usize {
        self.tiles_m * self.tiles_n
    }

    /// Tile `t`'s row panels and column panels (ranges of panel indices). Bands are as equal
    /// as the division allows; tiles of one band of rows are numbered consecutively, so the
    /// tasks that share their `A` rows run close together.
    pub(crate) fn tile(&self, t: usize) -> [std::ops::Range<usize>; 2] {
        let band = |i: usize, parts: usize, total: usize| i * total / parts..(i + 1) * total / parts;
        [
            band(t / self.tiles_n, self.tiles_m, self.mp),
            band(t % self.tiles_n, self.tiles_n, self.np),
        ]
    }
}

/// Where the row panels of `lhs` are read: the ragged last one packed into `edge` first.
fn a_panels<'a>(m: usize, k: usize, lhs: &'a [f32], l: MatRef, edge: &'a mut [f32]) -> APanels<'a> {
    let ragged = m % MR;
    if ragged > 0 {
        pack::pack_a_panel(edge, lhs, l, m - ragged, ragged, k);
    }
    APanels {
        lhs: &lhs[l.offset..],
        l,
        edge,
        full: m / MR,
        crowded: m >= MR && crowds_l1(l.row_stride, l.col_stride, k),
    }
}

/// One task of [`run`]: the `C` tile of row panels `rows` and column panels `cols`. For each
/// block of [`KC`] steps, the tile's columns of that block of `B` are packed into the thread's
/// block buffer (unless `B` comes packed), then every row panel runs the micro-kernel across
/// them while they stay in L2.
///
/// # Safety
/// `out` points to a row-major `m x n` matrix no other thread writes in this tile.
unsafe fn run_tile(
    out: SharedDst,
    [m, n, k]: [usize; 3],
    a: &APanels,
    b_source: BSource,
    [rows, cols]: [std::ops::Range<usize>; 2],
    accumulate: bool,
) {
    let panels = cols.len();
    let (j0, j1) = (cols.start * NR, (cols.end * NR).min(n));
    let block_floats = match b_source {
        BSource::Strided(..) => panels * NR * KC.min(k),
        BSource::Packed(_) => 0,
    };
    let mut block = pack::take_block_buffer(block_floats);
    let mut edge = [0f32; MR * NR];
    // Not zeroed (16 KiB per task would cost small products): `copy_a_panel` writes every
    // float the kernel then reads.
    let mut a_copy = std::mem::MaybeUninit::<[pack::Line; pack::A_COPY_FLOATS / 16]>::uninit();
    // A panel whose in-place lines crowd into a few L1 sets (strides near a multiple of 4 KiB)
    // is evicted between the B panels that reuse it; such a panel is copied contiguous first.
    let copy_a = a.crowded && panels >= 2;
    let mut p0 = 0;
    while p0 < k {
        let kc = KC.min(k - p0);
        // The tile's first B panel at step p0, and the distance between its panels.
        let (b_block, panel_stride) = match b_source {
            BSource::Strided(rhs, r) => {
                let at = MatRef {
                    offset: r.offset + p0 * r.row_stride + j0 * r.col_stride,
                    ..r
                };
                let b_block = &mut block.floats()[..panels * NR * kc];
                pack::pack_b(b_block, rhs, at, kc, j1 - j0, false);
                (b_block.as_ptr(), NR * kc)
            }
            BSource::Packed(b) => (b[cols.start * NR * k + p0 * NR..].as_ptr(), NR * k),
        };
        let add = accumulate || p0 > 0;
        for ip in rows.clone() {
            // SAFETY: the panels hold kc steps from p0 for every padded row and column, and
            // row panel ip / column panel jp lie inside the matrix.
            unsafe {
                let (ap, a_rs, a_ks) = a.panel(ip);
                let mut ap = ap.add(p0 * a_ks);
                let (mut a_rs, mut a_ks) = (a_rs, a_ks);
                if copy_a && !(a_rs == 1 && a_ks == MR) {
                    let dst = a_copy.as_mut_ptr().cast::<f32>();
                    (a_rs, a_ks) = pack::copy_a_panel(dst, ap, a_rs, a_ks, kc);
                    ap = dst as *const f32;
                }
                let (i, rows_here) = (ip * MR, MR.min(m - ip * MR));
                for jp in cols.clone() {
                    let b = b_block.add((jp - cols.start) * panel_stride);
                    let (j, cols_here) = (jp * NR, NR.min(n - jp * NR));
                    let c = out.0.add(i * n + j);
                    micro_tile(
                        kc,
                        (ap, a_rs, a_ks),
                        b,
                        (c, n, rows_here, cols_here),
                        add,
                        &mut edge,
                    );
                }
            }
        }
        p0 += kc;
    }
    pack::return_block_buffer(block);
}

/// Floats of the padded copy of a ragged last `A` panel (none when `m` is a multiple of 12).
fn edge_floats(m: usize, k: usize) -> usize {
    if !m.is_multiple_of(MR) {
        MR * k
    } else {
        0
    }
}

/// `B` packed once for many products (weights at inference): the 32-column panels
/// [`sgemm`] would pack on every call.
pub(crate) struct PackedB {
    buf: pack::PackBuffer,
    k: usize,
    n: usize,
}

impl PackedB {
    /// Packs `rhs` (`k × n` at `r`'s strides).
    pub(crate) fn new(rhs: &[f32], r: MatRef, k: usize, n: usize) -> PackedB {
        let mut buf = pack::PackBuffer::new(n.div_ceil(NR) * NR * k);
        pack::pack_b(buf.floats(), rhs, r, k, n, true);
        PackedB { buf, k, n }
    }

    /// Bytes held by the panels.
    pub(crate) fn bytes(&self) -> usize {
        self.buf.bytes()
    }
}

/// [`sgemm`] against `B` packed beforehand.
pub(crate) fn sgemm_packed(
    m: usize,
    dst: &mut [f32],
    lhs: &[f32],
    l: MatRef,
    b: &PackedB,
    accumulate: bool,
    threads: bool,
) {
    let packed = BSource::Packed(b.buf.floats_ref());
    run([m, b.n, b.k], (dst, lhs, l), packed, accumulate, threads);
}

/// Where the micro-kernel reads each 12-row panel of `A`: full panels in place, the ragged
/// last one from its padded copy.
struct APanels<'a> {
    /// `lhs` from the operand's offset on.
    lhs: &'a [f32],
    l: MatRef,
    /// The ragged last panel, packed (12 floats per k); empty when `m` is a multiple of 12.
    edge: &'a [f32],
    /// Number of full panels.
    full: usize,
    /// Whether a full panel read in place would overflow an L1 set ([`crowds_l1`]).
    crowded: bool,
}

/// Ways of the smallest L1 data cache the kernel targets (8 on Zen 4, Zen 5 has 12).
const L1_WAYS: usize = 8;
/// Sets of that cache (32 KiB of 64-byte lines, 8 ways).
const L1_SETS: usize = 64;

/// Whether the 64-byte lines of one in-place `A` panel (12 rows at stride `rs`, [`KC`] steps at
/// stride `ks`, in floats) put more lines into some L1 set than it has ways: the panel would
/// then not stay in L1 while several `B` panels reuse it. Runs once per product, counting at
/// most a few hundred lines without allocating.
fn crowds_l1(rs: usize, ks: usize, k: usize) -> bool {
    let kc = KC.min(k);
    // The panel as runs of `len` elements `step` apart, the runs `gap` apart.
    let (step, len, gap, runs) = if ks <= rs {
        (ks, kc, rs, MR)
    } else {
        (rs, MR, ks, kc)
    };
    if gap <= step * len {
        // Runs touch or overlap: one compact region, spread evenly over the sets.
        return false;
    }
    let mut per_set = [0usize; L1_SETS];
    for run in 0..runs {
        let first = run * gap;
        if step == 1 {
            for line in first / 16..=(first + len - 1) / 16 {
                per_set[line % L1_SETS] += 1;
            }
            continue;
        }
        let mut last = usize::MAX;
        for i in 0..len {
            let line = (first + i * step) / 16;
            if line != last {
                per_set[line % L1_SETS] += 1;
                last = line;
            }
        }
    }
    per_set.iter().any(|&n| n > L1_WAYS)
}

impl APanels<'_> {
    /// Panel `ip`: its first element and the strides between its rows and between its ks.
    fn panel(&self, ip: usize) -> (*const f32, usize, usize) {
        if ip < self.full {
            // SAFETY (of the offset): row ip * MR exists, so its first element lies in lhs.
            let start = unsafe { self.lhs.as_ptr().add(ip * MR * self.l.row_stride) };
            (start, self.l.row_stride, self.l.col_stride)
        } else {
            (self.edge.as_ptr(), 1, MR)
        }
    }
}

/// `C[..rows, ..cols] (+)= A · B` over `kc` steps for one micro-tile: `a` is a 12-row panel of
/// `A` at strides `(a_rs, a_ks)` (rows past `rows` are read but their results dropped), `b` a
/// packed 32-column `B` panel, `c` the tile's first element at leading dimension `ldc`. Up to 4
/// or 8 rows run the 4- or 8-row kernel; a tile its kernel does not fit exactly (other row
/// counts, or `cols < 32`) is computed whole into `edge`, then its valid part stored.
///
/// # Safety
/// [`available`] is true; `a` reaches 12 rows by `kc` steps at its strides, `b` holds `32 · kc`
/// floats on a 64-byte boundary, and `c` reaches `rows` rows of `cols` floats at stride `ldc`.
pub(crate) unsafe fn micro_tile(
    kc: usize,
    (a, a_rs, a_ks): (*const f32, usize, usize),
    b: *const f32,
    (c, ldc, rows, cols): (*mut f32, usize, usize, usize),
    add: bool,
    edge: &mut [f32; MR * NR],
) {
    // The last rows of a product run a 4- or 8-row kernel rather than a mostly idle 12-row one.
    let kernel: unsafe fn(usize, *const f32, usize, usize, *const f32, *mut f32, usize, bool) = match rows {
        0..=4 => avx512::kernel::<4>,
        5..=8 => avx512::kernel::<8>,
        _ => avx512::kernel::<MR>,
    };
    // SAFETY: the caller's contract; the kernel reads at most the 12 rows the panel has.
    unsafe {
        if matches!(rows, 4 | 8 | MR) && cols == NR {
            kernel(kc, a, a_rs, a_ks, b, c, ldc, add);
        } else {
            kernel(kc, a, a_rs, a_ks, b, edge.as_mut_ptr(), NR, false);
            store_partial_tile(edge, c, ldc, rows, cols, add);
        }
    }
}

/// `A` (`m × k` through `l`) packed into `m.div_ceil(12)` zero-padded panels of `12 · k` floats
/// (12 values per k): the layout [`micro_tile`] reads at strides `(1, 12)`, for an operand
/// that many products share (a convolution's weight).
pub(crate) fn pack_a(lhs: &[f32], l: MatRef, m: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m.div_ceil(MR) * MR * k];
    for (ip, panel) in out.chunks_exact_mut(MR * k).enumerate() {
        pack::pack_a_panel(panel, lhs, l, ip * MR, MR.min(m - ip * MR), k);
    }
    out
}

/// A reusable 64-byte aligned buffer of at least `len` floats (the calling thread's packing
/// buffer when it is free), for `B` panels built outside [`sgemm`]; give it back with
/// [`give_back`].
pub(crate) fn panel_buffer(len: usize) -> PanelBuffer {
    PanelBuffer(pack::take_buffer(len))
}

/// Returns a buffer from [`panel_buffer`] to the thread for its next product.
pub(crate) fn give_back(buf: PanelBuffer) {
    pack::return_buffer(buf.0);
}

/// Packs `rhs` (`k × n` through `r`) into `buf` as [`sgemm`] would: `n.div_ceil(32)` panels of
/// `32 · k` floats, for a `B` that several [`micro_tile`] calls share.
pub(crate) fn pack_b_into(buf: &mut PanelBuffer, rhs: &[f32], r: MatRef, k: usize, n: usize) {
    let len = n.div_ceil(NR) * NR * k;
    pack::pack_b(&mut buf.floats()[..len], rhs, r, k, n, false);
}

/// A 64-byte aligned float buffer (see [`panel_buffer`]).
pub(crate) struct PanelBuffer(pack::PackBuffer);

impl PanelBuffer {
    /// The floats.
    pub(crate) fn floats(&mut self) -> &mut [f32] {
        self.0.floats()
    }
}

/// Writes (or with `add`, adds) the top-left `rows x cols` of a padded `MR x NR` tile computed
/// aside (`edge`, row-major) into `c` at stride `ldc`: the ragged edge of a product.
///
/// # Safety
/// `c` reaches `rows` rows of `cols` floats at stride `ldc`; `rows <= MR`, `cols <= NR`.
pub(crate) unsafe fn store_partial_tile(
    edge: &[f32; MR * NR],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    add: bool,
) {
    for (r, tile_row) in edge.chunks_exact(NR).take(rows).enumerate() {
        // SAFETY: the caller's contract.
        let crow = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), cols) };
        for (x, &v) in crow.iter_mut().zip(tile_row) {
            *x = if add { *x + v } else { v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gemm_f32_reference;

    fn check(m: usize, n: usize, k: usize, transpose_a: bool, transpose_b: bool, acc: bool) {
        if !available() {
            eprintln!("skipped: no AVX-512 on this machine");
            return;
        }
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729) % 29) as f32 / 13.0 - 1.0)
            .collect();
        let want = gemm_f32_reference(m, n, k, &a, &b);
        // Same values, stored transposed when asked (the view's strides undo it).
        let (a_store, l) = if transpose_a {
            let t: Vec<f32> = (0..k * m).map(|x| a[(x % m) * k + x / m]).collect();
            (t, MatRef::strided(1, m))
        } else {
            (a.clone(), MatRef::strided(k, 1))
        };
        let (b_store, r) = if transpose_b {
            let t: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
            (t, MatRef::strided(1, k))
        } else {
            (b.clone(), MatRef::strided(n, 1))
        };
        let mut got = vec![if acc { 1.0 } else { f32::NAN }; m * n];
        sgemm(m, n, k, &mut got, &a_store, l, &b_store, r, acc, true);
        for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
            let w = if acc { w + 1.0 } else { *w };
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{m}x{n}x{k} at {idx}: {g} vs {w}"
            );
        }
        // One thread gives the same bits as many.
        let mut serial = vec![if acc { 1.0 } else { f32::NAN }; m * n];
        sgemm(m, n, k, &mut serial, &a_store, l, &b_store, r, acc, false);
        assert_eq!(got, serial);
    }

    #[test]
    fn matches_the_reference_on_full_and_ragged_tiles() {
        check(24, 64, 16, false, false, false);
        check(13, 33, 7, false, false, false);
        check(100, 70, 300, false, false, false);
        check(1, 1, 1, false, false, false);
        check(97, 131, 513, true, false, true);
        check(37, 45, 260, false, true, false);
        check(37, 45, 260, true, true, true);
        // Full 32-column panels of a transposed B: 16 x 16 register transposes, then k % 16.
        check(30, 96, 300, false, true, false);
        check(50, 64, 32, true, true, true);
        // Several KC blocks and more column panels than one task's block holds.
        check(100, 600, 600, false, false, true);
        check(29, 1100, 520, true, true, false);
    }

    #[test]
    fn a_b_packed_beforehand_gives_the_same_bits() {
        if !available() {
            eprintln!("skipped: no AVX-512 on this machine");
            return;
        }
        let (m, n, k) = (50, 600, 530);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 13) % 19) as f32 / 9.0 - 1.0).collect();
        let (l, r) = (MatRef::strided(k, 1), MatRef::strided(n, 1));
        let mut plain = vec![0f32; m * n];
        sgemm(m, n, k, &mut plain, &a, l, &b, r, false, true);
        let packed = PackedB::new(&b, r, k, n);
        let mut got = vec![0f32; m * n];
        sgemm_packed(m, &mut got, &a, l, &packed, false, true);
        assert_eq!(got, plain);
        assert!(plain.iter().any(|&v| v != 0.0));
    }

    #[test]
    fn the_grid_covers_every_tile_once_and_gives_each_thread_work() {
        for (mp, np, workers) in [
            (1, 1, 2),
            (22, 8, 2),
            (171, 64, 2),
            (3, 1571, 4),
            (500, 2, 8),
            (11, 96, 1),
        ] {
            let grid = Grid::new(mp, np, workers);
            let mut seen = vec![0u8; mp * np];
            for t in 0..grid.tiles() {
                let [rows, cols] = grid.tile(t);
                assert!(
                    cols.len() <= BLOCK_NP,
                    "{mp}x{np}: a band of {} panels",
                    cols.len()
                );
                for i in rows {
                    for j in cols.clone() {
                        seen[i * np + j] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{mp}x{np} on {workers}");
            if workers > 1 && mp * np >= 2 * workers {
                assert!(
                    grid.tiles() >= 2 * workers,
                    "{mp}x{np} on {workers}: {} tiles",
                    grid.tiles()
                );
            }
        }
    }

    #[test]
    fn panels_crowding_an_l1_set_are_copied_and_give_the_same_result() {
        // Row stride 1024 floats (4 KiB): all 12 rows of a panel in the same L1 sets.
        assert!(crowds_l1(1024, 1, 1024) && !crowds_l1(768, 1, 768));
        check(60, 96, 1024, false, false, false);
        // Transposed A with ks = 1024: every k's line in one set.
        assert!(crowds_l1(1, 1024, 40));
        check(1024, 64, 40, true, false, true);
        // Neither stride unit: every other element of rows 1024 floats apart.
        assert!(crowds_l1(1024, 2, 512));
        let (m, n, k) = (48, 64, 512);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 13) % 19) as f32 / 9.0 - 1.0).collect();
        let mut spread = vec![0f32; m * 2 * k];
        for r in 0..m {
            for p in 0..k {
                spread[r * 2 * k + 2 * p] = a[r * k + p];
            }
        }
        let (l, r) = (MatRef::strided(2 * k, 2), MatRef::strided(n, 1));
        let mut got = vec![0f32; m * n];
        sgemm(m, n, k, &mut got, &spread, l, &b, r, false, true);
        let dense = MatRef::strided(k, 1);
        let mut want = vec![0f32; m * n];
        sgemm(m, n, k, &mut want, &a, dense, &b, r, false, true);
        assert_eq!(got, want, "same products in the same order whatever the layout");
    }
}
