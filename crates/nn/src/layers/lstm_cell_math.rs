//! The element-wise part of one LSTM step, forward and backward, as single passes over the batch:
//! the recurrence's per-step work besides the `h W_hhᵀ` product. Composed from tensor ops it was a
//! dozen small allocations and strided passes per step (and `tanhf`), which dominated LSTM training.
//!
//! f32 and f64 run natively; other float dtypes compute in f32 and round back.

use kiln_tensor::{DType, FloatDType, Tensor};

type TResult<T> = kiln_tensor::Result<T>;

/// `σ(x)`, branching on the sign so `exp` never overflows.
#[inline(always)]
fn sigmoid<F: FloatDType>(x: F) -> F {
    if x >= F::zero() {
        F::one() / (F::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (F::one() + e)
    }
}

/// `tanh(x) = 1 - 2 / (e^{2x} + 1)`: one `exp` instead of libm's slower `tanh`; exact limits ±1
/// (an infinite `exp` gives 1), absolute error within a few ulps of 1.
#[inline(always)]
fn tanh<F: FloatDType>(x: F) -> F {
    let two = F::one() + F::one();
    F::one() - two / ((two * x).exp() + F::one())
}

/// Native dtype of the kernels: f32 and f64 as they are, anything else through f32.
fn native(t: &Tensor) -> TResult<Tensor> {
    match t.dtype() {
        DType::F32 | DType::F64 => Ok(t.clone()),
        _ => t.to_dtype(DType::F32),
    }
}

/// One step forward from the pre-activation `gates` `[B, 4H]` (`[i, f, g, o]`) and `c_prev`
/// `[B, H]`: returns `(act, c, tanh_c, h)` where `act` holds `σ(i), σ(f), tanh(g), σ(o)` `[B, 4H]`,
/// `c = σ(f) c_prev + σ(i) tanh(g)`, and `h = σ(o) tanh(c)`.
pub(crate) fn forward(gates: &Tensor, c_prev: &Tensor) -> TResult<(Tensor, Tensor, Tensor, Tensor)> {
    let dtype = gates.dtype();
    let (g, c) = (native(gates)?, native(&c_prev.to_dtype(gates.dtype())?)?);
    let out = match g.dtype() {
        DType::F64 => forward_impl::<f64>(&g, &c)?,
        _ => forward_impl::<f32>(&g, &c)?,
    };
    if out.0.dtype() == dtype {
        return Ok(out);
    }
    Ok((
        out.0.to_dtype(dtype)?,
        out.1.to_dtype(dtype)?,
        out.2.to_dtype(dtype)?,
        out.3.to_dtype(dtype)?,
    ))
}

fn forward_impl<F: FloatDType>(gates: &Tensor, c_prev: &Tensor) -> TResult<(Tensor, Tensor, Tensor, Tensor)> {
    let [b, h] = c_prev.dims2("lstm_cell")?;
    let gs = gates.contiguous_slice::<F>()?;
    let cs = c_prev.contiguous_slice::<F>()?;
    let mut act = vec![F::zero(); b * 4 * h];
    let (mut c_new, mut tanh_c, mut h_new) = (
        vec![F::zero(); b * h],
        vec![F::zero(); b * h],
        vec![F::zero(); b * h],
    );
    for r in 0..b {
        let (g_row, a_row) = (
            &gs[r * 4 * h..(r + 1) * 4 * h],
            &mut act[r * 4 * h..(r + 1) * 4 * h],
        );
        for j in 0..h {
            let i = sigmoid(g_row[j]);
            let f = sigmoid(g_row[h + j]);
            let g = tanh(g_row[2 * h + j]);
            let o = sigmoid(g_row[3 * h + j]);
            let c = f * cs[r * h + j] + i * g;
            let tc = tanh(c);
            (a_row[j], a_row[h + j], a_row[2 * h + j], a_row[3 * h + j]) = (i, f, g, o);
            c_new[r * h + j] = c;
            tanh_c[r * h + j] = tc;
            h_new[r * h + j] = o * tc;
        }
    }
    Ok((
        Tensor::from_vec(act, [b, 4 * h])?,
        Tensor::from_vec(c_new, [b, h])?,
        Tensor::from_vec(tanh_c, [b, h])?,
        Tensor::from_vec(h_new, [b, h])?,
    ))
}

/// One step backward. `dh` and `dc` (`[B, H]`) are the total gradients reaching `h_t` and `c_t` from
/// the outputs and from step `t + 1`; `act`, `tanh_c`, `c_prev` come from [`forward`]. Returns the
/// gradient of the pre-activation gates `[B, 4H]` and the gradient reaching `c_{t-1}`.
pub(crate) fn backward(
    dh: &Tensor,
    dc: &Tensor,
    act: &Tensor,
    tanh_c: &Tensor,
    c_prev: &Tensor,
) -> TResult<(Tensor, Tensor)> {
    let dtype = dh.dtype();
    let n = |t: &Tensor| native(&t.to_dtype(dtype)?);
    let (dh, dc, act, tanh_c, c_prev) = (n(dh)?, n(dc)?, n(act)?, n(tanh_c)?, n(c_prev)?);
    let (dg, dc_prev) = match dh.dtype() {
        DType::F64 => backward_impl::<f64>(&dh, &dc, &act, &tanh_c, &c_prev)?,
        _ => backward_impl::<f32>(&dh, &dc, &act, &tanh_c, &c_prev)?,
    };
    Ok((dg.to_dtype(dtype)?, dc_prev.to_dtype(dtype)?))
}

fn backward_impl<F: FloatDType>(
    dh: &Tensor,
    dc: &Tensor,
    act: &Tensor,
    tanh_c: &Tensor,
    c_prev: &Tensor,
) -> TResult<(Tensor, Tensor)> {
    let [b, h] = dh.dims2("lstm_cell_backward")?;
    let (dhs, dcs) = (dh.contiguous_slice::<F>()?, dc.contiguous_slice::<F>()?);
    let (acts, tcs, cps) = (
        act.contiguous_slice::<F>()?,
        tanh_c.contiguous_slice::<F>()?,
        c_prev.contiguous_slice::<F>()?,
    );
    let one = F::one();
    let mut dgates = vec![F::zero(); b * 4 * h];
    let mut dc_prev = vec![F::zero(); b * h];
    for r in 0..b {
        let a = &acts[r * 4 * h..(r + 1) * 4 * h];
        let d = &mut dgates[r * 4 * h..(r + 1) * 4 * h];
        for j in 0..h {
            let k = r * h + j;
            let (i, f, g, o) = (a[j], a[h + j], a[2 * h + j], a[3 * h + j]);
            let tc = tcs[k];
            let dct = dcs[k] + dhs[k] * o * (one - tc * tc);
            d[j] = dct * g * i * (one - i);
            d[h + j] = dct * cps[k] * f * (one - f);
            d[2 * h + j] = dct * i * (one - g * g);
            d[3 * h + j] = dhs[k] * tc * o * (one - o);
            dc_prev[k] = dct * f;
        }
    }
    Ok((
        Tensor::from_vec(dgates, [b, 4 * h])?,
        Tensor::from_vec(dc_prev, [b, h])?,
    ))
}
