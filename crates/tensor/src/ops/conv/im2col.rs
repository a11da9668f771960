//! im2col (unfold one image's channels into the rows of a GEMM operand) and its adjoint col2im
//! (scatter-add those rows back into the image).
//!
//! Each channel unfolds into `kh * kw` rows of `oh * ow` elements; row `(ki, kj)` holds, for every
//! output position, the input pixel that kernel tap `(ki, kj)` reads there (zero in the padding).
//! When the convolution has unit strides and keeps the width (`ow == w`, as every "same"
//! convolution does), consecutive output rows read consecutive input rows, so a whole kernel row
//! is one shifted contiguous copy of the plane: the fast path copies it at once and then zeroes
//! the few elements that wrapped around a row edge. Other geometries go row by row.

use super::Geom;
use crate::ops::GemmDType;

/// Range `lo..hi` of output positions `o < out` whose input coordinate `o * s + off - pad` lies in
/// `0..len`.
#[inline]
fn valid_range(off: usize, pad: usize, s: usize, len: usize, out: usize) -> (usize, usize) {
    let lo = if off >= pad { 0 } else { (pad - off).div_ceil(s) };
    let hi = if len + pad <= off {
        0
    } else {
        (len + pad - off).div_ceil(s)
    };
    let lo = lo.min(out);
    (lo, hi.min(out).max(lo))
}

/// Where kernel tap `(ki, kj)` reads: the valid output rows `ylo..yhi` and columns `xlo..xhi`
/// (both non-empty), and the input position of output `(ylo, xlo)`.
#[derive(Clone, Copy)]
struct Tap {
    ylo: usize,
    yhi: usize,
    xlo: usize,
    xhi: usize,
    src_row: usize,
    src_col: usize,
}

impl Tap {
    /// The tap's valid window, or `None` when it reads only padding.
    fn new(g: &Geom, ki: usize, kj: usize) -> Option<Tap> {
        let (ylo, yhi) = valid_range(ki * g.dh, g.ph, g.sh, g.h, g.oh);
        let (xlo, xhi) = valid_range(kj * g.dw, g.pw, g.sw, g.w, g.ow);
        (ylo < yhi && xlo < xhi).then(|| Tap {
            ylo,
            yhi,
            xlo,
            xhi,
            src_row: ylo * g.sh + ki * g.dh - g.ph,
            src_col: xlo * g.sw + kj * g.dw - g.pw,
        })
    }
}

/// The kernel taps of a geometry in row order `(0, 0), (0, 1), ..` (one im2col row each), computed
/// once per convolution rather than once per channel and image.
pub(super) struct Taps(Vec<Option<Tap>>);

impl Taps {
    /// The taps of `g`.
    pub(super) fn new(g: &Geom) -> Taps {
        Taps(
            (0..g.kh)
                .flat_map(|ki| (0..g.kw).map(move |kj| Tap::new(g, ki, kj)))
                .collect(),
        )
    }
}

/// Unit strides and `ow == w`: output row `oy + 1` starts exactly one input row after output row
/// `oy`, so a tap's valid window is one contiguous run of both the row and the plane.
fn rows_are_contiguous(g: &Geom) -> bool {
    g.sh == 1 && g.sw == 1 && g.ow == g.w
}

/// For the contiguous layout: the run `first..last` of a tap's row that maps onto the plane run
/// starting at `src`. Inside it, the elements `oy * ow + xhi .. (oy + 1) * ow + xlo` between two
/// valid windows are wrap-arounds, not reads of this tap.
fn contiguous_run(g: &Geom, t: &Tap) -> (usize, usize, usize) {
    let first = t.ylo * g.ow + t.xlo;
    let last = (t.yhi - 1) * g.ow + t.xhi;
    (first, last, t.src_row * g.w + t.src_col)
}

/// Zero the wrap-around elements of a contiguous run (see [`contiguous_run`]).
fn zero_wraparounds<T: GemmDType>(row: &mut [T], g: &Geom, t: &Tap) {
    for oy in t.ylo..t.yhi - 1 {
        row[oy * g.ow + t.xhi..(oy + 1) * g.ow + t.xlo].fill(T::ZERO);
    }
}

/// Unfold the channels of one image into rows of its im2col matrix: `col` holds, for each channel
/// of `img` (`img.len() / (h * w)` of them), `kh * kw` rows of `oh * ow` elements.
pub(super) fn im2col<T: GemmDType>(img: &[T], col: &mut [T], g: &Geom, taps: &Taps) {
    let (p, hw) = (g.p(), g.h * g.w);
    let rows_per_channel = g.kh * g.kw * p;
    for (plane, rows) in img.chunks_exact(hw).zip(col.chunks_exact_mut(rows_per_channel)) {
        im2col_channel(plane, rows, g, taps);
    }
}

/// [`im2col`] of a single channel: `plane` `[h, w]` into `rows` `[kh * kw, oh * ow]`.
pub(super) fn im2col_channel<T: GemmDType>(plane: &[T], rows: &mut [T], g: &Geom, taps: &Taps) {
    let contiguous = rows_are_contiguous(g);
    for (row, tap) in rows.chunks_exact_mut(g.p()).zip(&taps.0) {
        let Some(t) = *tap else {
            row.fill(T::ZERO);
            continue;
        };
        if contiguous {
            let (first, last, src) = contiguous_run(g, &t);
            row[..first].fill(T::ZERO);
            row[first..last].copy_from_slice(&plane[src..src + last - first]);
            row[last..].fill(T::ZERO);
            zero_wraparounds(row, g, &t);
        } else {
            im2col_tap_rowwise(plane, row, g, &t);
        }
    }
}

/// One tap's row, output row by output row (any strides and widths).
fn im2col_tap_rowwise<T: GemmDType>(plane: &[T], row: &mut [T], g: &Geom, t: &Tap) {
    row[..t.ylo * g.ow].fill(T::ZERO);
    row[t.yhi * g.ow..].fill(T::ZERO);
    for (dy, oy) in (t.ylo..t.yhi).enumerate() {
        let iy = t.src_row + dy * g.sh;
        let src = &plane[iy * g.w..(iy + 1) * g.w];
        let dst = &mut row[oy * g.ow..(oy + 1) * g.ow];
        dst[..t.xlo].fill(T::ZERO);
        dst[t.xhi..].fill(T::ZERO);
        if g.sw == 1 {
            dst[t.xlo..t.xhi].copy_from_slice(&src[t.src_col..t.src_col + t.xhi - t.xlo]);
        } else {
            for (j, d) in dst[t.xlo..t.xhi].iter_mut().enumerate() {
                *d = src[t.src_col + j * g.sw];
            }
        }
    }
}

/// The adjoint of [`im2col_channel`]: scatter-add the rows of one channel back into its plane.
/// `rows` is scratch: the contiguous path zeroes its wrap-around elements before adding whole runs.
pub(super) fn col2im_channel<T: GemmDType>(rows: &mut [T], plane: &mut [T], g: &Geom, taps: &Taps) {
    let contiguous = rows_are_contiguous(g);
    for (row, tap) in rows.chunks_exact_mut(g.p()).zip(&taps.0) {
        let Some(t) = *tap else { continue };
        if contiguous {
            let (first, last, src) = contiguous_run(g, &t);
            zero_wraparounds(row, g, &t);
            add_into(&mut plane[src..src + last - first], &row[first..last]);
        } else {
            col2im_tap_rowwise(row, plane, g, &t);
        }
    }
}

/// One tap's row scattered back output row by output row (any strides and widths).
fn col2im_tap_rowwise<T: GemmDType>(row: &[T], plane: &mut [T], g: &Geom, t: &Tap) {
    for (dy, oy) in (t.ylo..t.yhi).enumerate() {
        let iy = t.src_row + dy * g.sh;
        let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
        let src = &row[oy * g.ow + t.xlo..oy * g.ow + t.xhi];
        if g.sw == 1 {
            add_into(&mut dst[t.src_col..t.src_col + src.len()], src);
        } else {
            for (j, &s) in src.iter().enumerate() {
                let d = &mut dst[t.src_col + j * g.sw];
                *d = d.add(s);
            }
        }
    }
}

/// `dst += src`, element-wise (equal lengths).
#[inline]
fn add_into<T: GemmDType>(dst: &mut [T], src: &[T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = d.add(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn geom(
        h: usize,
        w: usize,
        k: (usize, usize),
        s: (usize, usize),
        p: (usize, usize),
        d: (usize, usize),
    ) -> Option<Geom> {
        let out = |len: usize, k: usize, s: usize, p: usize, d: usize| {
            let eff = d * (k - 1) + 1;
            (eff <= len + 2 * p).then(|| (len + 2 * p - eff) / s + 1)
        };
        Some(Geom {
            n: 1,
            c: 1,
            h,
            w,
            co: 1,
            oh: out(h, k.0, s.0, p.0, d.0)?,
            ow: out(w, k.1, s.1, p.1, d.1)?,
            kh: k.0,
            kw: k.1,
            sh: s.0,
            sw: s.1,
            ph: p.0,
            pw: p.1,
            dh: d.0,
            dw: d.1,
            groups: 1,
            precision: crate::MatmulPrecision::F32,
        })
    }

    /// im2col by its definition: row (ki, kj), column (oy, ox) reads the padded input.
    fn im2col_by_definition(plane: &[f64], g: &Geom) -> Vec<f64> {
        let mut rows = vec![0.0; g.kh * g.kw * g.p()];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let iy = (oy * g.sh + ki * g.dh) as isize - g.ph as isize;
                        let ix = (ox * g.sw + kj * g.dw) as isize - g.pw as isize;
                        if (0..g.h as isize).contains(&iy) && (0..g.w as isize).contains(&ix) {
                            rows[(ki * g.kw + kj) * g.p() + oy * g.ow + ox] =
                                plane[iy as usize * g.w + ix as usize];
                        }
                    }
                }
            }
        }
        rows
    }

    proptest! {
        /// Both paths equal the definition, and col2im is its adjoint: <im2col(x), r> == <x, col2im(r)>.
        #[test]
        fn im2col_matches_definition_and_col2im_is_adjoint(
            h in 1usize..7, w in 1usize..7, kh in 1usize..4, kw in 1usize..4,
            sh in 1usize..3, sw in 1usize..3, ph in 0usize..3, pw in 0usize..3,
            dh in 1usize..3, dw in 1usize..3, seed in 0u64..1000,
        ) {
            let Some(g) = geom(h, w, (kh, kw), (sh, sw), (ph, pw), (dh, dw)) else { return Ok(()) };
            let mut rng = crate::TensorRng::new(seed);
            let plane: Vec<f64> = (0..h * w).map(|_| rng.next_normal()).collect();
            let r: Vec<f64> = (0..g.kh * g.kw * g.p()).map(|_| rng.next_normal()).collect();
            let mut rows = vec![f64::NAN; r.len()];
            let taps = Taps::new(&g);
            im2col_channel(&plane, &mut rows, &g, &taps);
            prop_assert_eq!(&rows, &im2col_by_definition(&plane, &g));
            let mut back = vec![0.0; h * w];
            col2im_channel(&mut r.clone(), &mut back, &g, &taps);
            let lhs: f64 = rows.iter().zip(&r).map(|(a, b)| a * b).sum();
            let rhs: f64 = plane.iter().zip(&back).map(|(a, b)| a * b).sum();
            prop_assert!((lhs - rhs).abs() <= 1e-9 * (1.0 + lhs.abs()), "{} vs {}", lhs, rhs);
        }
    }

    #[test]
    fn same_convolutions_take_the_contiguous_path() {
        assert!(rows_are_contiguous(
            &geom(28, 28, (3, 3), (1, 1), (1, 1), (1, 1)).unwrap()
        ));
        assert!(rows_are_contiguous(
            &geom(9, 9, (5, 5), (1, 1), (2, 2), (1, 1)).unwrap()
        ));
        assert!(!rows_are_contiguous(
            &geom(28, 28, (3, 3), (2, 2), (1, 1), (1, 1)).unwrap()
        ));
        assert!(!rows_are_contiguous(
            &geom(28, 28, (3, 3), (1, 1), (0, 0), (1, 1)).unwrap()
        ));
    }
}
