//! Pooling and upsampling of NCHW tensors with PyTorch semantics, plus the backward passes autograd
//! needs.
//!
//! * [`Tensor::max_pool2d`] / [`Tensor::max_pool2d_with_indices`] and
//!   [`Tensor::max_pool2d_backward`];
//! * [`Tensor::avg_pool2d`] and [`Tensor::avg_pool2d_backward`];
//! * [`Tensor::adaptive_avg_pool2d`] and [`Tensor::adaptive_avg_pool2d_backward`];
//! * [`Tensor::upsample_nearest2d`] and [`Tensor::upsample_nearest2d_backward`].
//!
//! Inputs are 4-D `[N, C, H, W]` with non-empty `H` and `W`. f32 and f64 run natively; f16 and bf16
//! compute in f32 and round back; integer dtypes are an [`Error::UnsupportedDType`]. Output sizes
//! round down (PyTorch's `ceil_mode=False`), and padding may be at most half the kernel, as in
//! PyTorch. Every (image, channel) plane is independent; large tensors split the planes across
//! rayon threads.

use rayon::prelude::*;

use crate::backend::DeviceStorage;
use crate::{DType, Error, FloatDType, Result, Shape, Tensor};

/// Work (elements touched) above which planes are processed by several threads.
const PARALLEL_WORK: usize = 1 << 15;

/// Call `f(plane_index, plane)` for every `plane_len`-element chunk of `dst`, on several threads
/// when the total work (`work_per_plane` per chunk) is large.
fn par_planes<T: Send>(
    dst: &mut [T],
    plane_len: usize,
    work_per_plane: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    if plane_len == 0 {
        return;
    }
    let planes = dst.len() / plane_len;
    let work_per_plane = work_per_plane.max(1);
    if planes < 2 || planes * work_per_plane < PARALLEL_WORK {
        dst.chunks_exact_mut(plane_len)
            .enumerate()
            .for_each(|(i, d)| f(i, d));
    } else {
        dst.par_chunks_exact_mut(plane_len)
            .with_min_len((PARALLEL_WORK / work_per_plane).max(1))
            .enumerate()
            .for_each(|(i, d)| f(i, d));
    }
}

/// Geometry of a sliding-window pool over `nc` planes of `h x w`.
#[derive(Clone, Copy, Debug)]
struct PoolGeom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
}

impl PoolGeom {
    /// The same window as a convolution geometry (no dilation, one group), for device kernels.
    fn as_conv(&self) -> crate::backend::ConvGeometry {
        crate::backend::ConvGeometry {
            n: self.n,
            c: self.c,
            h: self.h,
            w: self.w,
            oh: self.oh,
            ow: self.ow,
            kh: self.kh,
            kw: self.kw,
            sh: self.sh,
            sw: self.sw,
            ph: self.ph,
            pw: self.pw,
            dh: 1,
            dw: 1,
            groups: 1,
        }
    }

    /// Clamped window `(y0..y1, x0..x1)` of output `(oy, ox)`, and the window's size when the
    /// padding counts (clamped to the padded input, as PyTorch).
    #[inline]
    fn window(&self, oy: usize, ox: usize) -> (usize, usize, usize, usize, usize) {
        let (y0, x0) = (
            (oy * self.sh) as isize - self.ph as isize,
            (ox * self.sw) as isize - self.pw as isize,
        );
        let y1 = (y0 + self.kh as isize).min((self.h + self.ph) as isize);
        let x1 = (x0 + self.kw as isize).min((self.w + self.pw) as isize);
        let padded_size = ((y1 - y0) * (x1 - x0)) as usize;
        (
            y0.max(0) as usize,
            (y1 as usize).min(self.h),
            x0.max(0) as usize,
            (x1 as usize).min(self.w),
            padded_size,
        )
    }
    fn in_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    fn out_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.oh, self.ow]
    }
}

/// `[N, C, H, W]` with non-zero `H` and `W`, or an error naming `op`.
fn dims4_nonempty(op: &'static str, shape: &Shape) -> Result<[usize; 4]> {
    match *shape.dims() {
        [n, c, h, w] if h > 0 && w > 0 => Ok([n, c, h, w]),
        _ => Err(Error::InvalidShape {
            op,
            shape: shape.clone(),
            reason: "expected a 4-D [N, C, H, W] tensor with non-zero H and W".into(),
        }),
    }
}

/// Validate a sliding-window pool of an input of `shape`.
fn pool_geom(
    op: &'static str,
    shape: &Shape,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<PoolGeom> {
    let [n, c, h, w] = dims4_nonempty(op, shape)?;
    if kernel.0 == 0 || kernel.1 == 0 || stride.0 == 0 || stride.1 == 0 {
        return Err(Error::invalid(
            op,
            format!("kernel {kernel:?} and stride {stride:?} must be positive (input {shape:?})"),
        ));
    }
    if padding.0 > kernel.0 / 2 || padding.1 > kernel.1 / 2 {
        return Err(Error::invalid(
            op,
            format!("padding {padding:?} must be at most half the kernel {kernel:?} (input {shape:?})"),
        ));
    }
    let out =
        |len: usize, k: usize, s: usize, p: usize| (len + 2 * p >= k).then(|| (len + 2 * p - k) / s + 1);
    let (Some(oh), Some(ow)) = (
        out(h, kernel.0, stride.0, padding.0),
        out(w, kernel.1, stride.1, padding.1),
    ) else {
        return Err(Error::InvalidShape {
            op,
            shape: shape.clone(),
            reason: format!("the kernel {kernel:?} is larger than the padded input (padding {padding:?})"),
        });
    };
    Ok(PoolGeom {
        n,
        c,
        h,
        w,
        oh,
        ow,
        kh: kernel.0,
        kw: kernel.1,
        sh: stride.0,
        sw: stride.1,
        ph: padding.0,
        pw: padding.1,
    })
}

/// Error unless `t`'s dims are `expected`.
fn check_dims(op: &'static str, t: &Tensor, expected: &[usize], what: &str) -> Result<()> {
    if t.dims() != expected {
        return Err(Error::ShapeMismatch {
            op,
            lhs: t.shape().clone(),
            rhs: Shape::from(expected),
            reason: format!("{what} has the wrong shape; expected the right-hand shape"),
        });
    }
    Ok(())
}

/// Max over each window of one plane; `idx` (empty when not wanted) receives the flat argmax.
fn max_plane<F: FloatDType>(src: &[F], dst: &mut [F], idx: &mut [i64], g: &PoolGeom) {
    if (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw) == (2, 2, 2, 2, 0, 0) {
        return max_plane_2x2(src, dst, idx, g);
    }
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let (y0, y1, x0, x1, _) = g.window(oy, ox);
            let mut best = F::neg_infinity();
            let mut best_i = y0 * g.w + x0;
            for y in y0..y1 {
                for (x, &v) in src[y * g.w + x0..y * g.w + x1].iter().enumerate() {
                    // NaN wins, as in PyTorch.
                    if v > best || v.is_nan() {
                        best = v;
                        best_i = y * g.w + x0 + x;
                    }
                }
            }
            let o = oy * g.ow + ox;
            dst[o] = best;
            if let Some(slot) = idx.get_mut(o) {
                *slot = best_i as i64;
            }
        }
    }
}

/// The common 2×2, stride-2, unpadded window (LeNet, VGG, ...) without any per-window bounds
/// arithmetic. Same tie and NaN rules as the general loop: the first maximum in row-major order wins.
fn max_plane_2x2<F: FloatDType>(src: &[F], dst: &mut [F], idx: &mut [i64], g: &PoolGeom) {
    let w = g.w;
    #[cfg(target_arch = "x86_64")]
    if F::DTYPE == DType::F32 && crate::simd::isa() == crate::simd::Isa::Avx512 {
        // SAFETY: F is f32 (one `WithDType` per dtype), so the casts keep lengths and layout;
        // `isa()` checked AVX-512F.
        unsafe {
            let src = std::slice::from_raw_parts(src.as_ptr().cast::<f32>(), src.len());
            let dst = std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<f32>(), dst.len());
            return x86::max_2x2_f32(src, dst, idx, (g.oh, g.ow, w));
        }
    }
    for oy in 0..g.oh {
        let (r0, r1) = (
            &src[2 * oy * w..2 * oy * w + w],
            &src[(2 * oy + 1) * w..(2 * oy + 2) * w],
        );
        for ox in 0..g.ow {
            let x = 2 * ox;
            let cands = [
                (r0[x], 2 * oy * w + x),
                (r0[x + 1], 2 * oy * w + x + 1),
                (r1[x], (2 * oy + 1) * w + x),
                (r1[x + 1], (2 * oy + 1) * w + x + 1),
            ];
            let mut best = cands[0];
            for &c in &cands[1..] {
                if best.0.is_nan() {
                    break;
                }
                if c.0 > best.0 || c.0.is_nan() {
                    best = c;
                }
            }
            let o = oy * g.ow + ox;
            dst[o] = best.0;
            if let Some(slot) = idx.get_mut(o) {
                *slot = best.1 as i64;
            }
        }
    }
}

/// The 2×2 max pool of f32 planes on AVX-512, 16 outputs per step.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// A 2×2, stride-2 max pool of a `[h, w]` plane into `oh × ow` outputs (values into `dst`,
    /// flat argmax into `idx` unless it is empty), with the scalar loop's rules: the first
    /// maximum in row-major order wins, and the first NaN wins. Outputs go 16 at a time in
    /// row-major order across row ends (LeNet's rows hold 14 and 5), their four window elements
    /// gathered.
    #[target_feature(enable = "avx512f")]
    pub(super) fn max_2x2_f32(
        src: &[f32],
        dst: &mut [f32],
        idx: &mut [i64],
        (oh, ow, w): (usize, usize, usize),
    ) {
        let total = oh * ow;
        assert!(src.len() >= 2 * oh * w && 2 * ow <= w && dst.len() >= total && w < 1 << 30);
        assert!(idx.is_empty() || idx.len() >= total);
        assert!(src.len() < 1 << 31);
        let (mut oy, mut ox) = (0, 0);
        for o0 in (0..total).step_by(16) {
            let n = 16.min(total - o0);
            // Each lane's window corner, advancing along the output rows.
            let mut corner = [0i32; 16];
            for c in corner.iter_mut().take(n) {
                *c = (2 * oy * w + 2 * ox) as i32;
                ox += 1;
                if ox == ow {
                    (ox, oy) = (0, oy + 1);
                }
            }
            let mask: __mmask16 = if n == 16 { 0xFFFF } else { (1 << n) - 1 };
            // SAFETY: every unmasked lane's window lies in the plane (corner rows `2 oy`,
            // `2 oy + 1` < 2 oh, columns `2 ox + 1` < w); masked lanes are not read; outputs
            // `o0..o0 + n` lie in `dst` and `idx`.
            unsafe {
                let at = _mm512_loadu_si512(corner.as_ptr().cast());
                let gather = |off: i32| {
                    let ix = _mm512_add_epi32(at, _mm512_set1_epi32(off));
                    _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, ix, src.as_ptr())
                };
                let (mut best, mut off) = (gather(0), _mm512_setzero_si512());
                for o in [1, w as i32, w as i32 + 1] {
                    let v = gather(o);
                    let greater = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best);
                    let first_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v)
                        & !_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(best, best);
                    let take = greater | first_nan;
                    best = _mm512_mask_blend_ps(take, best, v);
                    off = _mm512_mask_blend_epi32(take, off, _mm512_set1_epi32(o));
                }
                _mm512_mask_storeu_ps(dst.as_mut_ptr().add(o0), mask, best);
                if !idx.is_empty() {
                    let flat = _mm512_add_epi32(at, off);
                    let p = idx.as_mut_ptr().add(o0);
                    let lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(flat));
                    let hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(flat));
                    _mm512_mask_storeu_epi64(p, mask as u8, lo);
                    _mm512_mask_storeu_epi64(p.add(8), (mask >> 8) as u8, hi);
                }
            }
        }
    }
}

fn max_pool_impl<F: FloatDType>(x: &Tensor, g: &PoolGeom, with_indices: bool) -> Result<(Tensor, Tensor)> {
    let src = x.contiguous_slice::<F>()?;
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    let total = g.n * g.c * ohw;
    let mut out = vec![F::ZERO; total];
    let work = ohw * g.kh * g.kw;
    let mut idx = vec![0i64; if with_indices { total } else { 0 }];
    if with_indices {
        let body =
            |(i, (o, ix)): (usize, (&mut [F], &mut [i64]))| max_plane(&src[i * hw..(i + 1) * hw], o, ix, g);
        if total * g.kh * g.kw < PARALLEL_WORK {
            out.chunks_exact_mut(ohw)
                .zip(idx.chunks_exact_mut(ohw))
                .enumerate()
                .for_each(body);
        } else {
            out.par_chunks_exact_mut(ohw)
                .zip(idx.par_chunks_exact_mut(ohw))
                .with_min_len((PARALLEL_WORK / work).max(1))
                .enumerate()
                .for_each(body);
        }
    } else {
        par_planes(&mut out, ohw, work, |i, o| {
            max_plane(&src[i * hw..(i + 1) * hw], o, &mut [], g)
        });
    }
    Ok((
        Tensor::from_vec(out, g.out_dims())?,
        Tensor::from_vec(idx, if with_indices { g.out_dims() } else { [0; 4] })?,
    ))
}

fn max_pool_backward_impl<F: FloatDType>(
    grad_out: &Tensor,
    indices: &[i64],
    in_dims: [usize; 4],
) -> Result<Tensor> {
    let go = grad_out.contiguous_slice::<F>()?;
    let [n, c, h, w] = in_dims;
    let (hw, ohw) = (h * w, grad_out.dims()[2] * grad_out.dims()[3]);
    let mut out = vec![F::ZERO; n * c * hw];
    par_planes(&mut out, hw, ohw, |i, plane| {
        let range = i * ohw..(i + 1) * ohw;
        for (&gv, &ix) in go[range.clone()].iter().zip(&indices[range]) {
            plane[ix as usize] = plane[ix as usize] + gv;
        }
    });
    Tensor::from_vec(out, in_dims)
}

fn avg_plane<F: FloatDType>(src: &[F], dst: &mut [F], g: &PoolGeom, count_include_pad: bool) {
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let (y0, y1, x0, x1, padded) = g.window(oy, ox);
            let mut sum = F::ZERO;
            for y in y0..y1 {
                for &v in &src[y * g.w + x0..y * g.w + x1] {
                    sum = sum + v;
                }
            }
            let count = if count_include_pad {
                padded
            } else {
                (y1 - y0) * (x1 - x0)
            };
            dst[oy * g.ow + ox] = sum / F::from_f64(count as f64);
        }
    }
}

fn avg_pool_impl<F: FloatDType>(x: &Tensor, g: &PoolGeom, count_include_pad: bool) -> Result<Tensor> {
    let src = x.contiguous_slice::<F>()?;
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    let mut out = vec![F::ZERO; g.n * g.c * ohw];
    par_planes(&mut out, ohw, ohw * g.kh * g.kw, |i, o| {
        avg_plane(&src[i * hw..(i + 1) * hw], o, g, count_include_pad)
    });
    Tensor::from_vec(out, g.out_dims())
}

fn avg_pool_backward_impl<F: FloatDType>(
    grad_out: &Tensor,
    g: &PoolGeom,
    count_include_pad: bool,
) -> Result<Tensor> {
    let go = grad_out.contiguous_slice::<F>()?;
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    let mut out = vec![F::ZERO; g.n * g.c * hw];
    par_planes(&mut out, hw, ohw * g.kh * g.kw, |i, plane| {
        let gp = &go[i * ohw..(i + 1) * ohw];
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let (y0, y1, x0, x1, padded) = g.window(oy, ox);
                let count = if count_include_pad {
                    padded
                } else {
                    (y1 - y0) * (x1 - x0)
                };
                let share = gp[oy * g.ow + ox] / F::from_f64(count as f64);
                for y in y0..y1 {
                    for v in &mut plane[y * g.w + x0..y * g.w + x1] {
                        *v = *v + share;
                    }
                }
            }
        }
    });
    Tensor::from_vec(out, g.in_dims())
}

/// PyTorch's adaptive pooling bin `floor(i * len / out) .. ceil((i + 1) * len / out)`.
#[inline]
fn adaptive_bin(i: usize, len: usize, out: usize) -> (usize, usize) {
    (i * len / out, ((i + 1) * len).div_ceil(out))
}

fn adaptive_avg_impl<F: FloatDType>(
    x: &Tensor,
    [n, c, h, w]: [usize; 4],
    (oh, ow): (usize, usize),
) -> Result<Tensor> {
    let src = x.contiguous_slice::<F>()?;
    let (hw, ohw) = (h * w, oh * ow);
    let mut out = vec![F::ZERO; n * c * ohw];
    par_planes(&mut out, ohw, hw.max(ohw), |i, dst| {
        let plane = &src[i * hw..(i + 1) * hw];
        for oy in 0..oh {
            let (y0, y1) = adaptive_bin(oy, h, oh);
            for ox in 0..ow {
                let (x0, x1) = adaptive_bin(ox, w, ow);
                let mut sum = F::ZERO;
                for y in y0..y1 {
                    for &v in &plane[y * w + x0..y * w + x1] {
                        sum = sum + v;
                    }
                }
                dst[oy * ow + ox] = sum / F::from_f64(((y1 - y0) * (x1 - x0)) as f64);
            }
        }
    });
    Tensor::from_vec(out, [n, c, oh, ow])
}

fn adaptive_avg_backward_impl<F: FloatDType>(grad_out: &Tensor, [n, c, h, w]: [usize; 4]) -> Result<Tensor> {
    let go = grad_out.contiguous_slice::<F>()?;
    let (oh, ow) = (grad_out.dims()[2], grad_out.dims()[3]);
    let (hw, ohw) = (h * w, oh * ow);
    let mut out = vec![F::ZERO; n * c * hw];
    par_planes(&mut out, hw, hw.max(ohw), |i, plane| {
        let gp = &go[i * ohw..(i + 1) * ohw];
        for oy in 0..oh {
            let (y0, y1) = adaptive_bin(oy, h, oh);
            for ox in 0..ow {
                let (x0, x1) = adaptive_bin(ox, w, ow);
                let share = gp[oy * ow + ox] / F::from_f64(((y1 - y0) * (x1 - x0)) as f64);
                for y in y0..y1 {
                    for v in &mut plane[y * w + x0..y * w + x1] {
                        *v = *v + share;
                    }
                }
            }
        }
    });
    Tensor::from_vec(out, [n, c, h, w])
}

/// Source index of each output position of PyTorch's "nearest" upsampling (`upsample_nearest2d`
/// without explicit scales): `min(floor(dst * (in / out)), in - 1)` with the scale in f32.
fn nearest_sources(input: usize, output: usize) -> Vec<usize> {
    if output == input {
        return (0..output).collect();
    }
    if output == 2 * input {
        return (0..output).map(|i| i >> 1).collect();
    }
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| ((i as f32 * scale).floor() as usize).min(input - 1))
        .collect()
}

fn upsample_impl<F: FloatDType>(
    x: &Tensor,
    [n, c, h, w]: [usize; 4],
    (oh, ow): (usize, usize),
) -> Result<Tensor> {
    let src = x.contiguous_slice::<F>()?;
    let (sy, sx) = (nearest_sources(h, oh), nearest_sources(w, ow));
    let (hw, ohw) = (h * w, oh * ow);
    let mut out = vec![F::ZERO; n * c * ohw];
    par_planes(&mut out, ohw, ohw, |i, dst| {
        let plane = &src[i * hw..(i + 1) * hw];
        for (row, &y) in dst.chunks_exact_mut(ow).zip(&sy) {
            let src_row = &plane[y * w..(y + 1) * w];
            for (d, &x) in row.iter_mut().zip(&sx) {
                *d = src_row[x];
            }
        }
    });
    Tensor::from_vec(out, [n, c, oh, ow])
}

fn upsample_backward_impl<F: FloatDType>(grad_out: &Tensor, [n, c, h, w]: [usize; 4]) -> Result<Tensor> {
    let go = grad_out.contiguous_slice::<F>()?;
    let (oh, ow) = (grad_out.dims()[2], grad_out.dims()[3]);
    let (sy, sx) = (nearest_sources(h, oh), nearest_sources(w, ow));
    let (hw, ohw) = (h * w, oh * ow);
    let mut out = vec![F::ZERO; n * c * hw];
    par_planes(&mut out, hw, ohw, |i, plane| {
        let gp = &go[i * ohw..(i + 1) * ohw];
        for (row, &y) in gp.chunks_exact(ow).zip(&sy) {
            let dst_row = &mut plane[y * w..(y + 1) * w];
            for (&gv, &x) in row.iter().zip(&sx) {
                dst_row[x] = dst_row[x] + gv;
            }
        }
    });
    Tensor::from_vec(out, [n, c, h, w])
}

/// Validate a backward pass's `grad_out` against `input_shape`: both 4-D with the same `N` and `C`
/// and non-empty spatial sizes. Returns the input dims.
fn check_grad_out(op: &'static str, grad_out: &Tensor, input_shape: [usize; 4]) -> Result<[usize; 4]> {
    let in_dims = dims4_nonempty(op, &Shape::from(input_shape))?;
    match *grad_out.dims() {
        [n, c, oh, ow] if n == in_dims[0] && c == in_dims[1] && oh > 0 && ow > 0 => Ok(in_dims),
        _ => Err(Error::ShapeMismatch {
            op,
            lhs: grad_out.shape().clone(),
            rhs: Shape::from(input_shape),
            reason: "grad_out must be 4-D [N, C, H_out, W_out] (non-empty) with the input's N and C".into(),
        }),
    }
}

impl Tensor {
    /// 2-D max pooling (`torch.nn.functional.max_pool2d` without dilation or ceil mode) of an
    /// `[N, C, H, W]` tensor. `padding` (at most half the kernel) pads with `-inf`; the output is
    /// `[N, C, (H + 2 * padding - kernel) / stride + 1, ...]`. NaN propagates.
    pub fn max_pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Tensor> {
        const OP: &str = "max_pool2d";
        let g = pool_geom(OP, self.shape(), kernel, stride, padding)?;
        if self.cuda().is_some() {
            return Ok(self.max_pool2d_with_indices(kernel, stride, padding)?.0);
        }
        float_dispatch!(OP, self.dtype(), F => Ok(max_pool_impl::<F>(self, &g, false)?.0),
            half => self.to_dtype(DType::F32)?.max_pool2d(kernel, stride, padding)?.to_dtype(self.dtype()))
    }

    /// [`Tensor::max_pool2d`] that also returns the position of each maximum as an `i64` tensor of
    /// the output's shape, holding the flat index `y * W + x` within the `H x W` plane (as
    /// PyTorch's `return_indices=True`). Feed the indices to [`Tensor::max_pool2d_backward`].
    pub fn max_pool2d_with_indices(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "max_pool2d_with_indices";
        let g = pool_geom(OP, self.shape(), kernel, stride, padding)?;
        if let Some(s) = self.cuda() {
            let (out, idx) = s.max_pool2d(self.layout(), &g.as_conv())?;
            let shape = [g.n, g.c, g.oh, g.ow];
            return Ok((
                Tensor::from_cuda_contiguous(out, shape),
                Tensor::from_cuda_contiguous(idx, shape),
            ));
        }
        float_dispatch!(OP, self.dtype(), F => max_pool_impl::<F>(self, &g, true),
        half => {
            let (out, idx) = self.to_dtype(DType::F32)?.max_pool2d_with_indices(kernel, stride, padding)?;
            Ok((out.to_dtype(self.dtype())?, idx))
        })
    }

    /// Gradient of [`Tensor::max_pool2d`]: each element of `grad_out` is added to the input position
    /// recorded in `indices` (from [`Tensor::max_pool2d_with_indices`], same shape as `grad_out`);
    /// the result has `input_shape` and `grad_out`'s dtype. Out-of-range indices are an error.
    pub fn max_pool2d_backward(
        grad_out: &Tensor,
        indices: &Tensor,
        input_shape: [usize; 4],
    ) -> Result<Tensor> {
        const OP: &str = "max_pool2d_backward";
        let in_dims = check_grad_out(OP, grad_out, input_shape)?;
        if indices.dims() != grad_out.dims() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: grad_out.shape().clone(),
                rhs: indices.shape().clone(),
                reason: "grad_out and indices must have the same shape".into(),
            });
        }
        if indices.dtype() != DType::I64 {
            return Err(Error::UnsupportedDType {
                op: OP,
                dtype: indices.dtype(),
                expected: "i64 indices",
            });
        }
        let hw = in_dims[2] * in_dims[3];
        // Indices are checked on the host (a device tensor's are copied back first).
        let host_idx = indices.to_device(crate::Device::Cpu)?;
        let idx = host_idx.contiguous_slice::<i64>()?;
        if let Some(&bad) = idx.iter().find(|&&i| i < 0 || i as usize >= hw) {
            return Err(Error::IndexOutOfRange {
                op: OP,
                index: bad,
                dim: 2,
                size: hw,
            });
        }
        if let (Some(g), Some(i)) = (grad_out.cuda(), indices.cuda()) {
            let planes = in_dims[0] * in_dims[1];
            let out_hw = grad_out.elem_count().checked_div(planes).unwrap_or(0);
            let grad = g.max_pool2d_backward(grad_out.layout(), (i, indices.layout()), planes, out_hw, hw)?;
            return Ok(Tensor::from_cuda_contiguous(grad, in_dims.to_vec()));
        }
        float_dispatch!(OP, grad_out.dtype(), F => max_pool_backward_impl::<F>(grad_out, &idx, in_dims),
            half => Tensor::max_pool2d_backward(&grad_out.to_dtype(DType::F32)?, indices, input_shape)?
                .to_dtype(grad_out.dtype()))
    }

    /// 2-D average pooling (`torch.nn.functional.avg_pool2d` without ceil mode or divisor
    /// override) of an `[N, C, H, W]` tensor. Padding (at most half the kernel) adds zeros; with
    /// `count_include_pad` they count in each window's divisor, otherwise only real elements do.
    pub fn avg_pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        count_include_pad: bool,
    ) -> Result<Tensor> {
        const OP: &str = "avg_pool2d";
        let g = pool_geom(OP, self.shape(), kernel, stride, padding)?;
        float_dispatch!(OP, self.dtype(), F => avg_pool_impl::<F>(self, &g, count_include_pad),
            half => self.to_dtype(DType::F32)?
                .avg_pool2d(kernel, stride, padding, count_include_pad)?
                .to_dtype(self.dtype()))
    }

    /// Gradient of [`Tensor::avg_pool2d`] with the same parameters: each element of `grad_out`
    /// (the forward output's shape) is spread evenly over its window, divided by the same divisor
    /// as the forward pass. The result has `input_shape`.
    pub fn avg_pool2d_backward(
        grad_out: &Tensor,
        input_shape: [usize; 4],
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        count_include_pad: bool,
    ) -> Result<Tensor> {
        const OP: &str = "avg_pool2d_backward";
        let g = pool_geom(OP, &Shape::from(input_shape), kernel, stride, padding)?;
        check_dims(OP, grad_out, &g.out_dims(), "grad_out")?;
        float_dispatch!(OP, grad_out.dtype(), F => avg_pool_backward_impl::<F>(grad_out, &g, count_include_pad),
            half => Tensor::avg_pool2d_backward(
                &grad_out.to_dtype(DType::F32)?, input_shape, kernel, stride, padding, count_include_pad,
            )?
            .to_dtype(grad_out.dtype()))
    }

    /// Adaptive average pooling (`torch.nn.functional.adaptive_avg_pool2d`) of an `[N, C, H, W]`
    /// tensor to `[N, C, out_h, out_w]`: output `i` averages input rows `floor(i * H / out_h) ..
    /// ceil((i + 1) * H / out_h)` (and likewise for columns). Output sizes must be positive.
    pub fn adaptive_avg_pool2d(&self, out_hw: (usize, usize)) -> Result<Tensor> {
        const OP: &str = "adaptive_avg_pool2d";
        let dims = dims4_nonempty(OP, self.shape())?;
        check_out_hw(OP, self.shape(), out_hw)?;
        float_dispatch!(OP, self.dtype(), F => adaptive_avg_impl::<F>(self, dims, out_hw),
            half => self.to_dtype(DType::F32)?.adaptive_avg_pool2d(out_hw)?.to_dtype(self.dtype()))
    }

    /// Gradient of [`Tensor::adaptive_avg_pool2d`]: `grad_out` `[N, C, out_h, out_w]` spread evenly
    /// over each output's bin of an input of `input_shape`.
    pub fn adaptive_avg_pool2d_backward(grad_out: &Tensor, input_shape: [usize; 4]) -> Result<Tensor> {
        const OP: &str = "adaptive_avg_pool2d_backward";
        let in_dims = check_grad_out(OP, grad_out, input_shape)?;
        float_dispatch!(OP, grad_out.dtype(), F => adaptive_avg_backward_impl::<F>(grad_out, in_dims),
            half => Tensor::adaptive_avg_pool2d_backward(&grad_out.to_dtype(DType::F32)?, input_shape)?
                .to_dtype(grad_out.dtype()))
    }

    /// Nearest-neighbour resize (`torch.nn.functional.interpolate(mode="nearest")`) of an `[N, C,
    /// H, W]` tensor to `[N, C, out_h, out_w]`: output row `i` copies input row `min(floor(i *
    /// (H / out_h)), H - 1)` with the scale computed in f32, exactly as PyTorch (likewise columns).
    /// Output sizes must be positive; shrinking is allowed.
    pub fn upsample_nearest2d(&self, out_hw: (usize, usize)) -> Result<Tensor> {
        const OP: &str = "upsample_nearest2d";
        let dims = dims4_nonempty(OP, self.shape())?;
        check_out_hw(OP, self.shape(), out_hw)?;
        float_dispatch!(OP, self.dtype(), F => upsample_impl::<F>(self, dims, out_hw),
            half => self.to_dtype(DType::F32)?.upsample_nearest2d(out_hw)?.to_dtype(self.dtype()))
    }

    /// Gradient of [`Tensor::upsample_nearest2d`]: each input pixel of an input of `input_shape`
    /// receives the sum of the gradients of the output pixels that copied it.
    pub fn upsample_nearest2d_backward(grad_out: &Tensor, input_shape: [usize; 4]) -> Result<Tensor> {
        const OP: &str = "upsample_nearest2d_backward";
        let in_dims = check_grad_out(OP, grad_out, input_shape)?;
        float_dispatch!(OP, grad_out.dtype(), F => upsample_backward_impl::<F>(grad_out, in_dims),
            half => Tensor::upsample_nearest2d_backward(&grad_out.to_dtype(DType::F32)?, input_shape)?
                .to_dtype(grad_out.dtype()))
    }
}

/// Error unless both requested output sizes are positive.
fn check_out_hw(op: &'static str, shape: &Shape, out_hw: (usize, usize)) -> Result<()> {
    if out_hw.0 == 0 || out_hw.1 == 0 {
        return Err(Error::invalid(
            op,
            format!("output size {out_hw:?} must be positive (input {shape:?})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64], shape: [usize; 4]) -> Tensor {
        Tensor::from_slice(v, shape).unwrap()
    }

    fn arange(n: usize, shape: [usize; 4]) -> Tensor {
        t(&(0..n).map(|v| v as f64).collect::<Vec<_>>(), shape)
    }

    #[test]
    fn max_pool_values_and_indices() {
        // 4x4 plane 0..16, 2x2 windows stride 2: maxima are the bottom-right corners.
        let x = arange(16, [1, 1, 4, 4]);
        let (y, i) = x.max_pool2d_with_indices((2, 2), (2, 2), (0, 0)).unwrap();
        assert_eq!(y.to_vec::<f64>().unwrap(), vec![5., 7., 13., 15.]);
        assert_eq!(i.to_vec::<i64>().unwrap(), vec![5, 7, 13, 15]);
        assert_eq!(i.dtype(), DType::I64);
        // Padding 1 with a 3x3 kernel, stride 2 on a 3x3 plane: windows clamp at the border.
        let x = t(&[1., -5., 2., 0., 3., -1., 4., 9., 8.], [1, 1, 3, 3]);
        let (y, i) = x.max_pool2d_with_indices((3, 3), (2, 2), (1, 1)).unwrap();
        assert_eq!(y.to_vec::<f64>().unwrap(), vec![3., 3., 9., 9.]);
        assert_eq!(i.to_vec::<i64>().unwrap(), vec![4, 4, 7, 7]);
        // Padding is -inf: an all-negative plane keeps its values.
        let neg = x.affine(1.0, -100.0).unwrap();
        assert_eq!(
            neg.max_pool2d((2, 2), (1, 1), (1, 1))
                .unwrap()
                .to_vec::<f64>()
                .unwrap()[0],
            -99.0
        );
        // Backward scatters into the argmax (twice into position 4 and 7).
        let g = t(&[1., 2., 3., 4.], [1, 1, 2, 2]);
        let gx = Tensor::max_pool2d_backward(&g, &i, [1, 1, 3, 3]).unwrap();
        assert_eq!(
            gx.to_vec::<f64>().unwrap(),
            vec![0., 0., 0., 0., 3., 0., 0., 7., 0.]
        );
        // NaN propagates.
        let nan = t(&[1., f64::NAN, 3., 4.], [1, 1, 2, 2]);
        assert!(nan
            .max_pool2d((2, 2), (2, 2), (0, 0))
            .unwrap()
            .to_vec::<f64>()
            .unwrap()[0]
            .is_nan());
        // f16 in, f16 out.
        let h = x
            .to_dtype(DType::F16)
            .unwrap()
            .max_pool2d((3, 3), (2, 2), (1, 1))
            .unwrap();
        assert_eq!(h.dtype(), DType::F16);
        assert_eq!(h.to_f64_vec(), vec![3., 3., 9., 9.]);
    }

    #[test]
    fn wide_f32_max_pool_keeps_the_tie_and_nan_rules() {
        // Rows wide enough for the 16-output AVX-512 path (and a scalar tail), few distinct
        // values (many ties), some NaNs: f32 must pick the f64 (scalar) path's values and indices.
        let (h, w) = (6, 70);
        let v: Vec<f64> = (0..2 * 3 * h * w)
            .map(|i| {
                if i % 37 == 5 {
                    f64::NAN
                } else {
                    ((i * 7919) % 5) as f64
                }
            })
            .collect();
        let x = t(&v, [2, 3, h, w]);
        let (want, want_ix) = x.max_pool2d_with_indices((2, 2), (2, 2), (0, 0)).unwrap();
        let x32 = x.to_dtype(DType::F32).unwrap();
        let (got, got_ix) = x32.max_pool2d_with_indices((2, 2), (2, 2), (0, 0)).unwrap();
        assert_eq!(got_ix.to_vec::<i64>().unwrap(), want_ix.to_vec::<i64>().unwrap());
        // Equal values, NaN where the other has NaN.
        let assert_same = |a: &Tensor, b: &Tensor| {
            let (a, b) = (a.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
            for (x, y) in a.to_vec::<f64>().unwrap().iter().zip(b.to_vec::<f64>().unwrap()) {
                assert!(*x == y || (x.is_nan() && y.is_nan()), "{x} vs {y}");
            }
        };
        assert_same(&got, &want);
        assert_same(&x32.max_pool2d((2, 2), (2, 2), (0, 0)).unwrap(), &want);
    }

    #[test]
    fn avg_pool_values() {
        let x = arange(16, [1, 1, 4, 4]);
        let y = x.avg_pool2d((2, 2), (2, 2), (0, 0), true).unwrap();
        assert_eq!(y.to_vec::<f64>().unwrap(), vec![2.5, 4.5, 10.5, 12.5]);
        // 3x3 plane 1..9, kernel 2 stride 1 padding 1: the corner window holds only x[0,0] = 1.
        let x = arange(9, [1, 1, 3, 3]).add_scalar(1.0).unwrap();
        let inc = x.avg_pool2d((2, 2), (2, 2), (1, 1), true).unwrap();
        assert_eq!(inc.dims(), &[1, 1, 2, 2]);
        // Windows: {1}, {2,3}, {4,7}, {5,6,8,9}.
        assert_eq!(inc.to_vec::<f64>().unwrap(), vec![0.25, 1.25, 2.75, 7.0]);
        let exc = x.avg_pool2d((2, 2), (2, 2), (1, 1), false).unwrap();
        assert_eq!(exc.to_vec::<f64>().unwrap(), vec![1.0, 2.5, 5.5, 7.0]);
        // Backward spreads grad / divisor.
        let g = t(&[4., 4., 4., 4.], [1, 1, 2, 2]);
        let gx = Tensor::avg_pool2d_backward(&g, [1, 1, 3, 3], (2, 2), (2, 2), (1, 1), false).unwrap();
        assert_eq!(
            gx.to_vec::<f64>().unwrap(),
            vec![4., 2., 2., 2., 1., 1., 2., 1., 1.]
        );
        let gx = Tensor::avg_pool2d_backward(&g, [1, 1, 3, 3], (2, 2), (2, 2), (1, 1), true).unwrap();
        assert_eq!(gx.to_vec::<f64>().unwrap(), vec![1.; 9]);
    }

    #[test]
    fn adaptive_avg_pool_five_to_three() {
        // Bins of 5 -> 3: [0, 2), [1, 4), [3, 5).
        let x = t(&[1., 2., 3., 4., 5.], [1, 1, 1, 5]);
        let y = x.adaptive_avg_pool2d((1, 3)).unwrap();
        assert_eq!(y.to_vec::<f64>().unwrap(), vec![1.5, 3.0, 4.5]);
        let gx = Tensor::adaptive_avg_pool2d_backward(&t(&[2., 3., 2.], [1, 1, 1, 3]), [1, 1, 1, 5]).unwrap();
        assert_eq!(gx.to_vec::<f64>().unwrap(), vec![1., 2., 1., 2., 1.]);
        // Global average pooling.
        let x = arange(2 * 3 * 4 * 5, [2, 3, 4, 5]);
        let y = x.adaptive_avg_pool2d((1, 1)).unwrap();
        assert_eq!(y.dims(), &[2, 3, 1, 1]);
        let mean = x.mean([2, 3], false).unwrap().to_vec::<f64>().unwrap();
        for (a, b) in y.to_vec::<f64>().unwrap().iter().zip(&mean) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }

    #[test]
    fn upsample_nearest_copies_pixels() {
        let x = t(&[1., 2., 3., 4.], [1, 1, 2, 2]);
        let y = x.upsample_nearest2d((4, 4)).unwrap();
        assert_eq!(
            y.to_vec::<f64>().unwrap(),
            vec![1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]
        );
        // 2 -> 3 columns: sources floor(i * 2/3) = 0, 0, 1.
        let y = x.upsample_nearest2d((2, 3)).unwrap();
        assert_eq!(y.to_vec::<f64>().unwrap(), vec![1., 1., 2., 3., 3., 4.]);
        let g = Tensor::upsample_nearest2d_backward(&y.ones_like().unwrap(), [1, 1, 2, 2]).unwrap();
        assert_eq!(g.to_vec::<f64>().unwrap(), vec![2., 1., 2., 1.]);
        // PyTorch's f32 scale: 5 -> 3 picks 0, 1, 3.
        assert_eq!(nearest_sources(5, 3), vec![0, 1, 3]);
        assert_eq!(nearest_sources(3, 7), vec![0, 0, 0, 1, 1, 2, 2]);
        // The f32 scale, not exact arithmetic, decides: 11 * f32(26 / 22) rounds below 13.
        assert_eq!(nearest_sources(26, 22)[11], 12);
    }

    #[test]
    fn pool_errors() {
        let x = arange(16, [1, 1, 4, 4]);
        let e = x.max_pool2d((5, 5), (1, 1), (0, 0)).unwrap_err();
        assert!(
            e.to_string().contains("max_pool2d") && e.to_string().contains("[1, 1, 4, 4]"),
            "{e}"
        );
        assert!(x.max_pool2d((2, 2), (0, 1), (0, 0)).is_err());
        assert!(x.avg_pool2d((2, 2), (1, 1), (2, 0), true).is_err());
        assert!(x
            .squeeze(0)
            .unwrap()
            .avg_pool2d((2, 2), (1, 1), (0, 0), true)
            .is_err());
        assert!(x.adaptive_avg_pool2d((0, 2)).is_err());
        assert!(x
            .to_dtype(DType::I64)
            .unwrap()
            .max_pool2d((2, 2), (2, 2), (0, 0))
            .is_err());
        let (_, i) = x.max_pool2d_with_indices((2, 2), (2, 2), (0, 0)).unwrap();
        let g = Tensor::ones([1, 1, 2, 2], DType::F64, crate::Device::Cpu).unwrap();
        assert!(Tensor::max_pool2d_backward(&g, &i, [1, 1, 2, 2]).is_err()); // index 15 >= 4
        assert!(Tensor::max_pool2d_backward(&g, &i, [1, 2, 4, 4]).is_err());
        assert!(Tensor::avg_pool2d_backward(&g, [1, 1, 4, 4], (2, 2), (1, 1), (0, 0), true).is_err());
    }
}
