//! Seeded random tensors. The generator is ChaCha8 (`rand_chacha`), whose output stream is fixed by
//! its specification, so a seed gives the same numbers on every machine and every kiln version.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{DType, Device, Error, Result, Shape, Tensor};

/// A named, stable random generator (ChaCha8) whose position can be saved and restored.
#[derive(Clone, Debug)]
pub struct TensorRng {
    rng: ChaCha8Rng,
}

impl TensorRng {
    /// A generator from a 64-bit seed.
    pub fn new(seed: u64) -> Self {
        TensorRng {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
    /// The state as (32-byte key, word position): enough to resume the exact stream.
    pub fn state(&self) -> ([u8; 32], u128) {
        (self.rng.get_seed(), self.rng.get_word_pos())
    }
    /// Rebuild a generator from [`TensorRng::state`].
    pub fn from_state(key: [u8; 32], word_pos: u128) -> Self {
        let mut rng = ChaCha8Rng::from_seed(key);
        rng.set_word_pos(word_pos);
        TensorRng { rng }
    }
    /// A uniform `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
    /// A uniform f64 in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// A standard normal sample (Box-Muller; both outputs of a pair are not cached so the
    /// stream position stays simple to reason about).
    pub fn next_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: log is finite
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    /// A uniform integer in `0..n` (n > 0), without modulo bias.
    pub fn next_below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.rng.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }
    /// Shuffle a slice in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.next_below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

impl Tensor {
    /// Uniform samples in `[low, high)`.
    pub fn rand_uniform(
        shape: impl Into<Shape>,
        low: f64,
        high: f64,
        dtype: DType,
        device: Device,
        rng: &mut TensorRng,
    ) -> Result<Tensor> {
        if low.partial_cmp(&high).is_none_or(|o| o.is_gt()) {
            return Err(Error::invalid(
                "rand_uniform",
                format!("low {low} must not exceed high {high}"),
            ));
        }
        let shape = shape.into();
        let v: Vec<f64> = (0..shape.elem_count())
            .map(|_| low + (high - low) * rng.next_f64())
            .collect();
        Tensor::from_vec(v, shape)?.to_dtype(dtype)?.to_device(device)
    }

    /// Normal samples with the given mean and standard deviation.
    pub fn randn(
        shape: impl Into<Shape>,
        mean: f64,
        std: f64,
        dtype: DType,
        device: Device,
        rng: &mut TensorRng,
    ) -> Result<Tensor> {
        if std.is_nan() || std < 0.0 {
            return Err(Error::invalid("randn", format!("std must be >= 0, got {std}")));
        }
        let shape = shape.into();
        let v: Vec<f64> = (0..shape.elem_count())
            .map(|_| mean + std * rng.next_normal())
            .collect();
        Tensor::from_vec(v, shape)?.to_dtype(dtype)?.to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_state_resumes() {
        let mut a = TensorRng::new(7);
        let mut b = TensorRng::new(7);
        assert_eq!(a.next_u64(), b.next_u64());
        let (k, p) = a.state();
        let x = a.next_f64();
        let mut c = TensorRng::from_state(k, p);
        assert_eq!(x, c.next_f64());
    }

    #[test]
    fn normal_moments_are_close() {
        let mut r = TensorRng::new(1);
        let t = Tensor::randn([20000], 2.0, 3.0, DType::F64, Device::Cpu, &mut r).unwrap();
        let v = t.to_vec::<f64>().unwrap();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((mean - 2.0).abs() < 0.1, "{mean}");
        assert!((var.sqrt() - 3.0).abs() < 0.1, "{var}");
    }
}
