//! Fast element-wise math for kernels that call `exp`, `tanh` or `erf` per element: a vectorisable
//! f32 exponential within 2 ulp of libm, an f32 `erf` for GELU, and the activations built on them.

use crate::FloatDType;

/// A fast exponential for element-wise kernels: f64 calls libm; f32 uses a branch-free polynomial
/// (below) that the compiler vectorises (a scalar `expf` / `tanhf` call per element dominated LSTM
/// gates and GELU backward passes).
pub trait FastExp: FloatDType {
    /// `e^x`, saturating to a large finite value above `x ≈ 88` (f32), which the activations below
    /// turn into their exact limits.
    fn fast_exp(self) -> Self;
    /// `erf(x)` for activations: f64 calls libm; f32 is branch-free and vectorises (absolute
    /// error within 3e-7, relative error larger near 0, where GELU multiplies it by a small `x`).
    fn fast_erf(self) -> Self;
}

impl FastExp for f64 {
    #[inline(always)]
    fn fast_exp(self) -> f64 {
        self.exp()
    }
    #[inline(always)]
    fn fast_erf(self) -> f64 {
        libm::erf(self)
    }
}

impl FastExp for f32 {
    /// Cody–Waite range reduction `x = n ln2 + r` (|r| ≤ ln2/2) and a degree-6 polynomial for
    /// `e^r` (the Cephes `expf` coefficients), scaled by `2^n` through the exponent bits: within
    /// 2 ulp of `expf` over `[-87.3, 88.3]`, and `e^-87.3` / `e^88.3` (both finite) outside it.
    #[inline(always)]
    fn fast_exp(self) -> f32 {
        // 1.5 * 2^23: adding it rounds to the nearest integer and leaves that integer in the low
        // mantissa bits.
        const ROUND: f32 = 12_582_912.0;
        const LN2_HI: f32 = 0.693_359_4; // 355 / 512 exactly
        const LN2_LO: f32 = -2.121_944_4e-4;
        let x = self.clamp(-87.3, 88.3);
        let t = x * std::f32::consts::LOG2_E + ROUND;
        let n = t - ROUND;
        let r = x - n * LN2_HI - n * LN2_LO;
        let mut p = 1.987_569_1e-4_f32;
        p = p * r + 1.398_199_9e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 1.666_666_5e-1;
        p = p * r + 0.5;
        let e = p * r * r + r + 1.0;
        let n_int = t.to_bits() as i32 - ROUND.to_bits() as i32;
        e * f32::from_bits(((n_int + 127) as u32) << 23)
    }

    /// Abramowitz & Stegun 7.1.26, `1 - t·P(t)·e^{-x²}` with `t = 1 / (1 + p|x|)` (absolute error
    /// 1.5e-7 in exact arithmetic), with the sign of `x`: the form PyTorch's vectorised CPU GELU uses.
    #[inline(always)]
    fn fast_erf(self) -> f32 {
        let a = self.abs();
        let t = 1.0 / (1.0 + 0.327_591_1 * a);
        let p = (((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_72) * t + 0.254_829_6;
        (1.0 - p * t * (-a * a).fast_exp()).copysign(self)
    }
}

/// `e^x` in f64 for `x ≤ 0`, branch-free so a loop of it vectorises: Cody–Waite reduction
/// `x = n ln2 + r` (|r| ≤ ln2/2, `n ln2` split in two parts so `r` is exact to the last bits), the
/// degree-13 Taylor polynomial of `e^r` (truncation below 1e-17 relative), scaled by `2^n`
/// through the exponent bits: within 2 ulp of libm's `exp` on `[-708, 0]`; 0 below -708 (where
/// libm's results are subnormal, negligible beside any sum they enter).
#[inline(always)]
pub fn exp_f64_nonpositive(x: f64) -> f64 {
    // 1.5 * 2^52: adding it rounds to the nearest integer and leaves it in the low mantissa bits.
    const ROUND: f64 = 6_755_399_441_055_744.0;
    const LN2_HI: f64 = 0.693_147_180_369_123_8; // 0x3FE62E42FEE00000: n · LN2_HI is exact
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let under = x < -708.0;
    let x = if under { -708.0 } else { x.min(0.0) };
    let t = x * std::f64::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 6_227_020_800.0; // 1/13!
    for c in [
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    let n_int = t.to_bits() as i64 - ROUND.to_bits() as i64;
    let e = p * f64::from_bits(((n_int + 1023) as u64) << 52);
    if under {
        0.0
    } else {
        e
    }
}

#[inline(always)]
fn softmax_weights_kernel(logits: &[f32], max: f64, temperature: f64, out: &mut [f64]) -> f64 {
    let mut lanes = [0f64; 8];
    let (chunks, rest) = (logits.chunks_exact(8), logits.len() / 8 * 8);
    for (c, o) in chunks.zip(out.chunks_exact_mut(8)) {
        for l in 0..8 {
            o[l] = exp_f64_nonpositive((c[l] as f64 - max) / temperature);
            lanes[l] += o[l];
        }
    }
    for (l, (&v, o)) in logits[rest..].iter().zip(&mut out[rest..]).enumerate() {
        *o = exp_f64_nonpositive((v as f64 - max) / temperature);
        lanes[l] += *o;
    }
    lanes.iter().sum()
}

crate::multiversion! {
    /// The unnormalised softmax weights `out[i] = e^((logits[i] − max) / temperature)` in f64
    /// (`max` at least every logit; `-inf` logits weigh 0) through [`exp_f64_nonpositive`],
    /// vectorised; returns their sum, taken in 8 interleaved partial sums (a fixed order).
    pub fn softmax_weights_f64[](logits: &[f32], max: f64, temperature: f64, out: &mut [f64]) -> f64 = softmax_weights_kernel[]
}

/// `1/√2`.
const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// `1/√(2π)`, the standard normal density at 0.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// BERT's exact GELU, `x · Φ(x) = ½ x (1 + erf(x / √2))` (PyTorch's `gelu(x)`), on
/// [`FastExp::fast_erf`].
#[inline(always)]
pub fn gelu_erf<F: FastExp>(x: F) -> F {
    let c = |v: f64| <F as crate::WithDType>::from_f64(v);
    c(0.5) * x * (F::one() + (x * c(FRAC_1_SQRT_2)).fast_erf())
}

/// The derivative of [`gelu_erf`]: `Φ(x) + x φ(x)` with `φ(x) = e^{-x²/2} / √(2π)`.
#[inline(always)]
pub fn gelu_erf_grad<F: FastExp>(x: F) -> F {
    let c = |v: f64| <F as crate::WithDType>::from_f64(v);
    let cdf = c(0.5) * (F::one() + (x * c(FRAC_1_SQRT_2)).fast_erf());
    cdf + x * (c(-0.5) * x * x).fast_exp() * c(FRAC_1_SQRT_2PI)
}

/// `tanh(x) = 1 - 2 / (e^{2x} + 1)`: one exponential instead of libm's slower `tanh`; exact limits
/// ±1, absolute error within a few ulps of 1.
#[inline(always)]
pub fn fast_tanh<F: FastExp>(x: F) -> F {
    let two = F::one() + F::one();
    F::one() - two / ((two * x).fast_exp() + F::one())
}

/// `√(2/π)`, GELU's tanh-approximation constant.
pub const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

/// GPT-2's tanh-approximate GELU, `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))` (PyTorch's
/// `gelu(x, approximate="tanh")`), on [`fast_tanh`].
#[inline(always)]
pub fn gelu_tanh<F: FastExp>(x: F) -> F {
    let c = |v: f64| <F as crate::WithDType>::from_f64(v);
    c(0.5) * x * (F::one() + fast_tanh(c(SQRT_2_OVER_PI) * (x + c(0.044715) * x * x * x)))
}

#[inline(always)]
fn gelu_tanh_slice_kernel(xs: &mut [f32]) {
    for v in xs.iter_mut() {
        *v = gelu_tanh(*v);
    }
}

crate::multiversion! {
    /// [`gelu_tanh`] in place over a slice, vectorised for this machine's widest registers.
    pub fn gelu_tanh_in_place[](xs: &mut [f32]) = gelu_tanh_slice_kernel[]
}

/// SiLU (`x · σ(x)`) through [`FastExp`].
#[inline(always)]
pub fn silu<F: FastExp>(x: F) -> F {
    x / (F::one() + (-x).fast_exp())
}

#[inline(always)]
fn swiglu_kernel(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

crate::multiversion! {
    /// The SwiGLU of a Llama MLP in place: `gate[i] = silu(gate[i]) · up[i]`, vectorised.
    pub fn swiglu_in_place[](gate: &mut [f32], up: &[f32]) = swiglu_kernel[]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f64, b: f64) -> u64 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs()
    }

    #[test]
    fn f64_exp_is_within_two_ulp_of_libm_and_zero_past_its_floor() {
        let mut worst = 0;
        for i in 0..=200_000 {
            let x = -708.0 * (i as f64 / 200_000.0).powf(3.0);
            worst = worst.max(ulps(exp_f64_nonpositive(x), x.exp()));
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp_f64_nonpositive(0.0), 1.0);
        assert_eq!(exp_f64_nonpositive(-709.0), 0.0);
        assert_eq!(exp_f64_nonpositive(f64::NEG_INFINITY), 0.0);
    }

    #[test]
    fn softmax_weights_match_the_scalar_definition() {
        let logits: Vec<f32> = (0..37)
            .map(|i| {
                if i == 5 {
                    f32::NEG_INFINITY
                } else {
                    (i as f32 * 0.37).sin() * 9.0
                }
            })
            .collect();
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let mut w = vec![0f64; logits.len()];
        let total = softmax_weights_f64(&logits, max, 0.7, &mut w);
        for (&v, &got) in logits.iter().zip(&w) {
            let want = ((v as f64 - max) / 0.7).exp();
            assert!(ulps(got, want) <= 2, "{v}: {got} vs {want}");
        }
        assert_eq!(w[5], 0.0);
        assert!((total - w.iter().sum::<f64>()).abs() <= 1e-14 * total);
    }
}
