//! The [`Module`] trait every layer implements.

use kiln_autograd::{Param, Var};

use crate::Result;

/// A layer or model: a forward function plus named parameters and a train/eval switch.
///
/// Layers whose forward takes more than one input (attention with masks, an LSTM with initial
/// states) also have inherent methods; `forward` is their single-input form.
pub trait Module: Send + Sync {
    /// Apply the module to one input.
    fn forward(&self, x: &Var) -> Result<Var>;
    /// Every parameter (and buffer) of this module and its children, with full dotted names.
    fn parameters(&self) -> Vec<Param>;
    /// Switch training behaviour (dropout, batch statistics) on or off, for this module and its
    /// children. The default does nothing, for modules that behave the same in both modes.
    fn set_training(&self, _training: bool) {}
    /// Number of scalar parameters.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|p| p.value().elem_count()).sum()
    }
}

impl<M: Module + ?Sized> Module for Box<M> {
    fn forward(&self, x: &Var) -> Result<Var> {
        (**self).forward(x)
    }
    fn parameters(&self) -> Vec<Param> {
        (**self).parameters()
    }
    fn set_training(&self, training: bool) {
        (**self).set_training(training)
    }
}

/// A module built from a closure with no parameters (`Sequential::add_fn(|x| x.relu())`).
pub struct FnModule<F>(pub F);

impl<F: Fn(&Var) -> Result<Var> + Send + Sync> Module for FnModule<F> {
    fn forward(&self, x: &Var) -> Result<Var> {
        (self.0)(x)
    }
    fn parameters(&self) -> Vec<Param> {
        Vec::new()
    }
}
