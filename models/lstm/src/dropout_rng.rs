//! The dropout generator's position kept in the model's state dict, so a checkpoint carries it and
//! a resumed run draws the same dropout masks as the uninterrupted one.
//!
//! The state of a [`Dropout`] (ChaCha8: a 32-byte key and a 128-bit word position) is stored as a
//! buffer of 48 byte values (0..=255, exact in every float dtype, so any load path keeps it).
//! Before each forward pass the generator is set from the buffer (which a checkpoint may have
//! restored), and after it the buffer is updated. A buffer of zeros means "never written": it
//! takes the generator's seeded start.

use kiln_autograd::Param;
use kiln_nn::layers::Dropout;
use kiln_nn::{Init, Scope};
use kiln_tensor::Tensor;
use kiln_zoo::{Error, Result};

/// Bytes of the key plus bytes of the word position.
const LEN: usize = 32 + 16;

/// A buffer holding one [`Dropout`]'s generator state.
pub(crate) struct DropoutRng {
    buffer: Param,
}

impl DropoutRng {
    /// The buffer `name` in `scope`, initialised to `dropout`'s state unless it was loaded.
    pub(crate) fn new(scope: &Scope, name: &str, dropout: &Dropout) -> Result<DropoutRng> {
        let buffer = scope.buffer(name, [LEN], Init::Zeros)?;
        let rng = DropoutRng { buffer };
        if rng.buffer.value().to_f64_vec().iter().all(|&v| v == 0.0) {
            rng.save(dropout)?;
        }
        Ok(rng)
    }

    /// The buffer (listed with the model's parameters).
    pub(crate) fn param(&self) -> &Param {
        &self.buffer
    }

    /// Set `dropout`'s generator from the buffer.
    pub(crate) fn restore(&self, dropout: &Dropout) -> Result<()> {
        let v = self.buffer.value().to_f64_vec();
        let mut bytes = [0u8; LEN];
        for (b, &x) in bytes.iter_mut().zip(&v) {
            if !(0.0..=255.0).contains(&x) || x.fract() != 0.0 {
                return Err(Error::Input {
                    model: self.buffer.name().into(),
                    reason: format!("the dropout generator buffer holds {x}, not a byte value"),
                });
            }
            *b = x as u8;
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[..32]);
        let mut pos = [0u8; 16];
        pos.copy_from_slice(&bytes[32..]);
        dropout.set_rng_state(key, u128::from_le_bytes(pos));
        Ok(())
    }

    /// Store `dropout`'s generator in the buffer.
    pub(crate) fn save(&self, dropout: &Dropout) -> Result<()> {
        let (key, pos) = dropout.rng_state();
        let values: Vec<f64> = key
            .iter()
            .chain(pos.to_le_bytes().iter())
            .map(|&b| b as f64)
            .collect();
        let old = self.buffer.value();
        let t = Tensor::from_vec(values, [LEN])?
            .to_dtype(old.dtype())?
            .to_device(old.device())?;
        self.buffer.set_value(t);
        Ok(())
    }

    /// Run `f` (a forward pass through `dropout`) with the generator restored before and saved after.
    pub(crate) fn around<T>(&self, dropout: &Dropout, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.restore(dropout)?;
        let out = f();
        self.save(dropout)?;
        out
    }
}
