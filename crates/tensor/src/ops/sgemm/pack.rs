//! Packing for [`super::sgemm`]: the ragged last panel of `A` into 12 values per k, `B` into
//! 32-column panels stored k-major (one 128-byte row per k), zero-padded
//! past the matrix edge; and the reusable, 64-byte aligned buffer they live in.

use std::cell::Cell;

use rayon::prelude::*;

use super::{MatRef, MR, NR};

/// Depth of one block of the transposed packing (16 KiB of panel rows).
const TRANSPOSE_K: usize = 128;

/// Elements packed below which one thread packs everything.
const PARALLEL_PACK: usize = 1 << 15;

/// 16 floats on a 64-byte boundary: the unit the packing buffer is allocated in, so every
/// `B` row starts on a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line(pub(super) [f32; 16]);

/// A packing buffer; [`PackBuffer::floats`] views it as `f32`s.
pub(super) struct PackBuffer {
    lines: Vec<Line>,
    len: usize,
}

impl PackBuffer {
    /// A new zeroed buffer of `len` floats, owned by its caller (not the thread's slot).
    pub(super) fn new(len: usize) -> PackBuffer {
        PackBuffer {
            lines: vec![Line([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    /// The first `len` floats (as asked of [`take_buffer`]).
    pub(super) fn floats(&mut self) -> &mut [f32] {
        // SAFETY: Line is 16 f32s with no padding (repr(C)); `len <= 16 * lines.len()`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }

    /// The first `len` floats, read-only.
    pub(super) fn floats_ref(&self) -> &[f32] {
        // SAFETY: as in `floats`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }

    /// Bytes allocated.
    pub(super) fn bytes(&self) -> usize {
        self.lines.len() * std::mem::size_of::<Line>()
    }
}

thread_local! {
    /// The calling thread's packing buffer, kept between products so steady-state training
    /// neither allocates nor zeroes memory for packing.
    static BUFFER: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
    /// The calling thread's buffer for one task's block of `B` (see `sgemm`), apart from
    /// [`BUFFER`], which the thread that starts a product holds while its tasks run.
    static BLOCK: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
}

/// A buffer of at least `len` floats. It is taken out of the thread's slot (not borrowed), so a
/// product started while this thread waits inside rayon simply gets a fresh buffer.
pub(super) fn take_buffer(len: usize) -> PackBuffer {
    take_from(&BUFFER, len)
}

/// Puts a buffer back for the thread's next product (keeping the larger one).
pub(super) fn return_buffer(buf: PackBuffer) {
    return_to(&BUFFER, buf);
}

/// [`take_buffer`] from the thread's block slot.
pub(super) fn take_block_buffer(len: usize) -> PackBuffer {
    take_from(&BLOCK, len)
}

/// [`return_buffer`] to the thread's block slot.
pub(super) fn return_block_buffer(buf: PackBuffer) {
    return_to(&BLOCK, buf);
}

type Slot = std::thread::LocalKey<Cell<Vec<Line>>>;

fn take_from(slot: &'static Slot, len: usize) -> PackBuffer {
    let mut lines = slot.with(|b| b.take());
    let need = len.div_ceil(16);
    if lines.len() < need {
        lines.resize(need, Line([0.0; 16]));
    }
    PackBuffer { lines, len }
}

fn return_to(slot: &'static Slot, buf: PackBuffer) {
    slot.with(|b| {
        let old = b.take();
        b.set(if old.len() > buf.lines.len() {
            old
        } else {
            buf.lines
        });
    });
}

/// Floats per row (or per k) of a panel re-laid by [`copy_a_panel`]: [`super::KC`] plus one
/// 64-byte line, so consecutive rows start one cache set apart instead of in the same one.
pub(super) const A_COPY_STRIDE: usize = super::KC + 16;
/// Floats of the buffer [`copy_a_panel`] writes: the larger of its layouts (one 16-float line
/// per k when the panel's ks are contiguous).
pub(super) const A_COPY_FLOATS: usize = 16 * super::KC;
const _: () = assert!(A_COPY_FLOATS >= MR * A_COPY_STRIDE);

/// Copies the full 12-row panel at `a` (row stride `rs`, k stride `ks`, `kc <= KC` steps) into
/// `dst` at strides that spread its lines over the L1 sets, and returns those strides: each row
/// copied whole when rows are contiguous, each k's 12 values when ks are, else 12 values per k.
/// Only the layout changes, so the kernel sums the same products in the same order.
///
/// # Safety
/// `a` reaches 12 rows by `kc` steps at its strides and `dst` holds [`A_COPY_FLOATS`] floats.
pub(super) unsafe fn copy_a_panel(
    dst: *mut f32,
    a: *const f32,
    rs: usize,
    ks: usize,
    kc: usize,
) -> (usize, usize) {
    // SAFETY: the caller's contract bounds every read and write.
    unsafe {
        if ks == 1 {
            for r in 0..MR {
                std::ptr::copy_nonoverlapping(a.add(r * rs), dst.add(r * A_COPY_STRIDE), kc);
            }
            (A_COPY_STRIDE, 1)
        } else if rs == 1 {
            for p in 0..kc {
                std::ptr::copy_nonoverlapping(a.add(p * ks), dst.add(p * 16), MR);
            }
            (1, 16)
        } else {
            for p in 0..kc {
                for r in 0..MR {
                    *dst.add(p * MR + r) = *a.add(r * rs + p * ks);
                }
            }
            (1, MR)
        }
    }
}

/// Packs rows `[row0, row0 + rows)` of `lhs` (`? x k` through `l`, `rows <= MR`) into one
/// zero-padded panel of `MR * k` floats (12 values per k): the ragged last panel of `A`, which
/// the micro-kernel cannot read in place.
pub(super) fn pack_a_panel(out: &mut [f32], lhs: &[f32], l: MatRef, row0: usize, rows: usize, k: usize) {
    let out = &mut out[..MR * k];
    if l.col_stride == 1 {
        // Row-major: read each row contiguously, write it down its column of the panel.
        for r in 0..rows {
            let base = l.offset + (row0 + r) * l.row_stride;
            for (o, &v) in out[r..].iter_mut().step_by(MR).zip(&lhs[base..base + k]) {
                *o = v;
            }
        }
        for r in rows..MR {
            out[r..].iter_mut().step_by(MR).for_each(|o| *o = 0.0);
        }
        return;
    }
    for p in 0..k {
        let base = l.offset + row0 * l.row_stride + p * l.col_stride;
        for r in 0..MR {
            out[p * MR + r] = if r < rows {
                lhs[base + r * l.row_stride]
            } else {
                0.0
            };
        }
    }
}

/// Writes the transpose of the 16 x 16 block whose row `i` is the 16 floats at `src[starts[i]..]`:
/// `dst[j * dst_stride + i] = src[starts[i] + j]`.
///
/// # Safety
/// AVX-512F is present; every `starts[i] + 16 <= src` length; `dst` has 16 rows of 16 floats at
/// `dst_stride`.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_16x16(src: *const f32, starts: [usize; 16], dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract bounds every load and store.
    unsafe {
        let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.add(starts[i])));
        // Pairs of rows interleaved, then 2x2 blocks of pairs, then 128-bit lanes in two rounds.
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let (g, j) = (i / 4 * 4, i % 4);
            let (a, b) = (t[g + j / 2], t[g + 2 + j / 2]);
            if j % 2 == 0 {
                _mm512_shuffle_ps::<0x44>(a, b)
            } else {
                _mm512_shuffle_ps::<0xEE>(a, b)
            }
        });
        let v: [__m512; 16] = std::array::from_fn(|i| {
            let (g, j) = (i / 8 * 8, i % 8);
            let (a, b) = (u[g + j % 4], u[g + 4 + j % 4]);
            if j < 4 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xDD>(a, b)
            }
        });
        for i in 0..16 {
            let (a, b) = (v[i % 8], v[8 + i % 8]);
            let w = if i < 8 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xDD>(a, b)
            };
            _mm512_storeu_ps(dst.add(i * dst_stride), w);
        }
    }
}

/// Packs `rhs` (`k x n` through `r`) into `n.div_ceil(NR)` panels of `NR * k` floats.
pub(super) fn pack_b(dst: &mut [f32], rhs: &[f32], r: MatRef, k: usize, n: usize, threads: bool) {
    let panel = |(jp, out): (usize, &mut [f32])| {
        let cols = NR.min(n - jp * NR);
        let j0 = jp * NR;
        if r.col_stride == 1 {
            for (p, row) in out.chunks_exact_mut(NR).enumerate() {
                let base = r.offset + p * r.row_stride + j0;
                row[..cols].copy_from_slice(&rhs[base..base + cols]);
                row[cols..].fill(0.0);
            }
        } else {
            // Transposed view: read each column contiguously (when row_stride is 1), scatter by k,
            // in blocks of TRANSPOSE_K steps so the panel rows being written (TRANSPOSE_K * 128
            // bytes) stay in L1 while all 32 columns pass over them.
            // Full panels of columns stored contiguously in k: 16 x 16 blocks transposed in
            // AVX-512 registers (the element-by-element scatter was 6% of a BERT forward).
            let mut done = 0;
            if cols == NR && r.row_stride == 1 {
                done = k / 16 * 16;
                for p0 in (0..done).step_by(16) {
                    for q0 in [0, 16] {
                        let src = |q: usize| r.offset + (j0 + q0 + q) * r.col_stride + p0;
                        assert!(src(15) + 16 <= rhs.len() && (p0 + 16) * NR <= out.len());
                        // SAFETY: sgemm runs only where AVX-512F is present (`available`); the
                        // assert bounds the 16 reads of 16 floats and the 16 writes.
                        unsafe {
                            transpose_16x16(
                                rhs.as_ptr(),
                                std::array::from_fn(src),
                                out.as_mut_ptr().add(p0 * NR + q0),
                                NR,
                            )
                        };
                    }
                }
            }
            for p0 in (done..k).step_by(TRANSPOSE_K) {
                let p1 = (p0 + TRANSPOSE_K).min(k);
                for q in 0..cols {
                    let base = r.offset + (j0 + q) * r.col_stride;
                    for p in p0..p1 {
                        out[p * NR + q] = rhs[base + p * r.row_stride];
                    }
                }
            }
            for row in out.chunks_exact_mut(NR) {
                row[cols..].fill(0.0);
            }
        }
    };
    if threads && dst.len() >= PARALLEL_PACK {
        dst.par_chunks_mut(NR * k).enumerate().for_each(panel);
    } else {
        dst.chunks_mut(NR * k).enumerate().for_each(panel);
    }
}
