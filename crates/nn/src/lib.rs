//! # kiln-nn
//!
//! Layers, losses, initialisers and state dicts with PyTorch's semantics and parameter names, so
//! real checkpoints load without remapping. Parameters come from one construction path, a
//! [`Scope`], which either initialises them (training from scratch) or loads them by dotted name:
//!
//! ```
//! use kiln_nn::{layers::{Activation, Linear, Sequential}, Module, Scope};
//! use kiln_tensor::{DType, Device, Tensor};
//! let scope = Scope::init(0, DType::F32, Device::Cpu);
//! let mlp = Sequential::new()
//!     .add(Linear::new(scope.sub("0"), 4, 8)?)
//!     .add(Activation::Relu)
//!     .add(Linear::new(scope.sub("2"), 8, 2)?);
//! let names: Vec<String> = mlp.parameters().iter().map(|p| p.name().to_string()).collect();
//! assert_eq!(names, ["0.weight", "0.bias", "2.weight", "2.bias"]);
//! let y = mlp.forward(&kiln_autograd::Var::constant(Tensor::ones([3, 4], DType::F32, Device::Cpu)?))?;
//! assert_eq!(y.dims(), &[3, 2]);
//! # Ok::<(), kiln_nn::Error>(())
//! ```

mod error;
mod init;
pub mod layers;
pub mod loss;
mod module;
mod scope;

pub use error::{Error, Result};
pub use init::{fans, Init};
pub use kiln_autograd::{Param, Var};
pub use module::{FnModule, Module};
pub use scope::{load_state_dict, load_state_dict_file, save_state_dict, state_dict, LoadReport, Scope};
