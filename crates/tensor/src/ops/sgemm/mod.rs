//! kiln's own f32 GEMM for CPUs with AVX-512: packed `B` panels, a 12 x 32 register-tiled
//! micro-kernel, and a 2-D grid of C tiles shared out over rayon's threads.
//!
//! The `gemm` crate on stable Rust stops at AVX2 (8 lanes); on AVX-512 machines with two FMA
//! units that leaves half the arithmetic unused. This path packs `B` into 32-column panels
//! (zero-padded, so the micro-kernel never branches) and reads `A` in place at its strides (a
//! transformer's products have few columns, so packing `A` would cost about as much as the
//! arithmetic; only a ragged last 12-row panel is copied and padded), then every task
//! computes one tile of `C`, walking `K` in blocks of [`KC`]. Each output element is summed in
//! one fixed order (k ascending inside a block, blocks added to `C` in order), so the result does
//! not depend on the number of threads or on how tiles are shared out.

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
/// Micro-panels of `A` per task tile (rows = `TILE_MR * MR`).
const TILE_MR: usize = 8;
/// Micro-panels of `B` per task tile (columns = `TILE_NR * NR`).
const TILE_NR: usize = 4;

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
// SAFETY: tasks write disjoint tiles of C (see `run_tile`), and the caller's &mut outlives them.
unsafe impl Send for SharedDst {}
unsafe impl Sync for SharedDst {}

/// `dst[m, n] (+)= lhs[m, k] @ rhs[k, n]` with `dst` row-major (leading dimension `n`).
/// The caller has checked bounds, that `m, n, k > 0` and that [`available`] is true.
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
    let np = n.div_ceil(NR);
    let mut buf = pack::take_buffer(np * NR * k + edge_floats(m, k));
    // B first: its panels are multiples of 128 bytes, so every B row stays 64-byte aligned.
    let (b_packed, a_edge) = buf.floats().split_at_mut(np * NR * k);
    pack::pack_b(b_packed, rhs, r, k, n, threads);
    run([m, n, k], (dst, lhs, l), b_packed, a_edge, accumulate, threads);
    pack::return_buffer(buf);
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
    let mut edge = pack::take_buffer(edge_floats(m, b.k));
    run(
        [m, b.n, b.k],
        (dst, lhs, l),
        b.buf.floats_ref(),
        edge.floats(),
        accumulate,
        threads,
    );
    pack::return_buffer(edge);
}

/// The product once `B` is packed: the ragged last panel of `A` (if any) is padded into
/// `a_edge` ([`edge_floats`] long), then the tiles of `C` are shared out.
#[allow(clippy::too_many_arguments)]
fn run(
    [m, n, k]: [usize; 3],
    (dst, lhs, l): (&mut [f32], &[f32], MatRef),
    b_packed: &[f32],
    a_edge: &mut [f32],
    accumulate: bool,
    threads: bool,
) {
    let (mp, np) = (m.div_ceil(MR), n.div_ceil(NR));
    let ragged = m % MR;
    if ragged > 0 {
        pack::pack_a_panel(a_edge, lhs, l, m - ragged, ragged, k);
    }
    let a = APanels {
        lhs: &lhs[l.offset..],
        l,
        edge: a_edge,
        full: m / MR,
        crowded: m >= MR && crowds_l1(l.row_stride, l.col_stride, k),
    };
    let (tiles_m, tiles_n) = (mp.div_ceil(TILE_MR), np.div_ceil(TILE_NR));
    let out = SharedDst(dst.as_mut_ptr());
    let task = move |t: usize| {
        let (tm, tn) = (t / tiles_n, t % tiles_n);
        // SAFETY: tile (tm, tn) covers rows and columns no other task touches; packed panels
        // hold k values for every padded row/column, so the kernel reads inside them.
        unsafe { run_tile(out, n, m, k, &a, b_packed, tm, tn, mp, np, accumulate) };
    };
    if threads {
        (0..tiles_m * tiles_n).into_par_iter().for_each(task);
    } else {
        (0..tiles_m * tiles_n).for_each(task);
    }
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

/// One task: the `C` tile of micro-panel rows `[tm * TILE_MR, ..)` and columns
/// `[tn * TILE_NR, ..)`, over the whole depth in blocks of [`KC`].
///
/// # Safety
/// `out` points to a row-major `m x n` matrix no other thread writes in this tile; the packed
/// `B` buffer holds `np` panels of depth `k`.
#[allow(clippy::too_many_arguments)]
unsafe fn run_tile(
    out: SharedDst,
    ldc: usize,
    m: usize,
    k: usize,
    a: &APanels,
    b_packed: &[f32],
    tm: usize,
    tn: usize,
    mp: usize,
    np: usize,
    accumulate: bool,
) {
    // SAFETY: the caller's contract (see above) keeps every pointer inside its buffer.
    unsafe {
        let n = ldc;
        let (ip0, ip1) = (tm * TILE_MR, ((tm + 1) * TILE_MR).min(mp));
        let (jp0, jp1) = (tn * TILE_NR, ((tn + 1) * TILE_NR).min(np));
        let mut edge = [0f32; MR * NR];
        // Not zeroed (16 KiB per task would cost small products): `copy_a_panel` writes every
        // float the kernel then reads.
        let mut a_copy = std::mem::MaybeUninit::<[pack::Line; pack::A_COPY_FLOATS / 16]>::uninit();
        // A panel whose in-place lines crowd into a few L1 sets (strides near a multiple of 4 KiB)
        // is evicted between the B panels that reuse it; such a panel is copied contiguous first.
        let copy_a = a.crowded && jp1 - jp0 >= 2;
        let mut p0 = 0;
        while p0 < k {
            let kc = KC.min(k - p0);
            let add = accumulate || p0 > 0;
            for ip in ip0..ip1 {
                let (ap, a_rs, a_ks) = a.panel(ip);
                let mut ap = ap.add(p0 * a_ks);
                let (mut a_rs, mut a_ks) = (a_rs, a_ks);
                if copy_a && !(a_rs == 1 && a_ks == MR) {
                    let dst = a_copy.as_mut_ptr().cast::<f32>();
                    (a_rs, a_ks) = pack::copy_a_panel(dst, ap, a_rs, a_ks, kc);
                    ap = dst as *const f32;
                }
                let (i, rows) = (ip * MR, MR.min(m - ip * MR));
                for jp in jp0..jp1 {
                    let b = b_packed.as_ptr().add(jp * NR * k + p0 * NR);
                    let (j, cols) = (jp * NR, NR.min(n - jp * NR));
                    let c = out.0.add(i * ldc + j);
                    micro_tile(kc, (ap, a_rs, a_ks), b, (c, ldc, rows, cols), add, &mut edge);
                }
            }
            p0 += kc;
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
