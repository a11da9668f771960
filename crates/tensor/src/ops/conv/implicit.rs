//! The forward convolution as an implicit GEMM on kiln's AVX-512 micro-kernel, for stride-1
//! convolutions whose output keeps the input's width (the 3x3 "same" layers of a ResNet, a
//! LeNet's padded 5x5). No im2col matrix is written.
//!
//! With a stride of 1 and `ow == w`, output position `p = oy · w + ox` reads, through kernel tap
//! `(ki, kj)`, the element at flat offset `p + (ki·dh − ph)·w + (kj·dw − pw)` of its channel's
//! plane, or zero where that row or column falls in the padding. So 32 consecutive positions
//! against one tap are one unaligned 32-float load of the plane under a mask, and the masks
//! depend only on the block of positions and the tap: they are computed once per call. Each block
//! of 32 positions gets its `B` panel (`K × 32`, k-major: the micro-kernel's packed layout) built
//! straight from the image by masked loads into a cached buffer, then meets every 12-row panel of
//! the weight, packed once per call. Each output is one kernel call summing its `K` products in
//! ascending order, so results do not depend on the thread count.
//!
//! The gradient with respect to the input of such a convolution is itself one: the weight flipped
//! and transposed, padding `d·(k − 1) − p` ([`grad_input`]), so it runs here too instead of as a
//! GEMM + col2im. The weight gradient ([`accumulate_grad_weight`]) is `Σ_images col · dyᵀ`
//! (`[K, co]`, transposed at the end): 12 rows of `col` at a time are built the same way, as the
//! micro-kernel's `A` read in place, against `dy` of the image packed once as `B`.

use rayon::prelude::*;

use super::{for_each_image, Geom};
use crate::ops::sgemm::{self, SharedDst, MR, NR};
use crate::ops::MatRef;
use crate::MatmulPrecision;

/// Whether [`forward`] computes the convolution `g`.
pub(super) fn fits(g: &Geom) -> bool {
    sgemm::available()
        && g.precision == MatmulPrecision::F32
        && g.sh == 1
        && g.sw == 1
        && g.ow == g.w
        && !g.is_pointwise()
        && g.p() > 0
        && g.k() > 0
        // The smallest kernel computes 4 rows: fewer output channels (the input gradient of a
        // single-channel image's convolution) would waste most of it; the GEMM path does better.
        && g.cog() >= 4
}

/// Whether [`accumulate_grad_weight`] computes the weight gradient of the convolution `g` (its
/// products have `co / groups` columns: below 16, most of each 32-column panel would be padding).
pub(super) fn fits_grad_weight(g: &Geom) -> bool {
    fits(g) && g.cog() >= 16
}

/// Whether [`grad_input`] computes the input gradient of the convolution `g`.
pub(super) fn fits_grad_input(g: &Geom) -> bool {
    g.sh == 1
        && g.sw == 1
        && g.ow == g.w
        && g.ph <= g.dh * (g.kh - 1)
        && g.pw <= g.dw * (g.kw - 1)
        && fits(&flipped(g))
}

/// The taps' flat offsets into a channel plane and, per block of 32 positions, which lanes each
/// tap reads inside the image (bit `l` of `masks[block · taps + tap]`).
struct Plan {
    offsets: Vec<isize>,
    masks: Vec<u32>,
}

impl Plan {
    fn new(g: &Geom) -> Plan {
        let p = g.p();
        let (taps, blocks) = (g.kh * g.kw, p.div_ceil(NR));
        let mut offsets = Vec::with_capacity(taps);
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let dy = (ki * g.dh) as isize - g.ph as isize;
                let dx = (kj * g.dw) as isize - g.pw as isize;
                offsets.push(dy * g.w as isize + dx);
            }
        }
        let mut masks = vec![0u32; blocks * taps];
        // Tap (ki, kj) reads inside the image for output rows `oy` with `0 <= oy + ki·dh − ph < h`
        // and columns likewise: on each such row, one run of positions.
        let valid = |k: usize, d: usize, pad: usize, len: usize, out: usize| {
            let lo = pad.saturating_sub(k * d);
            let hi = (pad + len).saturating_sub(k * d).min(out);
            (lo, hi.max(lo))
        };
        for ki in 0..g.kh {
            let (y0, y1) = valid(ki, g.dh, g.ph, g.h, g.oh);
            for kj in 0..g.kw {
                let (x0, x1) = valid(kj, g.dw, g.pw, g.w, g.ow);
                let t = ki * g.kw + kj;
                for oy in y0..y1 {
                    let (mut pos, end) = (oy * g.w + x0, oy * g.w + x1);
                    while pos < end {
                        let (block, lane) = (pos / NR, pos % NR);
                        let run = (NR - lane).min(end - pos);
                        masks[block * taps + t] |= (u32::MAX >> (NR - run)) << lane;
                        pos += run;
                    }
                }
            }
        }
        Plan { offsets, masks }
    }
}

/// Writes the `B` panel of positions `p0..p0 + 32` of one group of an image: row `c · taps + t`
/// holds, for each of the 32 positions, the value tap `t` reads in channel `c` (zero outside).
///
/// # Safety
/// AVX-512F is present; `img` is the group's first channel plane and `cig` planes of `plane`
/// floats follow it; every unmasked lane of `masks` addresses inside them (as [`Plan`] builds
/// them); `panel` holds `cig · taps · 32` floats.
#[target_feature(enable = "avx512f")]
unsafe fn fill_panel(
    img: *const f32,
    (plane, cig): (usize, usize),
    p0: usize,
    offsets: &[isize],
    masks: &[u32],
    panel: *mut f32,
) {
    use std::arch::x86_64::*;
    let taps = offsets.len();
    // SAFETY: the caller's contract; masked-off lanes are neither read nor faulted on, so the
    // addresses of lanes in the padding may lie outside the image.
    unsafe {
        for c in 0..cig {
            let base = img.wrapping_add(c * plane + p0);
            for (t, (&off, &m)) in offsets.iter().zip(masks).enumerate() {
                let src = base.wrapping_offset(off);
                let lo = _mm512_maskz_loadu_ps(m as u16, src);
                let hi = _mm512_maskz_loadu_ps((m >> 16) as u16, src.wrapping_add(16));
                let dst = panel.add((c * taps + t) * NR);
                _mm512_storeu_ps(dst, lo);
                _mm512_storeu_ps(dst.add(16), hi);
            }
        }
    }
}

/// Writes one row of a channel's im2col matrix: what tap offset `off` reads at every position,
/// 32 positions per mask of `masks` (one per block, in order).
///
/// # Safety
/// AVX-512F is present; `plane` is a channel plane and every unmasked lane addresses inside it
/// (as [`Plan`] builds the masks); `row` holds 32 floats per mask.
#[target_feature(enable = "avx512f")]
unsafe fn fill_row(plane: *const f32, off: isize, masks: impl Iterator<Item = u32>, row: *mut f32) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract; masked-off lanes are neither read nor faulted on.
    unsafe {
        let base = plane.wrapping_offset(off);
        for (b, m) in masks.enumerate() {
            let src = base.wrapping_add(b * NR);
            _mm512_storeu_ps(row.add(b * NR), _mm512_maskz_loadu_ps(m as u16, src));
            _mm512_storeu_ps(
                row.add(b * NR + 16),
                _mm512_maskz_loadu_ps((m >> 16) as u16, src.wrapping_add(16)),
            );
        }
    }
}

/// Forward convolution (see the module): `x` `[n, c, h, w]`, `w` `[co, c/g, kh, kw]`, optional
/// bias `[co]`, for a geometry that [`fits`].
pub(super) fn forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, g: &Geom) -> Vec<f32> {
    let (p, k, cog, cig) = (g.p(), g.k(), g.cog(), g.cig());
    let plan = Plan::new(g);
    let taps = g.kh * g.kw;
    let blocks = p.div_ceil(NR);
    // Each group's weight rows in 12-row panels, 12 values per k.
    let weights: Vec<Vec<f32>> = (0..g.groups)
        .map(|grp| {
            let l = MatRef {
                offset: grp * cog * k,
                row_stride: k,
                col_stride: 1,
            };
            sgemm::pack_a(w, l, cog, k)
        })
        .collect();
    let mut out = vec![0f32; g.n * g.cols_len()];
    // One block of positions of one image: build its panel per group, then every weight panel.
    let block = |img: &[f32], dst: SharedDst, b: usize| {
        let mut buf = sgemm::panel_buffer(k * NR);
        let mut edge = [0f32; MR * NR];
        let (p0, cols) = (b * NR, NR.min(p - b * NR));
        let masks = &plan.masks[b * taps..(b + 1) * taps];
        for (grp, wp) in weights.iter().enumerate() {
            let panel = buf.floats().as_mut_ptr();
            // SAFETY: `fits` checked AVX-512; the group's planes lie in `img`, the plan's masks
            // keep every read inside them; the buffer holds k · 32 aligned floats.
            unsafe {
                fill_panel(
                    img.as_ptr().add(grp * cig * g.h * g.w),
                    (g.h * g.w, cig),
                    p0,
                    &plan.offsets,
                    masks,
                    panel,
                )
            };
            for ip in 0..cog.div_ceil(MR) {
                let rows = MR.min(cog - ip * MR);
                // SAFETY: weight panel `ip` holds 12 · k floats; output rows `grp · cog + ip · 12
                // ..+ rows`, columns `p0..p0 + cols` lie in this image's `[co, p]` block, which
                // no other task writes at these columns.
                unsafe {
                    let c = dst.0.add((grp * cog + ip * MR) * p + p0);
                    sgemm::micro_tile(
                        k,
                        (wp.as_ptr().add(ip * MR * k), 1, MR),
                        panel,
                        (c, p, rows, cols),
                        bias.is_some(),
                        &mut edge,
                    );
                }
            }
        }
        sgemm::give_back(buf);
    };
    for_each_image(&mut out, g.n, g.cols_len(), 0, |i, dst, _, threaded| {
        let img = &x[i * g.image_len()..(i + 1) * g.image_len()];
        if let Some(b) = bias {
            for (plane, &bv) in dst.chunks_exact_mut(p).zip(b) {
                plane.fill(bv);
            }
        }
        let dst = SharedDst(dst.as_mut_ptr());
        if threaded {
            (0..blocks).into_par_iter().for_each(|b| block(img, dst, b));
        } else {
            (0..blocks).for_each(|b| block(img, dst, b));
        }
    });
    out
}

/// The convolution whose forward pass is the input gradient of `g`: it maps the column side
/// `[n, co, oh, ow]` to the image side `[n, c, h, w]` with the flipped weight ([`flip_weight`]).
fn flipped(g: &Geom) -> Geom {
    Geom {
        c: g.co,
        h: g.oh,
        w: g.ow,
        co: g.c,
        oh: g.h,
        ow: g.w,
        ph: g.dh * (g.kh - 1) - g.ph,
        pw: g.dw * (g.kw - 1) - g.pw,
        ..*g
    }
}

/// `w` `[co, c/g, kh, kw]` as the weight of [`flipped`]: `[c, co/g, kh, kw]` with each kernel
/// rotated by 180°, group by group.
fn flip_weight(w: &[f32], g: &Geom) -> Vec<f32> {
    let (cog, cig, taps) = (g.cog(), g.cig(), g.kh * g.kw);
    let mut out = vec![0f32; w.len()];
    for grp in 0..g.groups {
        for o in 0..cog {
            for i in 0..cig {
                let src = &w[((grp * cog + o) * cig + i) * taps..][..taps];
                let dst = &mut out[((grp * cig + i) * cog + o) * taps..][..taps];
                for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                    *d = *s;
                }
            }
        }
    }
    out
}

/// The input gradient of a convolution that [`fits_grad_input`]: `dy` `[n, co, oh, ow]`, `w`
/// `[co, c/g, kh, kw]`, optional bias `[c]` added to the result `[n, c, h, w]`.
pub(super) fn grad_input(dy: &[f32], w: &[f32], bias: Option<&[f32]>, g: &Geom) -> Vec<f32> {
    forward(dy, &flip_weight(w, g), bias, &flipped(g))
}

/// Adds the weight gradient of images `images` to `dw` (`[co, c/g, kh, kw]`) for a convolution
/// that [`fits_grad_weight`]: `x` `[n, c, h, w]`, `dy` `[n, co, oh, ow]`. Per group, `dwᵀ`
/// (`[K, co/g]`) sums the images in order; `threaded` shares each image's row blocks of `dwᵀ`
/// out over the pool.
pub(super) fn accumulate_grad_weight(
    x: &[f32],
    dy: &[f32],
    g: &Geom,
    images: std::ops::Range<usize>,
    dw: &mut [f32],
    threaded: bool,
) {
    let (p, k, cog, cig) = (g.p(), g.k(), g.cog(), g.cig());
    let plan = Plan::new(g);
    let taps = g.kh * g.kw;
    let blocks = p.div_ceil(NR);
    // Rows of the in-place `A` block: one 64-byte line longer than the padded positions, so the
    // 12 rows do not share L1 sets when `p` is a multiple of 1024.
    let a_stride = blocks * NR + 16;
    let mut bpanels = sgemm::panel_buffer(cog.div_ceil(NR) * NR * p);
    let mut dwt = vec![0f32; k * cog];
    // Rows `kk0..kk0 + 12` of `col` for one image's group (`img`), times its packed `dyᵀ`.
    let rows_block = |img: &[f32], bp: &[f32], dst: SharedDst, kk0: usize, a: &mut [f32]| {
        let mut edge = [0f32; MR * NR];
        let rows = MR.min(k - kk0);
        for r in 0..MR {
            let row = &mut a[r * a_stride..][..blocks * NR];
            if r >= rows {
                row.fill(0.0);
                continue;
            }
            let (c, t) = ((kk0 + r) / taps, (kk0 + r) % taps);
            // SAFETY: `fits` checked AVX-512; the plan's masks keep every read inside channel
            // `c` of `img`; the row holds `blocks · 32` floats.
            unsafe {
                fill_row(
                    img.as_ptr().add(c * g.h * g.w),
                    plan.offsets[t],
                    plan.masks[t..].iter().step_by(taps).copied(),
                    row.as_mut_ptr(),
                )
            };
        }
        for jp in 0..cog.div_ceil(NR) {
            // SAFETY: the `A` rows hold `p` floats each at `a_stride`; panel `jp` of `bp` holds
            // 32 · p aligned floats; rows `kk0..kk0 + rows`, columns `32 jp..` of `dwᵀ` are this
            // task's alone.
            unsafe {
                sgemm::micro_tile(
                    p,
                    (a.as_ptr(), a_stride, 1),
                    bp.as_ptr().add(jp * NR * p),
                    (dst.0.add(kk0 * cog + jp * NR), cog, rows, NR.min(cog - jp * NR)),
                    true,
                    &mut edge,
                );
            }
        }
    };
    let mut a = vec![0f32; MR * a_stride];
    for grp in 0..g.groups {
        dwt.fill(0.0);
        for i in images.clone() {
            let img = &x[i * g.image_len() + grp * cig * g.h * g.w..][..cig * g.h * g.w];
            // dyᵀ of the group: `[p, cog]`, read from `[cog, p]` at swapped strides.
            let r = MatRef {
                offset: i * g.cols_len() + grp * cog * p,
                row_stride: 1,
                col_stride: p,
            };
            sgemm::pack_b_into(&mut bpanels, dy, r, p, cog);
            let bp = &*bpanels.floats();
            let dst = SharedDst(dwt.as_mut_ptr());
            if threaded {
                (0..k.div_ceil(MR)).into_par_iter().for_each(|ia| {
                    let mut a = vec![0f32; MR * a_stride];
                    rows_block(img, bp, dst, ia * MR, &mut a);
                });
            } else {
                for ia in 0..k.div_ceil(MR) {
                    rows_block(img, bp, dst, ia * MR, &mut a);
                }
            }
        }
        // dw_g[o, kk] += dwᵀ[kk, o]
        for (o, row) in dw[grp * cog * k..(grp + 1) * cog * k]
            .chunks_exact_mut(k)
            .enumerate()
        {
            for (kk, d) in row.iter_mut().enumerate() {
                *d += dwt[kk * cog + o];
            }
        }
    }
    sgemm::give_back(bpanels);
}
