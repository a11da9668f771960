//! A Keras-like `Sequential` container.

use kiln_autograd::{Param, Var};

use crate::{FnModule, Module, Result};

/// Modules applied one after another, as `torch.nn.Sequential` / `keras.Sequential`. Build its
/// layers with `scope.sub(i)` to get PyTorch's `0.weight`, `2.bias`, ... names.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    /// An empty container.
    pub fn new() -> Self {
        Self::default()
    }
    /// Append a module (builder style).
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, m: impl Module + 'static) -> Self {
        self.layers.push(Box::new(m));
        self
    }
    /// Append a parameter-free function.
    pub fn add_fn(self, f: impl Fn(&Var) -> Result<Var> + Send + Sync + 'static) -> Self {
        self.add(FnModule(f))
    }
    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }
    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Var) -> Result<Var> {
        let mut h = x.clone();
        for l in &self.layers {
            h = l.forward(&h)?;
        }
        Ok(h)
    }
    fn parameters(&self) -> Vec<Param> {
        self.layers.iter().flat_map(|l| l.parameters()).collect()
    }
    fn set_training(&self, training: bool) {
        self.layers.iter().for_each(|l| l.set_training(training));
    }
}
