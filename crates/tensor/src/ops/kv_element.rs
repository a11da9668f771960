//! [`KvElement`]: the number types a key/value cache may store, `f32` or `f16`.
//!
//! Attention always computes in `f32`. An `f16` cache halves the bytes every decode step reads
//! (llama.cpp's default cache type): a value is rounded to the nearest `f16` once, when it is
//! stored, and widened exactly when it is read, so the attention kernel sees the same `f32`
//! numbers whichever path widened them.

use half::f16;

/// A number type a KV cache stores.
pub trait KvElement: Copy + Default + Send + Sync + 'static {
    /// The type's name (`"f32"`, `"f16"`).
    const NAME: &'static str;
    /// Rounds `src` into `dst` (the same length), to nearest, ties to even.
    fn narrow(src: &[f32], dst: &mut [Self]);
    /// `src` as `f32`: the slice itself, or its values widened into `scratch`.
    fn as_f32<'b>(src: &'b [Self], scratch: &'b mut Vec<f32>) -> &'b [f32];
}

impl KvElement for f32 {
    const NAME: &'static str = "f32";

    fn narrow(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }

    #[inline(always)]
    fn as_f32<'b>(src: &'b [f32], _scratch: &'b mut Vec<f32>) -> &'b [f32] {
        src
    }
}

impl KvElement for f16 {
    const NAME: &'static str = "f16";

    fn narrow(src: &[f32], dst: &mut [f16]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }

    #[inline(always)]
    fn as_f32<'b>(src: &'b [f16], scratch: &'b mut Vec<f32>) -> &'b [f32] {
        if scratch.len() < src.len() {
            scratch.resize(src.len(), 0.0);
        }
        let dst = &mut scratch[..src.len()];
        widen_f16(src, dst);
        dst
    }
}

/// `dst[i] = src[i]` as `f32` (exact): 16 at a time on AVX-512, else through `half`'s own
/// conversion (F16C where the CPU has it).
fn widen_f16(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if crate::simd::isa() == crate::simd::Isa::Avx512 {
        // SAFETY: AVX-512F is present (checked); the lengths are equal (asserted).
        unsafe { widen_f16_avx512(src, dst) };
        return;
    }
    use half::slice::HalfFloatSliceExt;
    src.convert_to_f32_slice(dst);
}

/// [`widen_f16`] with `vcvtph2ps`.
///
/// # Safety
/// The CPU supports AVX-512F and `src.len() == dst.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn widen_f16_avx512(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let full = src.len() / 16 * 16;
    // SAFETY: every load and store of 16 lies below `full <= len` in both slices.
    unsafe {
        for i in (0..full).step_by(16) {
            let h = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
        }
    }
    for (d, s) in dst[full..].iter_mut().zip(&src[full..]) {
        *d = s.to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trips_exactly_and_rounds_to_nearest() {
        // Every finite f16 widens to itself (the AVX-512 path and the scalar tail agree with
        // half's own conversion).
        let all: Vec<f16> = (0..=u16::MAX)
            .map(f16::from_bits)
            .filter(|h| h.is_finite())
            .collect();
        let mut scratch = Vec::new();
        let wide = f16::as_f32(&all, &mut scratch).to_vec();
        for (h, w) in all.iter().zip(&wide) {
            assert_eq!(w.to_bits(), h.to_f32().to_bits());
        }
        let mut back = vec![f16::ZERO; wide.len()];
        f16::narrow(&wide, &mut back);
        assert_eq!(back, all);
        // A value between two f16s goes to the nearer one.
        let mut h = [f16::ZERO; 2];
        f16::narrow(&[1.0 + 0.3 / 1024.0, 1.0 + 0.7 / 1024.0], &mut h);
        assert_eq!(h, [f16::ONE, f16::from_f32(1.0 + 1.0 / 1024.0)]);
    }
}
