//! The element-wise part of one LSTM step, forward and backward, as single passes over the batch:
//! the recurrence's per-step work besides the `h W_hhᵀ` product. Composed from tensor ops it was a
//! dozen small allocations and strided passes per step (and `tanhf`), which dominated LSTM training.
//!
//! f32 and f64 run natively; other float dtypes compute in f32 and round back.

use kiln_tensor::{DType, FloatDType, Tensor};

type TResult<T> = kiln_tensor::Result<T>;

/// The exponential of the gate activations: [`kiln_tensor::fast_math::FastExp`] (a vectorisable
/// polynomial for f32, libm for f64), since a scalar `expf` per gate dominated LSTM training.
pub(crate) use kiln_tensor::fast_math::FastExp as GateFloat;

/// `σ(x) = 1 / (1 + e^{-x})`; with the saturating exponential it is exactly 1 for large `x`, below
/// 1e-37 for very negative `x`, and never NaN for finite input.
#[inline(always)]
fn sigmoid<F: GateFloat>(x: F) -> F {
    F::one() / (F::one() + (-x).fast_exp())
}

use kiln_tensor::fast_math::fast_tanh as tanh;

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

fn forward_impl<F: GateFloat>(gates: &Tensor, c_prev: &Tensor) -> TResult<(Tensor, Tensor, Tensor, Tensor)> {
    let [b, h] = c_prev.dims2("lstm_cell")?;
    let gs = gates.contiguous_slice::<F>()?;
    let cs = c_prev.contiguous_slice::<F>()?;
    let mut act = vec![F::zero(); b * 4 * h];
    let (mut c_new, mut tanh_c, mut h_new) = (
        vec![F::zero(); b * h],
        vec![F::zero(); b * h],
        vec![F::zero(); b * h],
    );
    // Simple zipped passes (activations, then the cell update) so the compiler vectorises them.
    for (g_row, a_row) in gs.chunks_exact(4 * h).zip(act.chunks_exact_mut(4 * h)) {
        let (g_if, g_go) = g_row.split_at(2 * h);
        let (a_if, a_go) = a_row.split_at_mut(2 * h);
        a_if.iter_mut().zip(g_if).for_each(|(a, &x)| *a = sigmoid(x));
        a_go[..h]
            .iter_mut()
            .zip(&g_go[..h])
            .for_each(|(a, &x)| *a = tanh(x));
        a_go[h..]
            .iter_mut()
            .zip(&g_go[h..])
            .for_each(|(a, &x)| *a = sigmoid(x));
    }
    for (((a_row, c_row), cn_row), (tc_row, h_row)) in act
        .chunks_exact(4 * h)
        .zip(cs.chunks_exact(h))
        .zip(c_new.chunks_exact_mut(h))
        .zip(tanh_c.chunks_exact_mut(h).zip(h_new.chunks_exact_mut(h)))
    {
        let (i, rest) = a_row.split_at(h);
        let (f, rest) = rest.split_at(h);
        let (g, o) = rest.split_at(h);
        for ((cn, &cp), ((&i, &f), &g)) in cn_row.iter_mut().zip(c_row).zip(i.iter().zip(f).zip(g)) {
            *cn = f * cp + i * g;
        }
        for ((tc, hn), (&c, &o)) in tc_row.iter_mut().zip(h_row.iter_mut()).zip(cn_row.iter().zip(o)) {
            *tc = tanh(c);
            *hn = o * *tc;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two positive finite f32s.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn f32_gate_exp_is_within_two_ulp_of_libm() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x <= 88.0 {
            worst = worst.max(ulps(x.fast_exp(), (x as f64).exp() as f32));
            x += 0.0137;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(0f32.fast_exp(), 1.0);
    }

    #[test]
    fn activations_reach_their_limits_and_propagate_nan() {
        for x in [-1e30f32, -500.0, -90.0] {
            assert!((0.0..1e-37).contains(&sigmoid(x)), "{x}");
            assert_eq!(tanh(x), -1.0);
        }
        for x in [90.0f32, 500.0, 1e30] {
            assert_eq!(sigmoid(x), 1.0);
            assert_eq!(tanh(x), 1.0);
        }
        assert!(sigmoid(f32::NAN).is_nan() && tanh(f32::NAN).is_nan());
        for x in [-3.0f32, -0.5, 0.0, 0.25, 2.0] {
            assert!((sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs() < 1e-7);
            assert!((tanh(x) - x.tanh()).abs() < 2e-7, "{x}");
        }
    }
}
