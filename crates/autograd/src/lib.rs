//! # kiln-autograd
//!
//! Reverse-mode automatic differentiation over [`kiln_tensor`]. A [`Var`] wraps a tensor and
//! records the op that made it; [`Var::backward`] walks the graph iteratively (no recursion, so
//! deep unrolled graphs are fine), frees each intermediate gradient as soon as it has been
//! propagated, and returns the [`Gradients`] of the leaves. Under [`no_grad`] nothing is recorded.
//!
//! ```
//! use kiln_autograd::Var;
//! use kiln_tensor::Tensor;
//! let w = Var::parameter(Tensor::from_vec(vec![2.0f32, -1.0], [2])?);
//! let x = Var::constant(Tensor::from_vec(vec![3.0f32, 4.0], [2])?);
//! let loss = w.mul(&x)?.sum_all()?;          // 2*3 - 1*4 = 2
//! let grads = loss.backward()?;
//! assert_eq!(grads.get(&w).unwrap().to_vec::<f32>()?, vec![3.0, 4.0]);
//! # Ok::<(), kiln_autograd::Error>(())
//! ```
//!
//! Adding an op: write the forward with tensor ops, then `Var::from_op(name, value, &[inputs],
//! move |grad_out| Ok(vec![Some(grad_input), ...]))` with the backward in tensor ops, and add a
//! case to the gradcheck property suite (`tests/gradcheck_props.rs`).

mod backward;
mod error;
mod grad_mode;
mod gradcheck;
pub mod ops;
mod param;
mod var;

pub use backward::Gradients;
pub use error::{Error, Result};
pub use grad_mode::{in_pool, is_grad_enabled, no_grad, set_grad_enabled, GradModeGuard};
pub use gradcheck::{gradcheck, GradcheckOptions};
pub use param::Param;
pub use var::{live_graph_nodes, BackwardFn, Var};
