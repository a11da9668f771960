//! `Dropout` with its own seeded generator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use kiln_autograd::{Param, Var};
use kiln_tensor::{Tensor, TensorRng};

use crate::{Error, Module, Result};

/// `nn.Dropout(p)`: in training, zero each element with probability `p` and scale the rest by
/// `1/(1-p)`; identity in eval mode. The mask stream is a pure function of the seed.
pub struct Dropout {
    p: f64,
    training: AtomicBool,
    rng: Mutex<TensorRng>,
}

impl Dropout {
    /// Dropout with probability `p` in `[0, 1)` and a seed for its masks.
    pub fn new(p: f64, seed: u64) -> Result<Dropout> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid("Dropout", format!("p must be in [0, 1), got {p}")));
        }
        Ok(Dropout {
            p,
            training: AtomicBool::new(true),
            rng: Mutex::new(TensorRng::new(seed)),
        })
    }
    /// The generator's state (key, position), for exact resume.
    pub fn rng_state(&self) -> ([u8; 32], u128) {
        self.rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .state()
    }
    /// Restore the generator from [`Dropout::rng_state`].
    pub fn set_rng_state(&self, key: [u8; 32], pos: u128) {
        *self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = TensorRng::from_state(key, pos);
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Var) -> Result<Var> {
        if !self.training.load(Ordering::Relaxed) || self.p == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let n = x.value().elem_count();
        let mut rng = self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Built in f64 so every dtype gets the correctly rounded 1/keep.
        let scale = 1.0 / keep;
        let mask: Vec<f64> = (0..n)
            .map(|_| if rng.next_f64() < keep { scale } else { 0.0 })
            .collect();
        drop(rng);
        let mask = Tensor::from_vec(mask, x.shape().clone())?.to_dtype(x.dtype())?;
        Ok(x.mul(&Var::constant(mask))?)
    }
    fn parameters(&self) -> Vec<Param> {
        Vec::new()
    }
    fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }
}
