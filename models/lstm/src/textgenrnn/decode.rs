//! Generation with textgenrnn: a window of the last `max_length` ids.

use std::collections::VecDeque;

use kiln_tensor::{DType, Tensor};
use kiln_zoo::generate::{CausalLm, DecodeState};
use kiln_zoo::Result;

use super::TextGenRnn;

impl CausalLm for TextGenRnn {
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    fn start(&self) -> Result<Box<dyn DecodeState + '_>> {
        Ok(Box::new(Window {
            model: self,
            ids: VecDeque::with_capacity(self.cfg.max_length),
        }))
    }
}

/// The last `max_length` ids fed.
struct Window<'a> {
    model: &'a TextGenRnn,
    ids: VecDeque<u32>,
}

impl DecodeState for Window<'_> {
    /// Append `ids`, keep the last `max_length`, and read the window left-padded with 0.
    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let _no_grad = kiln_autograd::no_grad();
        let len = self.model.cfg.max_length;
        self.ids.extend(ids);
        while self.ids.len() > len {
            self.ids.pop_front();
        }
        let mut window = vec![0i64; len - self.ids.len()];
        window.extend(self.ids.iter().map(|&i| i as i64));
        let logits = self.model.logits(&Tensor::from_vec(window, [1, len])?)?;
        Ok(logits
            .value()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec::<f32>()?)
    }
}
