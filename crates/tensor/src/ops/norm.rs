//! Batch normalisation kernels over `[N, C, ...]` tensors (channels on dimension 1): per-channel
//! statistics, the per-channel affine map, and the training-mode backward pass. Autograd's fused
//! `batch_norm` node is built from them; one pass per step instead of the dozen broadcasting
//! element-wise ops the composed formula costs.
//!
//! The data is seen as `N * C` planes of `S` contiguous elements (`S` = product of the dimensions after
//! the channels, 1 for `[N, C]`); plane `i` belongs to channel `i % C`. Statistics accumulate in f64.
//! f32 and f64 run natively; f16 and bf16 compute in f32.

use rayon::prelude::*;

use crate::{DType, Error, FloatDType, Result, Tensor, WithDType};

/// Elements above which the work is split across threads.
const PARALLEL_ELEMS: usize = 1 << 15;

/// `(N, C, S)` of an input with channels on dimension 1.
fn planes(op: &'static str, x: &Tensor) -> Result<(usize, usize, usize)> {
    let d = x.dims();
    if d.len() < 2 || d[1] == 0 {
        return Err(Error::InvalidArgument {
            op,
            reason: format!(
                "expected a [N, C, ...] tensor with C > 0, got shape {:?}",
                x.shape()
            ),
        });
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

fn check_channel_vec(op: &'static str, what: &str, t: &Tensor, c: usize) -> Result<()> {
    if t.dims() != [c] {
        return Err(Error::InvalidArgument {
            op,
            reason: format!(
                "{what} must have shape [{c}] (one value per channel), got {:?}",
                t.shape()
            ),
        });
    }
    Ok(())
}

/// Apply `f(channel)` to every channel, in parallel when the tensor is large.
fn per_channel<R: Send>(c: usize, elems: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    if elems < PARALLEL_ELEMS || c < 2 {
        (0..c).map(f).collect()
    } else {
        (0..c).into_par_iter().map(f).collect()
    }
}

/// Fill every `s`-element plane of `out` with `f(plane_index, plane)`, in parallel when large.
fn per_plane<F: Send>(out: &mut [F], s: usize, f: impl Fn(usize, &mut [F]) + Sync + Send) {
    if s == 0 {
        return;
    }
    if out.len() < PARALLEL_ELEMS {
        out.chunks_exact_mut(s).enumerate().for_each(|(i, p)| f(i, p));
    } else {
        let min = (PARALLEL_ELEMS / s).max(1);
        out.par_chunks_exact_mut(s)
            .with_min_len(min)
            .enumerate()
            .for_each(|(i, p)| f(i, p));
    }
}

/// Interleaved partial sums of [`shifted_sums`] and [`grad_sums`]: independent chains, so the
/// f64 additions pipeline and vectorise instead of each waiting for the previous one. Lane `j`
/// takes elements `j, j + 16, …`; the lanes are added up in order at the end, so every
/// instruction set gives the same bits.
const LANES: usize = 16;

/// `Σ (v − shift)` and `Σ (v − shift)²` over `plane`, in f64 (see [`LANES`]).
fn shifted_sums<F: FloatDType>(plane: &[F], shift: f64) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(p), crate::simd::Isa::Avx512) = (as_f32(plane), crate::simd::isa()) {
        // SAFETY: `isa()` checked AVX-512F.
        return unsafe { x86::shifted_sums_f32(p, shift) };
    }
    let (mut s, mut q) = ([0f64; LANES], [0f64; LANES]);
    for (i, v) in plane.iter().enumerate() {
        let d = WithDType::to_f64(*v) - shift;
        s[i % LANES] += d;
        q[i % LANES] += d * d;
    }
    (s.iter().sum(), q.iter().sum())
}

/// `Σ g` and `Σ g · (x − mean)` over a plane of `dy` and `x`, in f64 (see [`LANES`]).
fn grad_sums<F: FloatDType>(dy: &[F], x: &[F], mean: f64) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(g), Some(v), crate::simd::Isa::Avx512) = (as_f32(dy), as_f32(x), crate::simd::isa()) {
        // SAFETY: `isa()` checked AVX-512F.
        return unsafe { x86::grad_sums_f32(g, v, mean) };
    }
    let (mut s, mut sx) = ([0f64; LANES], [0f64; LANES]);
    for (i, (g, v)) in dy.iter().zip(x).enumerate() {
        let g = WithDType::to_f64(*g);
        s[i % LANES] += g;
        sx[i % LANES] += g * (WithDType::to_f64(*v) - mean);
    }
    (s.iter().sum(), sx.iter().sum())
}

/// `v` as `&[f32]` when `F` is f32.
fn as_f32<F: FloatDType>(v: &[F]) -> Option<&[f32]> {
    // SAFETY: a `WithDType` whose DTYPE is F32 is f32 (one implementation per dtype).
    (F::DTYPE == DType::F32).then(|| unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<f32>(), v.len()) })
}

/// AVX-512 versions of the f32 sums: 16 lanes in two registers of 8 f64, the same additions as
/// the portable loops (multiply then add, no fused multiply-add).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::LANES;

    /// The lanes of two accumulators, plus the scalar tail `tail(j)` for lanes `0..rest`,
    /// added up in lane order.
    #[target_feature(enable = "avx512f")]
    fn finish(lo: __m512d, hi: __m512d, rest: usize, tail: impl Fn(usize) -> f64) -> f64 {
        let mut lanes = [0f64; LANES];
        // SAFETY: `lanes` holds 16 f64s.
        unsafe {
            _mm512_storeu_pd(lanes.as_mut_ptr(), lo);
            _mm512_storeu_pd(lanes.as_mut_ptr().add(8), hi);
        }
        for (j, l) in lanes.iter_mut().enumerate().take(rest) {
            *l += tail(j);
        }
        lanes.iter().sum()
    }

    /// [`super::shifted_sums`] for f32.
    #[target_feature(enable = "avx512f")]
    pub(super) fn shifted_sums_f32(plane: &[f32], shift: f64) -> (f64, f64) {
        let sh = _mm512_set1_pd(shift);
        let (mut s0, mut s1) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let (mut q0, mut q1) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let chunks = plane.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            // SAFETY: a chunk holds 16 floats.
            let (lo, hi) = unsafe {
                (
                    _mm512_cvtps_pd(_mm256_loadu_ps(c.as_ptr())),
                    _mm512_cvtps_pd(_mm256_loadu_ps(c.as_ptr().add(8))),
                )
            };
            let (d0, d1) = (_mm512_sub_pd(lo, sh), _mm512_sub_pd(hi, sh));
            s0 = _mm512_add_pd(s0, d0);
            s1 = _mm512_add_pd(s1, d1);
            q0 = _mm512_add_pd(q0, _mm512_mul_pd(d0, d0));
            q1 = _mm512_add_pd(q1, _mm512_mul_pd(d1, d1));
        }
        let d = |j: usize| rest[j] as f64 - shift;
        (
            finish(s0, s1, rest.len(), d),
            finish(q0, q1, rest.len(), |j| d(j) * d(j)),
        )
    }

    /// [`super::grad_sums`] for f32.
    #[target_feature(enable = "avx512f")]
    pub(super) fn grad_sums_f32(dy: &[f32], x: &[f32], mean: f64) -> (f64, f64) {
        let m = _mm512_set1_pd(mean);
        let (mut s0, mut s1) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let (mut x0, mut x1) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let n = dy.len().min(x.len()) / LANES * LANES;
        for i in (0..n).step_by(LANES) {
            // SAFETY: `i + 16 <= n`, within both slices.
            let (g0, g1, v0, v1) = unsafe {
                (
                    _mm512_cvtps_pd(_mm256_loadu_ps(dy.as_ptr().add(i))),
                    _mm512_cvtps_pd(_mm256_loadu_ps(dy.as_ptr().add(i + 8))),
                    _mm512_cvtps_pd(_mm256_loadu_ps(x.as_ptr().add(i))),
                    _mm512_cvtps_pd(_mm256_loadu_ps(x.as_ptr().add(i + 8))),
                )
            };
            s0 = _mm512_add_pd(s0, g0);
            s1 = _mm512_add_pd(s1, g1);
            x0 = _mm512_add_pd(x0, _mm512_mul_pd(g0, _mm512_sub_pd(v0, m)));
            x1 = _mm512_add_pd(x1, _mm512_mul_pd(g1, _mm512_sub_pd(v1, m)));
        }
        let rest = dy.len().min(x.len()) - n;
        let g = |j: usize| dy[n + j] as f64;
        (
            finish(s0, s1, rest, g),
            finish(x0, x1, rest, |j| g(j) * (x[n + j] as f64 - mean)),
        )
    }
}

fn stats_impl<F: FloatDType>(x: &Tensor, (n, c, s): (usize, usize, usize)) -> Result<(Tensor, Tensor)> {
    let src = x.contiguous_slice::<F>()?;
    let count = (n * s) as f64;
    let stats = per_channel(c, src.len(), |ch| {
        // Shifted sums (by the channel's first value) keep the one-pass variance accurate.
        let shift = WithDType::to_f64(src[ch * s]);
        let (mut sum, mut sq) = (0.0f64, 0.0f64);
        for img in 0..n {
            let (ps, pq) = shifted_sums(&src[(img * c + ch) * s..(img * c + ch + 1) * s], shift);
            sum += ps;
            sq += pq;
        }
        let mean_shifted = sum / count;
        (
            shift + mean_shifted,
            (sq / count - mean_shifted * mean_shifted).max(0.0),
        )
    });
    let mean: Vec<F> = stats.iter().map(|s| <F as WithDType>::from_f64(s.0)).collect();
    let var: Vec<F> = stats.iter().map(|s| <F as WithDType>::from_f64(s.1)).collect();
    Ok((Tensor::from_vec(mean, [c])?, Tensor::from_vec(var, [c])?))
}

fn affine_impl<F: FloatDType>(x: &Tensor, scale: &Tensor, shift: &Tensor, c: usize) -> Result<Tensor> {
    let src = x.contiguous_slice::<F>()?;
    let (scale, shift) = (scale.to_vec::<F>()?, shift.to_vec::<F>()?);
    let s = x.dims()[2..].iter().product::<usize>();
    let mut out = vec![F::zero(); src.len()];
    per_plane(&mut out, s, |i, o| {
        let (a, b) = (scale[i % c], shift[i % c]);
        for (o, &v) in o.iter_mut().zip(&src[i * s..(i + 1) * s]) {
            *o = v * a + b;
        }
    });
    Tensor::from_vec(out, x.shape().clone())
}

/// The gradients of training-mode batch norm; see [`Tensor::batch_norm_backward`].
fn backward_impl<F: FloatDType>(
    x: &Tensor,
    dy: &Tensor,
    mean: &Tensor,
    inv_std: &Tensor,
    weight: Option<&Tensor>,
    (n, c, s): (usize, usize, usize),
) -> Result<(Tensor, Tensor, Tensor)> {
    let xs = x.contiguous_slice::<F>()?;
    let gs = dy.contiguous_slice::<F>()?;
    let mean: Vec<f64> = mean.to_dtype(DType::F64)?.to_vec()?;
    let inv_std: Vec<f64> = inv_std.to_dtype(DType::F64)?.to_vec()?;
    let w: Vec<f64> = match weight {
        Some(w) => w.to_dtype(DType::F64)?.to_vec()?,
        None => vec![1.0; c],
    };
    // Σ dy and Σ dy·x̂ per channel.
    let sums = per_channel(c, xs.len(), |ch| {
        let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
        for img in 0..n {
            let at = (img * c + ch) * s;
            let (pg, pgx) = grad_sums(&gs[at..at + s], &xs[at..at + s], mean[ch]);
            sdy += pg;
            sdyx += pgx;
        }
        (sdy, sdyx * inv_std[ch])
    });
    let count = (n * s) as f64;
    // dx = k·dy + a·x + b per channel, with k = w·r, a = -k·r·Σdy·x̂/N, b = -k·Σdy/N - a·mean.
    let coef: Vec<(F, F, F)> = (0..c)
        .map(|ch| {
            let (sdy, sdyx) = sums[ch];
            let k = w[ch] * inv_std[ch];
            let a = -k * inv_std[ch] * sdyx / count;
            let b = -k * sdy / count - a * mean[ch];
            let f = <F as WithDType>::from_f64;
            (f(k), f(a), f(b))
        })
        .collect();
    let mut dx = vec![F::zero(); xs.len()];
    per_plane(&mut dx, s, |i, o| {
        let (k, a, b) = coef[i % c];
        let at = i * s;
        for ((o, &g), &v) in o.iter_mut().zip(&gs[at..at + s]).zip(&xs[at..at + s]) {
            *o = k * g + a * v + b;
        }
    });
    let to = |v: Vec<f64>| -> Result<Tensor> {
        Tensor::from_vec(
            v.into_iter().map(<F as WithDType>::from_f64).collect::<Vec<F>>(),
            [c],
        )
    };
    Ok((
        Tensor::from_vec(dx, x.shape().clone())?,
        to(sums.iter().map(|s| s.1).collect())?,
        to(sums.iter().map(|s| s.0).collect())?,
    ))
}

impl Tensor {
    /// Per-channel mean and biased variance of a `[N, C, ...]` tensor (over every dimension but
    /// dimension 1), each of shape `[C]`, as batch norm computes them in training mode.
    pub fn batch_norm_stats(&self) -> Result<(Tensor, Tensor)> {
        const OP: &str = "batch_norm_stats";
        let p = planes(OP, self)?;
        float_dispatch!(OP, self.dtype(), F => stats_impl::<F>(self, p), half => {
            let (m, v) = self.to_dtype(DType::F32)?.batch_norm_stats()?;
            Ok((m.to_dtype(self.dtype())?, v.to_dtype(self.dtype())?))
        })
    }

    /// `x * scale[c] + shift[c]` for a `[N, C, ...]` tensor and `[C]` vectors (batch norm's
    /// normalisation and affine map folded into one pass).
    pub fn channel_affine(&self, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
        const OP: &str = "channel_affine";
        let (_, c, _) = planes(OP, self)?;
        check_channel_vec(OP, "scale", scale, c)?;
        check_channel_vec(OP, "shift", shift, c)?;
        float_dispatch!(OP, self.dtype(), F => affine_impl::<F>(self, scale, shift, c), half => self
            .to_dtype(DType::F32)?
            .channel_affine(&scale.to_dtype(DType::F32)?, &shift.to_dtype(DType::F32)?)?
            .to_dtype(self.dtype()))
    }

    /// The backward pass of training-mode batch norm `y = (x - mean) * inv_std * weight + bias`, where
    /// `mean` and `inv_std` (`[C]`) are the batch's own statistics: returns `(dx, dweight, dbias)`
    /// for the upstream gradient `dy` (same shape as `x`). Without a weight, the scale is 1.
    pub fn batch_norm_backward(
        x: &Tensor,
        dy: &Tensor,
        mean: &Tensor,
        inv_std: &Tensor,
        weight: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "batch_norm_backward";
        let p = planes(OP, x)?;
        if dy.dims() != x.dims() {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!("dy {:?} must have the shape of x {:?}", dy.shape(), x.shape()),
            });
        }
        check_channel_vec(OP, "mean", mean, p.1)?;
        check_channel_vec(OP, "inv_std", inv_std, p.1)?;
        if let Some(w) = weight {
            check_channel_vec(OP, "weight", w, p.1)?;
        }
        let dy = dy.to_dtype(x.dtype())?;
        float_dispatch!(OP, x.dtype(), F => backward_impl::<F>(x, &dy, mean, inv_std, weight, p), half => {
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            let w = weight.map(f).transpose()?;
            let (dx, dw, db) =
                Tensor::batch_norm_backward(&f(x)?, &f(&dy)?, &f(mean)?, &f(inv_std)?, w.as_ref())?;
            Ok((dx.to_dtype(x.dtype())?, dw.to_dtype(x.dtype())?, db.to_dtype(x.dtype())?))
        })
    }
}

/// Rows of `d` elements of a contiguous view, and the row count.
fn rows_of(op: &'static str, x: &Tensor, d: usize) -> Result<usize> {
    if d == 0 || x.dims().last() != Some(&d) {
        return Err(Error::InvalidArgument {
            op,
            reason: format!(
                "expected a tensor whose last dimension is {d}, got shape {:?}",
                x.shape()
            ),
        });
    }
    Ok(x.elem_count() / d)
}

/// `Σ f(x_i)` in f64 over 16 interleaved partial sums folded pairwise: a fixed order for a given
/// length, and a loop the compiler vectorises (a single running sum cannot be).
#[inline(always)]
fn lane_sum<F: FloatDType>(xs: &[F], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; 16];
    let chunks = xs.chunks_exact(16);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(WithDType::to_f64(v))).sum();
    for c in chunks {
        for l in 0..16 {
            acc[l] += f(WithDType::to_f64(c[l]));
        }
    }
    fold16(acc) + tail
}

/// Pairwise fold of 16 partial sums (a fixed tree).
#[inline(always)]
fn fold16<F: Copy + std::ops::Add<Output = F>>(mut acc: [F; 16]) -> F {
    for w in [8, 4, 2, 1] {
        for l in 0..w {
            acc[l] = acc[l] + acc[l + w];
        }
    }
    acc[0]
}

/// One row of [`layer_norm_impl`]: writes `y` and `xhat`, returns `rstd`.
#[inline(always)]
fn layer_norm_row<F: FloatDType>(row: &[F], ws: &[F], bs: &[F], eps: f64, yr: &mut [F], hr: &mut [F]) -> F {
    let d = row.len();
    let mean = lane_sum(row, |v| v) / d as f64;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / d as f64;
    let rs = 1.0 / (var + eps).sqrt();
    let (m, rsf) = (<F as WithDType>::from_f64(mean), <F as WithDType>::from_f64(rs));
    for i in 0..d {
        let h = (row[i] - m) * rsf;
        hr[i] = h;
        yr[i] = h * ws[i] + bs[i];
    }
    rsf
}

/// One row of [`layer_norm_backward_impl`]'s input gradient.
#[inline(always)]
fn layer_norm_row_grad<F: FloatDType>(gr: &[F], hr: &[F], ws: &[F], rstd: F, out: &mut [F]) {
    let d = gr.len();
    let inv_d = <F as WithDType>::from_f64(1.0 / d as f64);
    // dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) * rstd, dxhat = g * w.
    let (mut m1, mut m2) = ([F::zero(); 16], [F::zero(); 16]);
    let full = d / 16 * 16;
    for c in (0..full).step_by(16) {
        for l in 0..16 {
            let dh = gr[c + l] * ws[c + l];
            m1[l] = m1[l] + dh;
            m2[l] = m2[l] + dh * hr[c + l];
        }
    }
    for i in full..d {
        let dh = gr[i] * ws[i];
        m1[0] = m1[0] + dh;
        m2[0] = m2[0] + dh * hr[i];
    }
    let (m1, m2) = (fold16(m1) * inv_d, fold16(m2) * inv_d);
    for i in 0..d {
        out[i] = (gr[i] * ws[i] - m1 - hr[i] * m2) * rstd;
    }
}

/// Column sums `dw += g * xhat`, `db += g` over all rows (f64, row order).
#[inline(always)]
fn layer_norm_param_grads<F: FloatDType>(gs: &[F], hs: &[F], dw: &mut [f64], db: &mut [f64]) {
    let d = dw.len();
    for (gr, hr) in gs.chunks_exact(d).zip(hs.chunks_exact(d)) {
        for i in 0..d {
            let gi = WithDType::to_f64(gr[i]);
            dw[i] += gi * WithDType::to_f64(hr[i]);
            db[i] += gi;
        }
    }
}

crate::multiversion! {
    /// [`layer_norm_row`] for this machine's widest vectors.
    fn layer_norm_row_mv[F: FloatDType](row: &[F], ws: &[F], bs: &[F], eps: f64, yr: &mut [F], hr: &mut [F]) -> F = layer_norm_row[F]
}

crate::multiversion! {
    /// [`layer_norm_row_grad`] for this machine's widest vectors.
    fn layer_norm_row_grad_mv[F: FloatDType](gr: &[F], hr: &[F], ws: &[F], rstd: F, out: &mut [F]) = layer_norm_row_grad[F]
}

crate::multiversion! {
    /// [`layer_norm_param_grads`] for this machine's widest vectors.
    fn layer_norm_param_grads_mv[F: FloatDType](gs: &[F], hs: &[F], dw: &mut [f64], db: &mut [f64]) = layer_norm_param_grads[F]
}

fn layer_norm_impl<F: FloatDType>(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let d = w.elem_count();
    let rows = rows_of("layer_norm", x, d)?;
    let (xs, ws, bs) = (
        x.contiguous_slice::<F>()?,
        w.contiguous_slice::<F>()?,
        b.contiguous_slice::<F>()?,
    );
    let mut y = vec![F::zero(); rows * d];
    let mut xhat = vec![F::zero(); rows * d];
    let mut rstd = vec![F::zero(); rows];
    // Tasks of whole blocks of rows (one row per task would cost more in scheduling than it
    // computes at transformer widths).
    let block = (PARALLEL_ELEMS / 8).div_ceil(d.max(1)).max(1);
    type Block<'a, F> = (((usize, &'a mut [F]), &'a mut [F]), &'a mut [F]);
    let work = |(((bi, yb), hb), sb): Block<'_, F>| {
        let rows = yb.chunks_mut(d).zip(hb.chunks_mut(d)).zip(sb.iter_mut());
        for (i, ((yr, hr), sr)) in rows.enumerate() {
            let r = bi * block + i;
            *sr = layer_norm_row_mv(&xs[r * d..(r + 1) * d], &ws, &bs, eps, yr, hr);
        }
    };
    if rows * d >= PARALLEL_ELEMS {
        y.par_chunks_mut(block * d)
            .enumerate()
            .zip(xhat.par_chunks_mut(block * d))
            .zip(rstd.par_chunks_mut(block))
            .for_each(work);
    } else {
        y.chunks_mut(block * d)
            .enumerate()
            .zip(xhat.chunks_mut(block * d))
            .zip(rstd.chunks_mut(block))
            .for_each(work);
    }
    let shape = x.shape().clone();
    let mut rshape = shape.dims().to_vec();
    if let Some(l) = rshape.last_mut() {
        *l = 1;
    }
    Ok((
        Tensor::from_vec(y, shape.clone())?,
        Tensor::from_vec(xhat, shape)?,
        Tensor::from_vec(rstd, rshape)?,
    ))
}

fn layer_norm_backward_impl<F: FloatDType>(
    g: &Tensor,
    xhat: &Tensor,
    rstd: &Tensor,
    w: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let d = w.elem_count();
    let rows = rows_of("layer_norm_backward", xhat, d)?;
    let (gs, hs) = (g.contiguous_slice::<F>()?, xhat.contiguous_slice::<F>()?);
    let (rs, ws) = (rstd.contiguous_slice::<F>()?, w.contiguous_slice::<F>()?);
    let mut dx = vec![F::zero(); rows * d];
    let row_grad = |(r, out): (usize, &mut [F])| {
        let (gr, hr) = (&gs[r * d..(r + 1) * d], &hs[r * d..(r + 1) * d]);
        layer_norm_row_grad_mv(gr, hr, &ws, rs[r], out)
    };
    if rows * d >= PARALLEL_ELEMS {
        dx.par_chunks_mut(d).enumerate().for_each(row_grad);
    } else {
        dx.chunks_mut(d).enumerate().for_each(row_grad);
    }
    // Parameter gradients: column sums over rows, accumulated in f64 in row order.
    let (mut dw, mut db) = (vec![0f64; d], vec![0f64; d]);
    layer_norm_param_grads_mv(&gs[..rows * d], &hs[..rows * d], &mut dw, &mut db);
    let cast = |v: Vec<f64>| -> Vec<F> { v.into_iter().map(<F as WithDType>::from_f64).collect() };
    Ok((
        Tensor::from_vec(dx, xhat.shape().clone())?,
        Tensor::from_vec(cast(dw), w.shape().clone())?,
        Tensor::from_vec(cast(db), w.shape().clone())?,
    ))
}

impl Tensor {
    /// Layer normalisation over the last dimension with `weight` and `bias` (`[D]`), in one pass
    /// per row (statistics in f64): returns `(y, xhat, rstd)` where `xhat = (x - mean) * rstd` and
    /// `rstd` (`[..., 1]`) is `1 / sqrt(var + eps)`, for [`Tensor::layer_norm_backward`].
    pub fn layer_norm_forward(
        &self,
        weight: &Tensor,
        bias: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "layer_norm";
        let d = weight.elem_count();
        if weight.dims() != [d]
            || bias.dims() != [d]
            || weight.dtype() != self.dtype()
            || bias.dtype() != self.dtype()
        {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!(
                    "weight {:?} and bias {:?} must be [D] of the input's dtype {} (input {:?})",
                    weight.shape(),
                    bias.shape(),
                    self.dtype(),
                    self.shape()
                ),
            });
        }
        if self.cuda().is_some() {
            // From the device's reductions (f64 sums) and element-wise ops.
            let centred = self.sub(&self.mean(-1, true)?)?;
            let rstd = centred.sqr()?.mean(-1, true)?.add_scalar(eps)?.rsqrt()?;
            let xhat = centred.mul(&rstd)?;
            let y = xhat.mul(weight)?.add(bias)?;
            return Ok((y, xhat, rstd));
        }
        float_dispatch!(OP, self.dtype(), F => layer_norm_impl::<F>(self, weight, bias, eps),
            half => Err(Error::UnsupportedDType { op: OP, dtype: self.dtype(), expected: "f32 or f64" }))
    }

    /// The gradients `(dx, dweight, dbias)` of [`Tensor::layer_norm_forward`] given the output
    /// gradient `self`, its `xhat` and `rstd`, and the `weight`.
    pub fn layer_norm_backward(
        &self,
        xhat: &Tensor,
        rstd: &Tensor,
        weight: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "layer_norm_backward";
        if self.shape() != xhat.shape() || self.dtype() != xhat.dtype() {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!("grad {:?} and xhat {:?} must match", self.shape(), xhat.shape()),
            });
        }
        if self.cuda().is_some() {
            // dx = rstd (ĝ - mean(ĝ) - x̂ mean(ĝ x̂)) with ĝ = g w; dw, db summed over the rows.
            let d = weight.elem_count();
            let gw = self.mul(weight)?;
            let inner = gw
                .sub(&gw.mean(-1, true)?)?
                .sub(&xhat.mul(&gw.mul(xhat)?.mean(-1, true)?)?)?;
            let dx = inner.mul(rstd)?;
            let rows = |t: &Tensor| t.reshape([t.elem_count() / d.max(1), d]);
            let dw = rows(&self.mul(xhat)?)?.sum(0usize, false)?;
            let db = rows(self)?.sum(0usize, false)?;
            return Ok((dx, dw, db));
        }
        float_dispatch!(OP, self.dtype(), F => layer_norm_backward_impl::<F>(self, xhat, rstd, weight),
            half => Err(Error::UnsupportedDType { op: OP, dtype: self.dtype(), expected: "f32 or f64" }))
    }
}
