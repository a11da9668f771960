//! Fused causal self-attention kernels.
//!
//! Training: [`Tensor::causal_attention`] takes the packed projections `qkv` `[B, T, 3D]` (queries,
//! keys then values, each split into `H` heads of `D / H` contiguous features, GPT-2's `c_attn`
//! layout) and returns the attended values `[B, T, D]` (heads side by side, ready for the output
//! projection) with the attention probabilities `[B, H, T, T]` that
//! [`Tensor::causal_attention_backward`] needs. One pass per sequence, no permuted copies, no
//! `[B, H, T, T]` score tensor built from masked broadcasts.
//!
//! Inference: [`attend_to_cache`] lets new queries attend over a key/value cache laid out per
//! head (`[H, capacity, dh]`), so a cached head's keys are one contiguous run.
//!
//! Every row's softmax and sums run in a fixed order over its own keys, so the results do not
//! depend on the batch or on the thread count.

use rayon::prelude::*;

pub use super::kv_element::KvElement;
use crate::fast_math::FastExp;
use crate::{Error, FloatDType, Result, Tensor, WithDType};

/// Work (multiply-adds) above which sequences run on several threads.
const PARALLEL_WORK: usize = 1 << 16;

fn attention_dims(op: &'static str, qkv: &Tensor, num_heads: usize) -> Result<(usize, usize, usize)> {
    let &[b, t, three_d] = qkv.dims() else {
        return Err(Error::InvalidArgument {
            op,
            reason: format!("expected qkv [B, T, 3*D], got shape {:?}", qkv.shape()),
        });
    };
    if num_heads == 0 || three_d == 0 || three_d % (3 * num_heads) != 0 {
        return Err(Error::InvalidArgument {
            op,
            reason: format!(
                "the last dimension of qkv ({three_d}) must be 3 * D with D a positive multiple of the {num_heads} heads"
            ),
        });
    }
    Ok((b, t, three_d / 3))
}

/// `Σ a_i b_i` with sixteen independent partial sums folded by halving (vectorises into whole
/// registers; a fixed order for a given length).
#[inline(always)]
pub fn dot<F: FloatDType>(a: &[F], b: &[F]) -> F {
    let mut acc = [F::zero(); 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] = acc[l] + x[l] * y[l];
        }
    }
    for half in [8, 4, 2, 1] {
        for l in 0..half {
            acc[l] = acc[l] + acc[l + half];
        }
    }
    let mut tail = F::zero();
    for (x, y) in ra.iter().zip(rb) {
        tail = tail + *x * *y;
    }
    acc[0] + tail
}

/// `y += a * x`.
#[inline(always)]
fn axpy<F: FloatDType>(y: &mut [F], a: F, x: &[F]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = *y + a * *x;
    }
}

/// Lanes of one register-held accumulator block (two AVX-512 vectors of f32).
const LANES: usize = 32;

/// `out[c0..c0 + W] += Σ_j w_j · row(j)[c0..c0 + W]`, j ascending, in a local array the compiler
/// keeps in registers.
#[inline(always)]
fn add_weighted_block<'a, F: FloatDType, const W: usize>(
    out: &mut [F],
    c0: usize,
    w: &[F],
    row: &impl Fn(usize) -> &'a [F],
) {
    let mut acc = [F::zero(); W];
    acc.copy_from_slice(&out[c0..c0 + W]);
    for (j, &wj) in w.iter().enumerate() {
        let r: &[F; W] = row(j)[c0..c0 + W].try_into().expect("a full block");
        for l in 0..W {
            acc[l] = acc[l] + wj * r[l];
        }
    }
    out[c0..c0 + W].copy_from_slice(&acc);
}

/// `out += Σ_j w_j · row(j)[..out.len()]`, j ascending. Blocks of outputs are summed in local
/// arrays the compiler keeps in registers (an [`axpy`] per `j` would store and reload `out` every
/// time): 64 at a time (four independent AVX-512 chains, so the adds' latency overlaps), then 32;
/// the per-element order of operations is the same as repeated `axpy` whatever the block.
#[inline(always)]
fn add_weighted_rows<'a, F: FloatDType>(out: &mut [F], w: &[F], row: impl Fn(usize) -> &'a [F]) {
    let d = out.len();
    let mut c0 = 0;
    while c0 + 2 * LANES <= d {
        add_weighted_block::<F, { 2 * LANES }>(out, c0, w, &row);
        c0 += 2 * LANES;
    }
    while c0 + LANES <= d {
        add_weighted_block::<F, LANES>(out, c0, w, &row);
        c0 += LANES;
    }
    if c0 < d {
        for (j, &wj) in w.iter().enumerate() {
            axpy(&mut out[c0..], wj, &row(j)[c0..d]);
        }
    }
}

/// `out[..n] = Σ_c q_c · cols[c * stride..][..n]`, c ascending (scores of one query against keys
/// stored transposed, `n` a multiple of 16), in register-held blocks like [`add_weighted_rows`].
#[inline(always)]
fn scores_from_transposed<F: FloatDType>(out: &mut [F], q: &[F], cols: &[F], stride: usize) {
    let n = out.len();
    let full = n / LANES * LANES;
    for c0 in (0..full).step_by(LANES) {
        let mut acc = [F::zero(); LANES];
        for (c, &qc) in q.iter().enumerate() {
            let r: &[F; LANES] = cols[c * stride + c0..c * stride + c0 + LANES]
                .try_into()
                .expect("a full block");
            for l in 0..LANES {
                acc[l] = acc[l] + qc * r[l];
            }
        }
        out[c0..c0 + LANES].copy_from_slice(&acc);
    }
    if full < n {
        out[full..].fill(F::zero());
        for (c, &qc) in q.iter().enumerate() {
            axpy(&mut out[full..], qc, &cols[c * stride + full..c * stride + n]);
        }
    }
}

/// Softmax in place of `s` (finite scores). The maximum and the sum run over 16 interleaved
/// lanes folded in a fixed order, so they vectorise (a single running max or sum cannot).
#[inline(always)]
fn softmax_in_place<F: FastExp>(s: &mut [F]) {
    let (mut mx, mut sum) = ([F::neg_infinity(); 16], [F::zero(); 16]);
    let full = s.len() / 16 * 16;
    for c in s[..full].chunks_exact(16) {
        for l in 0..16 {
            mx[l] = if c[l] > mx[l] { c[l] } else { mx[l] };
        }
    }
    for (l, &v) in s[full..].iter().enumerate() {
        mx[l] = if v > mx[l] { v } else { mx[l] };
    }
    let m = mx
        .iter()
        .fold(F::neg_infinity(), |m, &v| if v > m { v } else { m });
    for v in s.iter_mut() {
        *v = (*v - m).fast_exp();
    }
    for c in s[..full].chunks_exact(16) {
        for l in 0..16 {
            sum[l] = sum[l] + c[l];
        }
    }
    for (l, &v) in s[full..].iter().enumerate() {
        sum[l] = sum[l] + v;
    }
    for w in [8, 4, 2, 1] {
        for l in 0..w {
            sum[l] = sum[l] + sum[l + w];
        }
    }
    let inv = F::one() / sum[0];
    for v in s.iter_mut() {
        *v = *v * inv;
    }
}

/// `n` rounded up to a multiple of 16 (one AVX-512 vector of f32).
#[inline(always)]
fn padded(n: usize) -> usize {
    n.div_ceil(16) * 16
}

/// Copies one head's `dh` features at column `offset` of each of the `t` rows of `x` (row
/// length `stride`) into `dst` as `[dh, tp]` (columns past `t` stay as they are: zero).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn transpose_head<F: Copy>(
    x: &[F],
    stride: usize,
    offset: usize,
    dh: usize,
    t: usize,
    tp: usize,
    dst: &mut [F],
) {
    let dst = &mut dst[..dh * tp];
    for j in 0..t {
        let src = &x[j * stride + offset..j * stride + offset + dh];
        for (col, &v) in dst.chunks_exact_mut(tp).zip(src) {
            col[j] = v;
        }
    }
}

/// Run `f(sequence, out_chunk, probs_chunk)` for every sequence, in parallel when worth it.
fn per_sequence<F: Send>(
    out: &mut [F],
    out_len: usize,
    probs: &mut [F],
    probs_len: usize,
    work: usize,
    f: impl Fn(usize, &mut [F], &mut [F]) + Sync + Send,
) {
    if out_len == 0 {
        return;
    }
    if work >= PARALLEL_WORK {
        out.par_chunks_mut(out_len)
            .zip(probs.par_chunks_mut(probs_len.max(1)))
            .enumerate()
            .for_each(|(i, (o, p))| f(i, o, p));
    } else {
        let items = out.chunks_mut(out_len).zip(probs.chunks_mut(probs_len.max(1)));
        items.enumerate().for_each(|(i, (o, p))| f(i, o, p));
    }
}

/// One sequence of [`forward_impl`]: `x` its `[t, 3d]` projections, `out` its `[t, d]` result,
/// `probs` its `[h, t, t]` probabilities (inlined into [`crate::simd::dispatch`]'s wide code).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_sequence<F: FastExp>(
    x: &[F],
    out: &mut [F],
    probs: &mut [F],
    t: usize,
    d: usize,
    h: usize,
    scale: F,
) {
    let (dh, tp) = (d / h, padded(t));
    // Keys transposed to [dh, tp] (zero-padded): a query's scores are then dh vector updates over
    // its keys instead of one short dot product per key; rows are computed to a multiple of 16
    // keys so no update ends in a scalar remainder loop (the extra scores are dropped).
    let mut kt = vec![F::zero(); dh * tp];
    let mut scores = vec![F::zero(); tp];
    for head in 0..h {
        let (qo, ko, vo) = (head * dh, d + head * dh, 2 * d + head * dh);
        transpose_head(x, 3 * d, ko, dh, t, tp, &mut kt);
        for i in 0..t {
            let q = &x[i * 3 * d + qo..i * 3 * d + qo + dh];
            let n = padded(i + 1);
            let sc = &mut scores[..n];
            scores_from_transposed(sc, q, &kt, tp);
            let row = &mut probs[(head * t + i) * t..(head * t + i) * t + i + 1];
            for (v, &s) in row.iter_mut().zip(sc.iter()) {
                *v = s * scale;
            }
            softmax_in_place(row);
            let o = &mut out[i * d + head * dh..i * d + head * dh + dh];
            add_weighted_rows(o, row, |j| &x[j * 3 * d + vo..j * 3 * d + vo + dh]);
        }
    }
}

crate::multiversion! {
    /// [`forward_sequence`] for this machine's widest vectors.
    fn forward_sequence_mv[F: FastExp](x: &[F], out: &mut [F], probs: &mut [F], t: usize, d: usize, h: usize, scale: F) = forward_sequence[F]
}

crate::multiversion! {
    /// [`backward_sequence`] for this machine's widest vectors.
    fn backward_sequence_mv[F: FloatDType](x: &[F], go: &[F], probs: &[F], gx: &mut [F], t: usize, d: usize, h: usize, scale: F) = backward_sequence[F]
}

crate::multiversion! {
    /// [`cache_group`] for this machine's widest vectors.
    fn cache_group_mv[E: KvElement](q: &[f32], q_stride: usize, heads: usize, keys: &[&[E]], values: &[&[E]], block_len: usize, dh: usize, start: usize, t: usize, scale: f32) -> Vec<f32> = cache_group[E]
}

fn forward_impl<F: FastExp>(
    qkv: &Tensor,
    b: usize,
    t: usize,
    d: usize,
    h: usize,
) -> Result<(Tensor, Tensor)> {
    let src = qkv.contiguous_slice::<F>()?;
    let dh = d / h;
    let scale = <F as WithDType>::from_f64(1.0 / (dh as f64).sqrt());
    let mut out = vec![F::zero(); b * t * d];
    let mut probs = vec![F::zero(); b * h * t * t];
    per_sequence(
        &mut out,
        t * d,
        &mut probs,
        h * t * t,
        b * h * t * t * dh,
        |s, out, probs| {
            let x = &src[s * t * 3 * d..(s + 1) * t * 3 * d];
            forward_sequence_mv(x, out, probs, t, d, h, scale)
        },
    );
    Ok((
        Tensor::from_vec(out, [b, t, d])?,
        Tensor::from_vec(probs, [b, h, t, t])?,
    ))
}

/// One sequence of [`backward_impl`]: `x` its `[t, 3d]` projections, `go` the gradient of its
/// output `[t, d]`, `probs` its `[h, t, t]` probabilities; writes `gx` (`[t, 3d]`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_sequence<F: FloatDType>(
    x: &[F],
    go: &[F],
    probs: &[F],
    gx: &mut [F],
    t: usize,
    d: usize,
    h: usize,
    scale: F,
) {
    let (dh, tp) = (d / h, padded(t));
    let mut ds = vec![F::zero(); tp];
    // Values transposed to [dh, tp] (zero-padded), so dP = dO Vᵀ is dh vector updates per row,
    // computed to a multiple of 16 keys like the forward scores.
    let mut vt = vec![F::zero(); dh * tp];
    for head in 0..h {
        let (qo, ko, vo) = (head * dh, d + head * dh, 2 * d + head * dh);
        let pbase = head * t * t;
        transpose_head(x, 3 * d, vo, dh, t, tp, &mut vt);
        for i in 0..t {
            let p = &probs[pbase + i * t..pbase + i * t + i + 1];
            let g = &go[i * d + head * dh..i * d + head * dh + dh];
            // dP_ij = dO_i · V_j; dS_ij = P_ij (dP_ij - Σ_j P_ij dP_ij).
            let n = padded(i + 1);
            scores_from_transposed(&mut ds[..n], g, &vt, tp);
            let dp = &mut ds[..=i];
            let weighted = dot(p, dp);
            for (dsj, &pj) in dp.iter_mut().zip(p) {
                *dsj = pj * (*dsj - weighted) * scale;
            }
            let q = &x[i * 3 * d + qo..i * 3 * d + qo + dh];
            for (j, (&pj, &dsj)) in p.iter().zip(dp.iter()).enumerate() {
                // dV_j += P_ij dO_i; dK_j += dS_ij Q_i.
                let row = j * 3 * d;
                axpy(&mut gx[row + vo..row + vo + dh], pj, g);
                axpy(&mut gx[row + ko..row + ko + dh], dsj, q);
            }
            // dQ_i = Σ_j dS_ij K_j.
            let dq = &mut gx[i * 3 * d + qo..i * 3 * d + qo + dh];
            add_weighted_rows(dq, dp, |j| &x[j * 3 * d + ko..j * 3 * d + ko + dh]);
        }
    }
}

fn backward_impl<F: FloatDType>(
    qkv: &Tensor,
    probs: &Tensor,
    grad_out: &Tensor,
    b: usize,
    t: usize,
    d: usize,
    h: usize,
) -> Result<Tensor> {
    let src = qkv.contiguous_slice::<F>()?;
    let p_all = probs.contiguous_slice::<F>()?;
    let g_all = grad_out.contiguous_slice::<F>()?;
    let dh = d / h;
    let scale = <F as WithDType>::from_f64(1.0 / (dh as f64).sqrt());
    let mut grad = vec![F::zero(); b * t * 3 * d];
    let mut unused: Vec<F> = vec![F::zero(); b];
    per_sequence(
        &mut grad,
        t * 3 * d,
        &mut unused,
        1,
        2 * b * h * t * t * dh,
        |s, gx, _| {
            let x = &src[s * t * 3 * d..(s + 1) * t * 3 * d];
            let go = &g_all[s * t * d..(s + 1) * t * d];
            let probs = &p_all[s * h * t * t..(s + 1) * h * t * t];
            backward_sequence_mv(x, go, probs, gx, t, d, h, scale)
        },
    );
    Tensor::from_vec(grad, [b, t, 3 * d])
}

impl Tensor {
    /// Causal multi-head self-attention over packed projections `qkv` `[B, T, 3D]` (see the
    /// [module documentation](self)): position `i` of each sequence attends to positions `0..=i`
    /// with `softmax(q·k / sqrt(D/H))`. Returns `(out [B, T, D], probs [B, H, T, T])`; `probs` is
    /// zero above the diagonal. f32 and f64.
    pub fn causal_attention(&self, num_heads: usize) -> Result<(Tensor, Tensor)> {
        const OP: &str = "causal_attention";
        let (b, t, d) = attention_dims(OP, self, num_heads)?;
        float_dispatch!(OP, self.dtype(), F => forward_impl::<F>(self, b, t, d, num_heads),
            half => Err(Error::UnsupportedDType { op: OP, dtype: self.dtype(), expected: "f32 or f64" }))
    }

    /// The gradient with respect to `qkv` (`self`) of [`Tensor::causal_attention`], given its
    /// `probs` and the gradient of its output `grad_out` `[B, T, D]`.
    pub fn causal_attention_backward(
        &self,
        probs: &Tensor,
        grad_out: &Tensor,
        num_heads: usize,
    ) -> Result<Tensor> {
        const OP: &str = "causal_attention_backward";
        let (b, t, d) = attention_dims(OP, self, num_heads)?;
        if probs.dims() != [b, num_heads, t, t] || grad_out.dims() != [b, t, d] {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!(
                    "expected probs [{b}, {num_heads}, {t}, {t}] and grad_out [{b}, {t}, {d}], got {:?} and {:?}",
                    probs.shape(),
                    grad_out.shape()
                ),
            });
        }
        if probs.dtype() != self.dtype() || grad_out.dtype() != self.dtype() {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!(
                    "qkv, probs and grad_out must share a dtype, got {}, {} and {}",
                    self.dtype(),
                    probs.dtype(),
                    grad_out.dtype()
                ),
            });
        }
        float_dispatch!(OP, self.dtype(), F => backward_impl::<F>(self, probs, grad_out, b, t, d, num_heads),
            half => Err(Error::UnsupportedDType { op: OP, dtype: self.dtype(), expected: "f32 or f64" }))
    }
}

/// Positions a grouped cache pass reads per chunk: 64 keys or values of width 64 are 16 KiB, so
/// the chunk stays in L1 while every query head of the group reads it.
const CACHE_CHUNK: usize = 64;

/// The `heads` query heads that share one kv head (grouped-query attention; 1 for plain
/// multi-head attention) over the cached keys and values of that kv head, held in blocks of
/// `block_len` positions (`keys[b]` and `values[b]` start at position `b * block_len`,
/// `[block_len, dh]`). Query head `g` of new position `i` is `q[i * q_stride + g * dh..][..dh]`;
/// the result is `[t, heads * dh]`. Each head's scores, softmax and weighted sum run over the
/// positions in order, so neither the split into blocks nor the grouping changes a bit of it; the
/// positions are visited a chunk at a time for all the heads, so each key and value is read from
/// memory once per group, not once per head. An `f16` cache is widened a chunk at a time into
/// `f32` before the chunk is used.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn cache_group<E: KvElement>(
    q: &[f32],
    q_stride: usize,
    heads: usize,
    keys: &[&[E]],
    values: &[&[E]],
    block_len: usize,
    dh: usize,
    start: usize,
    t: usize,
    scale: f32,
) -> Vec<f32> {
    let width = heads * dh;
    let mut res = vec![0f32; t * width];
    let stride = start + t;
    let mut s = vec![0f32; heads * stride];
    let mut scratch = Vec::new();
    // The chunks of positions `0..n`: (block, offset in it, first position, length).
    let chunks = |n: usize| {
        (0..n.div_ceil(block_len)).flat_map(move |b| {
            let m = (n - b * block_len).min(block_len);
            (0..m)
                .step_by(CACHE_CHUNK)
                .map(move |o| (b, o, b * block_len + o, CACHE_CHUNK.min(m - o)))
        })
    };
    for i in 0..t {
        let n = start + i + 1;
        for (b, o, from, m) in chunks(n) {
            let kb = E::as_f32(&keys[b][o * dh..(o + m) * dh], &mut scratch);
            for g in 0..heads {
                let qi = &q[i * q_stride + g * dh..i * q_stride + g * dh + dh];
                key_scores(&mut s[g * stride + from..g * stride + from + m], qi, kb, scale);
            }
        }
        for g in 0..heads {
            softmax_in_place(&mut s[g * stride..g * stride + n]);
        }
        let out = &mut res[i * width..(i + 1) * width];
        for (b, o, from, m) in chunks(n) {
            let vb = E::as_f32(&values[b][o * dh..(o + m) * dh], &mut scratch);
            for (g, out) in out.chunks_exact_mut(dh).enumerate() {
                let w = &s[g * stride + from..g * stride + from + m];
                add_weighted_rows(out, w, |r| &vb[r * dh..r * dh + dh]);
            }
        }
    }
    res
}

/// `s[o] = dot(q, keys[o · dh..][..dh]) · scale` for every `o < s.len()` (`dh = q.len()`), the
/// scores of one query against a block of cached keys. On AVX-512 with `dh` a multiple of 16 each
/// dot product runs in one register with the halving fold of [`dot`] written out (the compiler's
/// own vectorisation of a dot product per key shuffles lanes through 128-bit registers), so the
/// scores are the same bits on every path.
#[inline(always)]
fn key_scores(s: &mut [f32], q: &[f32], keys: &[f32], scale: f32) {
    let dh = q.len();
    assert!(keys.len() >= s.len() * dh);
    #[cfg(target_arch = "x86_64")]
    if dh.is_multiple_of(16) && crate::simd::isa() == crate::simd::Isa::Avx512 {
        // SAFETY: AVX-512F is present (checked) and every key row lies in `keys` (asserted).
        unsafe { key_scores_avx512(s, q, keys, scale) };
        return;
    }
    for (o, so) in s.iter_mut().enumerate() {
        *so = dot(q, &keys[o * dh..o * dh + dh]) * scale;
    }
}

/// [`key_scores`] in AVX-512 registers (`q.len()` a multiple of 16).
///
/// # Safety
/// The CPU supports AVX-512F and `keys` holds `s.len() · q.len()` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx,sse3")]
unsafe fn key_scores_avx512(s: &mut [f32], q: &[f32], keys: &[f32], scale: f32) {
    use std::arch::x86_64::*;
    let dh = q.len();
    // SAFETY: the caller's contract; loads stay inside `q` and key row `o`.
    unsafe {
        // The 16-lane partial sums of `dot` for key row `o`.
        let partials = |o: usize| {
            let k = keys.as_ptr().add(o * dh);
            let mut acc = _mm512_setzero_ps();
            for c in (0..dh).step_by(16) {
                let prod = _mm512_mul_ps(_mm512_loadu_ps(q.as_ptr().add(c)), _mm512_loadu_ps(k.add(c)));
                acc = _mm512_add_ps(acc, prod);
            }
            acc
        };
        let zero = _mm512_setzero_ps();
        let scale16 = _mm512_set1_ps(scale);
        let full = s.len() / 16 * 16;
        for o0 in (0..full).step_by(16) {
            // Sixteen keys folded together: each step adds the same pairs of lanes as `dot`'s
            // halving fold (l + 8, l + 4, l + 2, l + 1) for every key at once, so the scores are
            // the bits of the one-key path below at a fraction of its shuffles.
            let mut v1 = [zero; 8];
            for (p, v) in v1.iter_mut().enumerate() {
                let (a, b) = (partials(o0 + 2 * p), partials(o0 + 2 * p + 1));
                // [a lanes 0-7 | b lanes 0-7] + [a lanes 8-15 | b lanes 8-15].
                *v = _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                    _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
                );
            }
            // 128-bit lane j of v2[c] holds key 4c + j's four partial sums.
            let mut v2 = [zero; 4];
            for (c, v) in v2.iter_mut().enumerate() {
                let (a, b) = (v1[2 * c], v1[2 * c + 1]);
                *v = _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                    _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
                );
            }
            // Lane j of v3[e]: two sums of key 8e + j, then two of key 8e + 4 + j.
            let mut v3 = [zero; 2];
            for (e, v) in v3.iter_mut().enumerate() {
                let (a, b) = (v2[2 * e], v2[2 * e + 1]);
                *v = _mm512_add_ps(
                    _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
                    _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
                );
            }
            // Element 4j + t: key 4t + j.
            let v4 = _mm512_add_ps(
                _mm512_shuffle_ps::<0b10_00_10_00>(v3[0], v3[1]),
                _mm512_shuffle_ps::<0b11_01_11_01>(v3[0], v3[1]),
            );
            let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
            // `dot` adds its (empty) tail: + 0.0.
            let scores = _mm512_mul_ps(_mm512_add_ps(_mm512_permutexvar_ps(order, v4), zero), scale16);
            _mm512_storeu_ps(s.as_mut_ptr().add(o0), scores);
        }
        for (o, so) in s.iter_mut().enumerate().skip(full) {
            let acc = partials(o);
            // Lanes l + 8, then l + 4, l + 2 and l + 1: the fold of `dot`.
            let v8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps::<1>(acc));
            let v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps::<1>(v8));
            let v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
            let v1 = _mm_add_ss(v2, _mm_movehdup_ps(v2));
            // `dot` adds its (empty) tail: + 0.0.
            *so = (_mm_cvtss_f32(v1) + 0.0) * scale;
        }
    }
}

/// Where one sequence's cached keys and values live, as seen by one layer: blocks of
/// `block_len` positions, each laid out `[kv_heads, block_len, head_dim]` (a contiguous cache is
/// a single block whose length is its capacity; a paged cache lists the blocks of its block table
/// in order). `E` is what the cache stores: `f32`, or `f16` (see [`KvElement`]).
#[derive(Clone, Debug)]
pub struct KvBlocks<'a, E = f32> {
    /// The key blocks, in position order.
    pub keys: Vec<&'a [E]>,
    /// The value blocks, in position order.
    pub values: Vec<&'a [E]>,
    /// Positions per block.
    pub block_len: usize,
}

/// `q` holds `t` new positions `[t, H * dh]` (heads side by side); `k_cache` and `v_cache` are
/// `[kv_heads, capacity, dh]` and already hold the keys and values of positions `0..start + t`.
/// Query `i` (absolute position `start + i`) attends to positions `0..=start + i`. Query head
/// `hq` reads cache head `hq / (H / kv_heads)` (grouped-query attention; `kv_heads = H` is plain
/// multi-head attention). Writes `[t, H * dh]` into `out`. Heads run on several threads when the
/// work is large; each head's result is the same either way.
#[allow(clippy::too_many_arguments)]
pub fn attend_to_cache(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    num_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    start: usize,
    t: usize,
    out: &mut [f32],
) {
    assert!(
        start + t <= capacity,
        "attend_to_cache: positions beyond the cache capacity"
    );
    let blocks = KvBlocks {
        keys: vec![k_cache],
        values: vec![v_cache],
        block_len: capacity,
    };
    attend_to_blocks(q, &blocks, num_heads, kv_heads, head_dim, start, t, out);
}

/// [`attend_to_cache`] over a cache held in blocks (a paged KV cache): the blocks must cover
/// positions `0..start + t`. Gives bit for bit what the same keys and values in one contiguous
/// `f32` cache give (for an `f16` cache: the same keys and values widened to `f32`).
#[allow(clippy::too_many_arguments)]
pub fn attend_to_blocks<E: KvElement>(
    q: &[f32],
    kv: &KvBlocks<'_, E>,
    num_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    start: usize,
    t: usize,
    out: &mut [f32],
) {
    let (h, dh, bl) = (num_heads, head_dim, kv.block_len);
    assert!(
        kv_heads > 0 && h % kv_heads == 0,
        "attend_to_blocks: heads must be a multiple of kv_heads"
    );
    assert!(bl > 0 && kv.keys.len() == kv.values.len());
    assert!(
        start + t <= kv.keys.len() * bl,
        "attend_to_blocks: positions beyond the cached blocks"
    );
    assert!(q.len() >= t * h * dh && out.len() >= t * h * dh);
    assert!(kv
        .keys
        .iter()
        .chain(&kv.values)
        .all(|b| b.len() >= kv_heads * bl * dh));
    let group = h / kv_heads;
    let scale = 1.0 / (dh as f32).sqrt();
    // One task per kv head: its group of query heads, `group * dh` columns of every row.
    let kv_head = |kvh: usize| -> Vec<f32> {
        let (from, to) = (kvh * bl * dh, (kvh + 1) * bl * dh);
        let keys: Vec<&[E]> = kv.keys.iter().map(|b| &b[from..to]).collect();
        let values: Vec<&[E]> = kv.values.iter().map(|b| &b[from..to]).collect();
        let q = &q[kvh * group * dh..];
        cache_group_mv(q, h * dh, group, &keys, &values, bl, dh, start, t, scale)
    };
    let work = h * t * (start + t) * dh;
    let per_kv_head: Vec<Vec<f32>> = if work >= PARALLEL_WORK && kv_heads > 1 {
        (0..kv_heads).into_par_iter().map(kv_head).collect()
    } else {
        (0..kv_heads).map(kv_head).collect()
    };
    let width = group * dh;
    for (kvh, res) in per_kv_head.iter().enumerate() {
        for i in 0..t {
            out[i * h * dh + kvh * width..i * h * dh + (kvh + 1) * width]
                .copy_from_slice(&res[i * width..(i + 1) * width]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain reference: per head, scores, causal mask, softmax, weighted values (f64).
    fn reference(x: &[f64], b: usize, t: usize, d: usize, h: usize) -> Vec<f64> {
        let dh = d / h;
        let mut out = vec![0.0; b * t * d];
        for s in 0..b {
            for head in 0..h {
                for i in 0..t {
                    let at = |pos: usize, part: usize, c: usize| {
                        x[(s * t + pos) * 3 * d + part * d + head * dh + c]
                    };
                    let scores: Vec<f64> = (0..=i)
                        .map(|j| (0..dh).map(|c| at(i, 0, c) * at(j, 1, c)).sum::<f64>() / (dh as f64).sqrt())
                        .collect();
                    let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|v| (v - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..dh {
                        out[(s * t + i) * d + head * dh + c] = (0..=i).map(|j| e[j] / z * at(j, 2, c)).sum();
                    }
                }
            }
        }
        out
    }

    fn input(b: usize, t: usize, d: usize) -> Vec<f64> {
        (0..b * t * 3 * d)
            .map(|i| ((i * 37 % 101) as f64 / 50.0 - 1.0) * 0.7)
            .collect()
    }

    #[test]
    fn forward_matches_the_definition() {
        let (b, t, d, h) = (2, 5, 12, 3);
        let x = input(b, t, d);
        let qkv = Tensor::from_vec(x.clone(), [b, t, 3 * d]).unwrap();
        let (out, probs) = qkv.causal_attention(h).unwrap();
        let want = reference(&x, b, t, d, h);
        for (a, w) in out.to_vec::<f64>().unwrap().iter().zip(&want) {
            assert!((a - w).abs() < 1e-12, "{a} vs {w}");
        }
        // Rows sum to one, nothing above the diagonal.
        let p = probs.to_vec::<f64>().unwrap();
        for row in 0..b * h * t {
            let i = row % t;
            let r = &p[row * t..row * t + t];
            assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!(r[i + 1..].iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        // Head width 3 and 20; 18 positions pad the transposed values past one 16-column block.
        for (b, t, d, h) in [(2, 4, 6, 2), (1, 18, 40, 2)] {
            check_backward(b, t, d, h);
        }
    }

    fn check_backward(b: usize, t: usize, d: usize, h: usize) {
        let x = input(b, t, d);
        let go: Vec<f64> = (0..b * t * d)
            .map(|i| ((i * 13 % 17) as f64 / 8.0) - 1.0)
            .collect();
        let loss = |x: &[f64]| -> f64 { reference(x, b, t, d, h).iter().zip(&go).map(|(a, g)| a * g).sum() };
        let qkv = Tensor::from_vec(x.clone(), [b, t, 3 * d]).unwrap();
        let (_, probs) = qkv.causal_attention(h).unwrap();
        let g = qkv
            .causal_attention_backward(&probs, &Tensor::from_vec(go.clone(), [b, t, d]).unwrap(), h)
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
        let eps = 1e-6;
        for i in 0..x.len() {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += eps;
            down[i] -= eps;
            let fd = (loss(&up) - loss(&down)) / (2.0 * eps);
            assert!((fd - g[i]).abs() < 1e-7, "element {i}: {fd} vs {}", g[i]);
        }
    }

    #[test]
    fn cache_attention_matches_the_training_kernel() {
        // Grouped-query off (kv_heads = heads): the cache path equals causal_attention row by row.
        let (t, d, h) = (6, 8, 2);
        let dh = d / h;
        let x: Vec<f32> = input(1, t, d).iter().map(|&v| v as f32).collect();
        let (want, _) = Tensor::from_vec(x.clone(), [1, t, 3 * d])
            .unwrap()
            .causal_attention(h)
            .unwrap();
        let cap = 10;
        let (mut kc, mut vc) = (vec![0f32; h * cap * dh], vec![0f32; h * cap * dh]);
        let mut q = vec![0f32; t * d];
        for i in 0..t {
            q[i * d..i * d + d].copy_from_slice(&x[i * 3 * d..i * 3 * d + d]);
            for head in 0..h {
                let src = i * 3 * d + head * dh;
                kc[(head * cap + i) * dh..(head * cap + i) * dh + dh]
                    .copy_from_slice(&x[src + d..src + d + dh]);
                vc[(head * cap + i) * dh..(head * cap + i) * dh + dh]
                    .copy_from_slice(&x[src + 2 * d..src + 2 * d + dh]);
            }
        }
        // Positions 0..4 as a prefill, then 4 and 5 one at a time.
        let mut out = vec![0f32; t * d];
        attend_to_cache(&q[..4 * d], &kc, &vc, h, h, dh, cap, 0, 4, &mut out[..4 * d]);
        for i in 4..t {
            attend_to_cache(&q[i * d..], &kc, &vc, h, h, dh, cap, i, 1, &mut out[i * d..]);
        }
        for (a, w) in out.iter().zip(want.to_vec::<f32>().unwrap()) {
            assert!((a - w).abs() < 1e-6, "{a} vs {w}");
        }
    }

    #[test]
    fn blocked_cache_gives_the_contiguous_result_bit_for_bit() {
        let (h, kvh, dh, n, t, bl) = (4, 2, 8, 23, 5, 4);
        let start = n - t;
        let val = |i: usize| ((i * 53 % 97) as f32 / 48.0 - 1.0) * 0.9;
        // Contiguous [kv_heads, n, dh].
        let keys: Vec<f32> = (0..kvh * n * dh).map(val).collect();
        let values: Vec<f32> = (0..kvh * n * dh).map(|i| val(i + 7)).collect();
        let q: Vec<f32> = (0..t * h * dh).map(|i| val(i + 3)).collect();
        let mut want = vec![0f32; t * h * dh];
        attend_to_cache(&q, &keys, &values, h, kvh, dh, n, start, t, &mut want);
        // The same positions in blocks of `bl`, stored out of order in a pool.
        let nb = n.div_ceil(bl);
        let order: Vec<usize> = (0..nb).map(|b| (b * 5 + 1) % nb).collect(); // a permutation (gcd(5, 6) = 1)
        let mut pool_k = vec![0f32; nb * kvh * bl * dh];
        let mut pool_v = pool_k.clone();
        for (b, &slot) in order.iter().enumerate() {
            for g in 0..kvh {
                for o in 0..bl.min(n - b * bl) {
                    let src = (g * n + b * bl + o) * dh;
                    let dst = slot * kvh * bl * dh + (g * bl + o) * dh;
                    pool_k[dst..dst + dh].copy_from_slice(&keys[src..src + dh]);
                    pool_v[dst..dst + dh].copy_from_slice(&values[src..src + dh]);
                }
            }
        }
        let size = kvh * bl * dh;
        let blocks = KvBlocks {
            keys: order.iter().map(|&s| &pool_k[s * size..(s + 1) * size]).collect(),
            values: order.iter().map(|&s| &pool_v[s * size..(s + 1) * size]).collect(),
            block_len: bl,
        };
        let mut got = vec![0f32; t * h * dh];
        attend_to_blocks(&q, &blocks, h, kvh, dh, start, t, &mut got);
        assert_eq!(got, want);
    }

    #[test]
    fn an_f16_cache_gives_the_bits_of_its_values_widened_to_f32() {
        use half::f16;
        // Head width 64 (the AVX-512 score path) and 20 (the portable one); 37 positions in
        // blocks of 16 (a partial last block), 3 query heads per kv head.
        for dh in [64, 20] {
            let (h, kvh, n, t, bl) = (6, 2, 37usize, 2, 16);
            let val = |i: usize| ((i * 53 % 97) as f32 / 48.0 - 1.0) * 0.9;
            let nb = n.div_ceil(bl);
            let size = kvh * bl * dh;
            let half: Vec<f16> = (0..2 * nb * size).map(|i| f16::from_f32(val(i))).collect();
            let wide: Vec<f32> = half.iter().map(|v| v.to_f32()).collect();
            let q: Vec<f32> = (0..t * h * dh).map(|i| val(i + 3)).collect();
            let blocks_of = |k0: usize| -> Vec<std::ops::Range<usize>> {
                (0..nb).map(|b| k0 + b * size..k0 + (b + 1) * size).collect()
            };
            let (kr, vr) = (blocks_of(0), blocks_of(nb * size));
            let f16_blocks = KvBlocks {
                keys: kr.iter().map(|r| &half[r.clone()]).collect(),
                values: vr.iter().map(|r| &half[r.clone()]).collect(),
                block_len: bl,
            };
            let f32_blocks = KvBlocks {
                keys: kr.iter().map(|r| &wide[r.clone()]).collect(),
                values: vr.iter().map(|r| &wide[r.clone()]).collect(),
                block_len: bl,
            };
            let (mut got, mut want) = (vec![0f32; t * h * dh], vec![0f32; t * h * dh]);
            attend_to_blocks(&q, &f16_blocks, h, kvh, dh, n - t, t, &mut got);
            attend_to_blocks(&q, &f32_blocks, h, kvh, dh, n - t, t, &mut want);
            assert_eq!(got, want, "head width {dh}");
        }
    }

    #[test]
    fn register_blocked_kernels_keep_the_bits_of_the_plain_loops() {
        let val = |i: usize| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 1.3;
        // Scores: 37 keys (two blocks of 16 folded together, then 5 one by one) of width 64.
        let (dh, n, scale) = (64, 37, 0.125f32);
        let q: Vec<f32> = (0..dh).map(|i| val(i + 11)).collect();
        let keys: Vec<f32> = (0..n * dh).map(val).collect();
        let mut s = vec![0f32; n];
        key_scores(&mut s, &q, &keys, scale);
        for (o, &got) in s.iter().enumerate() {
            let want = dot(&q, &keys[o * dh..(o + 1) * dh]) * scale;
            assert_eq!(got.to_bits(), want.to_bits(), "key {o}");
        }
        // Weighted values: 101 outputs (a 64-block, a 32-block and a tail of 5).
        let (d, rows) = (101, 9);
        let x: Vec<f32> = (0..rows * d).map(|i| val(i + 5)).collect();
        let w: Vec<f32> = (0..rows).map(|j| val(j * 7 + 2)).collect();
        let mut got: Vec<f32> = (0..d).map(|i| val(i + 3)).collect();
        let mut want = got.clone();
        add_weighted_rows(&mut got, &w, |j| &x[j * d..(j + 1) * d]);
        for (j, &wj) in w.iter().enumerate() {
            axpy(&mut want, wj, &x[j * d..(j + 1) * d]);
        }
        assert_eq!(got, want);
    }
}
