//! Layers, one family per file, with PyTorch's semantics, parameter names and initialisation.

mod activation;
mod dropout;
mod embedding;
mod linear;
mod norm;
mod sequential;

pub use activation::{Activation, Flatten};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use linear::Linear;
pub use norm::{LayerNorm, RmsNorm};
pub use sequential::Sequential;
