//! # kiln
//!
//! The facade of the kiln deep-learning framework: one dependency that re-exports every kiln
//! crate under a short name. Depend on the single crates (`kiln-tensor`, ...) when you need
//! only part of the stack.
//!
//! ```
//! use kiln::tensor::{Tensor, DType, Device};
//! let x = Tensor::ones([2, 2], DType::F32, Device::Cpu)?;
//! assert_eq!(x.sum_all()?.to_scalar::<f32>()?, 4.0);
//! # Ok::<(), kiln::tensor::Error>(())
//! ```

pub use kiln_autograd as autograd;
pub use kiln_tensor as tensor;

/// The kiln crates this facade re-exports, for `cargo xtask info`.
pub const CRATES: &[&str] = &["kiln-tensor", "kiln-autograd"];
